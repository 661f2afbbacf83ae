"""Reward models of several categories on one shared backbone: one forward pass judges them all.

A *joint* reward model is one backbone (any HF encoder or decoder, loaded with ``AutoModel``) with a
small head per category:

- span category: ``Linear(H, 2)`` read at the marker that closes each of *its* segments;
- preference category: ``Linear(H, 1)`` read at the last real token of the input.

Every completion is encoded once, in the span models' layout (``span_model.encode_span_input``), with a
marker at the end of every segment of every span category: the union of their segment ends
(``union_segments``). Sub-sentences and sentences share the marker where a sentence ends, so the input
has about as many markers as the finest granularity. Where separate per-category models cost one
encoding and one forward pass per category, a joint model costs one of each per batch.

All categories see the same input, so they share one context mode (``context.joint_prompt_view``
refuses mixed modes at training time); the view is stored at the top of ``finegrained.json``. Older
directories without it show the whole prompt when any category had ``uses_context`` (as trained).

Trained by ``finegrained train-rm categories=[...]`` (``train``); the directory holds the backbone
(``save_pretrained``, safetensors), the tokenizer, the heads (``heads.safetensors``) and
``finegrained.json`` with ``kind: joint`` and one entry per category under ``categories``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..model_dirs import JOINT_KIND
from ..schema import SegmentationConfig
from .backbone import auto_backbone
from .context import PromptView
from .judging import JudgeCall, judging
from .span_model import (
    InputLayout,
    SpanWindow,
    encode_span_input,
    marker_error_probabilities,
    pad_windows,
    segment_type_count,
)

Span = tuple[int, int]

HEADS_FILE = "heads.safetensors"


class JointRewardModel(torch.nn.Module):
    """A backbone and one head per category.

    Args:
        backbone: an HF base model (``AutoModel``) returning ``last_hidden_state``.
        kinds: category name -> ``span`` | ``preference``, in the order the heads are kept.
        dropout: applied to the hidden states before the heads (training only).
    """

    def __init__(self, backbone: torch.nn.Module, kinds: Mapping[str, str], dropout: float = 0.1):
        super().__init__()
        unknown = {k for k in kinds.values() if k not in ("span", "preference")}
        if unknown:
            raise ValueError(f"category kinds must be span or preference, got {sorted(unknown)}")
        self.backbone = backbone
        self.kinds = dict(kinds)
        self.dropout = torch.nn.Dropout(dropout)
        hidden = int(backbone.config.hidden_size)
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden, 2 if kind == "span" else 1) for name, kind in self.kinds.items()}
        )

    def save_pretrained(self, directory: str | Path, safe_serialization: bool = True) -> None:
        """The backbone as an HF directory and the heads as ``heads.safetensors`` (safetensors only)."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("joint reward models are saved as safetensors only")
        directory = Path(directory)
        self.backbone.save_pretrained(directory, safe_serialization=True)
        heads = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        save_file(heads, str(directory / HEADS_FILE))

    @property
    def config(self):
        """The backbone's config (``segment_type_count`` and the device helpers read it)."""
        return self.backbone.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Every head's output from one backbone pass.

        Args:
            input_ids, attention_mask: ``(B, L)``, right-padded (mask 1 = real token).
            token_type_ids: ``(B, L)`` or None (only for backbones with several token types).

        Returns:
            ``{category: output}``: span categories ``(B, L, 2)`` logits at every position (read at the
            markers); preference categories ``(B,)`` scores read at each row's last real token.
        """
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        hidden = self.dropout(hidden)  # (B, L, H)
        last = attention_mask.long().sum(dim=-1).clamp(min=1) - 1  # (B,) index of the last real token
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        return {
            name: head(hidden) if self.kinds[name] == "span" else head(pooled)[:, 0]
            for name, head in self.heads.items()
        }


def load_joint_model(directory: str | Path, metadata: Mapping[str, Any]) -> JointRewardModel:
    """Rebuild a ``JointRewardModel`` saved by its ``save_pretrained``, checked by ``model_dirs``: the backbone
    loads with no missing or mismatched key, and the heads are exactly those of the metadata's categories,
    with the backbone's hidden size, all finite."""
    from transformers import AutoModel

    from ..model_dirs import fail, first_non_finite, load_pretrained, read_safetensors

    role = "a joint reward model"
    directory = Path(directory)
    backbone = load_pretrained(directory, lambda path, **kw: auto_backbone(AutoModel.from_pretrained, path, **kw), role)
    heads = read_safetensors(directory / HEADS_FILE, role)
    kinds = {name: entry["kind"] for name, entry in metadata["categories"].items()}
    model = JointRewardModel(backbone, kinds, float(metadata.get("dropout", 0.1)))
    expected = {k: tuple(v.shape) for k, v in model.heads.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in heads.items()}
    if found != expected:
        differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise fail(directory, role, f"{HEADS_FILE} does not match the categories of finegrained.json and the "
                                    f"backbone's hidden size (tensor {differ[0]!r}: {found.get(differ[0])} in the "
                                    f"file, {expected.get(differ[0])} expected)")
    bad = first_non_finite(heads.items())
    if bad is not None:
        raise fail(directory, role, f"{HEADS_FILE} tensor {bad!r} has NaN or infinite values")
    model.heads.load_state_dict(heads)
    return model


def union_segments(per_granularity: Mapping[str, Sequence[Span]], completion_length: int) -> tuple[list[Span], dict[str, list[int]]]:
    """The segments whose ends are every granularity's segment ends, and where each segment went.

    Args:
        per_granularity: granularity -> one completion's ``(start, end)`` segments.
        completion_length: characters in the completion (a completion without segments gets one
            segment ending there, so every input has a marker and a well-defined layout).

    Returns:
        ``(union, index)``: ``union`` the contiguous spans ``(previous end, end)`` over the sorted distinct
        ends; ``index[g][j]`` the position in ``union`` of the segment ending where segment ``j`` of
        granularity ``g`` ends.
    """
    ends = sorted({end for segments in per_granularity.values() for _, end in segments})
    if not ends:
        ends = [completion_length]
    position = {end: i for i, end in enumerate(ends)}
    union = list(zip([0, *ends[:-1]], ends))
    return union, {g: [position[end] for _, end in segments] for g, segments in per_granularity.items()}


def encode_joint_input(
    tokenizer,
    layout: InputLayout,
    marker_id: int,
    prompt: str | None,
    completion: str,
    per_granularity: Mapping[str, Sequence[Span]],
    max_length: int,
    n_types: int = 2,
) -> tuple[list[SpanWindow], dict[str, list[int]]]:
    """One completion's windows with a marker after every segment of every granularity.

    Returns:
        ``(windows, index)``: the windows of ``encode_span_input`` over the union segments (several only
        when the completion alone exceeds ``max_length``), and ``index`` from ``union_segments``: the
        window marker of segment ``j`` of granularity ``g`` is the one whose ``segment_indices`` entry
        equals ``index[g][j]``.
    """
    union, index = union_segments(per_granularity, len(completion))
    windows = encode_span_input(tokenizer, layout, marker_id, prompt, completion, union, max_length, n_types)
    return windows, index


def joint_view_from_metadata(metadata: Mapping[str, Any]) -> PromptView:
    """The view of a joint ``finegrained.json``: its top-level ``context``, or for directories written
    before that key, the whole prompt when any category had ``uses_context`` (how they were trained)."""
    if "context" in metadata:
        return PromptView.from_metadata(metadata)
    entries = metadata["categories"].values()
    return PromptView("prompt" if any(bool(c.get("uses_context", True)) for c in entries) else "none")


class JointJudge:
    """A trained joint reward model: ``score`` judges every category in one forward pass per batch.

    Attributes (from ``finegrained.json``): ``categories`` (name -> ``{kind, granularity, context,
    normalisation, ...}``), ``prompt_view`` (what every category reads of the prompt), ``segmentation``,
    ``max_length``; ``span_granularities`` the granularities
    whose segment ends carry markers; ``kind`` is ``"joint"``. ``view(name)`` gives one category's judge
    with the interface of ``RewardModelJudge`` (for evaluation and the scorer).
    """

    kind = JOINT_KIND

    def __init__(self, model: JointRewardModel, tokenizer, metadata: Mapping[str, Any], device=None, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = dict(metadata)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = int(batch_size)
        self.categories: dict[str, dict[str, Any]] = {k: dict(v) for k, v in metadata["categories"].items()}
        self.segmentation = SegmentationConfig(**metadata.get("segmentation", {}))
        self.max_length = int(metadata["max_length"])
        self.prompt_view = joint_view_from_metadata(metadata)
        self.span_granularities = sorted({c["granularity"] for c in self.categories.values() if c["kind"] == "span"})
        self.layout = InputLayout.for_tokenizer(tokenizer)
        self.marker_id = tokenizer.convert_tokens_to_ids(metadata["marker_token"])
        self.pad_id = tokenizer.pad_token_id
        self.n_types = segment_type_count(model)
        self.segment_types = self.n_types >= 2
        #: windows scored beyond the first because a completion alone exceeded max_length
        self.n_split_completions = 0

    def __repr__(self) -> str:
        return f"JointJudge(categories={list(self.categories)})"

    def view(self, name: str) -> JointCategoryJudge:
        if name not in self.categories:
            raise KeyError(name)
        return JointCategoryJudge(self, name)

    def segment(self, completions: Sequence[str], segments: Mapping[str, Sequence[Sequence[Span]]] | None = None):
        """``segments`` completed with every span granularity this model needs (segmented here if missing)."""
        from ..segment import get_segmenter

        out = {g: [list(s) for s in rows] for g, rows in (segments or {}).items() if g in self.span_granularities}
        missing = [g for g in self.span_granularities if g not in out]
        if missing:
            out.update(get_segmenter(self.segmentation).segment_many(list(completions), missing))
        return out

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        segments: Mapping[str, Sequence[Sequence[Span]]] | None = None,
    ) -> dict[str, list]:
        """Every category's judgement of every completion.

        Args:
            segments: granularity -> per-completion segments, for granularities already segmented by the
                caller (the rest are segmented here with the model's own segmentation settings).

        Returns:
            ``{category: judgements}``: span categories, per completion one error probability per segment
            of its granularity; preference categories, one raw score per completion (from the window
            holding the completion's end when it had to be split).
        """
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions must have the same length")
        completions = list(completions)
        segments = self.segment(completions, segments)
        windows: list[SpanWindow] = []
        owners: list[int] = []
        indices: list[dict[str, list[int]]] = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            encoded, index = encode_joint_input(
                self.tokenizer, self.layout, self.marker_id, self.prompt_view.of(prompt), completion,
                {g: segments[g][i] for g in self.span_granularities}, self.max_length, self.n_types,
            )  # fmt: skip
            self.n_split_completions += max(len(encoded) - 1, 0)
            windows.extend(encoded)
            owners.extend([i] * len(encoded))
            indices.append(index)
        span_names = [n for n, c in self.categories.items() if c["kind"] == "span"]
        # p_error of every union segment, per span category and completion
        union_probs = {n: [dict() for _ in completions] for n in span_names}
        sequence_scores = {n: [0.0] * len(completions) for n, c in self.categories.items() if c["kind"] == "preference"}
        with judging(self.model):
            for lo in range(0, len(windows), self.batch_size):
                batch = pad_windows(windows[lo : lo + self.batch_size], self.pad_id)
                types = batch.token_type_ids.to(self.device) if self.segment_types else None
                outputs = self.model(
                    input_ids=batch.input_ids.to(self.device), attention_mask=batch.attention_mask.to(self.device),
                    token_type_ids=types,
                )  # fmt: skip
                batch_owners = owners[lo : lo + self.batch_size]
                for name in span_names:
                    for window, owner, probs in zip(batch.windows, batch_owners, marker_error_probabilities(outputs[name], batch)):
                        union_probs[name][owner].update(zip(window.segment_indices, probs))
                for name, scores in sequence_scores.items():
                    for owner, score in zip(batch_owners, outputs[name].float().cpu().tolist()):
                        scores[owner] = float(score)  # windows come in order: the last one holds the end
        result: dict[str, list] = dict(sequence_scores)
        for name in span_names:
            granularity = self.categories[name]["granularity"]
            result[name] = [
                [float(union_probs[name][i][u]) for u in indices[i][granularity]] for i in range(len(completions))
            ]
        return result


class JointCategoryJudge(JudgeCall):
    """One category of a ``JointJudge``, with ``RewardModelJudge``'s interface.

    Called alone it runs the whole joint model (every category's markers are in the input either way);
    ``RewardScorer`` instead calls the parent once for all its categories.
    """

    def __init__(self, parent: JointJudge, name: str):
        entry = parent.categories[name]
        self.parent = parent
        self.category = name
        self.kind: str = entry["kind"]
        self.granularity: str = entry["granularity"]
        self.prompt_view = parent.prompt_view
        self.normalisation: dict[str, float] | None = entry.get("normalisation")
        self.segmentation = parent.segmentation
        self.max_length = parent.max_length
        self.model = parent.model
        self.metadata = parent.metadata

    def __repr__(self) -> str:
        return f"JointCategoryJudge(category={self.category!r}, kind={self.kind!r}, of {self.parent!r})"

    def score_segments(self, prompts, completions, segments) -> list[list[float]]:
        if not (len(prompts) == len(completions) == len(segments)):
            raise ValueError("prompts, completions and segments must have the same length")
        return self.parent.score(prompts, completions, {self.granularity: segments})[self.category]

    def score_sequences(self, prompts, completions) -> list[float]:
        return self.parent.score(prompts, completions)[self.category]
