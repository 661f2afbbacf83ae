"""``finegrained bench``: how much of a PPO iteration is model work, phase by phase.

Builds a GPT-2 style policy (and value and reference copies) and reward models of the same size from
config, runs ``bench.iterations`` PPO iterations with fixed-length responses, and writes
``output_dir/bench.json``:

- ``seconds_per_iteration``: median wall time of the iterations after the first;
- ``phases``: median seconds per iteration in generate, segment, score, place, ref_value_forward,
  advantage, update;
- ``bare_seconds``: in the same process, the same models doing only the unavoidable work of one
  iteration: generating the same number of tokens with KV cache, the forward passes of the reward
  models, the policy, the reference and the value model on the same shapes, and the forward, backward
  and optimizer steps of the update; ``overhead_factor`` = seconds_per_iteration / bare_seconds;
- ``tokens_per_second`` (generated tokens per second of iteration), ``peak_rss_mb`` and the config.
"""

from __future__ import annotations

import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import compose, compose_from_argv, log, to_container
from .io import atomic_write_json

SYLLABLES = "ka lo mi ra te su vin dor pel qua zen fi bo nu sha tri gle om ax ur".split()


def synthetic_corpus(n_words: int, seed: int) -> list[str]:
    """Pseudo-words with a Zipf-like frequency: rich enough for a BPE vocabulary of several thousand."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(20000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    words = rng.choices(vocabulary, weights=weights, k=n_words)
    return [" ".join(words[i : i + 40]) + "." for i in range(0, n_words, 40)]


def build_models(b: DictConfig, root: Path, seed: int) -> tuple[str, dict]:
    """Save a policy dir and reward-model dirs under ``root``; returns (policy dir, reward config)."""
    from .models.tiny import tiny_causal_lm, train_tokenizer
    from .rewards.train import init_reward_model_dir
    from .schema import load_schema
    from .tasks.synthetic_qa import prompts

    texts = [r["prompt"] + " " + r["reference"] for r in prompts("train", n=500)] + synthetic_corpus(400_000, seed)
    tokenizer = train_tokenizer(texts, vocab_size=b.vocab_size)
    policy = tiny_causal_lm(tokenizer, n_layer=b.n_layer, n_embd=b.n_embd, n_head=b.n_head, n_positions=512, seed=seed)
    policy_dir = root / "policy"
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    schema = load_schema("synthetic_qa")
    names = ["holistic"] if b.mode == "holistic" else ["relevance", "factuality", "completeness"]
    categories = {}
    for name in names:
        directory = init_reward_model_dir(
            schema.category(name), root / f"rm-{name}", tokenizer, n_layer=b.n_layer, hidden=b.n_embd,
            n_head=b.n_head, max_length=512, segmentation=schema.segmentation, seed=seed,
        )  # fmt: skip
        categories[name] = {"model": str(directory), "weight": 1.0}
    return str(policy_dir), {"span_mode": "hard", "categories": categories}


def ppo_config(cfg: DictConfig, policy_dir: str, reward: dict, run_dir: Path) -> DictConfig:
    b = cfg.bench
    minibatch = max(1, b.batch_size // b.minibatches)
    ppo_cfg = compose("ppo", [
        "policy=pretrained", f"policy.name_or_path={policy_dir}", f"output_dir={run_dir}", "overwrite=true",
        f"seed={cfg.seed}", f"ppo.iterations={b.iterations}", f"ppo.batch_size={b.batch_size}",
        f"ppo.minibatch_size={minibatch}", f"ppo.epochs={b.ppo_epochs}", f"generation.max_new_tokens={b.response_length}",
        f"generation.min_new_tokens={b.response_length}", "checkpoint.every=0", "log.progress=false", "log.samples_every=0",
    ])  # fmt: skip
    ppo_cfg.reward = OmegaConf.create(reward)
    return ppo_cfg


def bare_iteration_seconds(trainer, prompts: list[str]) -> float:
    """The unavoidable model work of one iteration on the trainer's own models, nothing else."""
    from .rl.functional import logprobs_from_logits
    from .rl.rollout import joint_inputs, sample_responses

    cfg = trainer.cfg
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    length = cfg.generation.max_new_tokens
    # Inputs for the reward models, prepared outside the timed region.
    started = time.perf_counter()
    with torch.no_grad():
        query_ids, query_mask, response_ids, response_mask = sample_responses(
            policy, trainer.tokenizer, prompts, max_new_tokens=length, min_new_tokens=length
        )
    generate_seconds = time.perf_counter() - started
    texts = trainer.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    reward_inputs = []
    for category in trainer.scorer.categories:
        judge = category.judge
        enc = judge.tokenizer([p + " " + t for p, t in zip(prompts, texts)], return_tensors="pt", padding=True, truncation=True, max_length=judge.max_length)
        reward_inputs.append((judge.model, enc))
    ids, mask, position_ids = joint_inputs(query_ids, query_mask, response_ids, response_mask)
    started = time.perf_counter()
    with torch.no_grad():
        for model, enc in reward_inputs:
            model(**enc)
        trainer.policy(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids)
        trainer.reference(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids)
        trainer.value(ids, mask.long(), position_ids)
    forward_seconds = time.perf_counter() - started
    B, mb, P = ids.shape[0], max(1, cfg.ppo.minibatch_size), query_ids.shape[1]
    started = time.perf_counter()
    for _ in range(cfg.ppo.epochs):
        for i in range(0, B, mb):
            rows = slice(i, i + mb)
            logits = trainer.policy(input_ids=ids[rows], attention_mask=mask[rows].long(), position_ids=position_ids[rows]).logits
            values = trainer.value(ids[rows], mask[rows].long(), position_ids[rows])
            # the same tensor work as the PPO losses: token log-probs and a squared value error
            logprobs = logprobs_from_logits(logits[:, P - 1 : -1], response_ids[rows])
            loss = -logprobs.mean() + values[:, P - 1 : -1].pow(2).mean()
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    update_seconds = time.perf_counter() - started
    return generate_seconds + forward_seconds + update_seconds


def run_bench(cfg: DictConfig) -> dict:
    from .rl.trainer import PHASES, build_trainer

    b = cfg.bench
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="finegrained-bench-") as tmp:
        root = Path(tmp)
        log(f"[bench] building {b.mode} models: {b.n_layer} layers x {b.n_embd}, vocabulary {b.vocab_size}")
        policy_dir, reward = build_models(b, root, cfg.seed)
        trainer = build_trainer(ppo_config(cfg, policy_dir, reward, root / "run"))
        iteration_seconds, phases = [], {p: [] for p in PHASES}
        for i in range(b.iterations):
            started = time.perf_counter()
            stats = trainer.run_iteration()
            iteration_seconds.append(time.perf_counter() - started)
            for p in PHASES:
                phases[p].append(stats[f"time/{p}"])
            log(f"[bench] iteration {i + 1}/{b.iterations}: {iteration_seconds[-1]:.2f} s")
        timed = slice(1, None) if b.iterations > 1 else slice(None)
        seconds = statistics.median(iteration_seconds[timed])
        bare = None
        if b.bare:
            prompts = trainer.next_prompts()
            bare = statistics.median(bare_iteration_seconds(trainer, prompts) for _ in range(2))
    result = {
        "seconds_per_iteration": seconds,
        "iteration_seconds": iteration_seconds,
        "phases": {p: statistics.median(v[timed]) for p, v in phases.items()},
        "bare_seconds": bare,
        "overhead_factor": seconds / bare if bare else None,
        "tokens_per_second": b.batch_size * b.response_length / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "config": to_container(cfg),
    }
    atomic_write_json(out / "bench.json", result)
    return result


def main(argv: list[str]) -> int:
    cfg = compose_from_argv("bench", argv)
    if cfg is None:
        return 0
    r = run_bench(cfg)
    phases = ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
    print(f"seconds/iteration {r['seconds_per_iteration']:.3f} (bare {r['bare_seconds'] or float('nan'):.3f}, "
          f"overhead x{r['overhead_factor'] or float('nan'):.2f}); {r['tokens_per_second']:.0f} tokens/s; peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"phases (s/iteration): {phases}")
    log(f"[bench] wrote {Path(cfg.output_dir) / 'bench.json'}")
    return 0
