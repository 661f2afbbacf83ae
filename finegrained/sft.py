"""Supervised fine-tuning of a causal LM on prompt/completion pairs (``finegrained sft``).

The input of one example follows the policy text convention (docs/ARCHITECTURE.md): the prompt ids
(``add_special_tokens=False``), then the completion ids and EOS. The loss covers the completion and its
EOS only; prompt positions carry the label -100. A prompt too long for the model is cut by ``task.truncate``
as PPO, ``evaluate`` and ``sample`` cut it (``left``: keep its end, ``right``: keep its beginning, ``error``:
refuse), so the policy learns from the same view of a prompt that it later generates from. Writes ``output_dir/final/`` (model and tokenizer,
safetensors, loadable with ``from_pretrained``), tensorboard logs under ``output_dir/tb`` and, every
``checkpoint.every`` steps, ``output_dir/checkpoints/step-N/``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from omegaconf import DictConfig

from .config import log, save_config, to_container, warn_if_slow_bf16
from .errors import FinegrainedError
from .io import atomic_directory, read_string_records, remove_stale_temporaries
from .model_dirs import save_pretrained_dir
from .model_card import policy_card, write_card
from .progress import Progress

IGNORE_INDEX = -100


def read_pairs(path: str | Path) -> list[dict]:
    """Prompt/completion pairs from JSONL; every problem reported as ``FILE:LINE: field: message``."""
    return [{"prompt": r["prompt"], "completion": r["completion"], "_line": r["_line"]}
            for r in read_string_records(path, ("prompt", "completion"))]  # fmt: skip


def load_corpus(cfg: DictConfig) -> tuple[list[dict], list[dict]]:
    if cfg.data.train:
        train = read_pairs(cfg.data.train)
        return train, read_pairs(cfg.data.eval) if cfg.data.eval else []
    from .tasks.synthetic_qa import sft_corpus

    rates = None if cfg.data.error_rates is None else dict(cfg.data.error_rates)
    train = sft_corpus(cfg.data.n_train, seed=cfg.seed, error_rates=rates, split="train")
    eval_ = sft_corpus(cfg.data.n_eval, seed=cfg.seed, error_rates=rates, split="eval")
    return train, eval_


def build_model(cfg: DictConfig, texts: list[str]):
    """A causal LM and tokenizer: ``from_pretrained`` on ``model.name_or_path``, or a tiny GPT-2 with a
    tokenizer trained on ``texts``."""
    from .model_dirs import load_causal_lm
    from .models.tiny import tiny_causal_lm, train_tokenizer

    if cfg.model.name_or_path:
        model, tokenizer = load_causal_lm(cfg.model.name_or_path, "the model to fine-tune (model.name_or_path)")
        model.train()
        if tokenizer.eos_token_id is None:
            raise FinegrainedError(f"{cfg.model.name_or_path}: the tokenizer has no EOS token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer
    tokenizer = train_tokenizer(texts, vocab_size=cfg.model.vocab_size)
    model = tiny_causal_lm(
        tokenizer, n_layer=cfg.model.n_layer, n_embd=cfg.model.n_embd, n_head=cfg.model.n_head,
        n_positions=cfg.model.n_positions, seed=cfg.seed, dropout=cfg.model.dropout,
    )  # fmt: skip
    return model, tokenizer


def encode_example(tokenizer, prompt: str, completion: str, max_length: int,
                   truncate: str = "left") -> tuple[list[int], list[int]] | None:  # fmt: skip
    """Input ids and labels (-100 on the prompt); a prompt too long is cut by ``truncate`` (``left``: keep its
    last tokens, ``right``: its first; ``finegrained.rl.generation.cut_prompt_ids``).
    None when the completion alone does not fit."""
    from .rl.generation import cut_prompt_ids

    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    room = max_length - len(completion_ids)
    if room < 1:
        return None
    prompt_ids = cut_prompt_ids(prompt_ids, room, truncate)
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask and labels, each (B, L)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_all(tokenizer, pairs: list[dict], max_length: int, what: str, truncate: str = "left", source: str = "data") -> list:
    if truncate == "error":
        refuse_long_prompts(tokenizer, pairs, max_length, source)
    encoded = [encode_example(tokenizer, p["prompt"], p["completion"], max_length, truncate) for p in pairs]
    skipped = sum(e is None for e in encoded)
    if skipped:
        log(f"[sft] warning: skipped {skipped} of {len(pairs)} {what} examples whose completion does not fit in {max_length} tokens")
    kept = [e for e in encoded if e is not None]
    # encode_example cut a long prompt (task.truncate's rule); say how often
    cut = sum(len(tokenizer(p["prompt"], add_special_tokens=False).input_ids) > sum(lab == IGNORE_INDEX for lab in e[1])
              for p, e in zip(pairs, encoded) if e is not None)  # fmt: skip
    if cut:
        log(f"[sft] cut the prompt of {cut} of {len(kept)} {what} examples from the {truncate} to fit {max_length} tokens")
    return kept


def refuse_long_prompts(tokenizer, pairs: list[dict], max_length: int, source: str) -> None:
    """``task.truncate=error``: an ``InputError`` naming every pair whose prompt and completion exceed ``max_length``."""
    from .errors import InputError, Problem

    problems = []
    for i, p in enumerate(pairs):
        n = len(tokenizer(p["prompt"], add_special_tokens=False).input_ids)
        n += len(tokenizer(p["completion"], add_special_tokens=False).input_ids) + 1  # + EOS
        if n > max_length:
            problems.append(Problem(source, p.get("_line", i + 1), f"prompt and completion have {n} tokens; the model "
                                    f"holds {max_length} (task.truncate=left or right would cut the prompt)", "prompt"))  # fmt: skip
    if problems:
        raise InputError(problems[:50])


@torch.no_grad()
def evaluate_loss(model, batches, accelerator) -> float:
    """Mean loss per completion token over ``batches``."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with accelerator.autocast():
            total += float(model(**batch).loss) * n
        tokens += n
    model.train()
    return total / max(tokens, 1)


def save_hf_dir(model, tokenizer, directory: Path, accelerator, overwrite: bool = True) -> None:
    """Model and tokenizer as an HF directory (safetensors), written atomically."""
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        save_pretrained_dir(tmp, accelerator.unwrap_model(model), tokenizer)


def train_sft(cfg: DictConfig) -> dict:
    """Run one ``sft`` configuration; returns the eval losses before and after (nan without eval data),
    the steps taken and the number of eval examples."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .trackers import check_installed, report_to_of

    check_installed(report_to_of(cfg))  # before any work
    out = Path(cfg.output_dir)
    if (out / "final").exists() and not cfg.overwrite:
        raise FinegrainedError(f"{out / 'final'} already exists; pass overwrite=true to replace it")
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if cfg.bf16 else "no")
    if accelerator.is_main_process:
        warn_if_slow_bf16(accelerator.device.type, accelerator.mixed_precision, "sft bf16=true")
        for path in remove_stale_temporaries(out, r"final|config\.yaml") + remove_stale_temporaries(out / "checkpoints", r"step-\d+"):
            log(f"[sft] cleared {path}, left by an interrupted write")
    set_seed(cfg.seed)
    train_pairs, eval_pairs = load_corpus(cfg)
    model, tokenizer = build_model(cfg, [p["prompt"] + " " + p["completion"] for p in train_pairs])
    train_examples, eval_batches = encode_corpus(cfg, model, tokenizer, train_pairs, eval_pairs)
    run = SFTRun(cfg, accelerator, model, tokenizer, len(train_examples))
    initial_eval = evaluate_loss(run.model, eval_batches, accelerator) if eval_batches else None
    step = run.train(train_examples)
    final_eval = evaluate_loss(run.model, eval_batches, accelerator) if eval_batches else None
    run.finish(step, final_eval)
    nan = float("nan")  # the returned figures stay floats; n_eval_examples says whether there was eval data
    return {"initial_eval_loss": nan if initial_eval is None else initial_eval,
            "eval_loss": nan if final_eval is None else final_eval, "steps": step,
            "n_eval_examples": sum(len(b["input_ids"]) for b in eval_batches)}  # fmt: skip


def encode_corpus(cfg: DictConfig, model, tokenizer, train_pairs: list[dict], eval_pairs: list[dict]) -> tuple[list, list]:
    """The training examples and the eval batches, prompts cut by ``task.truncate`` to the model's context."""
    max_length = int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))
    truncate = cfg.task.get("truncate") or "left"
    train_examples = encode_all(tokenizer, train_pairs, max_length, "training", truncate, str(cfg.data.train or "data.train"))
    eval_examples = encode_all(tokenizer, eval_pairs, max_length, "eval", truncate, str(cfg.data.eval or "data.eval"))
    eval_batches = [collate(chunk, tokenizer.pad_token_id) for chunk in _chunks(eval_examples, cfg.train.batch_size)]
    if not train_examples:
        raise FinegrainedError("no training example fits the model's context")
    return train_examples, eval_batches


class SFTRun:
    """The optimizer, schedule and trackers of one SFT run, its training loop and its ``final/``."""

    def __init__(self, cfg: DictConfig, accelerator, model, tokenizer, n_examples: int):
        from transformers import get_cosine_schedule_with_warmup

        from .trackers import Trackers, report_to_of

        self.cfg, self.accelerator, self.tokenizer = cfg, accelerator, tokenizer
        self.out = Path(cfg.output_dir)
        self.total_steps = math.ceil(n_examples / cfg.train.batch_size) * cfg.train.epochs
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.train.warmup_steps, self.total_steps // 2), self.total_steps)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        self.trackers = Trackers(report_to_of(cfg), self.out, run_name=self.out.name, enabled=accelerator.is_main_process)
        self.trackers.log_config(to_container(cfg))
        log(f"[sft] {n_examples} training examples, {self.total_steps} steps, {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters")

    def train(self, train_examples: list) -> int:
        """Every epoch over the examples in a seeded shuffled order; returns the number of steps taken."""
        cfg, accelerator = self.cfg, self.accelerator
        rng = random.Random(cfg.seed)
        step = 0
        self.model.train()
        bar = Progress(self.total_steps, "sft", bar=bool(cfg.train.progress), enabled=accelerator.is_main_process)
        for epoch in range(cfg.train.epochs):
            order = list(range(len(train_examples)))
            rng.shuffle(order)
            for chunk in _chunks(order, cfg.train.batch_size):
                batch = collate([train_examples[i] for i in chunk], self.tokenizer.pad_token_id)
                loss = self.step({k: v.to(accelerator.device) for k, v in batch.items()}, step + 1)
                step += 1
                bar.update(1, loss=round(loss.item(), 4), epoch=epoch)
                if self.trackers.active and step % cfg.train.log_every == 0:
                    self.trackers.log({"train/loss": loss.item(), "train/lr": self.scheduler.get_last_lr()[0]}, step)
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and accelerator.is_main_process:
                    save_hf_dir(self.model, self.tokenizer, self.out / "checkpoints" / f"step-{step}", accelerator)
        bar.close()
        return step

    def step(self, batch: dict, step: int) -> torch.Tensor:
        """One optimizer step on ``batch``; a non-finite loss stops the run naming ``step`` (1-based)."""
        with self.accelerator.autocast():
            loss = self.model(**batch).loss
        if not torch.isfinite(loss.detach()):
            raise FinegrainedError(f"sft: the training loss is {float(loss.detach())} at step {step}: the training "
                                   f"diverged (try a lower train.lr); stopping, {self.out / 'final'} is not written")
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def finish(self, step: int, final_eval: float | None) -> None:
        """The final eval loss to the trackers, then ``final/`` and its model card (main process)."""
        if final_eval is not None:
            self.trackers.log({"eval/loss": final_eval}, step)
        self.trackers.close()
        if self.accelerator.is_main_process:
            cfg = self.cfg
            save_hf_dir(self.model, self.tokenizer, self.out / "final", self.accelerator, overwrite=bool(cfg.overwrite))
            write_card(self.out / "final", policy_card(algorithm="sft", base_model=cfg.model.name_or_path or "tiny", config=cfg,
                                                       summary={"steps": step, "eval_loss": final_eval}))  # fmt: skip


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
