"""The reward-model directory: its metadata, how it is written, and untrained ones for benchmarks.

A one-category model's directory is a plain HF token- or sequence-classification model
(``from_pretrained`` loads it) with its tokenizer; a joint model's holds the bare backbone and
``heads.safetensors`` (``joint_model``). Both add ``finegrained.json`` (read by ``inference.load_judge``),
``metrics.json`` when trained, a ``README.md`` model card and a copy of the schema (``schema.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import FinegrainedError
from ..io import atomic_directory, atomic_write_json
from ..model_card import reward_model_card, write_card
from ..schema import Category, SegmentationConfig
from .backbone import ensure_marker_token, tiny_model
from .context import PromptView, joint_prompt_view
from .inference import FORMAT_VERSION, JOINT_KIND, METADATA_FILE, METRICS_FILE
from .joint_model import JointRewardModel
from .span_model import LABEL_MAP, MARKER_TOKEN

SCHEMA_COPY = "schema.yaml"


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
    """``finegrained.json`` of a one-category model."""
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


def joint_metadata(categories: Sequence[Category], *, max_length: int, segmentation, schema, data: dict,
                   training: dict, backbone: str, min_overlap_words: int, dropout: float,
                   question_pattern: str | None = None) -> dict[str, Any]:
    """``finegrained.json`` of a joint model; refuses categories of different context modes."""
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
    category: Category | Sequence[Category],
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
    """Write a valid, randomly initialised (untrained) reward-model directory for ``category``, or a joint
    one for a sequence of categories.

    For benchmarks and plumbing tests: ``load_judge`` accepts it like a trained one. ``tokenizer`` is
    copied (a span or joint model gets the marker token added to the copy). Preference categories get
    ``normalisation`` (one category) or mean 0, std 1. ``question_pattern``: the schema's, for a category
    with ``context: question``.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    torch.manual_seed(seed)
    joint = not isinstance(category, Category)
    tokenizer = tokenizer_copy(tokenizer, with_marker=joint or category.kind == "span")
    sizes = {"n_layer": n_layer, "hidden": hidden, "n_head": n_head}
    segmentation = segmentation or SegmentationConfig()
    if joint:
        model = JointRewardModel(tiny_model("joint", tokenizer, sizes, max_length), {c.name: c.kind for c in category})
        metadata = joint_metadata(
            category, max_length=max_length, segmentation=segmentation, schema=None, data={}, training={},
            backbone="tiny (untrained)", min_overlap_words=1, dropout=0.1, question_pattern=question_pattern,
        )  # fmt: skip
        for c in category:
            if c.kind == "preference":
                metadata["categories"][c.name]["normalisation"] = {"mean": 0.0, "std": 1.0}
    else:
        model = tiny_model(category.kind, tokenizer, sizes, max_length)
        if category.kind == "preference" and normalisation is None:
            normalisation = {"mean": 0.0, "std": 1.0}
        metadata = build_metadata(category, max_length=max_length, segmentation=segmentation,
                                  normalisation=normalisation, backbone="tiny (untrained)",
                                  question_pattern=question_pattern)  # fmt: skip
    with atomic_directory(output_dir, overwrite=True) as tmp:
        save_reward_model(tmp, model, tokenizer, metadata, None)
    return output_dir


def init_joint_reward_model_dir(categories: Sequence[Category], output_dir: str | Path, tokenizer, **options) -> Path:
    """``init_reward_model_dir`` for several categories on one backbone (a joint model)."""
    return init_reward_model_dir(list(categories), output_dir, tokenizer, **options)
