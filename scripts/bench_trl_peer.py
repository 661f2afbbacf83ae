#!/usr/bin/env python3
"""The peers of ``finegrained bench``: trl's PPOTrainer, GRPOTrainer and DPOTrainer on the same work.

Three trainers, two trl versions, each in its own virtual environment (trl's pins on transformers and
accelerate must not touch the project's; scripts/bench_compare.sh makes both):

- ``run`` (PPO): trl 1.12.0, ``trl.experimental.ppo.PPOTrainer`` (trl 1.13 and later no longer ship PPO).
- ``grpo``: trl 1.16.0 (the newest on the package index on 2026-12-02), ``trl.GRPOTrainer``, generation with
  transformers' ``generate`` (no vLLM: ``use_vllm=False``, trl's default).
- ``dpo``: trl 1.16.0, ``trl.DPOTrainer``.

Same random-init GPT-2 shapes for every model (policy, reference, reward, value); the same tokenizer and
prompts as ``finegrained bench`` (``prepare`` writes them with the project's venv); fixed-length responses
(no stop token, so generation runs the full length); fp32 on the CPU unless ``--bf16``.

    # 1. with the project's venv: the tokenizer and prompts finegrained bench uses, for this size
    .venv/bin/python scripts/bench_trl_peer.py prepare --out /tmp/peer --vocab-size 8192 --n-prompts 96
    # 2a. PPO, with trl 1.12.0's venv
    ../trl-venv/bin/python scripts/bench_trl_peer.py run --inputs /tmp/peer --out /tmp/peer/ppo.json \\
        --n-layer 6 --n-embd 384 --n-head 6 --batch-size 16 --response-length 64 --ppo-epochs 4 --iterations 5
    # 2b. GRPO, with trl 1.16.0's venv: 16 prompts x 4 samples each, 64 tokens, 4 epochs
    ../trl-new-venv/bin/python scripts/bench_trl_peer.py grpo --inputs /tmp/peer --out /tmp/peer/grpo.json \\
        --prompts 16 --generations 4 --response-length 64 --epochs 4 --iterations 5
    # 2c. DPO, with trl 1.16.0's venv: 16 pairs per optimizer step, 32 prompt + 64 completion tokens
    ../trl-new-venv/bin/python scripts/bench_trl_peer.py dpo --inputs /tmp/peer --out /tmp/peer/dpo.json \\
        --batch-size 16 --prompt-length 32 --completion-length 64 --steps 6

Each writes JSON with ``seconds_per_iteration`` (PPO, GRPO: median of the iterations after the first, as
``finegrained bench``) or ``seconds_per_step`` (DPO: median of the optimizer steps after the first),
the per-iteration (per-step) seconds, ``peak_rss_mb`` (``ru_maxrss``: the process's maximum resident set,
model building included, as finegrained bench reports it), the library versions and the settings.
Times come from trl's ``on_step_end`` callbacks, so they hold everything its training loop does.

PPO: an iteration is one batch: generation, reference/value/reward forwards, advantages, the PPO epochs
over one minibatch of the whole batch and trl's own logging.

GRPO, equal work: the same number of sampled completions (``--prompts`` x ``--generations``; finegrained's
``bench.batch_size`` prompts x ``bench.samples_per_prompt``) of the same forced length (64 new tokens, EOS
allowed only after ``--response-length`` tokens, as finegrained sets ``generation.min_new_tokens``), scored
by one random-init GPT-2 sequence reward model of the same shape on the decoded text, the same number of
optimisation epochs over them (trl's ``num_iterations``) in the same minibatch splits (``--minibatches``:
trl's ``steps_per_generation``, one optimizer step per minibatch, no gradient accumulation), and a
reference forward when ``--beta`` > 0 (finegrained's KL coefficient). An iteration is one generation plus
its ``epochs x minibatches`` optimizer steps (trl also runs one no-grad forward for the old log-probs
when ``num_iterations`` > 1, as finegrained's PPO-style update needs them too). trl defaults turned to
ours (each where it differs from finegrained's ppo/bench config):
  gradient_checkpointing  True  -> False   (finegrained's default; recomputation is not GRPO's work)
  bf16                    True  -> False   (fp32 as finegrained's default; --bf16 turns it on)
  learning_rate           1e-6  -> 5e-5    (finegrained's ppo.lr; no effect on time)
  beta (KL coefficient)   0.0   -> 0.05    (finegrained's kl.coef; 0 would drop the reference forward)
  loss_type               dapo  -> grpo    (per-sequence token mean; with fixed-length completions dapo,
                                            bnpo and grpo are the same loss up to a constant, same cost)
  generation min length   none  -> response length (generation_kwargs min_new_tokens)
  logging_steps           10    -> never   (trl's logging is not the method's work)
  disable_dropout         False -> True    (finegrained's policy sets every dropout to 0: rl/policy.py)
Left at trl's default because they equal ours: temperature 1.0, top_k 0, top_p 1.0, epsilon (clip) 0.2,
scale_rewards "group" (divide by the group's std), max_grad_norm 1.0, mask_truncated_completions False
(every completion is "truncated" at the forced length; masking them would zero the loss).

DPO, equal work: ``--batch-size`` preference pairs per optimizer step, each a ``--prompt-length`` token
prompt with a chosen and a rejected completion of ``--completion-length`` tokens (fixed lengths, token
ids drawn from the tokenizer's vocabulary, pre-tokenized: trl's one-off tokenization of text is skipped, so
the lengths are exact); policy and reference of the same random-init GPT-2 shape. Reference log-probs are
computed on the fly in every step (``precompute_ref_log_probs=False``, trl's default), as finegrained's
DPO does: one no-grad reference forward and one policy forward + backward over the 2 x batch sequences
per step. trl defaults turned: gradient_checkpointing True -> False, bf16 True -> False (``--bf16``),
learning_rate 1e-6 -> 5e-5, logging never; left: loss_type sigmoid, beta 0.1, disable_dropout True
(finegrained's policy runs without dropout too; ``--keep-dropout`` keeps GPT-2's 0.1), max_length set to
prompt + completion (no truncation).
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


def load_inputs(args: argparse.Namespace, n_prompts: int):
    """trl venv: the tokenizer (left padding: trl generates after the prompt) and ``n_prompts`` prompts."""
    from transformers import AutoTokenizer

    inputs = Path(args.inputs)
    tokenizer = AutoTokenizer.from_pretrained(inputs / "tokenizer")
    tokenizer.padding_side = "left"
    prompts = json.loads((inputs / "prompts.json").read_text(encoding="utf-8"))
    if len(prompts) < n_prompts:
        raise SystemExit(f"{inputs / 'prompts.json'} holds {len(prompts)} prompts, {n_prompts} needed (prepare --n-prompts)")
    return tokenizer, prompts[:n_prompts]


def gpt2_config(tokenizer, args: argparse.Namespace, num_labels: int | None = None):
    """The GPT-2 shape of every model here, as finegrained.models.tiny builds it (GPT-2's dropout 0.1);
    ``num_labels`` makes it a sequence-classification (reward or value) config."""
    from transformers import GPT2Config

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=512, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    if num_labels is not None:
        config.num_labels = num_labels
    return config


def step_clock(marks: list[float]):
    """A trl callback appending a perf_counter mark at the start of training and after every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

    return StepClock()


def trainer_defaults(args: argparse.Namespace, run_dir: Path) -> dict:
    """TrainingArguments every peer shares: CPU (or the GPU when ``--device auto``), no checkpoints, no
    trackers, no progress bars, logging never (trl's logging is not the method's work), trl's
    gradient-checkpointing and bf16 defaults turned to finegrained's (off; ``--bf16`` turns bf16 on)."""
    return {
        "output_dir": str(run_dir), "report_to": [], "save_strategy": "no", "use_cpu": args.device == "cpu",
        "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, "seed": args.seed,
        "disable_tqdm": True, "logging_steps": 10**9, "gradient_accumulation_steps": 1,
    }  # fmt: skip


def write_result(args: argparse.Namespace, result: dict, unit: str, seconds: list[float]) -> dict:
    """Add the median of ``seconds`` after the first (a warm-up) as ``seconds_per_<unit>``, the peak RSS,
    versions and settings, and write the JSON to ``--out``."""
    import torch

    timed = seconds[1:] if len(seconds) > 1 else seconds
    result = {
        "peer": result.pop("peer"),
        f"seconds_per_{unit}": statistics.median(timed),
        f"{unit}_seconds": seconds,
        **result,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "versions": {name: __import__(name).__version__ for name in ("torch", "transformers", "trl", "accelerate")},
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def run(args: argparse.Namespace) -> dict:
    """trl 1.12.0 venv: build the four models, run trl's PPOTrainer for ``iterations`` batches, time each."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import copy

    import torch
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(args.seed)
    n_prompts = args.batch_size * args.iterations
    tokenizer, prompts = load_inputs(args, n_prompts)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})

    policy = GPT2LMHeadModel(gpt2_config(tokenizer, args))
    reference = copy.deepcopy(policy)
    reward = GPT2ForSequenceClassification(gpt2_config(tokenizer, args, num_labels=1))
    value = GPT2ForSequenceClassification(gpt2_config(tokenizer, args, num_labels=1))

    # trl's PPOConfig defaults differ from TrainingArguments: gradient checkpointing on and bf16 on. The
    # same work as finegrained's defaults is fp32 without checkpointing (recomputing activations would
    # make the peer slower for a reason that is not its PPO loop): trainer_defaults turns both off.
    ppo_args = PPOConfig(
        **trainer_defaults(args, Path(args.out).parent / "trl-run"),
        per_device_train_batch_size=args.batch_size,
        num_mini_batches=1,
        num_ppo_epochs=args.ppo_epochs,
        local_rollout_forward_batch_size=args.batch_size,
        response_length=args.response_length,
        stop_token=None,  # fixed-length responses: no early stop
        total_episodes=n_prompts,
        num_sample_generations=0,
    )  # fmt: skip

    marks: list[float] = []
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
        train_dataset=dataset, value_model=value, callbacks=[step_clock(marks)], peft_config=peft_config,
    )  # fmt: skip
    trainer.train()
    iteration_seconds = [b - a for a, b in zip(marks, marks[1:])]
    result = write_result(args, {"peer": "trl.experimental.ppo.PPOTrainer"}, "iteration", iteration_seconds)
    seconds = result["seconds_per_iteration"]
    result["tokens_per_second"] = args.batch_size * args.response_length / seconds
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"trl PPO: {seconds:.3f} s/iteration (iterations {', '.join(f'{s:.2f}' for s in iteration_seconds)})")
    return result


def grpo(args: argparse.Namespace) -> dict:
    """trl 1.16.0 venv: trl's GRPOTrainer on ``prompts x generations`` completions per iteration, each
    iteration one generation and ``epochs x minibatches`` optimizer steps; time each iteration."""
    import torch
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    from trl import GRPOConfig, GRPOTrainer

    completions = args.prompts * args.generations
    if completions % args.minibatches:
        raise SystemExit(f"--minibatches {args.minibatches} does not divide {completions} completions per iteration")
    torch.manual_seed(args.seed)
    tokenizer, prompts = load_inputs(args, args.prompts * args.iterations)
    run_dir = Path(args.out).parent / "trl-grpo-run"
    # trl builds its reference (beta > 0) from the policy's path: save the random-init policy and pass the path,
    # so policy and reference start from the same weights, as finegrained's reference copy does.
    policy_dir = run_dir / "policy"
    GPT2LMHeadModel(gpt2_config(tokenizer, args)).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    reward = GPT2ForSequenceClassification(gpt2_config(tokenizer, args, num_labels=1)).eval()
    reward.config._name_or_path = "reward_model"  # trl names the reward's metrics after it
    steps_per_iteration = args.epochs * args.minibatches
    grpo_args = GRPOConfig(
        **trainer_defaults(args, run_dir),
        per_device_train_batch_size=completions // args.minibatches,  # completions per optimizer step
        steps_per_generation=args.minibatches,  # one generation feeds this many optimizer steps per epoch
        num_generations=args.generations,
        num_iterations=args.epochs,
        max_steps=args.iterations * steps_per_iteration,
        max_completion_length=args.response_length,
        generation_kwargs={"min_new_tokens": args.response_length},  # fixed length, as finegrained's min_new_tokens
        temperature=1.0, top_k=0, top_p=1.0,
        beta=args.beta, loss_type=args.loss_type, scale_rewards="group", epsilon=0.2, max_grad_norm=1.0,
        learning_rate=5e-5, use_vllm=False, mask_truncated_completions=False, log_completions=False,
        disable_dropout=True,  # finegrained's policy runs with every dropout at 0
    )  # fmt: skip
    marks: list[float] = []
    trainer = GRPOTrainer(
        model=str(policy_dir), reward_funcs=reward, args=grpo_args, processing_class=tokenizer,
        reward_processing_classes=tokenizer, train_dataset=Dataset.from_dict({"prompt": prompts}),
        callbacks=[step_clock(marks)],
    )  # fmt: skip
    trainer.train()
    ends = marks[::steps_per_iteration]  # train begin, then the end of each iteration's last optimizer step
    iteration_seconds = [b - a for a, b in zip(ends, ends[1:])]
    extra = {"peer": "trl.GRPOTrainer", "completions_per_iteration": completions,
             "optimizer_steps_per_iteration": steps_per_iteration}  # fmt: skip
    result = write_result(args, extra, "iteration", iteration_seconds)
    result["tokens_per_second"] = completions * args.response_length / result["seconds_per_iteration"]
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"trl GRPO: {result['seconds_per_iteration']:.3f} s/iteration ({completions} completions; "
          f"iterations {', '.join(f'{s:.2f}' for s in iteration_seconds)})")  # fmt: skip
    return result


def preference_rows(tokenizer, args: argparse.Namespace) -> dict[str, list[list[int]]]:
    """``batch_size x steps`` pairs of exact lengths: prompt, chosen and rejected token ids drawn uniformly
    from the tokenizer's ordinary tokens (no special token, so no early EOS; trl appends none to ids)."""
    import torch

    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(args.seed)
    n = args.batch_size * args.steps

    def draw(length: int) -> list[list[int]]:
        return ordinary[torch.randint(len(ordinary), (n, length), generator=generator)].tolist()

    return {"prompt_ids": draw(args.prompt_length), "chosen_ids": draw(args.completion_length),
            "rejected_ids": draw(args.completion_length)}  # fmt: skip


def dpo(args: argparse.Namespace) -> dict:
    """trl 1.16.0 venv: trl's DPOTrainer, ``batch_size`` pairs per optimizer step, reference log-probs on the
    fly; time each optimizer step."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """The rows are already token ids of exact lengths: skip trl's text preparation (EOS appending and
        tokenization), a one-off step before training that would otherwise need text."""

        def _prepare_dataset(self, dataset, *_args, **_kwargs):
            return dataset

    torch.manual_seed(args.seed)
    tokenizer, _ = load_inputs(args, 0)
    policy = GPT2LMHeadModel(gpt2_config(tokenizer, args))
    reference = copy.deepcopy(policy)
    dpo_args = DPOConfig(
        **trainer_defaults(args, Path(args.out).parent / "trl-dpo-run"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        max_length=args.prompt_length + args.completion_length,  # no truncation
        precompute_ref_log_probs=False,  # on the fly, every step, as finegrained's DPO
        loss_type=["sigmoid"], beta=0.1, learning_rate=5e-5, disable_dropout=not args.keep_dropout,
    )  # fmt: skip
    marks: list[float] = []
    trainer = PretokenizedDPOTrainer(
        model=policy, ref_model=reference, args=dpo_args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict(preference_rows(tokenizer, args)), callbacks=[step_clock(marks)],
    )  # fmt: skip
    trainer.train()
    step_seconds = [b - a for a, b in zip(marks, marks[1:])]
    result = write_result(args, {"peer": "trl.DPOTrainer", "pairs_per_step": args.batch_size}, "step", step_seconds)
    print(f"trl DPO: {result['seconds_per_step']:.3f} s/step, peak RSS {result['peak_rss_mb']:.0f} MB "
          f"(steps {', '.join(f'{s:.2f}' for s in step_seconds)})")  # fmt: skip
    return result


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of every trl side: the inputs, the output, the model shape and the precision."""
    parser.add_argument("--inputs", required=True, help="the directory 'prepare' wrote")
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "auto"), default="cpu", help="auto: the GPU when there is one")
    parser.add_argument("--bf16", action="store_true", help="trl's own default; off here to match finegrained's fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="trl's own default; off here to match finegrained's default")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("prepare", help="(project venv) write the tokenizer and prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-prompts", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=prepare)
    r = sub.add_parser("run", help="(trl 1.12.0 venv) run trl's PPOTrainer and time it")
    add_shape_arguments(r)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--response-length", type=int, default=64)
    r.add_argument("--ppo-epochs", type=int, default=4)
    r.add_argument("--iterations", type=int, default=5)
    r.add_argument("--lora-r", type=int, default=0, help="LoRA rank through peft (0: full fine-tuning); needs peft")
    r.set_defaults(func=run)
    g = sub.add_parser("grpo", help="(trl 1.16.0 venv) run trl's GRPOTrainer and time it")
    add_shape_arguments(g)
    g.add_argument("--prompts", type=int, default=16, help="prompts per iteration (finegrained's bench.batch_size)")
    g.add_argument("--generations", type=int, default=4, help="samples per prompt (bench.samples_per_prompt)")
    g.add_argument("--response-length", type=int, default=64)
    g.add_argument("--epochs", type=int, default=4, help="optimisation epochs per generation (trl num_iterations)")
    g.add_argument("--minibatches", type=int, default=1, help="optimizer steps per epoch (trl steps_per_generation)")
    g.add_argument("--iterations", type=int, default=5)
    g.add_argument("--beta", type=float, default=0.05, help="KL coefficient (trl's default 0: no reference model)")
    g.add_argument("--loss-type", default="grpo", help="trl loss_type (trl's default dapo)")
    g.set_defaults(func=grpo)
    d = sub.add_parser("dpo", help="(trl 1.16.0 venv) run trl's DPOTrainer and time it")
    add_shape_arguments(d)
    d.add_argument("--batch-size", type=int, default=16, help="preference pairs per optimizer step")
    d.add_argument("--prompt-length", type=int, default=32)
    d.add_argument("--completion-length", type=int, default=64, help="tokens of the chosen and of the rejected")
    d.add_argument("--steps", type=int, default=6, help="optimizer steps; the first is a warm-up")
    d.add_argument("--keep-dropout", action="store_true", help="keep GPT-2's dropout (trl's default disables it)")
    d.set_defaults(func=dpo)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
