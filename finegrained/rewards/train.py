"""Train a reward model: one category, or several on one shared backbone.

    from finegrained.config import compose
    train_reward_model(compose("train_rm", ["category=factuality", "data.train=spans.jsonl", "output_dir=rm/fact"]))
    train_reward_model(compose("train_rm", ["categories=[relevance,factuality,completeness]",
                                            "data.train=spans.jsonl", "data.preferences=prefs.jsonl", "output_dir=rm/joint"]))

``train_reward_model(cfg)`` takes a composed ``train_rm`` config (``finegrained.config``), prints its
progress and final metrics table (``config.log``, ``progress``) and returns the final metrics; the command
line ``finegrained train-rm`` (``commands.train_rm``) only composes the config and calls it.

``category=<name>``: a span category trains a token classifier on segment markers (``span_model``), a
preference category a one-logit sequence classifier with the Bradley-Terry loss (``preference_model``);
the directory is a plain HF model (``from_pretrained``). ``categories=[...]``: one backbone with one head
per category (``joint_model``), span records from ``data.train`` labelled for every span category at
once and pairs per preference category from ``data.preferences``; metrics are ``<category>/<metric>`` plus
``mean_accuracy`` (mean of the span categories' segment accuracy and the preference categories'
pairwise accuracy), the default for choosing the best checkpoint.

Both are one path (``training.fit``): this module says what differs, as a ``ModelPlan`` (``OneCategory``
or ``SharedBackbone``): which data, which model, how its batches are drawn, judged and described. After
training, the mean and std of each preference head's scores on its training outputs are stored as its
normalisation. The output directory (written atomically, ``directory``) holds the weights (safetensors)
and tokenizer, ``finegrained.json``, ``metrics.json``, ``README.md``, ``schema.yaml`` and tensorboard
events under ``tb/``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..config import log, to_container
from ..config_checks import warn_if_one_class
from ..errors import FinegrainedError
from ..schema import Category
from ..trackers import check_installed, report_to_of
from .backbone import LR_FROM_SCRATCH, LR_PRETRAINED, backbone_max_length, build_pretrained_backbone, build_tiny_backbone
from .context import joint_prompt_view
from .directory import build_metadata, check_output_dir, file_sha256, joint_metadata
from .encoders import JointEncoder, encode_preference_pairs, encode_span_examples
from .evaluate import evaluate_joint_span_judge, evaluate_preference_judge, evaluate_span_judge
from .inference import RewardModelJudge
from .joint_model import JointJudge, JointRewardModel
from .preference_model import load_preference_pairs
from .span_model import IGNORE_INDEX, LABEL_ERROR, class_weights, segment_type_count, span_examples_from_records
from .training import (
    SPANS,
    Built,
    EncodedData,
    TrainingData,
    fit,
    shuffled_epochs,
    split_holdout,
    wrapping_streams,
)

SPAN_METRICS_FOR_BEST = ("segment_accuracy", "error_f1", "error_precision", "error_recall")
PREFERENCE_METRICS_FOR_BEST = ("pairwise_accuracy",)
MEAN_ACCURACY = "mean_accuracy"


def train_reward_model(cfg) -> dict[str, Any]:
    """Run one ``train_rm`` configuration end to end (one category or ``categories=[...]``); returns the
    final metrics (those of ``metrics.json``)."""
    check_installed(report_to_of(cfg))  # a tracker asked for and missing stops the run before any work
    plan = SharedBackbone(cfg) if cfg.get("categories") else OneCategory(cfg)
    seed = int(cfg.seed)
    random.seed(seed)
    torch.manual_seed(seed)
    data = plan.load_data()
    built = plan.build(data)
    encoded = plan.encode(built, data)
    built.metadata = plan.metadata(built.max_length)
    return fit(cfg, plan, data, built, encoded)


def train_and_eval(load, cfg, train_key: str, eval_key: str, none_held: str) -> tuple[list, list, str]:
    """``(train, eval, where eval came from)``: ``data.<eval_key>`` when set, else ``data.eval_fraction`` of
    ``data.<train_key>`` held out, else the training data itself (``none_held`` describes it)."""
    data = cfg.data
    train = load(data[train_key])
    if data.get(eval_key):
        return train, load(data[eval_key]), f"data.{eval_key}"
    train, held = split_holdout(train, float(data.get("eval_fraction", 0.0)), int(cfg.seed))
    return train, held or train, f"held out {len(held)} of data.{train_key}" if held else none_held


def span_class_weights(items, span_categories, data_train, balanced: bool) -> dict[str, torch.Tensor | None]:
    """Per span category, the class weights of its labelled markers (None unless ``balanced``), logged;
    a category whose labels are all one class is warned about. Ignored segments count nowhere."""
    weights: dict[str, torch.Tensor | None] = {}
    for c in span_categories:
        labelled = [y for item in items for y in item.labels[c.name] if y != IGNORE_INDEX]
        n_errors = sum(1 for y in labelled if y == LABEL_ERROR)
        fraction_error = n_errors / len(labelled) if labelled else 0.0
        warn_if_one_class(c.name, len(labelled), n_errors, f"data.train={data_train}")
        weights[c.name] = class_weights(fraction_error) if balanced else None
        shown = None if weights[c.name] is None else weights[c.name].tolist()
        log(f"train-rm {c.name}: {len(items)} examples, {len(labelled)} segments, error fraction "
            f"{fraction_error:.3f}, class weights {shown}")  # fmt: skip
    return weights


class PlanBase:
    """What both model shapes share: the checked settings, the backbone, the class weights."""

    backbone_kind: str  # span | preference | joint (build_tiny_backbone / build_pretrained_backbone)

    def __init__(self, cfg, schema, categories: list[Category], data_keys: tuple[str, ...]):
        self.cfg, self.schema, self.categories = cfg, schema, categories
        self.span_categories = [c for c in categories if c.kind == "span"]
        self.preference_categories = [c for c in categories if c.kind == "preference"]
        self.view = joint_prompt_view(categories, schema.question_pattern)  # one input for all: one context mode
        self.names = ", ".join(c.name for c in categories)
        self.min_overlap = int(cfg.get("min_overlap_words", 1))
        self.model_cfg = to_container(cfg.model)
        self.name_or_path = self.model_cfg.get("name_or_path")
        for key in data_keys:
            if cfg.data.get(key) and not Path(cfg.data[key]).is_file():
                raise FinegrainedError(f"data.{key}={cfg.data[key]}: no such file")
        check_output_dir(Path(cfg.output_dir), bool(cfg.get("overwrite", False)))
        weighting = cfg.train.get("class_weighting", "balanced")
        if weighting not in ("balanced", "none"):
            raise FinegrainedError(f"train.class_weighting={weighting}: expected balanced or none")
        self.balanced = weighting == "balanced"

    def choose_best_metric(self, allowed: list[str], default: str) -> None:
        self.best_metric = self.cfg.train.get("best_metric") or default
        if self.best_metric not in allowed:
            raise FinegrainedError(f"train.best_metric={self.best_metric}: expected one of {', '.join(allowed)}")

    def build(self, data: TrainingData) -> Built:
        """The backbone (from config, tokenizer trained on the training texts; or ``model.name_or_path``)."""
        texts = [r.completion for r in data.spans] + [t for ps in data.pairs.values() for p in ps for t in (p.chosen, p.rejected)]
        texts += self.view.of_many([r.prompt for r in data.spans] + [p.prompt for ps in data.pairs.values() for p in ps]) or []
        lr = self.cfg.train.get("lr")
        if self.name_or_path:
            tokenizer, backbone = build_pretrained_backbone(self.backbone_kind, str(self.name_or_path))
            lr = float(lr) if lr is not None else LR_PRETRAINED
        else:
            tokenizer, backbone = build_tiny_backbone(self.backbone_kind, texts, self.model_cfg, int(self.cfg.max_length))
            lr = float(lr) if lr is not None else LR_FROM_SCRATCH
        max_length = backbone_max_length(backbone, tokenizer, int(self.cfg.max_length))
        model = self.wrap(backbone)
        token_types = self.backbone_kind != "preference" and segment_type_count(model) >= 2
        return Built(model, tokenizer, lr, max_length, token_types)

    def wrap(self, backbone):
        return backbone

    def training_config(self) -> dict:
        return {"training": to_container(self.cfg), "backbone": str(self.name_or_path or "tiny"),
                "min_overlap_words": self.min_overlap, "question_pattern": self.schema.question_pattern}


def _schema(cfg):
    from ..schema import load_schema

    return load_schema(cfg.schema)


class OneCategory(PlanBase):
    """``category=<name>``: a plain HF token classifier (span) or sequence classifier (preference)."""

    schedule = staticmethod(shuffled_epochs)

    def __init__(self, cfg):
        for key in ("category", "output_dir"):
            if not cfg.get(key):
                raise FinegrainedError(f"finegrained train-rm: set {key}=...")
        if not cfg.data.get("train"):
            raise FinegrainedError("finegrained train-rm: set data.train=<jsonl>")
        schema = _schema(cfg)
        try:
            category = schema.category(cfg.category)
        except KeyError as e:
            raise FinegrainedError(str(e.args[0])) from None
        super().__init__(cfg, schema, [category], ("train", "eval"))
        self.category, self.kind, self.backbone_kind = category, category.kind, category.kind
        self.table_title = f"train-rm {category.name}"
        allowed = SPAN_METRICS_FOR_BEST if self.kind == "span" else PREFERENCE_METRICS_FOR_BEST
        self.choose_best_metric(list(allowed), allowed[0])

    def load_data(self) -> TrainingData:
        """Labelled examples (span) or pairs (preference) from ``data.train``; evaluation from ``data.eval``."""
        from .span_model import load_span_examples

        schema, category, cfg = self.schema, self.category, self.cfg
        if self.kind == "span":
            load = lambda path: load_span_examples(path, schema, category, schema.segmentation, self.min_overlap)  # noqa: E731
        else:
            load = lambda path: load_preference_pairs(path, schema, category)  # noqa: E731
        train, held, self.eval_source = train_and_eval(load, cfg, "train", "eval", "data.train (no eval data)")
        if not train:
            raise FinegrainedError(f"data.train={cfg.data.train}: no training examples for category {category.name!r}")
        # what the model reads of each prompt; a prompt it cannot read is refused here, naming the record
        self.view.check_records(train, cfg.data.train)
        self.view.check_records(held, cfg.data.eval or cfg.data.train)
        name, sources = category.name, {category.name: self.eval_source}
        if self.kind == "span":
            return TrainingData(train, {name: held}, {}, {}, sources)
        return TrainingData([], {}, {name: train}, {name: held}, sources)

    def encode(self, built: Built, data: TrainingData) -> EncodedData:
        name, max_length = self.category.name, built.max_length
        if self.kind == "span":
            items, counts = encode_span_examples(built.tokenizer, data.spans, name, self.view, max_length,
                                                 segment_type_count(built.model))  # fmt: skip
            weights = span_class_weights(items, [self.category], self.cfg.data.train, self.balanced)
            # ignored segments (IGNORE_INDEX on their markers) are neither in the loss nor in the class weights
            n_labelled = sum(1 for item in items for y in item.labels[name] if y != IGNORE_INDEX)
            counts["n_train_ignored"] = sum(len(item.window.marker_positions) for item in items) - n_labelled
            log_span_counts(name, counts, max_length)
        else:
            items, counts = encode_preference_pairs(built.tokenizer, data.pairs[name], self.view, max_length)
            weights = {}
            log(f"train-rm {name}: {len(items)} preference pairs")
            if counts["completion_truncated"]:
                log(f"warning: cut the end of {counts['completion_truncated']} completion(s) to fit max_length={max_length}")
        if not items:
            raise FinegrainedError(f"data.train={self.cfg.data.train}: no usable training examples (see warnings above)")
        return EncodedData({SPANS if self.kind == "span" else name: items}, counts, weights)

    def metadata(self, max_length: int) -> dict:
        cfg, schema = self.cfg, self.schema
        data = {"train": {"path": str(cfg.data.train), "sha256": file_sha256(cfg.data.train)},
                "eval": {"path": str(cfg.data.eval), "sha256": file_sha256(cfg.data.eval)} if cfg.data.get("eval") else None,
                "eval_source": self.eval_source}  # fmt: skip
        return build_metadata(self.category, max_length=max_length, segmentation=schema.segmentation,
                              schema_name=schema.name, schema_sha256=schema.sha256, data=data, **self.training_config())

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        extra = {} if batch.token_type_ids is None else {"token_type_ids": batch.token_type_ids}
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits
        return {self.category.name: logits if self.kind == "span" else logits[:, 0]}  # (B, L, 2) or (B,)

    def judge(self, model, tokenizer, metadata: dict, device, batch_size: int) -> RewardModelJudge:
        return RewardModelJudge(model, tokenizer, metadata, device=device, batch_size=batch_size)

    def category_judge(self, judge, name: str):
        return judge

    def evaluate(self, judge, data: TrainingData) -> dict[str, Any]:
        if self.kind == "span":
            return evaluate_span_judge(judge, data.eval_spans[self.category.name])
        return evaluate_preference_judge(judge, data.eval_pairs[self.category.name])

    def set_normalisation(self, metadata: dict, name: str, stats: dict) -> None:
        metadata["normalisation"] = stats

    def summary(self, metrics: dict, data: TrainingData, encoded: EncodedData) -> dict[str, Any]:
        (items,) = encoded.datasets.values()
        return {**metrics, "evaluated_on": self.eval_source, "n_train_examples": len(items), **encoded.counts}


def log_span_counts(name: str, counts: dict[str, int], max_length: int) -> None:
    """Notes on the span examples encoding skipped or cut."""
    if counts.get("n_train_ignored"):
        log(f"train-rm {name}: {counts['n_train_ignored']} ignored segments")
    if counts["skipped_too_long"]:
        log(f"warning: skipped {counts['skipped_too_long']} example(s) whose completion alone exceeds "
            f"max_length={max_length} tokens")
    if counts["skipped_all_ignored"]:
        log(f"note: skipped {counts['skipped_all_ignored']} example(s) whose segments are all ignored "
            f"for {name} (ignore_overlapping)")
    if counts["prompt_truncated"]:
        log(f"note: cut the prompt of {counts['prompt_truncated']} example(s) to fit max_length={max_length}")


def categories_of(cfg, schema) -> list[Category]:
    """The schema's categories named by ``categories=[...]``, each once."""
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


def mean_accuracy(metrics: dict[str, Any], categories) -> float:
    """Mean over categories of segment accuracy (span) or pairwise accuracy (preference)."""
    values = [
        metrics[f"{c.name}/{'segment_accuracy' if c.kind == 'span' else 'pairwise_accuracy'}"] for c in categories
    ]
    return sum(values) / len(values)


class SharedBackbone(PlanBase):
    """``categories=[...]``: one backbone with one head per category (``joint_model.JointRewardModel``).

    A step runs a batch of span records (labelled for every span category at once: one input, markers at
    the union of the segment ends) and a batch of pairs per preference category through the backbone
    together. Every dataset is drawn from one seeded stream that wraps around (``endless_batches``);
    ``train.batch_size`` counts each dataset's batch (split across processes under DDP).
    """

    backbone_kind = "joint"
    schedule = staticmethod(wrapping_streams)

    def __init__(self, cfg):
        if cfg.get("category"):
            raise FinegrainedError("finegrained train-rm: give category=<name> (one model) or categories=[...] "
                                   "(one shared backbone), not both")
        if not cfg.get("output_dir"):
            raise FinegrainedError("finegrained train-rm: set output_dir=...")
        schema = _schema(cfg)
        categories = categories_of(cfg, schema)
        super().__init__(cfg, schema, categories, ("train", "eval", "preferences", "eval_preferences"))
        if self.span_categories and not cfg.data.get("train"):
            raise FinegrainedError(f"finegrained train-rm: span categories {[c.name for c in self.span_categories]} "
                                   "need data.train=<span jsonl>")
        if self.preference_categories and not cfg.data.get("preferences"):
            raise FinegrainedError(
                f"finegrained train-rm: preference categories {[c.name for c in self.preference_categories]} need "
                "data.preferences=<preference jsonl>"
            )
        self.table_title = f"train-rm {self.names} (shared backbone)"
        allowed = [MEAN_ACCURACY] + [
            f"{c.name}/{m}" for c in categories for m in (SPAN_METRICS_FOR_BEST if c.kind == "span" else PREFERENCE_METRICS_FOR_BEST)
        ]
        self.choose_best_metric(allowed, MEAN_ACCURACY)

    def load_data(self) -> TrainingData:
        """Span records (every span category labels the same records) and pairs per preference category."""
        from ..data import load_span_records

        schema, data, view = self.schema, self.cfg.data, self.view
        records, eval_records, self.eval_sources = [], [], {}
        if self.span_categories:
            records, eval_records, self.eval_sources["spans"] = train_and_eval(
                lambda path: load_span_records(path, schema), self.cfg, "train", "eval", "data.train")
        pairs, eval_pairs = {}, {}
        for c in self.preference_categories:
            pairs[c.name], eval_pairs[c.name], self.eval_sources[c.name] = train_and_eval(
                lambda path: load_preference_pairs(path, schema, c), self.cfg, "preferences", "eval_preferences",
                "data.preferences")  # fmt: skip
        # a prompt the view cannot read is refused here, naming the record
        view.check_records(records, data.get("train"))
        view.check_records(eval_records, data.get("eval") or data.get("train"))
        for name in pairs:
            view.check_records(pairs[name], data.preferences)
            view.check_records(eval_pairs[name], data.get("eval_preferences") or data.preferences)
        eval_spans = {c.name: span_examples_from_records(eval_records, c, schema.segmentation, self.min_overlap, schema=schema)
                      for c in self.span_categories}  # fmt: skip
        return TrainingData(records, eval_spans, pairs, eval_pairs, self.eval_sources)

    def wrap(self, backbone) -> JointRewardModel:
        self.dropout = float(self.model_cfg.get("dropout", 0.1))
        return JointRewardModel(backbone, {c.name: c.kind for c in self.categories}, self.dropout)

    def encode(self, built: Built, data: TrainingData) -> EncodedData:
        max_length = built.max_length
        encoder = JointEncoder(built.tokenizer, self.schema.segmentation, self.span_categories, self.view, max_length,
                               segment_type_count(built.model))  # fmt: skip
        span_items, counts = encoder.span_items(data.spans, self.schema, self.min_overlap)
        datasets = {SPANS: span_items} if self.span_categories else {}
        for name, pairs in data.pairs.items():
            datasets[name], counts[f"{name}/skipped_too_long"] = encoder.pair_items(pairs)
        weights = span_class_weights(span_items, self.span_categories, self.cfg.data.get("train"), self.balanced)
        for name in data.pairs:
            log(f"train-rm {name}: {len(datasets[name])} preference pairs")
        if counts.get("skipped_too_long") or any(v for k, v in counts.items() if k.endswith("/skipped_too_long")):
            log(f"warning: skipped inputs whose completion alone exceeds max_length={max_length} tokens: {counts}")
        if any(not d for d in datasets.values()):
            raise FinegrainedError("finegrained train-rm: a category has no usable training examples (see warnings above)")
        return EncodedData(datasets, counts, weights)

    def metadata(self, max_length: int) -> dict:
        data = self.cfg.data
        files = {key: {"path": str(data[key]), "sha256": file_sha256(data[key])}
                 for key in ("train", "eval", "preferences", "eval_preferences") if data.get(key)}  # fmt: skip
        return joint_metadata(self.categories, max_length=max_length, segmentation=self.schema.segmentation,
                              schema=self.schema, data=files | {"eval_source": self.eval_sources},
                              dropout=self.dropout, **self.training_config())  # fmt: skip

    def forward(self, model, batch) -> dict[str, torch.Tensor]:
        return model(batch.input_ids, batch.attention_mask, batch.token_type_ids)

    def judge(self, model, tokenizer, metadata: dict, device, batch_size: int) -> JointJudge:
        return JointJudge(model, tokenizer, metadata, device=device, batch_size=batch_size)

    def category_judge(self, judge, name: str):
        return judge.view(name)

    def evaluate(self, judge, data: TrainingData) -> dict[str, Any]:
        found = evaluate_joint_span_judge(judge, data.eval_spans)  # one pass for every span category
        found |= {c.name: evaluate_preference_judge(judge.view(c.name), data.eval_pairs[c.name])
                  for c in self.preference_categories}  # fmt: skip
        metrics: dict[str, Any] = {f"{c.name}/{k}": v for c in self.categories for k, v in found[c.name].items()}
        metrics[MEAN_ACCURACY] = mean_accuracy(metrics, self.categories)
        return metrics

    def set_normalisation(self, metadata: dict, name: str, stats: dict) -> None:
        metadata["categories"][name]["normalisation"] = stats

    def summary(self, metrics: dict, data: TrainingData, encoded: EncodedData) -> dict[str, Any]:
        return {**metrics, "evaluated_on": self.eval_sources, "n_train_examples": len(encoded.datasets.get(SPANS, [])),
                "n_train_pairs": {k: len(v) for k, v in encoded.datasets.items() if k != SPANS}, **encoded.counts}
