"""Span reward models: a token classifier whose label sits on a marker token ending each segment.

Input layout (``InputLayout``)::

    prefix  prompt-tokens  separator  piece_1 <seg> piece_2 <seg> ... piece_n <seg>  suffix

``piece_i`` is the completion text from the end of segment ``i-1`` (or 0) to the end of segment ``i``,
tokenised on its own, so every marker sits right after the last character of its segment: markers map
back to segments by construction, never by re-tokenising and searching. Text after the last segment
(whitespace by the segmenter's contract) is not encoded. Categories that ignore the prompt drop the
prompt and the separator.

Labels: ``LABEL_CLEAN = 0`` and ``LABEL_ERROR = 1`` are fixed here, never derived from label names;
every non-marker position holds ``IGNORE_INDEX`` (-100).

Truncation: when the input is too long the prompt is cut, keeping its beginning; a completion marker
is never dropped. If the completion alone does not fit, ``encode_span_input`` returns several windows
(each a run of whole segments, no prompt); training skips such examples (counted), inference scores
every window so every segment still gets a judgement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

Span = tuple[int, int]

LABEL_CLEAN = 0
LABEL_ERROR = 1
LABEL_MAP = {str(LABEL_CLEAN): "clean", str(LABEL_ERROR): "error"}
IGNORE_INDEX = -100
MARKER_TOKEN = "<seg>"


@dataclass(frozen=True)
class InputLayout:
    """Special token ids around the prompt and completion, chosen once per tokenizer.

    Encoders with ``[CLS]``/``[SEP]`` get ``[CLS] prompt [SEP] completion [SEP]``; other tokenizers
    (decoders, the tiny BPE) get ``prompt <eos> completion <eos>``.
    """

    prefix: tuple[int, ...]
    separator: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def for_tokenizer(cls, tokenizer) -> InputLayout:
        cls_id, sep_id, eos_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.eos_token_id
        if cls_id is not None and sep_id is not None:
            return cls(prefix=(cls_id,), separator=(sep_id,), suffix=(sep_id,))
        end = (eos_id,) if eos_id is not None else ((sep_id,) if sep_id is not None else ())
        return cls(prefix=(), separator=end, suffix=end)


def tokenize_pieces(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added; a literal ``<seg>`` in text is not a marker."""
    if not texts:
        return []
    try:
        out = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
    except TypeError:  # tokenizers without split_special_tokens
        out = tokenizer(list(texts), add_special_tokens=False)
    return [list(ids) for ids in out["input_ids"]]


@dataclass
class SpanWindow:
    """One model input covering a run of whole segments of one completion.

    Attributes:
        input_ids: the token ids, length <= max_length.
        marker_positions: index in ``input_ids`` of each covered segment's marker.
        segment_indices: which segments of the completion the markers belong to (same length).
        prompt_tokens_kept / prompt_tokens_total: how much of the prompt survived truncation.
        whole_completion: False for the prompt-less windows made when the completion alone does not fit
            (training skips those examples).
        token_type_ids: 0 for the prompt and specials, then a per-segment type for each segment's text
            and marker (``segment_type``): a cheap cue for BERT-style models (``type_vocab_size >= 2``)
            telling each marker which tokens are its own segment's. Models without token types ignore it.
    """

    input_ids: list[int]
    marker_positions: list[int]
    segment_indices: list[int]
    prompt_tokens_kept: int = 0
    prompt_tokens_total: int = 0
    token_type_ids: list[int] | None = None
    whole_completion: bool = True

    def labels(self, segment_labels: Sequence[int | None]) -> list[int]:
        """Per-token labels: the segment's label on its marker, ``IGNORE_INDEX`` elsewhere and on the
        markers of ignored segments (label ``None``, see ``finegrained.labels``)."""
        out = [IGNORE_INDEX] * len(self.input_ids)
        for pos, seg in zip(self.marker_positions, self.segment_indices):
            if segment_labels[seg] is None:
                continue
            label = int(segment_labels[seg])
            if label not in (LABEL_CLEAN, LABEL_ERROR):
                raise ValueError(f"segment label must be {LABEL_CLEAN} or {LABEL_ERROR}, got {label!r}")
            out[pos] = label
        return out


def encode_span_input(
    tokenizer,
    layout: InputLayout,
    marker_id: int,
    prompt: str | None,
    completion: str,
    segments: Sequence[Span],
    max_length: int,
    n_types: int = 2,
) -> list[SpanWindow]:
    """Encode one (prompt, completion) with a marker after every segment.

    Args:
        prompt: ``None`` for categories that ignore the prompt.
        segments: ``(start, end)`` char spans of ``completion``, in order, non-overlapping.
        max_length: the most tokens one window may hold.
        n_types: token types available for ``SpanWindow.token_type_ids`` (see ``segment_type``).

    Returns:
        One window holding the (possibly cut) prompt and every marker when the completion fits;
        otherwise several prompt-less windows of whole segments (a single segment too long for a
        window keeps its last tokens, so its marker still follows the text it ends). ``[]`` when there
        are no segments.
    """
    if not segments:
        return []
    previous_end = 0
    piece_texts = []
    for start, end in segments:
        if start < previous_end or end < start or end > len(completion):
            raise ValueError(f"segments must be ordered, non-overlapping spans of the completion: {list(segments)}")
        piece_texts.append(completion[previous_end:end])
        previous_end = end
    pieces = tokenize_pieces(tokenizer, piece_texts)
    room = max_length - len(layout.prefix) - len(layout.suffix)
    completion_length = sum(len(p) + 1 for p in pieces)  # +1: each piece's marker
    separator = layout.separator if prompt is not None else ()

    if completion_length + len(separator) <= room:
        prompt_ids: list[int] = []
        prompt_total = 0
        if prompt is not None:
            full = tokenize_pieces(tokenizer, [prompt])[0]
            prompt_total = len(full)
            prompt_ids = full[: room - completion_length - len(separator)]  # keep the prompt's beginning
        ids = [*layout.prefix, *prompt_ids, *separator]
        types = [0] * len(ids)
        markers = []
        for i, piece in enumerate(pieces):
            ids.extend(piece)
            markers.append(len(ids))
            ids.append(marker_id)
            types.extend([segment_type(i, n_types)] * (len(piece) + 1))
        ids.extend(layout.suffix)
        types.extend([0] * len(layout.suffix))
        return [SpanWindow(ids, markers, list(range(len(pieces))), len(prompt_ids), prompt_total, types)]

    return _pack_segments(pieces, layout, marker_id, room, n_types)


def _pack_segments(pieces: list[list[int]], layout: InputLayout, marker_id: int, room: int, n_types: int) -> list[SpanWindow]:
    """Whole segments (their token ``pieces``) packed into prompt-less windows of at most ``room`` tokens
    between the layout's prefix and suffix, for a completion that does not fit in one."""
    windows: list[SpanWindow] = []
    current: list[int] = list(layout.prefix)
    types: list[int] = [0] * len(current)
    markers: list[int] = []
    indices: list[int] = []

    def close() -> None:
        windows.append(SpanWindow(
            [*current, *layout.suffix], markers, indices, 0, 0, [*types, *[0] * len(layout.suffix)], whole_completion=False
        ))

    for i, piece in enumerate(pieces):
        piece = piece[-(room - 1):] if len(piece) + 1 > room else piece
        if markers and len(current) - len(layout.prefix) + len(piece) + 1 > room:
            close()
            current, types, markers, indices = list(layout.prefix), [0] * len(layout.prefix), [], []
        current.extend(piece)
        markers.append(len(current))
        indices.append(i)
        current.append(marker_id)
        types.extend([segment_type(i, n_types)] * (len(piece) + 1))
    close()
    return windows


def segment_type(segment_index: int, n_types: int) -> int:
    """Token type of segment ``segment_index``'s tokens (the prompt and specials are 0).

    With ``n_types`` token types (a model's ``type_vocab_size``) segments cycle through 1..n_types-1, so
    neighbouring segments never share a type; two types alternate 1, 0, 1, ...
    """
    if n_types <= 2:
        return 1 - segment_index % 2
    return 1 + segment_index % (n_types - 1)


@dataclass
class SpanBatch:
    """Padded tensors for a batch of span windows.

    Shapes: ``input_ids``, ``attention_mask``, ``labels``: ``(B, L)`` with L the longest window;
    ``attention_mask`` True (1) = real token; ``labels`` ``IGNORE_INDEX`` except on markers.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    windows: list[SpanWindow] = field(default_factory=list)
    token_type_ids: torch.Tensor | None = None  # (B, L), see SpanWindow.token_type_ids


def pad_windows(
    windows: Sequence[SpanWindow], pad_id: int, window_labels: Sequence[Sequence[int]] | None = None
) -> SpanBatch:
    """Right-pad windows into a ``SpanBatch``; ``window_labels`` are per-token labels (``SpanWindow.labels``)."""
    length = max(len(w.input_ids) for w in windows)
    n = len(windows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    token_type_ids = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long) if window_labels is not None else None
    for i, w in enumerate(windows):
        k = len(w.input_ids)
        input_ids[i, :k] = torch.tensor(w.input_ids, dtype=torch.long)
        attention_mask[i, :k] = 1
        if w.token_type_ids is not None:
            token_type_ids[i, :k] = torch.tensor(w.token_type_ids, dtype=torch.long)
        if labels is not None:
            labels[i, :k] = torch.tensor(window_labels[i], dtype=torch.long)
    return SpanBatch(input_ids, attention_mask, labels, list(windows), token_type_ids)


def class_weights(error_fraction: float, max_weight: float = 10.0) -> torch.Tensor:
    """Cross-entropy weights ``(2,)`` indexed by label id that balance clean and error segments.

    The minority class gets ``majority / minority`` (capped at ``max_weight``), the majority 1, so a
    model cannot win by predicting the majority class. Degenerate fractions (0 or 1) give equal weights.
    """
    weights = torch.ones(2)
    if 0.0 < error_fraction < 1.0:
        ratio = (1.0 - error_fraction) / error_fraction
        if ratio >= 1.0:
            weights[LABEL_ERROR] = min(ratio, max_weight)
        else:
            weights[LABEL_CLEAN] = min(1.0 / ratio, max_weight)
    return weights


def span_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy over marker positions.

    Args:
        logits: ``(B, L, 2)`` token-classification logits.
        labels: ``(B, L)`` with ``IGNORE_INDEX`` off the markers.
        weights: ``(2,)`` per-class weights or None.
    """
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # (B*L, 2)
        labels.reshape(-1),  # (B*L,)
        weight=None if weights is None else weights.to(logits.device),
        ignore_index=IGNORE_INDEX,
    )


def marker_error_probabilities(logits: torch.Tensor, batch: SpanBatch) -> list[list[float]]:
    """Probability of error at each window's markers.

    Args:
        logits: ``(B, L, 2)`` for the windows of ``batch``, in order.

    Returns:
        Per window, one probability per marker (in ``window.marker_positions`` order).
    """
    probs = torch.softmax(logits.float(), dim=-1)[..., LABEL_ERROR].cpu()  # (B, L)
    return [probs[i, w.marker_positions].tolist() for i, w in enumerate(batch.windows)]


def segment_type_count(model) -> int:
    """Token types the model takes (BERT-style ``type_vocab_size``); 0 or 1: it gets no token types."""
    return int(getattr(model.config, "type_vocab_size", 0) or 0)


def span_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Segment-level metrics, with the two trivial baselines to beat.

    ``majority_accuracy``: accuracy of always predicting the majority class; ``all_error_f1``: error F1
    of predicting every segment erroneous (precision = error fraction, recall = 1).
    """
    n = len(labels)
    if n != len(predictions):
        raise ValueError("labels and predictions differ in length")
    tp = sum(1 for y, p in zip(labels, predictions) if y == LABEL_ERROR and p == LABEL_ERROR)
    fp = sum(1 for y, p in zip(labels, predictions) if y == LABEL_CLEAN and p == LABEL_ERROR)
    fn = sum(1 for y, p in zip(labels, predictions) if y == LABEL_ERROR and p == LABEL_CLEAN)
    correct = sum(1 for y, p in zip(labels, predictions) if y == p)
    n_error = sum(1 for y in labels if y == LABEL_ERROR)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fraction = n_error / n if n else 0.0
    return {
        "segment_accuracy": correct / n if n else float("nan"),
        "error_precision": precision,
        "error_recall": recall,
        "error_f1": f1,
        "majority_accuracy": max(fraction, 1.0 - fraction) if n else float("nan"),
        "all_error_f1": 2 * fraction / (1.0 + fraction) if n else float("nan"),
        "error_fraction": fraction,
        "n_segments": n,
    }


@dataclass
class SpanExample:
    """One completion with its segments and per-segment labels (0, 1 or ``None`` = ignored) for one category."""

    id: str
    prompt: str
    completion: str
    segments: list[Span]
    labels: list[int | None]

    @property
    def all_ignored(self) -> bool:
        """Every segment ignored: the example teaches its category nothing (training skips it)."""
        return bool(self.labels) and all(y is None for y in self.labels)


def span_examples_from_records(
    records, category, segmentation, min_overlap_words: int = 1, *, schema=None
) -> list[SpanExample]:
    """Segment each record's completion at the category's granularity and label the segments with
    ``finegrained.labels.segment_labels_batch`` (short spans dropped, ignore rule applied).

    Args:
        records: ``finegrained.data.SpanRecord`` objects (anything with id, prompt, completion, spans).
        category: the ``schema.Category`` to label.
        segmentation: the ``SegmentationConfig`` to segment with.
        schema: the ``AnnotationSchema`` whose rules apply (other categories' short spans and
            ``ignore_overlapping``); ``None``: a schema of ``category`` alone.
    """
    from ..labels import segment_labels_batch
    from ..schema import AnnotationSchema
    from ..segment import get_segmenter

    records = list(records)
    if schema is None:
        schema = AnnotationSchema(name=category.name, categories=(category,))
    labelled = segment_labels_batch(records, schema, category, get_segmenter(segmentation),
                                    min_overlap_words=min_overlap_words)
    return [
        SpanExample(id=str(r.id), prompt=r.prompt, completion=r.completion, segments=segs, labels=labels)
        for r, (segs, labels) in zip(records, labelled)
    ]


def load_span_examples(path, schema, category, segmentation=None, min_overlap_words: int = 1) -> list[SpanExample]:
    """Read a span JSONL file (validated against ``schema``) into labelled examples for ``category``."""
    from ..data import load_span_records

    records = load_span_records(path, schema)
    return span_examples_from_records(
        records, category, segmentation or schema.segmentation, min_overlap_words, schema=schema
    )
