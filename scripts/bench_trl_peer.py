#!/usr/bin/env python3
"""The peer of ``finegrained bench``: trl's PPOTrainer (trl 1.12.0, ``trl.experimental.ppo``) on the same work.

Same random-init GPT-2 shapes for the policy, the reference, the reward and the value model; the same
tokenizer and prompts as ``finegrained bench``; fixed-length responses (no stop token, so generation runs
``response_length`` tokens); one minibatch of the whole batch, ``ppo_epochs`` epochs. trl lives in its own
virtual environment (its pins on transformers/accelerate must not touch the project's), so this script has
two halves run by two interpreters:

    # 1. with the project's venv: the tokenizer and prompts finegrained bench uses, for this size
    .venv/bin/python scripts/bench_trl_peer.py prepare --out /tmp/peer --vocab-size 8192 --n-prompts 96
    # 2. with trl's venv (see scripts/bench_compare.sh for how it is made)
    /work/trl-venv/bin/python scripts/bench_trl_peer.py run --inputs /tmp/peer --out /tmp/peer/result.json \\
        --n-layer 6 --n-embd 384 --n-head 6 --batch-size 16 --response-length 64 --ppo-epochs 4 --iterations 5

``run`` writes JSON with ``seconds_per_iteration`` (median of the iterations after the first, as
``finegrained bench``), ``iteration_seconds``, ``tokens_per_second``, ``peak_rss_mb`` and the settings.
An iteration is timed from one ``on_step_end`` callback to the next: generation, reference/value/reward
forwards, advantages, the PPO epochs and trl's own logging, i.e. everything its training loop does per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def prepare(args: argparse.Namespace) -> None:
    """Project venv: the tokenizer (trained as finegrained bench trains it) and the benchmark's prompts."""
    from omegaconf import OmegaConf

    from finegrained.bench import synthetic_corpus
    from finegrained.config import compose
    from finegrained.models.tiny import train_tokenizer
    from finegrained.rl.trainer import load_task_prompts
    from finegrained.tasks.synthetic_qa import prompts as task_prompts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The same texts and vocabulary size as finegrained.bench.build_models, so both see the same token counts.
    texts = [r["prompt"] + " " + r["reference"] for r in task_prompts("train", n=500)] + synthetic_corpus(400_000, args.seed)
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(out / "tokenizer")
    cfg = compose("bench", [f"seed={args.seed}"])
    prompts = load_task_prompts(OmegaConf.create({"task": cfg.task, "seed": args.seed}))
    rows = [prompts[i % len(prompts)] for i in range(args.n_prompts)]
    (out / "prompts.json").write_text(json.dumps(rows), encoding="utf-8")
    print(f"wrote {out / 'tokenizer'} and {len(rows)} prompts to {out / 'prompts.json'}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    """trl venv: build the four models, run trl's PPOTrainer for ``iterations`` batches, time each."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(args.seed)
    inputs = Path(args.inputs)
    tokenizer = AutoTokenizer.from_pretrained(inputs / "tokenizer")
    tokenizer.padding_side = "left"  # trl generates after the prompt: prompts are left-padded
    prompts = json.loads((inputs / "prompts.json").read_text(encoding="utf-8"))
    n_prompts = args.batch_size * args.iterations
    if len(prompts) < n_prompts:
        raise SystemExit(f"{inputs / 'prompts.json'} holds {len(prompts)} prompts, {n_prompts} needed")
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[:n_prompts]]
    dataset = Dataset.from_dict({"input_ids": ids})

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=512, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    policy = GPT2LMHeadModel(config)
    reference = copy.deepcopy(policy)
    scalar = copy.deepcopy(config)
    scalar.num_labels = 1
    reward = GPT2ForSequenceClassification(scalar)
    value = GPT2ForSequenceClassification(scalar)

    ppo_args = PPOConfig(
        output_dir=str(Path(args.out).parent / "trl-run"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=args.ppo_epochs,
        local_rollout_forward_batch_size=args.batch_size,
        response_length=args.response_length,
        stop_token=None,  # fixed-length responses: no early stop
        total_episodes=n_prompts,
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        # trl's PPOConfig defaults differ from TrainingArguments: gradient checkpointing on and bf16 on. The
        # same work as finegrained's defaults is fp32 without checkpointing (recomputing activations would
        # make the peer slower for a reason that is not its PPO loop).
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        disable_tqdm=True,
        logging_steps=10**9,
    )  # fmt: skip

    marks: list[float] = []

    class IterationClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

    peft_config = None
    if args.lora_r:
        # trl's own LoRA path (peft): no reference copy, the reference is the policy with its adapter disabled.
        # The same layers as finegrained's lora.r (every linear layer of the blocks, not the tied output head).
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                                 fan_in_fan_out=True, task_type="CAUSAL_LM")  # fmt: skip
        reference = None
    trainer = PPOTrainer(
        args=ppo_args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
        train_dataset=dataset, value_model=value, callbacks=[IterationClock()], peft_config=peft_config,
    )  # fmt: skip
    trainer.train()
    iteration_seconds = [b - a for a, b in zip(marks, marks[1:])]
    timed = iteration_seconds[1:] if len(iteration_seconds) > 1 else iteration_seconds
    seconds = statistics.median(timed)
    result = {
        "peer": "trl.experimental.ppo.PPOTrainer",
        "seconds_per_iteration": seconds,
        "iteration_seconds": iteration_seconds,
        "tokens_per_second": args.batch_size * args.response_length / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "versions": {name: __import__(name).__version__ for name in ("torch", "transformers", "trl", "accelerate")},
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
    }
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"trl PPO: {seconds:.3f} s/iteration (iterations {', '.join(f'{s:.2f}' for s in iteration_seconds)})")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("prepare", help="(project venv) write the tokenizer and prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-prompts", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=prepare)
    r = sub.add_parser("run", help="(trl venv) run trl's PPOTrainer and time it")
    r.add_argument("--inputs", required=True, help="the directory 'prepare' wrote")
    r.add_argument("--out", required=True, help="result JSON")
    r.add_argument("--n-layer", type=int, default=6)
    r.add_argument("--n-embd", type=int, default=384)
    r.add_argument("--n-head", type=int, default=6)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--response-length", type=int, default=64)
    r.add_argument("--ppo-epochs", type=int, default=4)
    r.add_argument("--iterations", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--lora-r", type=int, default=0, help="LoRA rank through peft (0: full fine-tuning); needs peft")
    r.add_argument("--bf16", action="store_true", help="trl's own default; off here to match finegrained's fp32")
    r.add_argument("--gradient-checkpointing", action="store_true",
                   help="trl's own default; off here to match finegrained's default")  # fmt: skip
    r.set_defaults(func=run)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
