"""Compare policies on held-out prompts (``finegrained evaluate``).

For every policy: generate (greedy by default) on the task's held-out prompts, then report the task
oracle's per-category error rates (when the task has an oracle), the reward models' mean rewards (when a
reward config is given), the KL to the reference policy, the mean response length and ROUGE-L against
the reference answers. Writes ``output_dir/eval.json`` and prints a table (oracle columns only when the
task has an oracle, reward-model columns when a reward config is given). Prompts come from
``finegrained.prompts.load_prompts`` (``task=jsonl task.eval=F``, ``task=hf_dataset ...``, or the
built-in task); prompts longer than a policy allows are cut from the left or the right, or refused (``task.truncate``).

KL: for each response, the sum over its tokens of the exact KL(policy || reference) between the two
next-token distributions along the generated path; ``kl`` is the mean over responses.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from omegaconf import DictConfig

from .config import log, to_container
from .errors import FinegrainedError
from .io import atomic_write_json
from .text_metrics import rouge_l

def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_prompts(cfg: DictConfig) -> list[dict]:
    """The task's held-out prompt records of ``cfg.split`` (at most ``n_prompts``)."""
    from .prompts import load_prompts as load_task_prompts

    return load_task_prompts(cfg.task, cfg.split, n=cfg.n_prompts)


def policy_overrides(argv: list[str]) -> list[str]:
    """Policy names are the user's own keys: ``policies.NAME=DIR`` is passed as Hydra's ``+policies.NAME=DIR``
    (a new key)."""
    return [f"+{a}" if a.startswith("policies.") else a for a in argv]


def run_evaluation(cfg: DictConfig) -> dict:
    """``evaluate_policies`` with the config, written to ``output_dir/eval.json``; returns that report."""
    report = evaluate_policies(cfg)
    report["config"] = to_container(cfg)
    atomic_write_json(Path(cfg.output_dir) / "eval.json", report)
    return report


def evaluate_policies(cfg: DictConfig) -> dict:
    """Run the evaluation described by ``cfg``; returns the eval.json content."""
    from hydra.utils import instantiate

    from .rl.generation import fit_prompts, generate, load_policy, prompt_token_budget, response_kl

    policies: dict[str, str] = dict(cfg.policies or {})
    if not policies:
        raise FinegrainedError("finegrained evaluate: give at least one policy, e.g. policies.sft=outputs/demo/sft/final")
    reference = cfg.reference or next(iter(policies))
    reference_path = policies.get(reference, reference)
    device = pick_device(cfg.device)
    records = load_prompts(cfg)
    prompts = [r["prompt"] for r in records]
    references = [r.get("reference") for r in records]
    oracle = instantiate(cfg.oracle) if cfg.oracle is not None else None
    scorer = None
    if cfg.reward is not None:
        from .rewards.scorer import RewardScorer

        scorer = RewardScorer.from_config(cfg.reward, device=device)

    ref_model, _ = load_policy(reference_path, device, option=f"reference={reference}" if reference not in policies else f"policies.{reference}")
    gen = cfg.generation
    rule = cfg.task.get("truncate") or "left"
    results: dict[str, dict] = {}
    for name, path in policies.items():
        model, tokenizer = load_policy(path, device, option=f"policies.{name}")
        budget = prompt_token_budget([model, ref_model], gen.max_new_tokens)
        fit = fit_prompts(tokenizer, records, budget, rule, who=f"evaluate {name}", source=f"task={cfg.task.get('name') or '?'} ({cfg.split})")
        log(f"[evaluate] {name}: generating {len(prompts)} completions from {path}")
        generations = generate(
            model, tokenizer, prompts,
            max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample, temperature=gen.temperature,
            top_k=gen.top_k, top_p=gen.top_p, batch_size=gen.batch_size, seed=cfg.seed, progress=True, truncate=rule,
        )  # fmt: skip
        completions = [g.completion for g in generations]
        kls = response_kl(model, ref_model, tokenizer, generations, batch_size=gen.batch_size)
        entry: dict = {
            "n": len(generations),
            "kl": statistics.fmean(kls),
            "mean_length": statistics.fmean(len(g.response_ids) - g.ended for g in generations),
            "ended_with_eos": statistics.fmean(g.ended for g in generations),
            "prompts_truncated": fit.n_truncated,
        }
        scored = [(c, r) for c, r in zip(completions, references) if r]
        entry["rouge_l"] = statistics.fmean(rouge_l(c, r) for c, r in scored) if scored else None
        if oracle is not None:
            judged = oracle(prompts, completions)
            entry["error_rate"] = dict(judged["error_rate"])
            entry["total_error_rate"] = judged["total_error_rate"]
            entry["oracle"] = {k: v for k, v in judged.items() if k not in ("error_rate", "total_error_rate")}
        if scorer is not None:
            breakdown = scorer(prompts, completions)
            entry["rewards"] = {
                c.name: statistics.fmean(sum(r) for r in c.rewards) for c in breakdown.categories.values()
            }
            entry["reward_total"] = statistics.fmean(breakdown.total_per_sample())
        entry["examples"] = [
            {"prompt": g.prompt, "completion": g.completion} for g in generations[: cfg.n_examples]
        ]
        results[name] = entry
        del model
    return {"split": cfg.split, "n_prompts": len(prompts), "reference": reference, "policies": results}


def format_table(results: dict[str, dict]) -> str:
    """One row per policy: the oracle's per-category and total error rates (columns only when the task
    has an oracle), the reward models' mean rewards (when scored), KL, length, ROUGE-L."""
    categories = sorted({c for r in results.values() for c in r.get("error_rate", {})})
    oracle = any("total_error_rate" in r for r in results.values())
    rewards = list(dict.fromkeys(c for r in results.values() for c in r.get("rewards", {})))
    scored = any("reward_total" in r for r in results.values())
    timed = any("train_seconds" in r for r in results.values())  # the demo's offline runs (demo algorithms=[...])

    def fmt(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    header = ["policy", *[f"err:{c}" for c in categories], *(["total_err"] if oracle else []),
              *[f"rm:{c}" for c in rewards], *(["rm_total"] if scored else []), "kl", "length", "rouge_l",
              *(["train_s"] if timed else [])]  # fmt: skip
    rows = []
    for name, r in results.items():
        rows.append([
            name, *[fmt(r.get("error_rate", {}).get(c)) for c in categories], *([fmt(r.get("total_error_rate"))] if oracle else []),
            *[fmt(r.get("rewards", {}).get(c)) for c in rewards], *([fmt(r.get("reward_total"))] if scored else []),
            fmt(r.get("kl")), f"{r['mean_length']:.1f}", fmt(r.get("rouge_l")),
            *([f"{r['train_seconds']:.0f}" if "train_seconds" in r else "-"] if timed else []),
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_notes(report: dict) -> list[str]:
    """What the table leaves out, said plainly."""
    results = report["policies"].values()
    notes = []
    if not any("total_error_rate" in r for r in results):
        notes.append("no oracle for this task: no error rates (give reward=... to score with reward models)"
                     if not any("reward_total" in r for r in results) else "no oracle for this task: no error rates")
    if all(r.get("rouge_l") is None for r in results):
        notes.append("no reference answers: no ROUGE-L")
    return notes
