"""``finegrained bench bench.algorithm=dpo``: seconds per DPO optimizer step at the bench's shapes.

``bench_dpo(cfg, policy_dir)`` takes the bench command's composed config (``conf/bench.yaml``) and the policy
the PPO bench builds (``finegrained.bench.build_policy_dir``: GPT-2 style, ``bench.n_layer`` x ``bench.n_embd``,
``bench.n_head`` heads, a tokenizer trained to ``bench.vocab_size`` tokens), ``bench.batch_size`` pairs per
step, each side a prompt of ``PROMPT_TOKENS`` (64) tokens and a completion of ``bench.response_length`` tokens
(EOS last); the token ids are random, so the step's cost is all there is to measure. The
DPO trainer itself runs the steps (``DPOTrainer.train_step``: policy forward and backward on 2B rows, the
frozen reference's forward, AdamW), ``bench.lora_r``, ``bench.bf16`` and ``bench.device`` as in the PPO bench.

Writes ``output_dir/bench.json``: ``seconds_per_iteration`` (median seconds per optimizer step after the
first, a warm-up), ``iteration_seconds``, ``phases`` (``ref_value_forward``: the reference's forward;
``update``: the rest of the step), ``tokens_per_second`` (completion tokens of both sides per second),
``peak_rss_mb``, ``model_state_mb`` (policy, reference, optimizer state, total), ``bare_seconds``,
``bare_phases`` and ``overhead_factor`` (null: no bare measurement for DPO) and the config: the fields
``finegrained bench`` prints.
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
from omegaconf import DictConfig

from ..config import compose, library_versions, log, machine_description, to_container
from ..io import atomic_write_json
from .dpo_data import EncodedPair

PROMPT_TOKENS = 64


def random_pairs(n: int, vocab_size: int, completion_tokens: int, eos: int, gamma: float, seed: int) -> list[EncodedPair]:
    """``n`` pairs of fixed shapes: a shared prompt of ``PROMPT_TOKENS`` random ids, two completions of
    ``completion_tokens - 1`` random ids and EOS; dense weights with a fifth of the tokens at ``gamma``."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = [rng.randrange(vocab_size) for _ in range(PROMPT_TOKENS)]
        sides = [[rng.randrange(vocab_size) for _ in range(completion_tokens - 1)] + [eos] for _ in range(2)]
        weights = [[gamma if rng.random() < 0.2 else 1.0 for _ in range(completion_tokens)] for _ in range(2)]
        pairs.append(EncodedPair(prompt + sides[0], PROMPT_TOKENS, weights[0], prompt + sides[1], PROMPT_TOKENS, weights[1]))
    return pairs


def model_state_mb(trainer) -> dict[str, float]:
    """MB of the policy's weights, the reference's (0 with LoRA: the policy with adapters off) and the
    optimizer state: the memory that does not grow with the batch."""

    def size(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    policy = trainer.accelerator.unwrap_model(trainer.policy)
    sizes = {
        "policy": size(policy.parameters()),
        "reference": size(trainer.reference.parameters()) if trainer.reference is not None else 0.0,
        "optimizer": size(v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)),
    }
    return {**sizes, "total": sum(sizes.values())}


def bench_dpo(cfg: DictConfig, policy_dir: str | Path, loss: str = "sigmoid") -> dict:
    """Time ``bench.iterations`` DPO optimizer steps of the policy in ``policy_dir`` (the bench's: its tokenizer
    trained to ``bench.vocab_size``; ``finegrained.bench.run_bench`` builds it) with ``loss`` (sigmoid, ipo or
    ddpo); writes and returns bench.json's contents (see the module docstring)."""
    from .dpo import DPOTrainer

    b = cfg.bench
    out = Path(cfg.output_dir)
    with tempfile.TemporaryDirectory(prefix="finegrained-bench-dpo-") as tmp:
        root = Path(tmp)
        log(f"[bench] DPO ({loss}): {b.n_layer} layers x {b.n_embd}, vocabulary {b.vocab_size}, {b.batch_size} pairs of "
            f"{PROMPT_TOKENS} + {b.response_length} tokens")  # fmt: skip
        dpo_cfg = compose("dpo", [
            "policy=pretrained", f"policy.name_or_path={policy_dir}", f"output_dir={root / 'run'}", f"seed={cfg.seed}",
            f"dpo.loss={loss}", f"dpo.batch_size={b.batch_size}", "data.builtin.n_prompts=8", "data.eval_fraction=0",
            f"lora.r={b.lora_r}", f"bf16={str(bool(b.bf16)).lower()}", "log.progress=false", "log.report_to=[]",
            "accelerate.cpu=" + ("null" if b.device == "auto" else "true"),
        ])  # fmt: skip
        trainer = DPOTrainer(dpo_cfg)
        eos = trainer.tokenizer.eos_token_id
        trainer.train_data = random_pairs(b.batch_size * b.iterations, b.vocab_size, b.response_length, eos,
                                          dpo_cfg.dpo.gamma, cfg.seed)  # fmt: skip
        reference_seconds = [0.0]
        timed_reference = trainer.reference_logprobs

        def reference_logprobs(batch):
            started = time.perf_counter()
            result = timed_reference(batch)
            reference_seconds[0] += time.perf_counter() - started
            return result

        trainer.reference_logprobs = reference_logprobs
        step_seconds, ref_seconds = [], []
        for i in range(b.iterations):
            reference_seconds[0] = 0.0
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            trainer.train_step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - started)
            ref_seconds.append(reference_seconds[0])
            log(f"[bench] step {i + 1}/{b.iterations}: {step_seconds[-1]:.3f} s")
        state_mb = model_state_mb(trainer)
    timed = slice(1, None) if b.iterations > 1 else slice(None)
    seconds = statistics.median(step_seconds[timed])
    reference = statistics.median(ref_seconds[timed])
    result = {
        "algorithm": "dpo", "loss": loss,
        "seconds_per_iteration": seconds, "iteration_seconds": step_seconds,
        "phases": {"ref_value_forward": reference, "update": seconds - reference},
        "unphased_seconds": 0.0,  # the two phases cover the whole step
        "bare_seconds": None, "bare_phases": None, "overhead_factor": None,
        "model_state_mb": state_mb,
        "tokens_per_second": 2 * b.batch_size * b.response_length / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": library_versions(), "machine": machine_description(), "python": sys.version.split()[0],
        "config": to_container(cfg),
    }  # fmt: skip
    atomic_write_json(out / "bench.json", result)
    return result
