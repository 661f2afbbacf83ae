"""``finegrained dpo``: offline preference optimisation of a causal LM, no reward model, no sampling.

One optimizer step, as the code below reads:

1. batch     the next ``dpo.batch_size`` pairs of a fixed shuffle per epoch (the data position alone
             determines the batch: exact resume); each process takes its share;
2. forward   policy and reference log-probs of every completion token of both sides (2B rows);
3. sequence  log pi(y|x) per side: the sum over completion tokens (``sigmoid``, ``ipo``), or RLHF-V's dense
             weighted mean with the changed tokens weighing ``dpo.gamma`` (``ddpo``);
4. loss      DPO / IPO on the margins (``finegrained.rl.dpo_functional``); backward, clip, step;
5. log       loss and implicit rewards; held-out ``rewards/{chosen,rejected,margins,accuracies}`` every
             ``log.eval_every`` steps and at the end; checkpoints every ``checkpoint.every`` steps.

The reference is a frozen copy of the initial policy, or, with LoRA (``lora.r > 0``), the policy itself with
its adapters off (``peft``'s ``disable_adapter``). Dropout is off in both (as in PPO and TRL's default), so
the reference log-probs are those of the same deterministic function the policy starts as.

Data: ``data.train`` (preference JSONL), ``data.corrections`` (span JSONL: each record with a ``correction``
is a pair, chosen = correction, rejected = completion; records without one are skipped and counted, or
refused with ``data.without_correction=error``); with neither, the task's ``data.builtin`` function gives
simulated annotations (preference records for ``sigmoid``/``ipo``, span records with corrections for
``ddpo``). Under ``ddpo`` a pair from a preference record has no changed segments: all its tokens weigh 1
(its dense log-prob is the mean per token).

Checkpoints are PPO's (``finegrained.rl.checkpoint``): ``checkpoints/iter-N/`` with N the optimizer step,
the policy, optimizer, scheduler, RNG states and ``state.json`` (step, data position); no value model (an
empty module stands in its file). ``final/`` is a plain HF model (LoRA merged) with a model card.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from ..config import log
from ..errors import FinegrainedError, InputError, Problem
from ..model_card import policy_card
from ..model_dirs import first_non_finite, module_tensors
from ..progress import Progress
from ..schema import load_schema
from ..trackers import check_installed, report_to_of
from . import dpo_functional as D
from . import functional as F
from .checkpoint import checkpoint_dirs, load_latest_checkpoint, save_checkpoint
from .dpo_data import Pair, PairSource, as_paths, collate_pairs, encode_pair, held_out_split, pairs_from_records, read_files, records_from_dicts
from .lora import add_adapters
from .policy import build_policy, frozen_copy
from .replicas import require_identical_replicas
from .runs import clear_interrupted_writes, closing_trackers, make_accelerator, refuse_existing_run, start_logging, write_final_policy


class NoValueModel(nn.Module):
    """DPO has no value model: this empty module fills the value slot of PPO's checkpoint format."""


class DPOTrainer:
    def __init__(self, cfg: DictConfig):
        from accelerate.utils import set_seed

        self.cfg, self.out = cfg, Path(cfg.output_dir)
        self.accelerator = make_accelerator(cfg)
        self.is_main = self.accelerator.is_main_process
        check_installed(report_to_of(cfg))  # before any model is built
        if self.is_main:
            clear_interrupted_writes(self.out, "dpo", log)
        refuse_existing_run(self.out, cfg.resume, cfg.overwrite, "DPO")
        if cfg.dpo.batch_size < self.accelerator.num_processes:
            raise FinegrainedError(f"dpo.batch_size={cfg.dpo.batch_size} gives some of the {self.accelerator.num_processes} "
                                   "processes no pair: use at least one pair per process")  # fmt: skip
        set_seed(cfg.seed)
        train_pairs, eval_pairs = self.load_pairs()
        texts = [t for p in train_pairs for t in (p.prompt, p.chosen, p.rejected)]
        policy, self.tokenizer = build_policy(cfg, self.out, texts, save_initial=self.is_main)
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.max_length = int(getattr(policy.config, "n_positions", None) or getattr(policy.config, "max_position_embeddings", 1024))
        self.train_data = self.encode(train_pairs, "training")
        self.eval_data = self.encode(eval_pairs, "held-out")
        if not self.train_data:
            raise FinegrainedError("dpo: no training pair fits the policy's context")
        if cfg.lora.r:
            policy = add_adapters(policy, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
            self.reference = None
            trainable, total = policy.get_nb_trainable_parameters()
            log(f"[dpo] LoRA r={cfg.lora.r} (peft): {trainable:,} of {total:,} policy parameters train")
        else:
            self.reference = frozen_copy(policy).to(self.accelerator.device)
        d = cfg.dpo
        self.total_steps = math.ceil(d.epochs * len(self.train_data) / d.batch_size)
        optimizer = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=d.lr, weight_decay=0.0)
        warmup = max(1, d.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.value = NoValueModel()
        self.policy, self.optimizer, self.scheduler = self.accelerator.prepare(policy, optimizer, scheduler)
        self.step, self.data_position = 0, 0  # optimizer steps done, pairs consumed
        if cfg.resume:
            self._resume()
        self.trackers = start_logging(cfg, self.out, self.step, self.is_main)

    # -- set-up ----------------------------------------------------------------------------------------
    def load_pairs(self) -> tuple[list[Pair], list[Pair]]:
        """(training pairs, held-out pairs), from the files or the built-in task; what was skipped is said."""
        data, loss = self.cfg.data, self.cfg.dpo.loss
        schema_name = data.schema or self.cfg.task.get("schema")
        train_files, correction_files = as_paths(data.train), as_paths(data.corrections)
        if not schema_name and (train_files or correction_files or data.eval):
            raise FinegrainedError("dpo: data.schema is null: the files need an annotation schema to be checked against")
        schema = load_schema(schema_name) if schema_name else None
        if train_files or correction_files:
            train = self._pairs_of_files(train_files, correction_files, schema, "data.train")
            if loss == "ddpo" and not any(p.dense for p in train.pairs):
                raise FinegrainedError("dpo.loss=ddpo needs corrections: give data.corrections=<span JSONL whose records "
                                       "carry a correction>, or use dpo.loss=sigmoid for preference pairs")  # fmt: skip
        else:
            train = self._builtin_pairs(schema, "train")
        self._report_skipped(train, "data.corrections" if correction_files else "the built-in annotations")
        if data.eval:
            eval_files = as_paths(data.eval)
            span_files = [f for f in eval_files if inspect_kind(f) == "span"]
            held = self._pairs_of_files([f for f in eval_files if f not in span_files], span_files, schema, "data.eval")
            return train.pairs, held.pairs
        pairs, held = held_out_split(train.pairs, data.eval_fraction, self.cfg.seed)
        return pairs, held

    def _pairs_of_files(self, preference_files, span_files, schema, option: str) -> PairSource:
        records = read_files(preference_files, schema, "preference", option) if preference_files else []
        spans = read_files(span_files, schema, "span", "data.corrections") if span_files else []
        if self.cfg.data.without_correction == "error":
            missing = [r.id for r in spans if r.correction is None]
            if missing:
                raise InputError([Problem(", ".join(span_files), None, f"{len(missing)} span records carry no correction "
                                          f"(first: {missing[0]!r}); data.without_correction=skip leaves them out")])  # fmt: skip
        source = pairs_from_records([*records, *spans], self.cfg.data.category)
        if preference_files and not any(not p.dense for p in source.pairs):
            wanted = f" of category {self.cfg.data.category!r}" if self.cfg.data.category else ""
            raise InputError([Problem(", ".join(preference_files), None, f"no preference records{wanted}")])
        return source

    def _builtin_pairs(self, schema, split: str) -> PairSource:
        from hydra.utils import instantiate

        kind = "span" if self.cfg.dpo.loss == "ddpo" else "preference"
        make = instantiate(self.cfg.data.builtin)
        objs = make(kind=kind, category=self.cfg.data.category, split=split)
        if schema is None:
            raise FinegrainedError("dpo: the built-in annotations need data.schema (or task.schema)")
        return pairs_from_records(records_from_dicts(objs, schema, "data.builtin"), self.cfg.data.category)

    def _report_skipped(self, source: PairSource, where: str) -> None:
        if source.without_correction and self.is_main:
            log(f"[dpo] {source.without_correction} of {source.span_records} span records of {where} carry no "
                "correction: skipped (no pair)")  # fmt: skip

    def encode(self, pairs: list[Pair], what: str) -> list:
        truncate = self.cfg.task.get("truncate") or "left"
        dense = self.cfg.dpo.loss == "ddpo"
        encoded = [encode_pair(self.tokenizer, p, self.max_length, truncate, self.cfg.dpo.gamma, dense) for p in pairs]
        kept = [e for e in encoded if e is not None]
        if len(kept) < len(encoded) and self.is_main:
            log(f"[dpo] skipped {len(encoded) - len(kept)} of {len(encoded)} {what} pairs whose completion does not fit "
                f"in {self.max_length} tokens")  # fmt: skip
        return kept

    def _resume(self) -> None:
        loaded = load_latest_checkpoint(self.out, self.accelerator.unwrap_model(self.policy), self.value,
                                        self.optimizer, self.scheduler, log)  # fmt: skip
        if loaded is None:
            log(f"[dpo] resume=true but {self.out} has no complete checkpoint: starting from step 0")
            return
        state, directory = loaded
        self.step, self.data_position = state["iteration"], state["data_position"]
        log(f"[dpo] resumed from {directory} (step {self.step})")

    # -- one step --------------------------------------------------------------------------------------
    def next_batch(self) -> list:
        """This process's share of the next ``dpo.batch_size`` pairs: a fixed shuffle per epoch."""
        n, batch = len(self.train_data), []
        for i in range(self.data_position, self.data_position + self.cfg.dpo.batch_size):
            epoch, index = divmod(i, n)
            order = list(range(n))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            batch.append(self.train_data[order[index]])
        self.data_position += self.cfg.dpo.batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return batch[rank::world]

    def sequence_logprobs(self, model, batch: dict) -> torch.Tensor:
        """log pi(y|x) of each row (2B,): sums, or dense weighted means under ``ddpo`` (step 3)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (2B, L-1, V)
        token_logprobs = F.logprobs_from_logits(logits, batch["input_ids"][:, 1:])  # (2B, L-1)
        mask = batch["completion_mask"]
        if self.cfg.dpo.loss == "ddpo":
            return D.weighted_sequence_logprob(token_logprobs, mask, batch["weights"])
        return D.sequence_logprob(token_logprobs, mask)

    def reference_logprobs(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self.sequence_logprobs(self.reference, batch)
            with self.accelerator.unwrap_model(self.policy).disable_adapter():  # LoRA: the reference is adapters-off
                return self.sequence_logprobs(self.policy, batch)

    def pair_loss(self, encoded: list) -> D.PreferenceLoss:
        batch = {k: v.to(self.accelerator.device) for k, v in collate_pairs(encoded, self.tokenizer.pad_token_id).items()}
        B = len(encoded)
        with self.accelerator.autocast():
            policy = self.sequence_logprobs(self.policy, batch).float()
            reference = self.reference_logprobs(batch).float()
        return D.preference_loss(policy[:B], policy[B:], reference[:B], reference[B:], self.cfg.dpo.beta,
                                 self.cfg.dpo.loss)  # fmt: skip

    def train_step(self) -> dict:
        """Steps 1-4 for one optimizer step; returns the batch's loss and implicit rewards."""
        d = self.cfg.dpo
        share = self.next_batch()
        self.policy.train()
        size = math.ceil(len(share) / d.grad_accum) if share else 1
        losses, chosen, rejected = [], [], []
        for start in range(0, len(share), size):
            micro = share[start : start + size]
            out = self.pair_loss(micro)
            loss = out.losses.mean() * (len(micro) / len(share))  # the micro-batches sum to the share's mean
            if not torch.isfinite(loss.detach()):
                raise self._stop(f"the {d.loss} loss is {float(loss.detach())}")
            self.accelerator.backward(loss)
            losses.append(out.losses.detach())
            chosen.append(out.chosen_rewards)
            rejected.append(out.rejected_rewards)
        grad_norm = float(self.accelerator.clip_grad_norm_(self.policy.parameters(), d.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        bad = first_non_finite(module_tensors(self.accelerator.unwrap_model(self.policy)))
        if bad is not None:
            raise self._stop(f"after the update the policy has NaN or infinite weights (first: {bad!r})", weights_failed=True)
        stats = {f"train/{k}": v for k, v in D.reward_statistics(torch.cat(chosen), torch.cat(rejected)).items()}
        return {"loss": float(torch.cat(losses).mean()), "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0], **stats}

    def _stop(self, problem: str, weights_failed: bool = False) -> FinegrainedError:
        found = checkpoint_dirs(self.out)
        if weights_failed and found and found[-1][0] == self.step:
            note = f"the newest checkpoint, {found[-1][1]}, holds these weights; start over with a lower dpo.lr"
        elif found:
            note = f"the last good checkpoint, {found[-1][1]}, is kept: resume=true continues from it"
        else:
            note = "no checkpoint was written yet, so there is nothing to resume from"
        return FinegrainedError(f"dpo: step {self.step + (0 if weights_failed else 1)}: {problem}: the training diverged "
                                f"(try a lower dpo.lr); stopping, {self.out / 'final'} is not written ({note})")  # fmt: skip

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss and TRL's implicit-reward figures over every held-out pair (each process the same)."""
        if not self.eval_data:
            return {}
        self.policy.eval()
        losses, chosen, rejected = [], [], []
        size = self.cfg.dpo.eval_batch_size
        for start in range(0, len(self.eval_data), size):
            out = self.pair_loss(self.eval_data[start : start + size])
            losses.append(out.losses.detach())
            chosen.append(out.chosen_rewards)
            rejected.append(out.rejected_rewards)
        self.policy.train()
        return {"eval/loss": float(torch.cat(losses).mean()), **D.reward_statistics(torch.cat(chosen), torch.cat(rejected))}

    # -- outputs ---------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            state = {"data_position": self.data_position, "kl_controller": {}}  # no KL controller in DPO
            save_checkpoint(self.out, self.step, self.accelerator.unwrap_model(self.policy), self.value, self.optimizer,
                            self.scheduler, state, keep=self.cfg.checkpoint.keep)  # fmt: skip
        self.accelerator.wait_for_everyone()

    def save_final(self, summary: dict) -> None:
        require_identical_replicas(self.accelerator, self.policy, "dpo", log)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            card = policy_card(algorithm="dpo", base_model=self.cfg.policy.name_or_path or "tiny", config=self.cfg, summary=summary)
            write_final_policy(self.out, self.accelerator.unwrap_model(self.policy), self.tokenizer, bool(self.cfg.lora.r), card)
        self.accelerator.wait_for_everyone()

    def train(self) -> dict:
        """Steps up to the end of ``dpo.epochs``, checkpoints, final/; the trackers close however it ends.
        Returns the last held-out figures (``rewards/*``, ``eval/loss``), the initial ones as ``initial/...``,
        and ``steps``."""
        return closing_trackers(self.trackers, self._train)

    def _train(self) -> dict:
        cfg = self.cfg
        if self.is_main:
            log(f"[dpo] loss={cfg.dpo.loss}, steps {self.step + 1}..{self.total_steps}, {len(self.train_data)} training "
                f"pairs, {len(self.eval_data)} held out")  # fmt: skip
        initial = self.evaluate()
        if self.trackers.active and initial and not self.step:
            self.trackers.log(initial, 0)
        bar = Progress(self.total_steps, "dpo", unit="steps", initial=self.step, bar=bool(cfg.log.progress), enabled=self.is_main)
        while self.step < self.total_steps:
            stats = self.train_step()
            if cfg.log.eval_every and self.step % cfg.log.eval_every == 0 and self.step < self.total_steps:
                stats.update(self.evaluate())
            if self.trackers.active:
                self.trackers.log(stats, self.step)
            bar.update(1, loss=round(stats["loss"], 4))
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save_checkpoint()
        bar.close()
        final = self.evaluate()
        if self.trackers.active and final:
            self.trackers.log(final, self.step)
        summary = {**final, **{f"initial/{k}": v for k, v in initial.items()}, "steps": self.step}
        self.save_final({k: v for k, v in summary.items() if not k.startswith("initial/")})
        return summary


def inspect_kind(path: str) -> str | None:
    """The record kind of a file (from its first record), without validating it."""
    import json

    from ..data import detect_kind

    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return detect_kind(json.loads(line))
    except (OSError, ValueError):
        return None  # read_files reports the problem
    return None
