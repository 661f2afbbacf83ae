"""The whole method on the built-in task, fine-grained against holistic RLHF (``finegrained demo``).

Stages (each leaves its outputs under ``output_dir`` and is skipped when they are already complete, so
an interrupted demo resumes where it stopped):

1. ``sft/``          supervised fine-tuning of a tiny policy on the noisy writer's answers;
2. ``annotations/``  sample answers from the SFT policy, annotate them with the simulated annotators
                     (error spans, completeness and holistic preferences), split by prompt into train/eval;
3. ``rm/<category>`` one reward model per category: relevance, factuality (span), completeness, holistic
                     (preference); with ``shared_rm=true`` also ``rm/joint``: relevance, factuality and
                     completeness on one shared backbone;
4. ``ppo/<method>-seed<s>``  fine-grained PPO (three reward models, per-segment rewards) and holistic
                     PPO (one preference model at EOS), same SFT start, same iterations and episodes;
                     with ``shared_rm=true`` also ``fine_grained_shared`` (fine-grained PPO judged by
                     ``rm/joint``);
5. ``eval/seed<s>``  every policy evaluated by the task's oracle on held-out prompts;
6. ``results.json``, ``*.png``; ``finegrained demo`` prints the table (what the oracle measured, nothing else).

The SFT policy and the reward models are trained once (seed 0) and shared by every seed; seeds vary
the PPO runs and their sampling.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from .config import library_versions, log, machine_description, to_container
from .errors import FinegrainedError
from .io import atomic_write_json, atomic_write_jsonl

SPAN_CATEGORIES = ("relevance", "factuality")
PREFERENCE_CATEGORIES = ("completeness", "holistic")
METHODS = ("fine_grained", "holistic")
SHARED_METHOD = "fine_grained_shared"
JOINT_CATEGORIES = ("relevance", "factuality", "completeness")


def methods(cfg: DictConfig) -> tuple[str, ...]:
    """The PPO runs of this demo: fine-grained and holistic, plus the shared-backbone run when asked, plus
    fine-grained and holistic GRPO with ``algorithms=[ppo,grpo]``."""
    algorithms = list(cfg.get("algorithms", ["ppo"]))
    if "ppo" not in algorithms:
        raise FinegrainedError(f"algorithms={algorithms}: must include ppo (the demo's verdict compares its PPO runs)")
    runs = (*METHODS, SHARED_METHOD) if cfg.get("shared_rm", False) else METHODS
    return (*runs, *GRPO_METHODS) if "grpo" in algorithms else runs


# algorithms=[ppo,grpo]: critic-free GRPO on the same rewards, G samples per prompt and batch_size / G prompts,
# so that every run trains on the same number of episodes
GRPO_METHODS = ("grpo_fine_grained", "grpo_holistic")
GRPO_SAMPLES = 4


def run_dir(out: Path, method: str, seed: int) -> Path:
    """A run's directory: ppo/<method>-seed<s>, grpo/<fine_grained|holistic>-seed<s>."""
    if method in GRPO_METHODS:
        return out / "grpo" / f"{method.removeprefix('grpo_')}-seed{seed}"
    return out / "ppo" / f"{method}-seed{seed}"


def grpo_overrides(cfg: DictConfig, ppo_run: list[str]) -> list[str]:
    """The GRPO run of a PPO run's overrides: the same episodes per iteration as batch_size / G prompts."""
    from .config import compose

    episodes = int(compose("ppo", ppo_run).ppo.batch_size)
    if episodes % GRPO_SAMPLES:
        raise FinegrainedError(f"algorithms=[ppo,grpo]: the PPO batch of {episodes} episodes is not a multiple of {GRPO_SAMPLES}")
    return [*ppo_run, f"ppo.batch_size={episodes // GRPO_SAMPLES}", f"ppo.samples_per_prompt={GRPO_SAMPLES}"]


def seed_list(seeds) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise FinegrainedError("seeds must be a positive number of seeds or a list of seeds")
        return list(range(seeds))
    return [int(s) for s in seeds]


def run_stage(config_name: str, overrides: list[str], what: str, run: Callable[[DictConfig], object]) -> None:
    """``run`` on ``conf/<config_name>.yaml`` composed with ``overrides`` and checked, as its command would."""
    from .config_checks import compose_checked

    started = time.perf_counter()
    log(f"[demo] {what}")
    run(compose_checked(config_name, [str(o) for o in overrides]))
    log(f"[demo] {what}: done in {time.perf_counter() - started:.1f} s")


# 1. SFT ---------------------------------------------------------------------------------------------
def stage_sft(cfg: DictConfig, out: Path) -> Path:
    """The SFT policy: ``sft_policy`` when set (``shipped``: the package's copy of the full demo's stage 1),
    else ``out/sft/final``, trained unless it is already there."""
    from .sft import train_sft

    given = cfg.get("sft_policy")
    if given:
        from .paths import SHIPPED_SFT_DIR

        policy = SHIPPED_SFT_DIR if given == "shipped" else Path(str(given))
        if not (policy / "config.json").is_file():
            raise FinegrainedError(f"sft_policy={given}: {policy} is not a policy directory (no config.json)")
        log(f"[demo] SFT policy: {policy} (not trained here)")
        return policy
    final = out / "sft" / "final"
    if not final.is_dir():
        run_stage("sft", [f"output_dir={out / 'sft'}", "seed=0", *cfg.sft_overrides], "SFT of the tiny policy", train_sft)
    return final


# 2. Sample and annotate -----------------------------------------------------------------------------
def stage_annotate(cfg: DictConfig, out: Path, policy_dir: Path) -> dict[str, Path]:
    from .data import validate_file
    from .rl.generation import generate, load_policy
    from .schema import load_schema
    from .tasks import synthetic_qa as task

    folder = out / "annotations"
    names = ["spans_train", "spans_eval", *[f"{c}_{split}" for c in PREFERENCE_CATEGORIES for split in ("train", "eval")]]
    files = {name: folder / f"{name}.jsonl" for name in names}
    if all(f.is_file() for f in files.values()):
        return files
    log(f"[demo] sampling {cfg.samples_per_prompt} answers for {cfg.n_annotation_prompts} prompts and annotating them")
    records = task.prompts("train", n=cfg.n_annotation_prompts, seed=1)
    model, tokenizer = load_policy(str(policy_dir))
    prompts = [r["prompt"] for r in records for _ in range(cfg.samples_per_prompt)]
    generations = generate(model, tokenizer, prompts, do_sample=True, max_new_tokens=cfg.max_new_tokens, seed=0, progress=True)
    rng = random.Random(0)
    annotators = [f"ann-{i}" for i in range(cfg.annotators)]
    spans = {"train": [], "eval": []}
    prefs = {(c, split): [] for c in PREFERENCE_CATEGORIES for split in ("train", "eval")}
    n_eval_prompts = max(1, len(records) // 5)
    for i, record in enumerate(records):
        split = "eval" if i < n_eval_prompts else "train"
        answers = [g.completion for g in generations[i * cfg.samples_per_prompt : (i + 1) * cfg.samples_per_prompt]]
        annotator = annotators[i % len(annotators)]
        for j, answer in enumerate(answers):
            span_record = task.annotate_spans(
                record["prompt"], answer, annotator=annotator, noise=cfg.label_noise, rng=rng
            )
            span_record["id"] = f"{record['id']}-s{j}"
            spans[split].append(span_record)
        for a in range(len(answers)):
            for b in range(a + 1, len(answers)):
                for category in PREFERENCE_CATEGORIES:
                    pref = task.annotate_preference(
                        record["prompt"], answers[a], answers[b], category,
                        annotator=annotator, noise=cfg.label_noise, rng=rng,
                    )  # fmt: skip
                    if pref is not None:  # None: a tie, which preference data leaves out
                        pref["id"] = f"{record['id']}-{category}-{a}v{b}"
                        prefs[(category, split)].append(pref)
    atomic_write_jsonl(files["spans_train"], spans["train"])
    atomic_write_jsonl(files["spans_eval"], spans["eval"])
    for (category, split), records_ in prefs.items():
        atomic_write_jsonl(files[f"{category}_{split}"], records_)
    schema = load_schema(cfg.schema)
    # An empty eval file is legal here (train-rm then holds out part of the training file).
    problems = [p for f in files.values() if f.stat().st_size for p in validate_file(f, schema)]
    if problems:
        raise FinegrainedError("simulated annotations failed validation:\n" + "\n".join(map(str, problems[:20])))
    return files


# 3. Reward models -----------------------------------------------------------------------------------
def stage_reward_models(cfg: DictConfig, out: Path, files: dict[str, Path]) -> dict[str, Path]:
    from .rewards.train import train_reward_model

    dirs = {}
    for category in (*SPAN_CATEGORIES, *PREFERENCE_CATEGORIES):
        prefix = "spans" if category in SPAN_CATEGORIES else category
        train, held_out = files[f"{prefix}_train"], files[f"{prefix}_eval"]
        if not train.stat().st_size:
            raise FinegrainedError(f"{train}: the simulated annotators produced no data for {category}; annotate more prompts")
        target = out / "rm" / category
        if not (target / "finegrained.json").is_file():
            run_stage(
                "train_rm",
                [
                    f"schema={cfg.schema}", f"category={category}", "model=tiny", f"data.train={train}",
                    f"data.eval={held_out if held_out.stat().st_size else 'null'}",
                    f"output_dir={target}", "seed=0", *cfg.rm_overrides,
                ],
                f"reward model for {category}", train_reward_model,
            )  # fmt: skip
        dirs[category] = target
    if cfg.get("shared_rm", False):
        target = out / "rm" / "joint"
        if not (target / "finegrained.json").is_file():
            held_out = {k: files[f"{k}_eval"] for k in ("spans", "completeness")}
            run_stage(
                "train_rm",
                [
                    f"schema={cfg.schema}", f"categories=[{','.join(JOINT_CATEGORIES)}]", "model=tiny",
                    f"data.train={files['spans_train']}", f"data.preferences={files['completeness_train']}",
                    f"data.eval={held_out['spans'] if held_out['spans'].stat().st_size else 'null'}",
                    f"data.eval_preferences={held_out['completeness'] if held_out['completeness'].stat().st_size else 'null'}",
                    f"output_dir={target}", "seed=0", *cfg.rm_overrides,
                ],
                "one reward model for relevance, factuality and completeness on a shared backbone", train_reward_model,
            )  # fmt: skip
        dirs["joint"] = target
    return dirs


# 4. PPO -----------------------------------------------------------------------------------------------
def ppo_overrides(cfg: DictConfig, method: str, rm_dirs: dict[str, Path], policy_dir: Path) -> list[str]:
    if method in ("fine_grained", SHARED_METHOD):
        reward = ["reward=fine_grained", f"reward.span_mode={cfg.span_mode}"]
        for category, weight in cfg.weights.items():
            model = rm_dirs["joint"] if method == SHARED_METHOD else rm_dirs[category]
            reward += [f"reward.categories.{category}.model={model}", f"reward.categories.{category}.weight={weight}"]
    else:
        reward = ["reward=holistic", f"reward.categories.holistic.model={rm_dirs['holistic']}",
                  f"reward.categories.holistic.weight={cfg.holistic_weight}"]  # fmt: skip
    return ["policy=pretrained", f"policy.name_or_path={policy_dir}", "task=synthetic_qa",
            f"ppo.iterations={cfg.ppo_iterations}", f"generation.max_new_tokens={cfg.max_new_tokens}",
            *reward, *cfg.ppo_overrides]  # fmt: skip


def stage_ppo(cfg: DictConfig, out: Path, seed: int, method: str, rm_dirs, policy_dir: Path) -> Path:
    from .rl.trainer import GRPOTrainer, PPOTrainer

    directory = run_dir(out, method, seed)
    if not (directory / "final").is_dir():
        resume = ["resume=true"] if (directory / "checkpoints").is_dir() else []
        overrides = [f"output_dir={directory}", f"seed={seed}", *resume]
        if method in GRPO_METHODS:
            config_name, trainer = "grpo", GRPOTrainer
            overrides += grpo_overrides(cfg, ppo_overrides(cfg, method.removeprefix("grpo_"), rm_dirs, policy_dir))
        else:
            config_name, trainer = "ppo", PPOTrainer
            overrides += ppo_overrides(cfg, method, rm_dirs, policy_dir)
        what = f"{method} {config_name.upper()}, seed {seed}"
        run_stage(config_name, overrides, what, lambda run_cfg: trainer(run_cfg).train())
    return directory / "final"


# 5. Evaluation ----------------------------------------------------------------------------------------
def stage_evaluate(cfg: DictConfig, out: Path, seed: int, policies: dict[str, Path]) -> dict:
    import json

    from .evaluate import format_table, policy_overrides, run_evaluation

    eval_dir = out / "eval" / f"seed{seed}"
    done = eval_dir / "eval.json"
    report = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None
    # Re-evaluated when a policy was added (shared_rm=true after a plain demo) or retrained since; each
    # policy samples with the same seed, so the other policies' figures do not change.
    if (
        report is None
        or set(policies) - set(report["policies"])
        or any(Path(path).stat().st_mtime > done.stat().st_mtime for path in policies.values())
    ):
        run_stage(
            "evaluate",
            policy_overrides([f"output_dir={eval_dir}", f"seed={seed}", f"n_prompts={cfg.n_eval_prompts}", "reference=sft",
             f"generation.do_sample={cfg.eval_sampling}", f"generation.max_new_tokens={cfg.max_new_tokens}",
             *[f"policies.{name}={path}" for name, path in policies.items()]]),  # fmt: skip
            f"oracle evaluation, seed {seed}", run_evaluation,
        )
        report = json.loads(done.read_text(encoding="utf-8"))
        log(f"[demo] seed {seed}:\n{format_table(report['policies'])}")
    # only the policies of this demo run (an earlier shared_rm=true run may have evaluated one more)
    report["policies"] = {name: report["policies"][name] for name in policies}
    return report


# 6. Results -------------------------------------------------------------------------------------------
def aggregate(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Mean over seeds of each policy's oracle figures, plus the per-seed total error rates."""
    names = list(next(iter(per_seed.values()))["policies"])
    policies = {}
    for name in names:
        entries = [per_seed[s]["policies"][name] for s in per_seed]
        categories = list(entries[0]["error_rate"])
        policies[name] = {
            "error_rate": {c: statistics.fmean(e["error_rate"][c] for e in entries) for c in categories},
            "total_error_rate": statistics.fmean(e["total_error_rate"] for e in entries),
            "per_seed_total_error_rate": [e["total_error_rate"] for e in entries],
            "kl": statistics.fmean(e["kl"] for e in entries),
            "mean_length": statistics.fmean(e["mean_length"] for e in entries),
            "rouge_l": statistics.fmean(e["rouge_l"] for e in entries),
        }
    return policies


def verdict(policies: dict[str, dict]) -> str:
    """A plain-words summary of what the oracle measured; no claim the numbers do not support."""
    sft, fg, hol = (policies[k]["per_seed_total_error_rate"] for k in ("sft", "fine_grained", "holistic"))
    n = len(fg)
    fg_wins = sum(f < h for f, h in zip(fg, hol))
    rl_wins = sum(f < s for f, s in zip(fg, sft))
    lines = [
        f"fine-grained PPO has a lower oracle total error rate than holistic PPO on {fg_wins} of {n} seed(s)"
        + (" (as Wu et al. 2023 found)" if fg_wins == n else "; the expected result did NOT appear on every seed"),
        f"fine-grained PPO has a lower total error rate than the SFT policy on {rl_wins} of {n} seed(s)",
    ]
    if "grpo_fine_grained" in policies:
        gfg, ghol = (policies[k]["per_seed_total_error_rate"] for k in GRPO_METHODS)
        lines.append(f"fine-grained GRPO has a lower oracle total error rate than holistic GRPO on "
                     f"{sum(f < h for f, h in zip(gfg, ghol))} of {n} seed(s)")  # fmt: skip
    if SHARED_METHOD in policies:
        shared = policies[SHARED_METHOD]["per_seed_total_error_rate"]
        lines.append(
            f"with the shared-backbone reward model: total error rate {policies[SHARED_METHOD]['total_error_rate']:.3f} "
            f"vs {policies['fine_grained']['total_error_rate']:.3f} with separate reward models (lower on "
            f"{sum(a < b for a, b in zip(shared, fg))} of {n} seed(s)), below holistic on {sum(a < h for a, h in zip(shared, hol))} of {n}"
        )
    return "\n".join(lines)


def write_plots(out: Path, seeds: list[int], runs: tuple[str, ...] = METHODS) -> list[Path]:
    """Per-category training curves (reward-model judgements logged by PPO), fine-grained vs holistic."""
    from .plots import plot_training_curves

    return plot_training_curves({method: [run_dir(out, method, s) for s in seeds] for method in runs}, out)


# 4b. Offline preference optimisation (algorithms=[...]) ----------------------------------------------
DPO_ALGORITHMS = ("dpo_holistic", "dpo_completeness_corrections", "ddpo")


def dpo_data_overrides(algorithm: str, files: dict[str, Path]) -> list[str]:
    """The annotation files each offline run trains on (same annotation budget as the reward models), and
    the matching held-out files (empty ones left out: the run then holds out part of its training data)."""
    train, corrections, held_out, loss = {
        "dpo_holistic": (["holistic_train"], [], ["holistic_eval"], "sigmoid"),
        "dpo_completeness_corrections": (["completeness_train"], ["spans_train"], ["completeness_eval", "spans_eval"], "sigmoid"),
        "ddpo": ([], ["spans_train"], ["spans_eval"], "ddpo"),
    }[algorithm]  # fmt: skip

    def listed(names: list[str]) -> str:
        return "[" + ",".join(f"'{files[n]}'" for n in names if files[n].stat().st_size) + "]"

    out = [f"dpo.loss={loss}", f"data.train={listed(train) if train else 'null'}",
           f"data.corrections={listed(corrections) if corrections else 'null'}"]  # fmt: skip
    if any(files[n].stat().st_size for n in held_out):
        out.append(f"data.eval={listed(held_out)}")
    return out


def stage_dpo(cfg: DictConfig, out: Path, seed: int, algorithm: str, files: dict[str, Path], policy_dir: Path) -> tuple[Path, float]:
    """One offline run from the SFT policy: (its final/, training wall seconds, kept in train_seconds.json)."""
    import json

    from .rl.dpo import DPOTrainer

    run_dir = out / "dpo" / f"{algorithm}-seed{seed}"
    timing = run_dir / "train_seconds.json"
    if not (run_dir / "final").is_dir() or not timing.is_file():
        resume = ["resume=true"] if (run_dir / "checkpoints").is_dir() else ["overwrite=true"]
        started = time.perf_counter()
        overrides = [f"output_dir={run_dir}", f"seed={seed}", *resume, "policy=pretrained",
                     f"policy.name_or_path={policy_dir}", *dpo_data_overrides(algorithm, files), *cfg.dpo_overrides]
        run_stage("dpo", overrides, f"{algorithm}, seed {seed}", lambda dpo_cfg: DPOTrainer(dpo_cfg).train())
        atomic_write_json(timing, {"seconds": time.perf_counter() - started})
    return run_dir / "final", float(json.loads(timing.read_text(encoding="utf-8"))["seconds"])


def run_demo(cfg: DictConfig) -> dict:
    """Every stage (each skipped when its outputs exist), then ``results.json`` and the plots; returns the results."""
    out = Path(cfg.output_dir)
    seeds = seed_list(cfg.seeds)
    started = time.perf_counter()
    policy_dir = stage_sft(cfg, out)
    files = stage_annotate(cfg, out, policy_dir)
    rm_dirs = stage_reward_models(cfg, out, files)
    per_seed = {}
    offline_seconds: dict[str, list[float]] = {a: [] for a in cfg.get("algorithms", ()) if a in DPO_ALGORITHMS}
    for seed in seeds:
        finals = {m: stage_ppo(cfg, out, seed, m, rm_dirs, policy_dir) for m in methods(cfg)}
        for algorithm in offline_seconds:
            finals[algorithm], seconds = stage_dpo(cfg, out, seed, algorithm, files, policy_dir)
            offline_seconds[algorithm].append(seconds)
        per_seed[seed] = stage_evaluate(cfg, out, seed, {"sft": policy_dir, **finals})
    policies = aggregate(per_seed)
    for algorithm, seconds in offline_seconds.items():  # wall time of the offline runs (PPO's: its tensorboard)
        policies[algorithm]["train_seconds"] = statistics.fmean(seconds)
    results = {
        "seeds": seeds,
        "episodes": episodes_per_run(out, seeds, methods(cfg)),
        "policies": policies,
        "verdict": verdict(policies),
        "seconds": time.perf_counter() - started,
        "versions": library_versions(),
        "machine": machine_description(),
        "config": to_container(cfg),
    }
    plots = write_plots(out, seeds, methods(cfg))
    results["plots"] = [p.name for p in plots]
    atomic_write_json(out / "results.json", results)
    return results


def episodes_per_run(out: Path, seeds: list[int], runs: tuple[str, ...] = METHODS) -> int:
    """Episodes (sampled responses) each PPO run trained on, read from its saved config."""
    from omegaconf import OmegaConf

    counts = set()
    for method in runs:
        for s in seeds:
            run_cfg = OmegaConf.load(run_dir(out, method, s) / "config.yaml")
            counts.add(int(run_cfg.ppo.iterations) * int(run_cfg.ppo.batch_size) * int(run_cfg.ppo.get("samples_per_prompt", 1)))
    if len(counts) != 1:
        raise FinegrainedError(f"PPO runs trained on different numbers of episodes: {sorted(counts)}")
    return counts.pop()
