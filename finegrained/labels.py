"""Project annotated error spans onto segments: per-category segment labels (1 = error, 0 = clean).

This one function defines what a segment label *is*; reward-model training and evaluation both call
it, so a model is scored against exactly the labels it was trained to predict.

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
from typing import Any

from .errors import FinegrainedError
from .schema import Category
from .segment import WORD_RE

Span = tuple[int, int]


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
    wanted = _category_labels(category)
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
