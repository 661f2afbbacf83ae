"""Completeness comparisons derived from QA-Feedback's human-corrected answers (Wu et al. 2023).

QA-Feedback has no completeness judgements of its own; the paper derives them from each example's
``corrected-prediction`` (its ``create_comp_rm_files.py``). This module is a fresh implementation of
that rule:

1. The *required information* of an example: every sub-sentence of the whitespace-normalised correction
   is matched to the passage sentence it most resembles (``best_passage_sentence``); a match counts at
   similarity >= ``MIN_SIMILARITY``. A sentence that the annotators listed as ``Missing-Minor-Auxiliary``
   is not required, unless the last correction sub-sentence matched to it occurs in ``prediction 1``
   (case-insensitive substring of the raw, unnormalised prediction, as in the paper).
2. An example with no required information is skipped (``score_predictions`` returns None).
3. Each of the four predictions scores the fraction of the required sentences its own sub-sentences
   match (``coverage``); every pair with different scores is a preference, the higher score chosen.

Passage sentences are identified as ``(passage id, sentence id)``, both 1-based, the passage title not
counted: the ids of QA-Feedback's ``missing-info`` (``passage_id``, ``sentence_id``) index them directly.

The sub-sentence splitter is a parameter (``split_sub_sentences(text) -> list[str]``); the converter
passes the schema's segmenter (``schema_sub_sentence_splitter``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from ..data import PreferenceRecord

#: similarity at or above which a sub-sentence counts as stating a passage sentence
MIN_SIMILARITY = 0.85
#: the compared word n-grams are this much longer than the sub-sentence (rounded down), as in the paper
NGRAM_EXTRA = 0.05
#: padding word appended to a short passage sentence so that it has word n-grams to compare
PAD_WORD = "#"
MINOR_AUXILIARY = "Missing-Minor-Auxiliary"
COMPLETENESS_CATEGORY = "completeness"
DERIVATION = "corrected-prediction coverage"
PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))
"""The prediction pairs QA-Feedback's six ``preference`` values compare, in order (and the order here)."""

SentenceId = tuple[int, int]
"""``(passage id, sentence id)``, both 1-based; sentence 1 is the first sentence after the title."""

SubSentenceSplitter = Callable[[str], list[str]]


class MalformedExample(ValueError):
    """A field this derivation reads does not have the QA-Feedback shape (the message names it)."""


def normalise_whitespace(text: str) -> str:
    """Runs of whitespace become one space; no leading or trailing space."""
    return " ".join(text.split())


def best_match_ratio(sentence: str, sub_sentence: str, matcher: SequenceMatcher | None = None) -> float:
    """How closely some run of words of ``sentence`` resembles ``sub_sentence``, in [0, 1].

    The windows compared are the word n-grams of ``sentence`` with ``n = w + int(NGRAM_EXTRA * w)``,
    ``w`` the words of ``sub_sentence``; a window's similarity is difflib's ``quick_ratio`` (the share
    of characters the two strings have in common, as multisets) against ``sub_sentence``. A sentence of
    at most ``n`` words is first padded with ``PAD_WORD`` words to ``n + 1`` words (without padding it
    would have no full window). 1.0 when ``sub_sentence`` occurs verbatim in the (padded) sentence.
    Both texts are expected whitespace-normalised. ``matcher``: a ``SequenceMatcher`` whose ``seq2``
    is already ``sub_sentence`` (``sub_sentence_matcher``), reused across sentences to save its set-up.
    """
    n_words = len(sub_sentence.split())
    if n_words == 0:
        return 0.0
    n = n_words + int(NGRAM_EXTRA * n_words)
    words = sentence.split()
    if len(words) <= n:
        words += [PAD_WORD] * (n + 1 - len(words))
    if sub_sentence in " ".join(words):
        return 1.0
    matcher = matcher or sub_sentence_matcher(sub_sentence)
    best = 0.0
    for i in range(len(words) - n + 1):
        matcher.set_seq1(" ".join(words[i : i + n]))
        best = max(best, matcher.quick_ratio())
        if best == 1.0:
            break
    return best


def sub_sentence_matcher(sub_sentence: str) -> SequenceMatcher:
    """A ``SequenceMatcher`` comparing windows (``set_seq1``) with ``sub_sentence`` (seq2, which difflib
    indexes once and keeps across ``set_seq1`` calls)."""
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(sub_sentence)
    return matcher


def best_passage_sentence(sub_sentence: str, sentences: Mapping[SentenceId, str]) -> tuple[SentenceId | None, float]:
    """The passage sentence ``sub_sentence`` most resembles and the similarity (``best_match_ratio``).

    Ties go to the first sentence in passage order; ``(None, 0.0)`` when there are no sentences.
    """
    best_id, best = None, -1.0
    matcher = sub_sentence_matcher(sub_sentence)
    for sentence_id, sentence in sentences.items():
        ratio = best_match_ratio(sentence, sub_sentence, matcher)
        if ratio > best:
            best_id, best = sentence_id, ratio
        if best == 1.0:
            break  # no later sentence can beat it, and ties go to the first
    return (best_id, best) if best_id is not None else (None, 0.0)


def passage_sentences(passages: Sequence[Sequence[str]]) -> dict[SentenceId, str]:
    """``{(passage id, sentence id): whitespace-normalised sentence}`` in passage order (titles left out)."""
    return {
        (p, s): normalise_whitespace(sentence)
        for p, passage in enumerate(passages, start=1)
        for s, sentence in enumerate(passage[1:], start=1)
    }


class SentenceMatcher:
    """Matches texts' sub-sentences to one example's passage sentences, each sub-sentence once.

    Sub-sentences repeat within an example (the correction usually keeps much of ``prediction 1``), so
    their matches are remembered.
    """

    def __init__(self, sentences: Mapping[SentenceId, str], split_sub_sentences: SubSentenceSplitter):
        self.sentences = sentences
        self.split = split_sub_sentences
        self._best: dict[str, tuple[SentenceId | None, float]] = {}

    def matches(self, text: str) -> list[tuple[str, SentenceId | None, float]]:
        """``(sub-sentence, best passage sentence id, similarity)`` per sub-sentence of the normalised ``text``."""
        out = []
        for sub in self.split(normalise_whitespace(text)):
            if sub not in self._best:
                self._best[sub] = best_passage_sentence(sub, self.sentences)
            out.append((sub, *self._best[sub]))
        return out

    def stated(self, text: str) -> set[SentenceId]:
        """The passage sentences some sub-sentence of ``text`` matches at >= ``MIN_SIMILARITY``."""
        return {sid for _, sid, ratio in self.matches(text) if sid is not None and ratio >= MIN_SIMILARITY}


def required_information(
    correction: str, prediction: str, matcher: SentenceMatcher, minor_ids: set[SentenceId]
) -> set[SentenceId]:
    """The passage sentences the corrected answer states, minus minor auxiliary ones.

    Args:
        correction: the annotators' ``corrected-prediction``.
        prediction: ``prediction 1``, the answer they corrected.
        minor_ids: sentences annotated ``Missing-Minor-Auxiliary``.

    A minor sentence stays required when the correction sub-sentence matched to it occurs in
    ``prediction`` (lower-cased substring); with several such sub-sentences the last one decides, as in
    the paper's loop.
    """
    required: set[SentenceId] = set()
    dropped: set[SentenceId] = set()
    for sub, sid, ratio in matcher.matches(correction):
        if sid is None or ratio < MIN_SIMILARITY:
            continue
        required.add(sid)
        if sid in minor_ids:
            if sub.lower() in prediction.lower():
                dropped.discard(sid)
            else:
                dropped.add(sid)
    return required - dropped


def coverage(prediction: str, required: set[SentenceId], matcher: SentenceMatcher) -> float:
    """The fraction of ``required`` (non-empty) that ``prediction``'s sub-sentences state."""
    return len(matcher.stated(prediction) & required) / len(required)


def minor_auxiliary_ids(missing_info: object) -> set[SentenceId]:
    """The ``(passage_id, sentence_id)`` pairs of the ``Missing-Minor-Auxiliary`` entries of ``missing-info``."""
    if not isinstance(missing_info, list):
        raise MalformedExample("feedback: 'missing-info' must be a list")
    out: set[SentenceId] = set()
    for k, entry in enumerate(missing_info):
        where = f"feedback.missing-info[{k}]"
        if not isinstance(entry, dict):
            raise MalformedExample(f"{where}: must be a JSON object")
        if entry.get("error type") != MINOR_AUXILIARY:
            continue
        passage_id, sentence_ids = entry.get("passage_id"), entry.get("sentence_id")
        if not _is_int(passage_id):
            raise MalformedExample(f"{where}: field 'passage_id' must be an integer")
        if not isinstance(sentence_ids, list) or not all(_is_int(s) for s in sentence_ids):
            raise MalformedExample(f"{where}: field 'sentence_id' must be a list of integers")
        out.update((passage_id, s) for s in sentence_ids)
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CompletenessScores:
    """Each prediction's coverage (``scores[k]`` for ``prediction k``) of the ``required`` sentences."""

    scores: dict[int, float]
    required: frozenset[SentenceId]


def score_predictions(example: Mapping[str, Any], split_sub_sentences: SubSentenceSplitter) -> CompletenessScores | None:
    """Coverage of the required information by each of the four predictions; None when the example
    has no required information (no correction, or nothing in it matches a passage sentence)."""
    feedback = example["feedback"]
    correction = feedback.get("corrected-prediction")
    if correction is not None and not isinstance(correction, str):
        raise MalformedExample("feedback: field 'corrected-prediction' must be a string")
    minor_ids = minor_auxiliary_ids(feedback.get("missing-info", []))
    if not correction or not correction.strip():
        return None
    matcher = SentenceMatcher(passage_sentences(example["passages"]), split_sub_sentences)
    required = required_information(correction, example["prediction 1"], matcher, minor_ids)
    if not required:
        return None
    scores = {k: coverage(example[f"prediction {k}"], required, matcher) for k in (1, 2, 3, 4)}
    return CompletenessScores(scores, frozenset(required))


def preferences_from_scores(
    scored: CompletenessScores, predictions: Sequence[str], prompt: str, record_id: str, source: Mapping | None = None
) -> list[PreferenceRecord]:
    """One ``completeness`` preference per pair of predictions with different scores (ties dropped).

    Ids are ``<record_id>-c<a>v<b>``; ``meta`` says how the pair was derived, with every score.
    """
    out = []
    scores = {str(k): v for k, v in scored.scores.items()}
    for a, b in PAIRS:
        score_a, score_b = scored.scores[a], scored.scores[b]
        if score_a == score_b:
            continue
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        out.append(PreferenceRecord(
            id=f"{record_id}-c{a}v{b}",
            prompt=prompt,
            chosen=predictions[chosen - 1],
            rejected=predictions[rejected - 1],
            category=COMPLETENESS_CATEGORY,
            annotator=None,
            meta={
                "derived": DERIVATION, "scores": scores, "n_required": len(scored.required),
                "source": {**(source or {}), "pair": f"{a}v{b}", "chosen": chosen, "rejected": rejected},
            },
        ))  # fmt: skip
    return out


def build_prompt(question: str, passages: list[list[str]]) -> str:
    """The converter's prompt of a QA-Feedback example (``qa_feedback`` and ``completeness_pairs``):
    ``question: {q} context: wikipage: {title} text: {sentences joined by spaces} wikipage: ...``."""
    context = " ".join(f"wikipage: {p[0]} text: {' '.join(p[1:])}" for p in passages)
    return f"question: {question} context: {context}"


def completeness_pairs(
    example: Mapping[str, Any], split_sub_sentences: SubSentenceSplitter, record_id: str = "example",
    prompt: str | None = None, source: Mapping | None = None,
) -> list[PreferenceRecord]:
    """The completeness preferences of one QA-Feedback example (``[]`` when it is skipped).

    ``prompt`` defaults to the converter's prompt built from the example's question and passages.
    """
    scored = score_predictions(example, split_sub_sentences)
    if scored is None:
        return []
    if prompt is None:
        prompt = build_prompt(example["question"], example["passages"])
    predictions = [example[f"prediction {k}"] for k in (1, 2, 3, 4)]
    return preferences_from_scores(scored, predictions, prompt, record_id, source)


def schema_sub_sentence_splitter(segmentation) -> SubSentenceSplitter:
    """``split(text) -> sub-sentence strings`` by ``finegrained.segment`` with a schema's segmentation."""
    from ..segment import get_segmenter

    segmenter = get_segmenter(segmentation)

    def split(text: str) -> list[str]:
        return [text[start:end] for start, end in segmenter.sub_sentences([text])[0]]

    return split
