"""``finegrained bench``: how much of a PPO iteration is model work, phase by phase.

Builds a GPT-2 style policy (and value and reference copies) and reward models of the same size from
config, runs ``bench.iterations`` PPO iterations with fixed-length responses, and writes
``output_dir/bench.json``:

- ``seconds_per_iteration``: median wall time of the iterations after the first;
- ``phases``: median seconds per iteration in generate, segment, score, place, ref_value_forward,
  advantage, update;
- ``unphased_seconds``: the median wall time of an iteration spent outside every phase timer;
- ``bare_seconds``: in the same process, the same models doing only the unavoidable work of one
  iteration: sampling the same number of tokens with a KV cache in a plain loop (``bare_generate``), the
  reward models' forward passes on the exact tensors the scorer gives them, the policy, reference and value
  forward passes on the joint sequences, and the forward, backward and optimizer steps of the update
  (``bare_phases`` splits it); measured ``bench.bare_repeats`` times, alternating with the last iterations
  so both see the same machine load; ``overhead_factor`` = seconds_per_iteration / bare_seconds;
- ``model_state_mb``: MB of weights per model (policy, reference, value, reward models) and of optimizer
  state, the memory that does not grow with the batch;
- ``tokens_per_second`` (generated tokens per second of iteration), ``peak_rss_mb`` (the process's
  maximum resident set, model building included) and the resolved config.

``bench.profile=true`` runs one more iteration under cProfile and writes ``output_dir/profile.txt``.
``bench.shared_value=true`` (value head on the policy's trunk), ``bench.lora_r=R`` (LoRA adapters, reference =
adapters off), ``bench.shared_rm=true`` (fine-grained: one reward model backbone with a head per category,
one forward pass for all three) and ``bench.bf16=true`` (bf16 autocast) measure the options that cut the work; the bare cost
then uses the same models and precision. ``scripts/bench_compare.sh`` runs this side by side with trl's
PPOTrainer; ``scripts/bench_scaling.sh`` makes the README's scaling table.
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

from .config import compose, library_versions, log, machine_description, to_container
from .errors import FinegrainedError
from .io import atomic_write_json, atomic_write_text

SYLLABLES = "ka lo mi ra te su vin dor pel qua zen fi bo nu sha tri gle om ax ur".split()


def synthetic_corpus(n_words: int, seed: int) -> list[str]:
    """Pseudo-words with a Zipf-like frequency: rich enough for a BPE vocabulary of several thousand."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(20000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    words = rng.choices(vocabulary, weights=weights, k=n_words)
    return [" ".join(words[i : i + 40]) + "." for i in range(0, n_words, 40)]


def build_policy_dir(b: DictConfig, root: Path, seed: int) -> tuple[Path, object]:
    """``root/policy``: a GPT-2 style policy of the bench's shape with a tokenizer trained to ``b.vocab_size`` on
    built-in text; returns (its directory, the tokenizer)."""
    from .models.tiny import tiny_causal_lm, train_tokenizer
    from .tasks.synthetic_qa import prompts

    texts = [r["prompt"] + " " + r["reference"] for r in prompts("train", n=500)] + synthetic_corpus(400_000, seed)
    tokenizer = train_tokenizer(texts, vocab_size=b.vocab_size)
    policy = tiny_causal_lm(tokenizer, n_layer=b.n_layer, n_embd=b.n_embd, n_head=b.n_head, n_positions=512, seed=seed)
    policy_dir = root / "policy"
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    return policy_dir, tokenizer


def build_models(b: DictConfig, root: Path, seed: int) -> tuple[str, dict]:
    """Save a policy dir and reward-model dirs under ``root``; returns (policy dir, reward config)."""
    from .rewards.directory import init_reward_model_dir
    from .schema import load_schema

    policy_dir, tokenizer = build_policy_dir(b, root, seed)
    schema = load_schema("synthetic_qa")
    names = ["holistic"] if b.mode == "holistic" else ["relevance", "factuality", "completeness"]
    categories = {}
    if b.get("shared_rm", False) and b.mode == "fine_grained":
        from .rewards.directory import init_joint_reward_model_dir

        directory = init_joint_reward_model_dir(
            [schema.category(n) for n in names], root / "rm-joint", tokenizer, n_layer=b.n_layer, hidden=b.n_embd,
            n_head=b.n_head, max_length=512, segmentation=schema.segmentation, seed=seed,
        )  # fmt: skip
        return str(policy_dir), {"span_mode": "hard", "categories": {n: {"model": str(directory), "weight": 1.0} for n in names}}
    for name in names:
        directory = init_reward_model_dir(
            schema.category(name), root / f"rm-{name}", tokenizer, n_layer=b.n_layer, hidden=b.n_embd,
            n_head=b.n_head, max_length=512, segmentation=schema.segmentation, seed=seed,
        )  # fmt: skip
        categories[name] = {"model": str(directory), "weight": 1.0}
    return str(policy_dir), {"span_mode": "hard", "categories": categories}


# bench.algorithm=grpo|rloo: bench.batch_size episodes as prompts x this many samples
CRITIC_FREE_SAMPLES = 4


def bench_algorithm(b: DictConfig) -> str:
    return b.get("algorithm", "ppo")


def ppo_config(cfg: DictConfig, policy_dir: str, reward: dict, run_dir: Path) -> DictConfig:
    b = cfg.bench
    minibatch = max(1, b.batch_size // b.minibatches)
    algorithm = bench_algorithm(b)
    samples = 1 if algorithm == "ppo" else CRITIC_FREE_SAMPLES
    ppo_cfg = compose(algorithm, [
        "policy=pretrained", f"policy.name_or_path={policy_dir}", f"output_dir={run_dir}", "overwrite=true",
        f"seed={cfg.seed}", f"ppo.iterations={b.iterations}", f"ppo.batch_size={b.batch_size // samples}",
        *([f"ppo.samples_per_prompt={samples}"] if samples > 1 else []),
        f"ppo.minibatch_size={minibatch}", f"ppo.epochs={b.ppo_epochs}", f"generation.max_new_tokens={b.response_length}",
        f"generation.min_new_tokens={b.response_length}", "checkpoint.every=0", "log.progress=false", "log.samples_every=0",
        f"value.shared={str(bool(b.shared_value)).lower()}", f"lora.r={b.lora_r}", f"bf16={str(bool(b.bf16)).lower()}",
        "accelerate.cpu=" + ("null" if b.device == "auto" else "true"),
    ])  # fmt: skip
    ppo_cfg.reward = OmegaConf.create(reward)
    return ppo_cfg


def _capture_judge_inputs(trainer, prompts: list[str], texts: list[str]) -> list[tuple[torch.nn.Module, list[dict]]]:
    """The exact tensors each reward model receives when the scorer judges ``texts`` (captured by a
    forward pre-hook during one untimed scorer call), so the bare cost replays the same shapes."""
    captured = []
    handles = []
    seen: set[int] = set()
    for category in trainer.scorer.categories:
        model = getattr(category.judge, "model", None)
        if not isinstance(model, torch.nn.Module) or id(model) in seen:
            continue  # a rule-based judge has no model work; a joint model's categories share one
        seen.add(id(model))
        calls: list[dict] = []
        captured.append((model, calls))
        handles.append(model.register_forward_pre_hook(lambda _m, args, kwargs, calls=calls: calls.append(dict(kwargs)), with_kwargs=True))
    try:
        trainer.scorer(prompts, texts)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _cache_kwargs(out) -> dict:
    """The KV cache of a model output, as the keyword the next forward call takes: transformers 5.x
    names it ``cache``; earlier versions ``past_key_values``."""
    if getattr(out, "cache", None) is not None:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


@torch.no_grad()
def bare_generate(policy, query_ids: torch.Tensor, query_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Sample exactly ``length`` tokens per row with a KV cache and nothing else (no logits processors,
    no stopping criteria): the floor for the generate phase. (B, P) prompts -> (B, length) tokens."""
    mask = query_mask.long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = policy(input_ids=query_ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    next_position = position_ids[:, -1:] + 1
    tokens = []
    ones = mask.new_ones(mask.shape[0], 1)
    for _ in range(length):
        token = torch.multinomial(torch.softmax(out.logits[:, -1].float(), dim=-1), 1)  # (B, 1)
        tokens.append(token)
        mask = torch.cat([mask, ones], dim=1)
        out = policy(input_ids=token, attention_mask=mask, position_ids=next_position, use_cache=True, **_cache_kwargs(out))
        next_position = next_position + 1
    return torch.cat(tokens, dim=1)


def bare_iteration_seconds(trainer, prompts: list[str]) -> dict[str, float]:
    """The unavoidable model work of one iteration on the trainer's own models, nothing else.

    Returns seconds for ``generate`` (KV-cache sampling of the same number of tokens), ``forward`` (every
    reward model on the exact inputs the scorer gives it, then policy, reference and value on the joint
    (B, P + T) sequences) and ``update`` (forward, backward and optimizer step per minibatch and epoch, with
    the LM head only over the response positions, as the trainer does), and their ``total``.
    """
    from .rl.generation import encode_prompts
    from .rl.functional import logprobs_from_logits
    from .rl.rollout import joint_inputs

    cfg = trainer.cfg
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    device = trainer.accelerator.device
    length = cfg.generation.max_new_tokens
    query_ids, query_mask = encode_prompts(trainer.tokenizer, prompts, device)
    policy.eval()
    autocast = trainer.accelerator.autocast  # bf16 when the trainer uses it, as the trainer does
    started = time.perf_counter()
    with autocast():
        response_ids = bare_generate(policy, query_ids, query_mask, length)
    generate_seconds = time.perf_counter() - started
    policy.train()
    response_mask = torch.ones_like(response_ids, dtype=torch.bool)
    # Reward-model inputs are prepared outside the timed region: tokenising text is not model work.
    texts = trainer.tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    judge_inputs = _capture_judge_inputs(trainer, prompts, texts)
    ids, mask, position_ids = joint_inputs(query_ids, query_mask, response_ids, response_mask)
    attention = mask.long()
    T, P = length, query_ids.shape[1]
    started = time.perf_counter()
    with torch.no_grad():
        for model, calls in judge_inputs:
            for kwargs in calls:
                model(**kwargs)
    with torch.no_grad(), autocast():
        policy(input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=T + 1)
        if trainer.reference is not None:
            trainer.reference(input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=T + 1)
        else:  # LoRA: the reference is the policy with its adapters off
            with policy.disable_adapter():
                policy(input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=T + 1)
        if trainer.value is not None and not cfg.value.shared:
            trainer.value(ids, attention, position_ids)
    forward_seconds = time.perf_counter() - started
    B, mb = ids.shape[0], max(1, min(cfg.ppo.minibatch_size, ids.shape[0]))
    shared = bool(cfg.value.shared) and trainer.value is not None
    started = time.perf_counter()
    for _ in range(cfg.ppo.epochs):
        for i in range(0, B, mb):
            rows = slice(i, i + mb)
            with autocast():
                out = trainer.policy(input_ids=ids[rows], attention_mask=attention[rows], position_ids=position_ids[rows],
                                     logits_to_keep=T + 1, output_hidden_states=shared)  # fmt: skip
                logprobs = logprobs_from_logits(out.logits[:, :-1].float(), response_ids[rows])
                if trainer.value is None:  # critic-free: no value model
                    values = torch.zeros(())
                elif shared:
                    values = trainer.value(out.hidden_states[-1][:, P - 1 : -1])
                else:
                    values = trainer.value(ids[rows], attention[rows], position_ids[rows])[:, P - 1 : -1]
            # the same tensor work as the PPO losses, reduced to its cheapest form
            loss = -logprobs.mean() + values.pow(2).mean()
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    update_seconds = time.perf_counter() - started
    return {
        "generate": generate_seconds, "forward": forward_seconds, "update": update_seconds,
        "total": generate_seconds + forward_seconds + update_seconds,
    }  # fmt: skip


def check_bench_config(b: DictConfig) -> None:
    """Bad overrides are user errors, not tracebacks from deep inside model construction."""
    if b.mode not in ("holistic", "fine_grained"):
        raise FinegrainedError(f"bench.mode={b.mode}: expected holistic or fine_grained")
    for key in ("n_layer", "n_embd", "n_head", "vocab_size", "batch_size", "response_length", "ppo_epochs", "minibatches", "iterations"):
        value = b.get(key)
        if not isinstance(value, int) or value < 1:
            raise FinegrainedError(f"bench.{key}={value}: expected a positive integer")
    if b.n_embd % b.n_head:
        raise FinegrainedError(f"bench.n_embd={b.n_embd} is not divisible by bench.n_head={b.n_head}")
    if b.minibatches > b.batch_size:
        raise FinegrainedError(f"bench.minibatches={b.minibatches} exceeds bench.batch_size={b.batch_size}")
    if b.vocab_size < 300:
        raise FinegrainedError(f"bench.vocab_size={b.vocab_size}: a byte-level tokenizer needs at least 300 entries")
    if b.get("device", "auto") not in ("auto", "cpu"):
        raise FinegrainedError(f"bench.device={b.device}: expected auto (GPU when available) or cpu")
    if b.get("lora_r", 0) < 0:
        raise FinegrainedError(f"bench.lora_r={b.lora_r}: expected 0 (off) or a positive rank")
    if b.get("shared_rm", False) and b.mode != "fine_grained":
        raise FinegrainedError("bench.shared_rm=true needs bench.mode=fine_grained (holistic has one reward model)")
    if bench_algorithm(b) in ("grpo", "rloo") and b.batch_size % CRITIC_FREE_SAMPLES:
        raise FinegrainedError(f"bench.batch_size={b.batch_size}: bench.algorithm={bench_algorithm(b)} samples "
                               f"{CRITIC_FREE_SAMPLES} per prompt, so the batch must be a multiple of {CRITIC_FREE_SAMPLES}")
    if b.get("bare_repeats", 0) < 0:
        raise FinegrainedError(f"bench.bare_repeats={b.bare_repeats}: expected 0 or more")


def profile_iteration(trainer, path: Path, top: int = 45) -> None:
    """One more iteration under cProfile; the functions with the most own and cumulative time go to ``path``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    trainer.run_iteration()
    profiler.disable()
    report = io.StringIO()
    for order in ("tottime", "cumulative"):
        report.write(f"=== one PPO iteration, top {top} by {order} ===\n")
        pstats.Stats(profiler, stream=report).sort_stats(order).print_stats(top)
    atomic_write_text(path, report.getvalue())


def model_state_mb(trainer) -> dict[str, float]:
    """MB held by the weights of each model the trainer keeps and by the optimizer's state: the memory that
    does not depend on batch size (activations do, and dominate peak RSS at small model sizes)."""
    seen: set[int] = set()

    def size(tensors) -> float:
        total = 0
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:  # tied weights count once
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total / 2**20

    unwrap = trainer.accelerator.unwrap_model
    judges = [c.judge.model for c in trainer.scorer.categories if isinstance(getattr(c.judge, "model", None), torch.nn.Module)]
    state = {
        "policy": size(unwrap(trainer.policy).parameters()),
        "reference": size(trainer.reference.parameters()) if trainer.reference is not None else 0.0,
        "value": size(unwrap(trainer.value).parameters()) if trainer.value is not None else 0.0,
        "reward_models": size(p for model in judges for p in model.parameters()),
        "optimizer": size(v for s in trainer.optimizer.state.values() for v in s.values()),
    }
    state["total"] = sum(state.values())
    return state


def run_bench(cfg: DictConfig) -> dict:
    from .rl.trainer import PHASES, build_trainer

    b = cfg.bench
    check_bench_config(b)
    if bench_algorithm(b) == "dpo":  # offline: optimizer steps on fixed pairs, no rollout phases
        from .rl.dpo_bench import bench_dpo

        with tempfile.TemporaryDirectory(prefix="finegrained-bench-dpo-") as tmp:
            log(f"[bench] building the policy: {b.n_layer} layers x {b.n_embd}, vocabulary {b.vocab_size}")
            policy_dir, _ = build_policy_dir(b, Path(tmp), cfg.seed)
            return bench_dpo(cfg, policy_dir)
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="finegrained-bench-") as tmp:
        root = Path(tmp)
        log(f"[bench] building {b.mode} models: {b.n_layer} layers x {b.n_embd}, vocabulary {b.vocab_size}")
        policy_dir, reward = build_models(b, root, cfg.seed)
        trainer = build_trainer(ppo_config(cfg, policy_dir, reward, root / "run"), bench_algorithm(b))
        iteration_seconds, phases = [], {p: [] for p in PHASES}
        bare_runs: list[dict[str, float]] = []
        # Bare measurements alternate with the last iterations so that both see the same machine load.
        bare_after = set(range(max(1, b.iterations - b.bare_repeats), b.iterations)) if b.bare_repeats else set()
        if b.bare_repeats and not bare_after:
            bare_after = {0}
        for i in range(b.iterations):
            started = time.perf_counter()
            stats = trainer.run_iteration()
            iteration_seconds.append(time.perf_counter() - started)
            for p in PHASES:
                phases[p].append(stats[f"time/{p}"])
            log(f"[bench] iteration {i + 1}/{b.iterations}: {iteration_seconds[-1]:.2f} s")
            if i in bare_after:
                bare_runs.append(bare_iteration_seconds(trainer, trainer.next_prompts()))
                log(f"[bench] bare model work: {bare_runs[-1]['total']:.2f} s")
        state_mb = model_state_mb(trainer)
        if b.profile:
            profile_iteration(trainer, out / "profile.txt")
            log(f"[bench] wrote {out / 'profile.txt'}")
    timed = slice(1, None) if b.iterations > 1 else slice(None)
    seconds = statistics.median(iteration_seconds[timed])
    phase_medians = {p: statistics.median(v[timed]) for p, v in phases.items()}
    unphased = [total - sum(phases[p][i] for p in PHASES) for i, total in enumerate(iteration_seconds)]
    bare = statistics.median(r["total"] for r in bare_runs) if bare_runs else None
    result = {
        "seconds_per_iteration": seconds,
        "iteration_seconds": iteration_seconds,
        "phases": phase_medians,
        # wall time of an iteration outside every phase timer (decoding, bookkeeping, logging)
        "unphased_seconds": statistics.median(unphased[timed]),
        "bare_seconds": bare,
        "bare_phases": {k: statistics.median(r[k] for r in bare_runs) for k in ("generate", "forward", "update")} if bare_runs else None,
        "overhead_factor": seconds / bare if bare else None,
        "tokens_per_second": b.batch_size * b.response_length / seconds,
        "model_state_mb": state_mb,
        "versions": library_versions(),
        "machine": machine_description(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "config": to_container(cfg),
    }
    atomic_write_json(out / "bench.json", result)
    return result
