"""The one training loop of reward models, for one category or several on a shared backbone.

A model trains on datasets of items (``encoders``): the span items (one input labelled for every span
category) and the pairs of each preference category. An epoch is one pass over every dataset: the
largest has a batch in every step, a smaller one in evenly spread steps (``in_step``), so each category
sees its data as often as its own model would. A step stacks the scheduled batches into one padded
``TrainBatch``, runs the model once and adds every category's loss (``heads_loss``). Periodic evaluation
keeps the best weights (``BestCheckpoint``); the final ones are evaluated, the preference heads'
normalisation measured and the directory written atomically by the main process.

What differs between a one-category model and a joint one (the model's call, its judge, metrics and
metadata, how batches are drawn) comes from a ``ModelPlan`` (``train``), so every step above exists once.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import log, to_container, warn_if_slow_bf16
from ..errors import FinegrainedError
from ..io import atomic_directory, remove_stale_temporaries
from ..progress import Progress
from ..trackers import DEFAULT as DEFAULT_TRACKERS
from ..trackers import Trackers, report_to_of
from .directory import save_reward_model
from .encoders import PairItem, SpanItem
from .evaluate import format_metrics_table
from .preference_model import PreferencePair, bradley_terry_loss, normalisation_stats
from .span_model import IGNORE_INDEX, pad_windows, span_loss

#: key of the span dataset among a model's datasets (the others are preference category names)
SPANS = "<spans>"


# ----------------------------------------------------------------------------------------------------
# Data scheduling


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """``(kept, held out)``: about ``fraction`` of ``items`` (at least one, never all) held out at random."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, int(round(len(items) * fraction))), len(items) - 1)
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def in_step(step_in_epoch: int, n_batches: int, steps_per_epoch: int) -> bool:
    """Whether a dataset of ``n_batches`` batches per epoch has a batch in step ``step_in_epoch``
    (0-based) of an epoch of ``steps_per_epoch`` steps: exactly ``n_batches`` steps per epoch, evenly spread."""
    return (step_in_epoch + 1) * n_batches // steps_per_epoch > step_in_epoch * n_batches // steps_per_epoch


def endless_batches(items: list, batch_size: int, rng: random.Random) -> Iterator[list]:
    """Batches of ``min(batch_size, len(items))`` items, reshuffled after every pass (wrapping around)."""
    order: list[int] = []
    size = min(batch_size, len(items))
    while True:
        while len(order) < size:
            fresh = list(range(len(items)))
            rng.shuffle(fresh)
            order.extend(fresh)
        yield [items[i] for i in order[:size]]
        del order[:size]


def process_share(batches: Iterator[list], rank: int, world: int) -> Iterator[list]:
    """This process's rows of every batch (under DDP each process trains on a slice)."""
    for batch in batches:
        yield batch[rank::world]


def loader_epochs(loader) -> Iterator[list]:
    """The batches of ``loader`` epoch after epoch (it reshuffles at the start of each)."""
    while True:
        yield from loader


class BatchSchedule:
    """Which datasets have a batch in each step, and their rows.

    Args:
        streams: dataset key -> endless batches of its items, drawn in this order each step.
        batches_per_epoch: dataset key -> its batches in one epoch (the largest is the epoch's steps).
    """

    def __init__(self, streams: dict[str, Iterator[list]], batches_per_epoch: dict[str, int]):
        self.streams = streams
        self.batches_per_epoch = batches_per_epoch
        self.steps_per_epoch = max(batches_per_epoch.values())

    def rows(self, step: int) -> dict[str, list]:
        """The rows of (1-based) ``step``: a batch of every dataset scheduled for it, ``[]`` for the others."""
        k = (step - 1) % self.steps_per_epoch
        return {key: next(stream) if in_step(k, self.batches_per_epoch[key], self.steps_per_epoch) else []
                for key, stream in self.streams.items()}  # fmt: skip


def shuffled_epochs(accelerator, datasets: dict[str, list], batch_size: int, seed: int) -> BatchSchedule:
    """One dataset, freshly shuffled each epoch by a seeded ``DataLoader`` (sharded across processes by
    accelerate): how a one-category model draws its batches."""
    (key, items), = datasets.items()
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True, collate_fn=list,
                                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
    loader = accelerator.prepare(loader)
    return BatchSchedule({key: loader_epochs(loader)}, {key: len(loader)})


def wrapping_streams(accelerator, datasets: dict[str, list], batch_size: int, seed: int) -> BatchSchedule:
    """Every dataset from one seeded stream that wraps around (``endless_batches``), each process taking
    its slice of a batch: how a joint model draws its batches."""
    rng = random.Random(seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    streams = {key: process_share(endless_batches(items, batch_size, rng), rank, world) for key, items in datasets.items()}
    return BatchSchedule(streams, {key: math.ceil(len(items) / batch_size) for key, items in datasets.items()})


def token_labels_tensor(rows: Sequence[Sequence[int]], n_rows: int, length: int) -> torch.Tensor:
    """``(n_rows, length)`` labels: ``rows`` on the first rows, right-padded; ``IGNORE_INDEX`` elsewhere."""
    out = torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@dataclass
class TrainBatch:
    """One step's inputs: span rows first, then each preference category's chosen and rejected rows.

    Shapes: ``input_ids``, ``attention_mask``, ``token_type_ids`` (None: not given to the model) ``(B, L)``;
    ``labels`` span category -> ``(B, L)``; ``pair_rows`` preference category -> ``(chosen rows, rejected
    rows)``, each ``(N,)`` row indices (``N = 0``: no pairs of it this step).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: dict[str, torch.Tensor]
    pair_rows: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def to(self, device) -> TrainBatch:
        return TrainBatch(
            self.input_ids.to(device), self.attention_mask.to(device),
            None if self.token_type_ids is None else self.token_type_ids.to(device),
            {k: v.to(device) for k, v in self.labels.items()},
            {k: (a.to(device), b.to(device)) for k, (a, b) in self.pair_rows.items()},
        )  # fmt: skip


def collate(span_rows: Sequence[SpanItem], pair_rows: dict[str, Sequence[PairItem]], span_categories: Sequence[str],
            pad_id: int, token_types: bool) -> TrainBatch:
    """Pad the span rows and every preference category's pairs into one ``TrainBatch``."""
    windows = [item.window for item in span_rows]
    rows_of_pairs = {}
    for name, rows in pair_rows.items():
        start = len(windows)
        windows += [p.chosen for p in rows] + [p.rejected for p in rows]
        chosen = torch.arange(start, start + len(rows))
        rows_of_pairs[name] = (chosen, chosen + len(rows))
    batch = pad_windows(windows, pad_id)
    n, length = batch.input_ids.shape
    labels = {name: token_labels_tensor([item.labels[name] for item in span_rows], n, length) for name in span_categories}
    return TrainBatch(batch.input_ids, batch.attention_mask, batch.token_type_ids if token_types else None, labels,
                      rows_of_pairs)  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Loss and optimisation


def heads_loss(
    outputs: dict[str, torch.Tensor],
    span_labels: dict[str, torch.Tensor],
    pair_rows: dict[str, tuple[torch.Tensor, torch.Tensor]],
    weights: dict[str, torch.Tensor | None],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The sum of every category's loss on one batch.

    Args:
        outputs: the model's ``{category: (B, L, 2) logits or (B,) scores}``.
        span_labels: span category -> ``(B, L)`` labels (``IGNORE_INDEX`` off its markers).
        pair_rows: preference category -> ``(chosen rows, rejected rows)``, each ``(N,)`` row indices
            (``N = 0``: no pairs of that category in this step).
        weights: span category -> ``(2,)`` class weights or None.

    Returns:
        ``(loss, {category: its loss})``, only categories with data in the batch in the dict. A category
        without data adds ``0 x`` its outputs, keeping its head in the graph (DDP requires every parameter
        to get a gradient).
    """
    total = None
    parts: dict[str, float] = {}
    for name, labels in span_labels.items():
        logits = outputs[name]
        if bool((labels != IGNORE_INDEX).any()):
            loss = span_loss(logits, labels, weights.get(name))
            parts[name] = float(loss.detach())
        else:
            loss = logits.sum() * 0.0
        total = loss if total is None else total + loss
    for name, (chosen, rejected) in pair_rows.items():
        scores = outputs[name]  # (B,)
        if chosen.numel():
            loss = bradley_terry_loss(scores[chosen], scores[rejected])
            parts[name] = float(loss.detach())
        else:
            loss = scores.sum() * 0.0
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("heads_loss: no category in the batch")
    return total, parts


def optimizer_step(accelerator, model, optimizer, scheduler, loss: torch.Tensor, max_grad_norm,
                   step: int | None = None) -> None:
    """Backward, optional gradient clipping, optimizer and scheduler step, zeroed gradients. A non-finite
    ``loss`` stops the run naming ``step`` (1-based) before it can spoil the weights; nothing is written."""
    if not torch.isfinite(loss.detach()).all():
        at = f" at step {step}" if step is not None else ""
        raise FinegrainedError(f"train-rm: the training loss is {float(loss.detach())}{at}: the training "
                               "diverged (try a lower train.lr); stopping, output_dir is not written")
    accelerator.backward(loss)
    if max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), float(max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


class BestCheckpoint:
    """Periodic evaluation during training that keeps the best weights (by ``metric``) in CPU memory.

    ``check(step)`` evaluates, logs ``eval/*`` to tensorboard and remembers the weights when they are the
    best so far; ``finish(step)`` evaluates the final weights and restores the remembered ones when those
    scored higher, returning the metrics of the weights kept (with their ``step``).
    """

    def __init__(self, accelerator, model, evaluate, metric: str, trackers: Trackers):
        self.accelerator, self.model, self.evaluate, self.metric, self.trackers = accelerator, model, evaluate, metric, trackers
        self.best: tuple[float, dict, dict] | None = None  # (metric value, metrics, cpu state dict)

    def check(self, step: int) -> None:
        metrics = self.evaluate()
        self.trackers.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        if self.best is None or metrics[self.metric] > self.best[0]:
            state = {k: v.detach().cpu().clone() for k, v in self.accelerator.unwrap_model(self.model).state_dict().items()}
            self.best = (metrics[self.metric], {**metrics, "step": step}, state)

    def finish(self, step: int) -> dict[str, Any]:
        metrics = {**self.evaluate(), "step": step}
        if self.best is not None and self.best[0] > metrics[self.metric]:
            self.accelerator.unwrap_model(self.model).load_state_dict(self.best[2])
            metrics = self.best[1]
            log(f"kept the checkpoint of step {metrics['step']} (best {self.metric})")
        return metrics


@contextmanager
def main_process_output(accelerator, output_dir: Path, report_to=DEFAULT_TRACKERS, config: dict | None = None
                        ) -> Iterator[tuple[Path | None, Trackers]]:  # fmt: skip
    """``(temporary directory, trackers)`` on the main process, which writes ``output_dir`` atomically when
    the block ends (tensorboard events and any local tracker store inside it, ``finegrained.trackers``);
    ``(None, disabled trackers)`` on the other processes (under DDP every process trains, one writes)."""
    if not accelerator.is_main_process:
        yield None, Trackers.disabled()
        return
    for path in remove_stale_temporaries(output_dir.parent, re.escape(output_dir.name)):
        log(f"cleared {path}, left by an interrupted write of {output_dir}")
    with atomic_directory(output_dir, overwrite=True) as tmp:
        with Trackers(report_to, tmp, run_name=output_dir.name) as trackers:
            if config is not None:
                trackers.log_config(config)
            yield tmp, trackers


# ----------------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainingData:
    """A run's examples: ``spans`` the training span records (one category: its labelled examples),
    ``eval_spans`` per span category its labelled evaluation examples, ``pairs`` / ``eval_pairs`` per
    preference category; ``eval_sources`` where each evaluation set came from (dataset key -> text)."""

    spans: list
    eval_spans: dict[str, list]
    pairs: dict[str, list[PreferencePair]]
    eval_pairs: dict[str, list[PreferencePair]]
    eval_sources: dict[str, str]


@dataclass
class EncodedData:
    """The items trained on: ``datasets`` key (``SPANS`` or a preference category) -> items; ``counts``
    what encoding skipped or cut (into metrics.json); ``weights`` span category -> class weights or None."""

    datasets: dict[str, list]
    counts: dict[str, int]
    weights: dict[str, torch.Tensor | None]


class ModelPlan(Protocol):
    """What the loop needs of a model's shape: one category (a plain HF model) or a shared backbone."""

    categories: list  # schema.Category, in head order
    names: str  # the categories, as the progress bar names them
    table_title: str  # of the final metrics table
    best_metric: str  # the metric that picks the checkpoint kept
    schema: Any  # the AnnotationSchema (its file is copied into the directory)

    def forward(self, model, batch: TrainBatch) -> dict[str, torch.Tensor]: ...
    schedule: Callable[..., BatchSchedule]  # shuffled_epochs or wrapping_streams
    def judge(self, model, tokenizer, metadata: dict, device, batch_size: int): ...
    def category_judge(self, judge, name: str): ...
    def evaluate(self, judge, data: TrainingData) -> dict[str, Any]: ...
    def set_normalisation(self, metadata: dict, name: str, stats: dict) -> None: ...
    def summary(self, metrics: dict, data: TrainingData, encoded: EncodedData) -> dict[str, Any]: ...


@dataclass
class Built:
    """The model to train, its tokenizer, learning rate, input length, whether it takes the segment
    token types (``span_model.segment_type``) and its ``finegrained.json``."""

    model: torch.nn.Module
    tokenizer: Any
    lr: float
    max_length: int
    token_types: bool
    metadata: dict = field(default_factory=dict)


def fit(cfg, plan: ModelPlan, data: TrainingData, built: Built, encoded: EncodedData) -> dict[str, Any]:
    """Train ``built.model`` on ``encoded`` under ``cfg.train``, keep the best weights, write ``cfg.output_dir``."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    tcfg = cfg.train
    accelerator = Accelerator(cpu=(cfg.get("device") or None) == "cpu", mixed_precision=str(tcfg.get("mixed_precision", "no")))
    if accelerator.is_main_process:
        warn_if_slow_bf16(accelerator.device.type, accelerator.mixed_precision, "train-rm train.mixed_precision=bf16")
    batch_size, epochs = int(tcfg.batch_size), int(tcfg.epochs)
    planned_steps = max(1, epochs * max(math.ceil(len(d) / batch_size) for d in encoded.datasets.values()))
    optimizer = torch.optim.AdamW(built.model.parameters(), lr=built.lr, weight_decay=float(tcfg.weight_decay))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(float(tcfg.warmup_ratio) * planned_steps), planned_steps)
    model, optimizer, scheduler = accelerator.prepare(built.model, optimizer, scheduler)
    schedule = plan.schedule(accelerator, encoded.datasets, batch_size, int(cfg.seed))
    weights = {k: (None if w is None else w.to(accelerator.device)) for k, w in encoded.weights.items()}
    eval_batch_size = int(tcfg.eval_batch_size)

    def evaluate_now() -> dict[str, Any]:
        judge = plan.judge(accelerator.unwrap_model(model), built.tokenizer, built.metadata, accelerator.device, eval_batch_size)
        return plan.evaluate(judge, data)

    def train_step(step: int) -> torch.Tensor:
        rows = schedule.rows(step)
        batch = collate(rows.get(SPANS, []), {k: v for k, v in rows.items() if k != SPANS}, list(encoded.weights),
                        built.tokenizer.pad_token_id, built.token_types).to(accelerator.device)  # fmt: skip
        with accelerator.autocast():
            outputs = plan.forward(model, batch)
        loss, parts = heads_loss(outputs, batch.labels, batch.pair_rows, weights)
        optimizer_step(accelerator, model, optimizer, scheduler, loss, tcfg.get("max_grad_norm"), step)
        per_head = {f"train/loss_{name}": value for name, value in parts.items()} if len(plan.categories) > 1 else {}
        trackers.log({"train/loss": loss.item(), **per_head, "train/lr": scheduler.get_last_lr()[0]}, step)
        return loss

    steps = epochs * schedule.steps_per_epoch
    with main_process_output(accelerator, Path(cfg.output_dir), report_to_of(cfg), to_container(cfg)) as (tmp, trackers):
        checkpoints = BestCheckpoint(accelerator, model, evaluate_now, plan.best_metric, trackers)
        progress = Progress(steps, f"train-rm {plan.names}", bar=bool(tcfg.get("progress", True)),
                            enabled=accelerator.is_main_process)  # fmt: skip
        run_steps(model, steps, schedule.steps_per_epoch, train_step, checkpoints, int(tcfg.get("eval_every", 0) or 0), progress)
        metrics = checkpoints.finish(steps)
        unwrapped = accelerator.unwrap_model(model).to("cpu").float()
        if data.pairs:
            measure_normalisation(plan, plan.judge(unwrapped, built.tokenizer, built.metadata, "cpu", eval_batch_size),
                                  data.pairs, built.metadata)  # fmt: skip
        metrics = plan.summary(metrics, data, encoded)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        built.metadata["metrics"] = numbers
        trackers.log({f"final/{k}": v for k, v in numbers.items()}, steps)
        if tmp is not None:
            save_reward_model(tmp, unwrapped, built.tokenizer, built.metadata, metrics, plan.schema.source)
    if accelerator.is_main_process:
        print(format_metrics_table(numbers, plan.table_title))
        log(f"wrote {cfg.output_dir}")
    return metrics


def run_steps(model, steps: int, steps_per_epoch: int, train_step: Callable[[int], torch.Tensor],
              checkpoints: BestCheckpoint, eval_every: int, progress: Progress) -> None:
    """``steps`` training steps shown by ``progress``, evaluating every ``eval_every`` (0: never) before the last."""
    model.train()
    for step in range(1, steps + 1):
        loss = train_step(step)
        progress.update(1, loss=round(loss.item(), 4), epoch=(step - 1) // steps_per_epoch)
        if eval_every and step % eval_every == 0 and step < steps:
            checkpoints.check(step)
    progress.close()


def measure_normalisation(plan: ModelPlan, judge, pairs: dict[str, list[PreferencePair]], metadata: dict) -> None:
    """Each preference head's normalisation: mean and std of its scores over the unique training outputs
    (computed, never hand-copied)."""
    for name, category_pairs in pairs.items():
        unique = sorted({(p.prompt, t) for p in category_pairs for t in (p.chosen, p.rejected)})
        scores = plan.category_judge(judge, name).score_sequences([u[0] for u in unique], [u[1] for u in unique])
        plan.set_normalisation(metadata, name, normalisation_stats(scores))
