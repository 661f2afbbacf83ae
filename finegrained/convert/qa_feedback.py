"""Import the public QA-Feedback data (Wu et al. 2023) as span and preference records.

Input: ``train_feedback.json`` or ``dev_feedback.json``, one JSON array; each element has ``question``,
``passages`` (``[[title, sentence 1, ...], ...]``), ``gold``, ``prediction 1`` .. ``prediction 4``,
``feedback`` (``errors`` with ``error type``/``explanation``/``start``/``end`` indexing ``prediction 1``,
``missing-info``, ``corrected-prediction``) and ``preference`` (six ints for the pairs 1v2, 1v3, 1v4, 2v3,
2v4, 3v4: 1 = first preferred, 2 = second preferred, 0 = tie).

Output (``convert``):

- ``spans.jsonl``: one span record per question for ``prediction 1``, id ``<split>-<index>``; every error
  span with its offsets unchanged and its error type as label; ``meta`` keeps ``missing-info``,
  ``corrected-prediction``, the error ``explanations`` (parallel to ``spans``), ``gold`` and ``source``;
  ``correction`` (the input of ``finegrained dpo loss=ddpo``) is the ``corrected-prediction`` when it is a
  non-empty string different from the prediction, absent otherwise.
- ``preferences.jsonl``: one record per non-tied comparison, id ``<split>-<index>-p<a>v<b>``, category
  ``holistic`` (the overall judgement of the paper's baseline), ``chosen`` the preferred prediction;
  then the ``completeness`` comparisons the paper derives from ``corrected-prediction`` (see
  ``completeness``), id ``<split>-<index>-c<a>v<b>``, ``meta.derived`` saying how, ``meta.scores`` each
  prediction's coverage. An example without required information gives none (counted as skipped).

``<split>`` is ``train``/``dev`` from the file name (``<split>_feedback.json``), else the file's stem;
``<index>`` is the 0-based position in the array.

Imperfect offsets in the public data: some error spans end past the end of ``prediction 1`` or start at
or after their end. An offset past the text is clipped to the text (``end`` to ``len(prediction 1)``, a
negative ``start`` to 0): the annotator marked up to the end and the span still says where the error is.
A span empty after clipping (``start >= end``) carries no position and is dropped. Both are counted
and reported as warnings. A comparison between two identical predictions that is not a tie cannot be a
preference (``chosen == rejected``) and is dropped, also counted. Anything else that does not fit the
format (a missing field, a wrong type, an unknown error type, a preference value other than 0/1/2)
refuses the whole file with ``FILE: message`` naming the element.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data import (
    PreferenceRecord,
    Span,
    SpanRecord,
    cap_problems,
    describe_json_value,
    inspect_file,
    write_records,
)
from ..errors import InputError, Problem
from ..io import atomic_write_jsonl
from ..schema import AnnotationSchema, load_schema
from .completeness import (  # PAIRS: the prediction pairs the six ``preference`` values compare
    COMPLETENESS_CATEGORY,
    PAIRS,
    MalformedExample,
    SubSentenceSplitter,
    build_prompt,
    preferences_from_scores,
    schema_sub_sentence_splitter,
    score_predictions,
)

TIE, FIRST_PREFERRED, SECOND_PREFERRED = 0, 1, 2
PROMPTS_FILE = "prompts.jsonl"
PREFERENCE_CATEGORY = "holistic"


@dataclass
class ConversionStats:
    """What a conversion kept and dropped; ``warnings()`` explains every drop or change."""

    questions: int = 0
    spans: int = 0
    preferences: int = 0
    ties_dropped: int = 0
    identical_pairs_dropped: int = 0
    spans_clipped: int = 0
    spans_dropped_empty: int = 0
    completeness_pairs: int = 0
    completeness_ties_dropped: int = 0
    completeness_skipped: int = 0  # examples without required information: no completeness pairs
    labels: Counter = field(default_factory=Counter)

    def warnings(self) -> list[str]:
        out = []
        if self.spans_clipped:
            out.append(f"clipped {self.spans_clipped} error span(s) whose offsets fell outside 'prediction 1'")
        if self.spans_dropped_empty:
            out.append(f"dropped {self.spans_dropped_empty} error span(s) with start >= end (after clipping)")
        if self.identical_pairs_dropped:
            out.append(f"dropped {self.identical_pairs_dropped} non-tie comparison(s) of two identical predictions")
        return out


def split_name(path: Path) -> str:
    """``train`` for ``train_feedback.json``, ``dev`` for ``dev_feedback.json``; else the file stem."""
    stem = path.stem
    return stem[: -len("_feedback")] if stem.endswith("_feedback") and len(stem) > len("_feedback") else stem


class _Malformed(Exception):
    """An element of the input does not have the QA-Feedback shape (message says where)."""


_JSON_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _require(obj: dict, key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise _Malformed(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _Malformed(f"{where}: field {key!r} must be {_JSON_NAMES[kind]}, got {describe_json_value(value)}")
    return value


def correction_of(corrected: object, completion: str) -> str | None:
    """The span record's ``correction``: QA-Feedback's ``corrected-prediction`` when it is a non-empty string
    that differs from the prediction (annotators left many predictions as they were); else None. ``meta``
    keeps the raw value either way."""
    if isinstance(corrected, str) and corrected.strip() and corrected != completion:
        return corrected
    return None


def convert_example(
    example: object, index: int, split: str, source: str, schema: AnnotationSchema, stats: ConversionStats,
    split_sub_sentences: SubSentenceSplitter | None = None,
) -> tuple[SpanRecord, list[PreferenceRecord]]:
    """One QA-Feedback element -> its span record and its non-tied preference records (holistic, then
    completeness when ``split_sub_sentences`` is given)."""
    where = f"element {index}"
    question, passages, predictions, feedback, errors, preference = _checked_fields(example, where)
    prompt = build_prompt(question, passages)
    completion = predictions[0]
    spans, explanations = _error_spans(errors, completion, schema, stats, where)
    record_id = f"{split}-{index}"
    source_meta = {"file": source, "index": index}
    span_record = SpanRecord(
        id=record_id,
        prompt=prompt,
        completion=completion,
        spans=tuple(spans),
        annotator=None,  # QA-Feedback does not name its annotators
        meta={
            "source": {**source_meta, "prediction": 1},
            "missing-info": feedback.get("missing-info", []),
            "corrected-prediction": feedback.get("corrected-prediction"),
            "explanations": explanations,
            "gold": example.get("gold"),
        },
        correction=correction_of(feedback.get("corrected-prediction"), completion),
    )
    preferences = _holistic_preferences(preference, predictions, prompt, record_id, source_meta, where, stats)
    stats.questions += 1
    stats.spans += len(spans)
    stats.preferences += len(preferences)
    if split_sub_sentences is not None:
        preferences += _completeness_preferences(example, split_sub_sentences, prompt, record_id, source_meta, where, stats)
    return span_record, preferences


def _checked_fields(example: object, where: str) -> tuple[str, list, list[str], dict, list, list]:
    """(question, passages, the four predictions, feedback, feedback errors, preference) of an element of
    the QA-Feedback shape; anything else is ``_Malformed`` naming the field."""
    if not isinstance(example, dict):
        raise _Malformed(f"{where}: must be a JSON object, got {describe_json_value(example)}")
    question = _require(example, "question", str, where)
    passages = _require(example, "passages", list, where)
    for p, passage in enumerate(passages):
        if not isinstance(passage, list) or not passage or not all(isinstance(s, str) for s in passage):
            raise _Malformed(f"{where}: passages[{p}] must be a non-empty list of strings [title, sentence, ...]")
    predictions = [_require(example, f"prediction {k}", str, where) for k in (1, 2, 3, 4)]
    feedback = _require(example, "feedback", dict, where)
    errors = _require(feedback, "errors", list, f"{where}: feedback")
    preference = _require(example, "preference", list, where)
    if len(preference) != len(PAIRS):
        raise _Malformed(f"{where}: 'preference' must hold {len(PAIRS)} values (pairs 1v2 1v3 1v4 2v3 2v4 3v4), "
                         f"got {len(preference)}")  # fmt: skip
    return question, passages, predictions, feedback, errors, preference


def _error_spans(errors: list, completion: str, schema: AnnotationSchema, stats: ConversionStats,
                 where: str) -> tuple[list[Span], list[str]]:
    """The feedback's error spans clipped to the completion (empty ones dropped), and their explanations."""
    span_labels = {label for c in schema.span_categories for label in c.error_types}
    spans: list[Span] = []
    explanations: list[str] = []
    for e, error in enumerate(errors):
        error_where = f"{where}: feedback.errors[{e}]"
        if not isinstance(error, dict):
            raise _Malformed(f"{error_where}: must be a JSON object")
        label = _require(error, "error type", str, error_where)
        if label not in span_labels:
            expected = ", ".join(sorted(span_labels))
            raise _Malformed(f"{error_where}: unknown error type {label!r} (expected one of {expected})")
        start = _require(error, "start", int, error_where)
        end = _require(error, "end", int, error_where)
        clipped_start, clipped_end = max(0, start), min(end, len(completion))
        if (clipped_start, clipped_end) != (start, end):
            stats.spans_clipped += 1
        if clipped_start >= clipped_end:
            stats.spans_dropped_empty += 1
            continue
        spans.append(Span(clipped_start, clipped_end, label))
        explanation = error.get("explanation", "")
        explanations.append(explanation if isinstance(explanation, str) else json.dumps(explanation))
        stats.labels[label] += 1
    return spans, explanations


def _holistic_preferences(preference: list, predictions: list[str], prompt: str, record_id: str, source_meta: dict,
                          where: str, stats: ConversionStats) -> list[PreferenceRecord]:
    """The six ``preference`` values as holistic pairs; ties and pairs of identical predictions left out."""
    preferences: list[PreferenceRecord] = []
    for (a, b), value in zip(PAIRS, preference):
        if isinstance(value, bool) or value not in (TIE, FIRST_PREFERRED, SECOND_PREFERRED):
            raise _Malformed(f"{where}: preference value for pair {a}v{b} must be 0, 1 or 2, got {value!r}")
        if value == TIE:
            stats.ties_dropped += 1
            continue
        first, second = predictions[a - 1], predictions[b - 1]
        if first == second:
            stats.identical_pairs_dropped += 1
            continue
        chosen, rejected = (first, second) if value == FIRST_PREFERRED else (second, first)
        preferred, other = (a, b) if value == FIRST_PREFERRED else (b, a)
        preferences.append(
            PreferenceRecord(
                id=f"{record_id}-p{a}v{b}",
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                category=PREFERENCE_CATEGORY,
                annotator=None,
                meta={"source": {**source_meta, "pair": f"{a}v{b}", "chosen": preferred, "rejected": other}},
            )
        )
    return preferences


def _completeness_preferences(example: dict, split_sub_sentences: SubSentenceSplitter, prompt: str, record_id: str,
                              source_meta: dict, where: str, stats: ConversionStats) -> list[PreferenceRecord]:
    try:
        scored = score_predictions(example, split_sub_sentences)
    except MalformedExample as e:
        raise _Malformed(f"{where}: {e}") from None
    if scored is None:
        stats.completeness_skipped += 1
        return []
    predictions = [example[f"prediction {k}"] for k in (1, 2, 3, 4)]
    records = preferences_from_scores(scored, predictions, prompt, record_id, source_meta)
    stats.completeness_pairs += len(records)
    stats.completeness_ties_dropped += len(PAIRS) - len(records)
    return records


def read_examples(path: Path) -> list:
    """The JSON array of a QA-Feedback file; ``InputError`` (``FILE: message``) when it is not one."""
    file = str(path)
    if not path.exists():
        raise InputError("no such file", file=file)
    if path.is_dir():
        raise InputError("is a directory; give train_feedback.json or dev_feedback.json", file=file)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start})", file=file) from None
    except json.JSONDecodeError as e:
        raise InputError([Problem(file, e.lineno, f"malformed JSON: {e.msg} (column {e.colno})")]) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=file) from None
    if not isinstance(data, list):
        raise InputError(f"a QA-Feedback file is one JSON array, got {describe_json_value(data)}", file=file)
    if not data:
        raise InputError("empty array: no QA-Feedback examples", file=file)
    return data


def convert(
    in_path: str | Path,
    out_dir: str | Path,
    schema: AnnotationSchema | str = "qa_feedback",
    progress: bool | None = None,
) -> ConversionStats:
    """Convert a QA-Feedback file into ``out_dir/spans.jsonl``, ``out_dir/preferences.jsonl`` and
    ``out_dir/prompts.jsonl`` (``{"id", "prompt", "reference"}`` per question, for ``task=jsonl``).

    Both files are written to a temporary directory inside ``out_dir``, validated against ``schema``,
    and only then moved into place, so ``out_dir`` never holds a half-written or invalid output.
    Raises ``InputError`` for a malformed input. ``progress=None`` shows a bar only on a terminal.
    """
    in_path, out_dir = Path(in_path), Path(out_dir)
    schema = schema if isinstance(schema, AnnotationSchema) else load_schema(schema)
    for name in (PREFERENCE_CATEGORY, COMPLETENESS_CATEGORY):
        if name not in [c.name for c in schema.preference_categories]:
            raise InputError(f"the schema has no preference category {name!r}", file=schema.source)
    examples = read_examples(in_path)
    split = split_name(in_path)
    stats = ConversionStats()
    span_records: list[SpanRecord] = []
    preference_records: list[PreferenceRecord] = []
    prompts: list[dict] = []  # the policy's prompts (and gold answers) for task=jsonl
    disable = None if progress is None else not progress
    # the schema's sub-sentence rule, as for the reward models that will learn from these pairs
    split_sub_sentences = schema_sub_sentence_splitter(schema.segmentation)
    try:
        for index, example in enumerate(tqdm(examples, desc=f"converting {in_path.name}", unit="q", disable=disable)):
            span_record, preferences = convert_example(
                example, index, split, in_path.name, schema, stats, split_sub_sentences
            )
            span_records.append(span_record)
            preference_records.extend(preferences)
            gold = example.get("gold")
            prompts.append({"id": span_record.id, "prompt": span_record.prompt}
                           | ({"reference": gold} if isinstance(gold, str) and gold.strip() else {}))
    except _Malformed as e:
        raise InputError(str(e), file=in_path) from None

    if not stats.preferences:
        raise InputError("every comparison is a tie or compares identical texts: no preference records", file=in_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("exists and is not a directory", file=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert.", dir=out_dir) as tmp:
        staged = {"spans.jsonl": span_records, "preferences.jsonl": preference_records}
        problems: list[Problem] = []
        for name, records in staged.items():
            write_records(Path(tmp) / name, records)
            report = inspect_file(Path(tmp) / name, schema)
            final_name = str(out_dir / name)
            problems += [replace(p, file=final_name) for p in cap_problems(report.problems, 20, final_name)]
        if problems:
            # Our own output failed the schema: a bug or a schema without QA-Feedback's labels.
            raise InputError([Problem(str(in_path), None, "converted records failed validation:"), *problems])
        atomic_write_jsonl(Path(tmp) / PROMPTS_FILE, prompts)
        for name in (*staged, PROMPTS_FILE):
            os.replace(Path(tmp) / name, out_dir / name)
    return stats
