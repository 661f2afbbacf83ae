"""Judges backed by trained reward-model directories.

``load_judge(model_dir)`` reads ``finegrained.json`` and the HF weights and returns a
``RewardModelJudge``: a span judge ``judge(prompts, completions, segments) -> p_error per segment`` or a
sequence judge ``judge(prompts, completions) -> raw score per completion`` (see docs/ARCHITECTURE.md,
"Judges"). Scoring batches across samples: each chunk of ``batch_size`` inputs is one padded forward
pass under ``torch.inference_mode``; there is no per-sample loop over the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..model_dirs import FORMAT_VERSION, JOINT_KIND, METADATA_FILE, read_reward_metadata
from ..schema import SegmentationConfig
from .backbone import backbone_max_length
from .context import PromptView
from .joint_model import JointJudge, load_joint_model
from .judging import JudgeCall, judging
from .preference_model import encode_sequence_inputs, pad_sequences
from .span_model import InputLayout, encode_span_input, marker_error_probabilities, pad_windows, segment_type_count

__all__ = ["FORMAT_VERSION", "JOINT_KIND", "METADATA_FILE", "METRICS_FILE", "load_judge", "read_metadata"]

METRICS_FILE = "metrics.json"
ROLE = "a reward model"

Span = tuple[int, int]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """``finegrained.json`` of a reward-model directory, checked against its schema (``model_dirs``); a user
    error naming every problem when missing, unreadable or malformed."""
    return read_reward_metadata(model_dir, ROLE)


def load_reward_tokenizer(model_dir: str | Path, model, metadata: dict[str, Any]):
    """The directory's tokenizer, checked: fits the embedding, has a pad token and (span or joint models)
    the marker token of ``finegrained.json``."""
    from ..model_dirs import embedding_rows, fail, load_tokenizer

    tokenizer = load_tokenizer(model_dir, ROLE, embedding_rows(model))
    if tokenizer.pad_token_id is None:
        raise fail(model_dir, ROLE, "its tokenizer has no pad token")
    marker = metadata.get("marker_token")
    if metadata["kind"] != "preference" and marker not in tokenizer.get_vocab():
        raise fail(model_dir, ROLE, f"its tokenizer lacks the marker token {marker!r} named in {METADATA_FILE}")
    return tokenizer


class RewardModelJudge(JudgeCall):
    """A trained reward model as a judge.

    Attributes (from ``finegrained.json``): ``category``, ``granularity``, ``kind`` (``span`` or
    ``preference``), ``prompt_view`` (``context.PromptView``: what the model reads of each prompt;
    raises ``context.NoQuestionFound`` for a prompt it cannot read), ``normalisation`` (``{"mean", "std"}`` for preference models,
    None for span models), ``segmentation`` (the ``SegmentationConfig`` the model was trained with),
    ``max_length``.
    """

    def __init__(self, model, tokenizer, metadata: dict[str, Any], device=None, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = int(batch_size)
        self.category: str = metadata["category"]
        self.granularity: str = metadata["granularity"]
        self.kind: str = metadata["kind"]
        self.prompt_view = PromptView.from_metadata(metadata)
        self.normalisation: dict[str, float] | None = metadata.get("normalisation")
        self.segmentation = SegmentationConfig(**metadata.get("segmentation", {}))
        self.max_length: int = int(metadata["max_length"])
        if getattr(model, "config", None) is not None:
            # never more tokens than the backbone has positions, whatever the metadata says
            self.max_length = backbone_max_length(model, tokenizer, self.max_length)
        self.layout = InputLayout.for_tokenizer(tokenizer)
        self.marker_id = (
            tokenizer.convert_tokens_to_ids(metadata["marker_token"]) if self.kind == "span" else None
        )
        self.pad_id = tokenizer.pad_token_id
        self.n_types = segment_type_count(model)
        self.segment_types = self.kind == "span" and self.n_types >= 2
        #: windows scored beyond the first because a completion alone exceeded max_length
        self.n_split_completions = 0

    def __repr__(self) -> str:
        return f"RewardModelJudge(category={self.category!r}, kind={self.kind!r}, granularity={self.granularity!r})"

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids.to(self.device)}
        return self.model(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), **extra
        ).logits

    def score_segments(
        self, prompts: Sequence[str], completions: Sequence[str], segments: Sequence[Sequence[Span]]
    ) -> list[list[float]]:
        """Probability of error for every segment of every completion.

        Returns:
            Per completion, ``len(segments[i])`` floats in [0, 1] (``[]`` for no segments).
        """
        if not (len(prompts) == len(completions) == len(segments)):
            raise ValueError("prompts, completions and segments must have the same length")
        windows, owners = [], []
        for i, (prompt, completion, segs) in enumerate(zip(prompts, completions, segments)):
            encoded = encode_span_input(
                self.tokenizer, self.layout, self.marker_id,
                self.prompt_view.of(prompt), completion, segs, self.max_length, self.n_types,
            )
            self.n_split_completions += max(len(encoded) - 1, 0)
            windows.extend(encoded)
            owners.extend([i] * len(encoded))
        result = [[0.0] * len(s) for s in segments]
        with judging(self.model):
            for lo in range(0, len(windows), self.batch_size):
                batch = pad_windows(windows[lo : lo + self.batch_size], self.pad_id)
                types = batch.token_type_ids if self.segment_types else None
                logits = self._forward(batch.input_ids, batch.attention_mask, types)  # (B, L, 2)
                for window, owner, probs in zip(
                    batch.windows, owners[lo : lo + self.batch_size], marker_error_probabilities(logits, batch)
                ):
                    for seg, p in zip(window.segment_indices, probs):
                        result[owner][seg] = float(p)
        return result

    def score_sequences(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """One raw score per completion (higher is better); normalise with ``self.normalisation``."""
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions must have the same length")
        encoded = encode_sequence_inputs(
            self.tokenizer, self.layout, self.prompt_view.of_many(prompts), list(completions), self.max_length
        )
        scores: list[float] = []
        with judging(self.model):
            for lo in range(0, len(encoded), self.batch_size):
                input_ids, mask = pad_sequences([e.input_ids for e in encoded[lo : lo + self.batch_size]], self.pad_id)
                logits = self._forward(input_ids, mask)  # (B, 1)
                scores.extend(logits[:, 0].float().cpu().tolist())
        return scores


def load_judge(model_dir: str | Path, device=None, batch_size: int = 32):
    """Load a reward-model directory written by ``finegrained train-rm`` (or ``init_reward_model_dir``).

    Returns a ``RewardModelJudge``, or a ``joint_model.JointJudge`` for a directory holding several
    categories on one backbone (``kind: joint``).
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers.models.auto import modeling_auto

    from ..model_dirs import fail, load_pretrained, read_config, require_architecture

    metadata = read_metadata(model_dir)
    device = torch.device(device) if device is not None else default_device()
    if metadata["kind"] == JOINT_KIND:
        return _load_joint_judge(model_dir, metadata, device, batch_size)
    span = metadata["kind"] == "span"
    auto = AutoModelForTokenClassification if span else AutoModelForSequenceClassification
    mapping = (modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES if span
               else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)  # fmt: skip
    config = read_config(Path(model_dir), ROLE)
    kind = "span reward model (token classifier)" if span else "preference reward model (sequence classifier)"
    require_architecture(config, Path(model_dir), ROLE, mapping, kind)
    if config.num_labels != (2 if span else 1):
        raise fail(model_dir, ROLE, f"a {metadata['kind']} reward model needs {2 if span else 1} output(s), its config has {config.num_labels}")
    model = load_pretrained(model_dir, auto.from_pretrained, ROLE)
    tokenizer = load_reward_tokenizer(model_dir, model, metadata)
    model.to(device).eval()
    return RewardModelJudge(model, tokenizer, metadata, device=device, batch_size=batch_size)


def _load_joint_judge(model_dir: str | Path, metadata: dict[str, Any], device: torch.device, batch_size: int):
    model = load_joint_model(model_dir, metadata)
    tokenizer = load_reward_tokenizer(model_dir, model.backbone, metadata)
    model.to(device).eval()
    return JointJudge(model, tokenizer, metadata, device=device, batch_size=batch_size)
