"""Project annotated error spans onto segments: per-category segment labels (1 = error, 0 = clean,
``None`` = ignored).

``segment_labels`` (and ``category_labels`` under it, for callers that have segmented already) defines
what a segment label *is*: both reward-model trainers, ``eval-rm`` and ``finegrained labels`` call it, so
a model is scored against exactly the labels it was trained to predict. It applies the schema's rules
in this order (Wu et al. 2023's preprocessing, ``create_rel_fact_rm_files.py``):

1. Short spans are dropped: a span whose label is in its category's ``min_span_words.labels`` and that
   has fewer than ``min_span_words.words`` words (``len(text[start:end].split())``) counts nowhere, for
   no category (``drop_short_spans``).
2. A segment is an error (1) of the category when one of its surviving spans overlaps it
   (``project_labels`` below).
3. Otherwise, when the category has ``ignore_overlapping`` labels and a surviving span with one of them
   overlaps the segment, the segment is ignored (``None``: in no loss and no metric; -100 in training);
   else it is clean (0).

Definition. Words are the maximal runs of non-whitespace characters of the text (``str.isspace``
decides whitespace; the words are what ``text.split()`` returns, with their positions). For a span
``[s0, s1)`` and a segment ``[g0, g1)`` (half-open, Python ``str`` indices), a word ``[w0, w1)``
*is overlapped* when some character index ``i`` lies in all three ranges::

    max(w0, s0, g0) < min(w1, s1, g1)

A segment is erroneous for a category when at least one span whose label is the category's name or
one of its error types overlaps it by at least ``min_overlap_words`` words. Each span is judged on its
own (two spans touching one word each do not add up to two). Spans of other categories are ignored.
A span that covers only whitespace of a segment overlaps it by zero words and so never marks it.
Span offsets outside the text simply overlap nothing beyond the text.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .errors import FinegrainedError
from .schema import AnnotationSchema, Category
from .segment import WORD_RE, Segmenter, get_segmenter

Span = tuple[int, int]
#: a segment label: LABEL_CLEAN (0), LABEL_ERROR (1) or IGNORED
SegmentLabel = int | None
#: the label of a segment left out of training and evaluation (``null`` in ``finegrained labels`` output)
IGNORED = None


def _span_fields(span: Any) -> tuple[int, int, str]:
    """``(start, end, label)`` of a ``finegrained.data.Span``-like object or a dict with those keys."""
    if isinstance(span, Mapping):
        return span["start"], span["end"], span["label"]
    return span.start, span.end, span.label


def _category_labels(category: Category) -> frozenset[str]:
    if not isinstance(category, Category):
        raise TypeError(f"category must be a finegrained.schema.Category, got {type(category).__name__}")
    return frozenset(category.labels)


def _check_threshold(min_overlap_words: int) -> None:
    if isinstance(min_overlap_words, bool) or not isinstance(min_overlap_words, int) or min_overlap_words < 1:
        raise FinegrainedError(f"min_overlap_words must be a positive integer, got {min_overlap_words!r}")


class WordIndex:
    """Word positions of one text, for counting words that fall in a character range in O(log n)."""

    __slots__ = ("starts", "ends")

    def __init__(self, text: str):
        spans = [m.span() for m in WORD_RE.finditer(text)]
        # Words do not overlap, so both lists are sorted.
        self.starts = [a for a, _ in spans]
        self.ends = [b for _, b in spans]

    def count(self, lo: int, hi: int) -> int:
        """Number of words with at least one character in ``[lo, hi)``."""
        if lo >= hi:
            return 0
        # Words starting before hi, minus those that end at or before lo (a subset of the first).
        return bisect.bisect_left(self.starts, hi) - bisect.bisect_right(self.ends, lo)


def project_labels(
    text: str,
    segments: Sequence[Span],
    spans: Iterable[Any],
    category: Category,
    min_overlap_words: int = 1,
    *,
    words: WordIndex | None = None,
) -> list[int]:
    """Per-segment error labels for one category (see the module docstring for the exact rule).

    Args:
        text: the completion the offsets refer to.
        segments: ``(start, end)`` per segment, e.g. from ``Segmenter.segment``.
        spans: annotated spans: objects with ``.start``, ``.end``, ``.label`` or dicts with those keys.
        category: the category whose name and error types count.
        min_overlap_words: words a single span must share with a segment to mark it (>= 1).
        words: a precomputed ``WordIndex(text)``, to reuse across categories.

    Returns:
        ``len(segments)`` ints, 1 = erroneous, 0 = clean.
    """
    _check_threshold(min_overlap_words)
    return _overlapped(text, segments, spans, _category_labels(category), min_overlap_words, words)


def _overlapped(
    text: str, segments: Sequence[Span], spans: Iterable[Any], wanted: frozenset[str], min_overlap_words: int,
    words: WordIndex | None,
) -> list[int]:
    """1 per segment that a span with a label in ``wanted`` overlaps by ``min_overlap_words`` words, else 0."""
    relevant = []
    for span in spans:
        start, end, label = _span_fields(span)
        if label in wanted and start < end:
            relevant.append((start, end))
    labels = [0] * len(segments)
    if not relevant:
        return labels
    if words is None:
        words = WordIndex(text)
    for j, (g0, g1) in enumerate(segments):
        for s0, s1 in relevant:
            if words.count(max(g0, s0), min(g1, s1)) >= min_overlap_words:
                labels[j] = 1
                break
    return labels


def project_labels_batch(
    texts: Sequence[str],
    segments: Sequence[Sequence[Span]],
    spans: Sequence[Iterable[Any]],
    category: Category,
    min_overlap_words: int = 1,
) -> list[list[int]]:
    """``project_labels`` over parallel lists of texts, segments and span lists."""
    if not (len(texts) == len(segments) == len(spans)):
        raise ValueError(f"texts, segments and spans differ in length: {len(texts)}, {len(segments)}, {len(spans)}")
    return [
        project_labels(t, segs, sps, category, min_overlap_words)
        for t, segs, sps in zip(texts, segments, spans)
    ]


def project_all_categories(
    text: str,
    segments_by_granularity: Mapping[str, Sequence[Span]],
    spans: Sequence[Any],
    categories: Iterable[Category],
    min_overlap_words: int = 1,
) -> dict[str, list[int]]:
    """Labels of every span category of a schema for one text: ``{category name: labels}``.

    ``segments_by_granularity`` maps each granularity used (``sub_sentence``, ``sentence``,
    ``sequence``) to that text's segments; preference categories are skipped.
    """
    words = WordIndex(text)
    spans = list(spans)
    return {
        c.name: project_labels(text, segments_by_granularity[c.granularity], spans, c, min_overlap_words, words=words)
        for c in categories
        if c.kind == "span"
    }


# ----------------------------------------------------------------------------------------------------
# With the schema's rules: short spans dropped, ignored segments


class SegmentLabels(NamedTuple):
    """One record's segments for one category and their labels (``0 | 1 | None``), in order."""

    segments: list[Span]
    labels: list[SegmentLabel]


def span_word_count(text: str, start: int, end: int) -> int:
    """Words of ``text[start:end]`` as the paper counts them: ``len(text[start:end].split())``."""
    return len(text[max(start, 0):max(end, 0)].split())


def drop_short_spans(text: str, spans: Iterable[Any], schema: AnnotationSchema) -> tuple[list[Any], int]:
    """``(spans kept, number dropped)``: a span is dropped when its category's ``min_span_words`` covers
    its label and it has fewer words than that (rule 1 of the module docstring)."""
    kept, dropped = [], 0
    for span in spans:
        start, end, label = _span_fields(span)
        category = schema.category_of_label(label)
        rule = category.min_span_words if category is not None else None
        if rule is not None and label in rule.labels and span_word_count(text, start, end) < rule.words:
            dropped += 1
        else:
            kept.append(span)
    return kept, dropped


def category_labels(
    text: str,
    segments: Sequence[Span],
    spans: Iterable[Any],
    schema: AnnotationSchema,
    category: Category,
    min_overlap_words: int = 1,
    *,
    words: WordIndex | None = None,
) -> list[SegmentLabel]:
    """Labels of ``segments`` of ``text`` for a span ``category`` of ``schema``, by the rules of the
    module docstring: ``len(segments)`` values, 1 = error, 0 = clean, ``None`` = ignored."""
    _check_threshold(min_overlap_words)
    wanted = _category_labels(category)
    if category.kind != "span":
        raise FinegrainedError(f"category {category.name!r} is a {category.kind} category: it has no segment labels")
    if words is None:
        words = WordIndex(text)
    kept, _ = drop_short_spans(text, spans, schema)
    errors = _overlapped(text, segments, kept, wanted, min_overlap_words, words)
    ignore = schema.ignore_labels(category)
    if not ignore:
        return list(errors)
    overlapped_other = _overlapped(text, segments, kept, ignore, min_overlap_words, words)
    return [1 if e else (IGNORED if o else 0) for e, o in zip(errors, overlapped_other)]


def _text_and_spans(record: Any) -> tuple[str, Sequence[Any]]:
    if isinstance(record, tuple):
        text, spans = record
        return text, spans
    return record.completion, record.spans


def segment_labels(
    record: Any,
    schema: AnnotationSchema,
    category: Category,
    segmenter: Segmenter | None = None,
    *,
    min_overlap_words: int = 1,
) -> SegmentLabels:
    """Segment one record's completion at ``category``'s granularity and label the segments.

    Args:
        record: a ``SpanRecord`` (anything with ``.completion`` and ``.spans``) or a ``(text, spans)`` pair.
        segmenter: default ``get_segmenter(schema.segmentation)``; a reward model passes the
            segmentation it was trained with.
    """
    return segment_labels_batch([record], schema, category, segmenter, min_overlap_words=min_overlap_words)[0]


def segment_labels_batch(
    records: Sequence[Any],
    schema: AnnotationSchema,
    category: Category,
    segmenter: Segmenter | None = None,
    *,
    min_overlap_words: int = 1,
) -> list[SegmentLabels]:
    """``segment_labels`` of many records, segmenting their completions in one batch."""
    pairs = [_text_and_spans(r) for r in records]
    segmenter = segmenter if segmenter is not None else get_segmenter(schema.segmentation)
    all_segments = segmenter.segment([text for text, _ in pairs], category.granularity)
    return [
        SegmentLabels(
            [tuple(s) for s in segs], category_labels(text, segs, spans, schema, category, min_overlap_words)
        )
        for (text, spans), segs in zip(pairs, all_segments)
    ]


def labels_by_category(
    text: str,
    segments_by_granularity: Mapping[str, Sequence[Span]],
    spans: Sequence[Any],
    schema: AnnotationSchema,
    categories: Iterable[Category],
    min_overlap_words: int = 1,
) -> dict[str, list[SegmentLabel]]:
    """``category_labels`` of every span category in ``categories`` for one text: ``{name: labels}``
    (``segments_by_granularity``: that text's segments per granularity; preference categories skipped)."""
    words = WordIndex(text)
    spans = list(spans)
    return {
        c.name: category_labels(text, segments_by_granularity[c.granularity], spans, schema, c, min_overlap_words,
                                words=words)
        for c in categories
        if c.kind == "span"
    }
