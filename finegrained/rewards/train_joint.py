"""``finegrained train-rm categories=[...]``: several categories' reward models on one shared backbone.

    finegrained train-rm categories=[relevance,factuality,completeness] data.train=spans.jsonl \\
        data.preferences=prefs.jsonl output_dir=rm/joint

One backbone, one head per category (``joint_model``). A training step runs a batch of span records
(labelled for every span category at once: one input, markers at the union of the segment ends) and a
batch of pairs per preference category through the backbone together, and adds the losses: each span
category's class-weighted cross-entropy on its own markers and each preference category's Bradley-Terry
loss. An epoch is one pass over every dataset: the largest has a batch in every step, a smaller one in
evenly spread steps (``in_step``), so each category sees its data as often as its own model would.
``train.batch_size`` counts each dataset's batch (split across processes under DDP).

The output directory, written atomically, is loaded by ``inference.load_judge`` (a ``JointJudge``) and
named once per category in a reward config (see ``scorer``). Metrics are flat, ``<category>/<metric>``,
plus ``mean_accuracy`` (mean of the span categories' segment accuracy and the preference categories'
pairwise accuracy), the default for choosing the best checkpoint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import log, to_container
from ..config_checks import warn_if_one_class
from ..errors import FinegrainedError
from ..io import atomic_directory
from ..schema import Category
from ..trackers import report_to_of
from .context import PromptView, joint_prompt_view
from .evaluate import evaluate_joint_span_judge, evaluate_preference_judge, format_metrics_table
from .inference import FORMAT_VERSION, JOINT_KIND
from .joint_model import JointJudge, JointRewardModel, encode_joint_input
from .preference_model import PreferencePair, bradley_terry_loss, normalisation_stats
from .span_model import (
    IGNORE_INDEX,
    LABEL_ERROR,
    LABEL_MAP,
    MARKER_TOKEN,
    InputLayout,
    SpanWindow,
    class_weights,
    pad_windows,
    segment_type_count,
    span_examples_from_records,
    span_loss,
)
from .train import (
    LR_FROM_SCRATCH,
    LR_PRETRAINED,
    PREFERENCE_METRICS_FOR_BEST,
    BestCheckpoint,
    SPAN_METRICS_FOR_BEST,
    _split_holdout,
    backbone_max_length,
    build_pretrained_backbone,
    build_tiny_backbone,
    check_output_dir,
    file_sha256,
    main_process_output,
    optimizer_step,
    save_reward_model,
)

MEAN_ACCURACY = "mean_accuracy"


@dataclass
class SpanItem:
    """One completion encoded for the joint model: per span category, per-token labels (markers only)."""

    window: SpanWindow
    labels: dict[str, list[int]]


@dataclass
class PairItem:
    chosen: SpanWindow
    rejected: SpanWindow


class JointEncoder:
    """Segments texts at every span granularity and encodes them with the joint layout."""

    def __init__(self, tokenizer, segmentation, span_categories: Sequence[Category], view: PromptView,
                 max_length: int, n_types: int):
        from ..segment import get_segmenter

        self.tokenizer = tokenizer
        self.layout = InputLayout.for_tokenizer(tokenizer)
        self.marker_id = tokenizer.convert_tokens_to_ids(MARKER_TOKEN)
        self.segmenter = get_segmenter(segmentation)
        self.span_categories = list(span_categories)
        self.granularities = sorted({c.granularity for c in self.span_categories})
        self.view = view
        self.max_length = max_length
        self.n_types = n_types

    def segment(self, texts: Sequence[str]) -> list[dict[str, list]]:
        """Per text, granularity -> segments."""
        many = self.segmenter.segment_many(list(texts), self.granularities) if self.granularities else {}
        return [{g: many[g][i] for g in self.granularities} for i in range(len(texts))]

    def encode(self, prompt: str, completion: str, segments: dict[str, list]):
        return encode_joint_input(
            self.tokenizer, self.layout, self.marker_id, self.view.of(prompt), completion,
            segments, self.max_length, self.n_types,
        )  # fmt: skip

    def span_items(self, records, schema, min_overlap_words: int) -> tuple[list[SpanItem], dict[str, int]]:
        """Encode span records labelled by ``finegrained.labels`` under ``schema``'s rules; completions that do
        not fit in one window, and records whose segments are ignored for every category, are skipped (counted).
        A segment ignored for a category has ``IGNORE_INDEX`` on its marker in that category's labels."""
        from ..labels import labels_by_category

        items, too_long, prompt_cut, all_ignored = [], 0, 0, 0
        all_segments = self.segment([r.completion for r in records])
        for record, segments in zip(records, all_segments):
            segment_labels = labels_by_category(
                record.completion, segments, record.spans, schema, self.span_categories, min_overlap_words
            )
            if all(labels and all(y is None for y in labels) for labels in segment_labels.values()):
                all_ignored += 1
                continue
            windows, index = self.encode(record.prompt, record.completion, segments)
            if not windows[0].whole_completion:
                too_long += 1
                continue
            window = windows[0]
            prompt_cut += window.prompt_tokens_kept < window.prompt_tokens_total
            labels = {}
            for category in self.span_categories:
                by_union = dict(zip(index[category.granularity], segment_labels[category.name]))
                token_labels = [IGNORE_INDEX] * len(window.input_ids)
                for position, union_index in zip(window.marker_positions, window.segment_indices):
                    if by_union.get(union_index) is not None:
                        token_labels[position] = int(by_union[union_index])
                labels[category.name] = token_labels
            items.append(SpanItem(window, labels))
        return items, {"skipped_too_long": too_long, "prompt_truncated": prompt_cut, "skipped_all_ignored": all_ignored}

    def pair_items(self, pairs: Sequence[PreferencePair]) -> tuple[list[PairItem], int]:
        """Encode pairs; a pair with an output that does not fit in one window is skipped (counted)."""
        texts = [t for p in pairs for t in (p.chosen, p.rejected)]
        all_segments = self.segment(texts)
        items, too_long = [], 0
        for k, pair in enumerate(pairs):
            chosen, _ = self.encode(pair.prompt, pair.chosen, all_segments[2 * k])
            rejected, _ = self.encode(pair.prompt, pair.rejected, all_segments[2 * k + 1])
            if not (chosen[0].whole_completion and rejected[0].whole_completion):
                too_long += 1
                continue
            items.append(PairItem(chosen[0], rejected[0]))
        return items, too_long


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


def token_labels_tensor(rows: Sequence[Sequence[int]], n_rows: int, length: int) -> torch.Tensor:
    """``(n_rows, length)`` labels: ``rows`` on the first rows, right-padded; ``IGNORE_INDEX`` elsewhere."""
    out = torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def joint_loss(
    outputs: dict[str, torch.Tensor],
    span_labels: dict[str, torch.Tensor],
    pair_rows: dict[str, tuple[torch.Tensor, torch.Tensor]],
    weights: dict[str, torch.Tensor | None],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The sum of every category's loss on one joint batch.

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
        raise ValueError("joint_loss: no category in the batch")
    return total, parts


def mean_accuracy(metrics: dict[str, Any], categories: Sequence[Category]) -> float:
    """Mean over categories of segment accuracy (span) or pairwise accuracy (preference)."""
    values = [
        metrics[f"{c.name}/{'segment_accuracy' if c.kind == 'span' else 'pairwise_accuracy'}"] for c in categories
    ]
    return sum(values) / len(values)


def joint_metadata(categories: Sequence[Category], *, max_length: int, segmentation, schema, data: dict,
                   training: dict, backbone: str, min_overlap_words: int, dropout: float,
                   question_pattern: str | None = None) -> dict[str, Any]:
    """``finegrained.json`` of a joint model; refuses categories of different context modes."""
    import dataclasses

    return {
        "format_version": FORMAT_VERSION,
        "kind": JOINT_KIND,
        **joint_prompt_view(categories, question_pattern).to_metadata(),  # what every category reads of the prompt
        "categories": {
            c.name: {"kind": c.kind, "granularity": c.granularity, "context": c.context,
                     "error_types": list(c.error_types), "normalisation": None}
            for c in categories
        },
        "label_map": dict(LABEL_MAP),
        "marker_token": MARKER_TOKEN,
        "max_length": int(max_length),
        "min_overlap_words": int(min_overlap_words),
        "segmentation": dataclasses.asdict(segmentation),
        "schema": {"name": schema.name, "sha256": schema.sha256} if schema is not None else {},
        "data": data,
        "backbone": backbone,
        "dropout": float(dropout),
        "training": training,
    }


def _categories(cfg, schema) -> list[Category]:
    names = list(cfg.categories) if not isinstance(cfg.categories, str) else [cfg.categories]
    if len(set(names)) != len(names):
        raise FinegrainedError(f"categories={names}: a category is listed twice")
    out = []
    for name in names:
        try:
            out.append(schema.category(str(name)))
        except KeyError as e:
            raise FinegrainedError(f"categories: {e.args[0]}") from None
    return out


def train_joint_reward_model(cfg) -> dict[str, Any]:
    """Run one ``train-rm categories=[...]`` configuration end to end; returns the final metrics."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    from ..progress import Progress

    from ..data import load_span_records
    from ..schema import load_schema
    from .preference_model import load_preference_pairs

    if not cfg.get("output_dir"):
        raise FinegrainedError("finegrained train-rm: set output_dir=...")
    schema = load_schema(cfg.schema)
    categories = _categories(cfg, schema)
    view = joint_prompt_view(categories, schema.question_pattern)  # one input for all: one context mode
    span_categories = [c for c in categories if c.kind == "span"]
    preference_categories = [c for c in categories if c.kind == "preference"]
    data = cfg.data
    if span_categories and not data.get("train"):
        raise FinegrainedError(f"finegrained train-rm: span categories {[c.name for c in span_categories]} need data.train=<span jsonl>")
    if preference_categories and not data.get("preferences"):
        raise FinegrainedError(
            f"finegrained train-rm: preference categories {[c.name for c in preference_categories]} need "
            "data.preferences=<preference jsonl>"
        )
    for key in ("train", "eval", "preferences", "eval_preferences"):
        if data.get(key) and not Path(data[key]).is_file():
            raise FinegrainedError(f"data.{key}={data[key]}: no such file")
    output_dir = Path(cfg.output_dir)
    check_output_dir(output_dir, bool(cfg.get("overwrite", False)))
    seed = int(cfg.seed)
    random.seed(seed)
    torch.manual_seed(seed)
    tcfg = cfg.train
    model_cfg = to_container(cfg.model)
    min_overlap = int(cfg.get("min_overlap_words", 1))
    fraction = float(data.get("eval_fraction", 0.0))
    best_metric = tcfg.get("best_metric") or MEAN_ACCURACY
    allowed = [MEAN_ACCURACY] + [
        f"{c.name}/{m}" for c in categories for m in (SPAN_METRICS_FOR_BEST if c.kind == "span" else PREFERENCE_METRICS_FOR_BEST)
    ]
    if best_metric not in allowed:
        raise FinegrainedError(f"train.best_metric={best_metric}: expected one of {', '.join(allowed)}")
    if tcfg.get("class_weighting", "balanced") not in ("balanced", "none"):
        raise FinegrainedError(f"train.class_weighting={tcfg.class_weighting}: expected balanced or none")
    eval_every = int(tcfg.get("eval_every", 0) or 0)

    # 1. data: span records (every span category labels the same records) and pairs per preference category
    records, eval_records, eval_sources = [], [], {}
    if span_categories:
        records = load_span_records(data.train, schema)
        if data.get("eval"):
            eval_records = load_span_records(data.eval, schema)
            eval_sources["spans"] = "data.eval"
        else:
            records, eval_records = _split_holdout(records, fraction, seed)
            eval_sources["spans"] = f"held out {len(eval_records)} of data.train" if eval_records else "data.train"
            eval_records = eval_records or records
    pairs: dict[str, list[PreferencePair]] = {}
    eval_pairs: dict[str, list[PreferencePair]] = {}
    for c in preference_categories:
        pairs[c.name] = load_preference_pairs(data.preferences, schema, c)
        if data.get("eval_preferences"):
            eval_pairs[c.name] = load_preference_pairs(data.eval_preferences, schema, c)
            eval_sources[c.name] = "data.eval_preferences"
        else:
            pairs[c.name], held = _split_holdout(pairs[c.name], fraction, seed)
            eval_sources[c.name] = f"held out {len(held)} of data.preferences" if held else "data.preferences"
            eval_pairs[c.name] = held or pairs[c.name]

    # a prompt the view cannot read is refused here, naming the record
    view.check_records(records, data.get("train"))
    view.check_records(eval_records, data.get("eval") or data.get("train"))
    for name in pairs:
        view.check_records(pairs[name], data.preferences)
        view.check_records(eval_pairs[name], data.get("eval_preferences") or data.preferences)

    # 2. backbone, shared by every category
    texts = [r.completion for r in records] + [t for ps in pairs.values() for p in ps for t in (p.chosen, p.rejected)]
    texts += view.of_many([r.prompt for r in records] + [p.prompt for ps in pairs.values() for p in ps]) or []
    name_or_path = model_cfg.get("name_or_path")
    if name_or_path:
        tokenizer, backbone = build_pretrained_backbone("joint", str(name_or_path))
        lr = float(tcfg.lr) if tcfg.get("lr") is not None else LR_PRETRAINED
    else:
        tokenizer, backbone = build_tiny_backbone("joint", texts, model_cfg, int(cfg.max_length))
        lr = float(tcfg.lr) if tcfg.get("lr") is not None else LR_FROM_SCRATCH
    max_length = backbone_max_length(backbone, tokenizer, int(cfg.max_length))
    dropout = float(model_cfg.get("dropout", 0.1))
    model = JointRewardModel(backbone, {c.name: c.kind for c in categories}, dropout)

    # 3. encode
    n_types = segment_type_count(model)
    encoder = JointEncoder(tokenizer, schema.segmentation, span_categories, view, max_length, n_types)
    span_items, counts = encoder.span_items(records, schema, min_overlap)
    pair_items: dict[str, list[PairItem]] = {}
    for name, ps in pairs.items():
        pair_items[name], counts[f"{name}/skipped_too_long"] = encoder.pair_items(ps)
    weights: dict[str, torch.Tensor | None] = {}
    for c in span_categories:
        labelled = [y for item in span_items for y in item.labels[c.name] if y != IGNORE_INDEX]
        n_errors = sum(1 for y in labelled if y == LABEL_ERROR)
        fraction_error = n_errors / len(labelled) if labelled else 0.0
        warn_if_one_class(c.name, len(labelled), n_errors, f"data.train={cfg.data.train}")
        weights[c.name] = class_weights(fraction_error) if tcfg.get("class_weighting", "balanced") == "balanced" else None
        log(f"train-rm {c.name}: {len(labelled)} segments, error fraction {fraction_error:.3f}")
    for name, items in pair_items.items():
        log(f"train-rm {name}: {len(items)} preference pairs")
    if counts.get("skipped_too_long") or any(v for k, v in counts.items() if k.endswith("/skipped_too_long")):
        log(f"warning: skipped inputs whose completion alone exceeds max_length={max_length} tokens: {counts}")
    datasets = ([span_items] if span_categories else []) + list(pair_items.values())
    if any(not d for d in datasets):
        raise FinegrainedError("finegrained train-rm: a category has no usable training examples (see warnings above)")

    # 4. optimisation
    batch_size = int(tcfg.batch_size)
    device_name = cfg.get("device") or None
    accelerator = Accelerator(cpu=device_name == "cpu", mixed_precision=str(tcfg.get("mixed_precision", "no")))
    steps_per_epoch = max(math.ceil(len(d) / batch_size) for d in datasets)
    total_steps = max(1, int(tcfg.epochs) * steps_per_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(tcfg.weight_decay))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(float(tcfg.warmup_ratio) * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    weights = {k: (None if w is None else w.to(accelerator.device)) for k, w in weights.items()}
    rng = random.Random(seed)
    span_stream = endless_batches(span_items, batch_size, rng) if span_categories else None
    pair_streams = {name: endless_batches(items, batch_size, rng) for name, items in pair_items.items()}
    rank, world = accelerator.process_index, accelerator.num_processes
    pad_id = tokenizer.pad_token_id
    segment_types = n_types >= 2

    metadata = joint_metadata(
        categories, max_length=max_length, segmentation=schema.segmentation, schema=schema,
        data={key: {"path": str(data[key]), "sha256": file_sha256(data[key])}
              for key in ("train", "eval", "preferences", "eval_preferences") if data.get(key)}
        | {"eval_source": eval_sources},
        training=to_container(cfg), backbone=str(name_or_path or "tiny"), min_overlap_words=min_overlap, dropout=dropout,
        question_pattern=schema.question_pattern,
    )  # fmt: skip
    eval_examples = {c.name: span_examples_from_records(eval_records, c, schema.segmentation, min_overlap, schema=schema)
                     for c in span_categories}

    def evaluate_now() -> dict[str, Any]:
        judge = JointJudge(accelerator.unwrap_model(model), tokenizer, metadata, device=accelerator.device,
                           batch_size=int(tcfg.eval_batch_size))
        found = evaluate_joint_span_judge(judge, eval_examples)  # one pass for every span category
        found |= {c.name: evaluate_preference_judge(judge.view(c.name), eval_pairs[c.name]) for c in preference_categories}
        metrics: dict[str, Any] = {f"{c.name}/{k}": v for c in categories for k, v in found[c.name].items()}
        metrics[MEAN_ACCURACY] = mean_accuracy(metrics, categories)
        return metrics

    batches_per_epoch = {name: math.ceil(len(items) / batch_size) for name, items in pair_items.items()}
    span_batches_per_epoch = math.ceil(len(span_items) / batch_size)

    def next_batch(step: int) -> dict[str, Any]:
        """The rows of (1-based) ``step``: a batch of every dataset scheduled for it (``in_step``)."""
        k = (step - 1) % steps_per_epoch
        span_rows = []
        if span_stream is not None and in_step(k, span_batches_per_epoch, steps_per_epoch):
            span_rows = next(span_stream)[rank::world]
        windows = [item.window for item in span_rows]
        pair_rows = {}
        for name, stream in pair_streams.items():
            rows = next(stream)[rank::world] if in_step(k, batches_per_epoch[name], steps_per_epoch) else []
            start = len(windows)
            windows += [p.chosen for p in rows] + [p.rejected for p in rows]
            chosen = torch.arange(start, start + len(rows))
            pair_rows[name] = (chosen, chosen + len(rows))
        batch = pad_windows(windows, pad_id)
        n, length = batch.input_ids.shape
        labels = {c.name: token_labels_tensor([item.labels[c.name] for item in span_rows], n, length) for c in span_categories}
        return {
            "input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids if segment_types else None, "labels": labels, "pair_rows": pair_rows,
        }  # fmt: skip

    device = accelerator.device
    with main_process_output(accelerator, output_dir, report_to_of(cfg), to_container(cfg)) as (tmp, trackers):
        checkpoints = BestCheckpoint(accelerator, model, evaluate_now, best_metric, trackers)
        model.train()
        names = ", ".join(c.name for c in categories)
        progress = Progress(total_steps, f"train-rm {names}", bar=bool(tcfg.get("progress", True)), enabled=accelerator.is_main_process)
        for step in range(1, total_steps + 1):
            batch = next_batch(step)
            with accelerator.autocast():
                types = batch["token_type_ids"].to(device) if batch["token_type_ids"] is not None else None
                outputs = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), types)
            loss, parts = joint_loss(
                outputs, {k: v.to(device) for k, v in batch["labels"].items()},
                {k: (a.to(device), b.to(device)) for k, (a, b) in batch["pair_rows"].items()}, weights,
            )  # fmt: skip
            optimizer_step(accelerator, model, optimizer, scheduler, loss, tcfg.get("max_grad_norm"), step)
            trackers.log({"train/loss": loss.item(), **{f"train/loss_{name}": value for name, value in parts.items()},
                          "train/lr": scheduler.get_last_lr()[0]}, step)  # fmt: skip
            progress.update(1, loss=round(loss.item(), 4), epoch=(step - 1) // steps_per_epoch)
            if eval_every and step % eval_every == 0 and step < total_steps:
                checkpoints.check(step)
        progress.close()

        # 5. final evaluation; keep the best checkpoint when periodic evaluation found a better one
        metrics = checkpoints.finish(total_steps)
        unwrapped = accelerator.unwrap_model(model).to("cpu").float()
        if preference_categories:
            # normalisation statistics over the training outputs (unique texts), computed, never hand-copied
            judge = JointJudge(unwrapped, tokenizer, metadata, device="cpu", batch_size=int(tcfg.eval_batch_size))
            for c in preference_categories:
                unique = sorted({(p.prompt, t) for p in pairs[c.name] for t in (p.chosen, p.rejected)})
                scores = judge.view(c.name).score_sequences([u[0] for u in unique], [u[1] for u in unique])
                metadata["categories"][c.name]["normalisation"] = normalisation_stats(scores)
        metrics = {**metrics, "evaluated_on": eval_sources, "n_train_examples": len(span_items),
                   "n_train_pairs": {k: len(v) for k, v in pair_items.items()}, **counts}
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        metadata["metrics"] = numbers
        trackers.log({f"final/{k}": v for k, v in numbers.items()}, total_steps)
        if tmp is not None:
            save_reward_model(tmp, unwrapped, tokenizer, metadata, metrics, schema.source)
    if accelerator.is_main_process:
        print(format_metrics_table(numbers, f"train-rm {names} (shared backbone)"))
        log(f"wrote {output_dir}")
    return metrics


def init_joint_reward_model_dir(
    categories: Sequence[Category],
    output_dir: str | Path,
    tokenizer,
    *,
    n_layer: int = 2,
    hidden: int = 64,
    n_head: int = 4,
    max_length: int = 512,
    segmentation=None,
    seed: int = 0,
    overwrite: bool = False,
    question_pattern: str | None = None,
) -> Path:
    """Write a valid, randomly initialised (untrained) joint reward-model directory for ``categories``.

    For benchmarks and plumbing tests, like ``train.init_reward_model_dir``; preference categories get
    mean 0, std 1 normalisation. ``tokenizer`` is copied and gets the marker token.
    """
    from ..schema import SegmentationConfig
    from .train import _tiny_model, tokenizer_copy

    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    torch.manual_seed(seed)
    tokenizer = tokenizer_copy(tokenizer, with_marker=True)
    backbone = _tiny_model("joint", tokenizer, {"n_layer": n_layer, "hidden": hidden, "n_head": n_head}, max_length)
    model = JointRewardModel(backbone, {c.name: c.kind for c in categories})
    metadata = joint_metadata(
        categories, max_length=max_length, segmentation=segmentation or SegmentationConfig(), schema=None,
        data={}, training={}, backbone="tiny (untrained)", min_overlap_words=1, dropout=0.1,
        question_pattern=question_pattern,
    )  # fmt: skip
    for c in categories:
        if c.kind == "preference":
            metadata["categories"][c.name]["normalisation"] = {"mean": 0.0, "std": 1.0}
    with atomic_directory(output_dir, overwrite=True) as tmp:
        save_reward_model(tmp, model, tokenizer, metadata, None)
    return output_dir
