"""Training inputs of reward models: examples and pairs encoded into the items the trainer batches.

Every head trains on one of two kinds of item: a ``SpanItem`` (one input, per-token labels on its markers
for each span category it teaches) or a ``PairItem`` (a chosen and a rejected input of one preference
category). A one-category model encodes its own category's segments (``encode_span_examples``) or plain
sequences without markers (``encode_preference_pairs``); a joint model encodes every input once with a
marker at the union of the span categories' segment ends (``JointEncoder``). Items that cannot be trained
on (a completion longer than one window, segments all ignored) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..schema import Category
from .context import PromptView
from .joint_model import encode_joint_input
from .preference_model import PreferencePair, encode_sequence_inputs
from .span_model import IGNORE_INDEX, MARKER_TOKEN, InputLayout, SpanExample, SpanWindow, encode_span_input


@dataclass
class SpanItem:
    """One encoded completion: per span category, per-token labels (``IGNORE_INDEX`` off its markers)."""

    window: SpanWindow
    labels: dict[str, list[int]]


@dataclass
class PairItem:
    """One encoded preference pair (a one-category model's inputs carry no markers)."""

    chosen: SpanWindow
    rejected: SpanWindow


def encode_span_examples(tokenizer, examples: Sequence[SpanExample], category: str, view: PromptView,
                         max_length: int, n_types: int) -> tuple[list[SpanItem], dict[str, int]]:
    """Encode one category's examples (prompts as ``view`` shows them); returns (items, counts). An
    example whose segments are all ignored for the category is skipped (counted), as the paper's script does."""
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
        items.append(SpanItem(window, {category: window.labels(e.labels)}))
    counts = {"skipped_too_long": too_long, "skipped_no_segments": no_segments, "prompt_truncated": prompt_cut,
              "skipped_all_ignored": all_ignored}
    return items, counts


def encode_preference_pairs(tokenizer, pairs: Sequence[PreferencePair], view: PromptView,
                            max_length: int) -> tuple[list[PairItem], dict[str, int]]:
    """Encode pairs as plain sequences (no markers); the end of a completion too long is cut (counted)."""
    layout = InputLayout.for_tokenizer(tokenizer)
    prompts = view.of_many([p.prompt for p in pairs])
    chosen = encode_sequence_inputs(tokenizer, layout, prompts, [p.chosen for p in pairs], max_length)
    rejected = encode_sequence_inputs(tokenizer, layout, prompts, [p.rejected for p in pairs], max_length)
    cut = sum(1 for e in (*chosen, *rejected) if e.completion_tokens_dropped)
    items = [PairItem(SpanWindow(c.input_ids, [], []), SpanWindow(r.input_ids, [], [])) for c, r in zip(chosen, rejected)]
    return items, {"completion_truncated": cut}


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
            items.append(SpanItem(window, {c.name: self._token_labels(window, index[c.granularity], segment_labels[c.name])
                                           for c in self.span_categories}))  # fmt: skip
        return items, {"skipped_too_long": too_long, "prompt_truncated": prompt_cut, "skipped_all_ignored": all_ignored}

    @staticmethod
    def _token_labels(window: SpanWindow, union_of_segment: list[int], labels: list) -> list[int]:
        """One category's per-token labels: its segment labels on the markers of the union segments they end at."""
        by_union = dict(zip(union_of_segment, labels))
        token_labels = [IGNORE_INDEX] * len(window.input_ids)
        for position, union_index in zip(window.marker_positions, window.segment_indices):
            if by_union.get(union_index) is not None:
                token_labels[position] = int(by_union[union_index])
        return token_labels

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
