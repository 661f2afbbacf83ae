"""Annotated data: span records and preference records (JSON Lines), validated against a schema.

Two record kinds (see ``docs/ARCHITECTURE.md`` and the design notes, section 3)::

    {"id": "q17-a", "prompt": "...", "completion": "First sentence. Second one.",
     "spans": [{"start": 16, "end": 26, "label": "Unverifiable"}], "annotator": "ann-3", "meta": {}}
    {"id": "q17-p12", "prompt": "...", "chosen": "...", "rejected": "...", "category": "completeness",
     "annotator": "ann-3", "meta": {}}

Offsets are Python ``str`` indices (code points), half-open ``[start, end)``, into ``completion``.
``annotator`` and ``meta`` are optional (``null``/absent annotator means unknown). A span record with an
empty ``spans`` list means "annotated, no errors". A span record may also carry ``correction``: the
annotator's corrected completion (a non-empty string different from ``completion``), the input of dense
DPO (``finegrained dpo loss=ddpo``); preference records never do. Unknown top-level fields are refused (a typo such as
``span`` for ``spans`` would otherwise lose annotations silently): extra information belongs in ``meta``.

Validation reports every problem as a ``Problem(file, line, message, field)`` whose line is the physical
1-based line of the file, so ``FILE:LINE`` points an editor at the offending record. A file holds one
kind of record; the kind is detected from the first record's fields (``detect_kind``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .errors import InputError, Problem
from .io import atomic_write_jsonl
from .schema import AnnotationSchema, load_schema

RecordKind = Literal["span", "preference"]

SPAN_FIELDS = ("id", "prompt", "completion", "spans", "annotator", "meta", "correction")
PREFERENCE_FIELDS = ("id", "prompt", "chosen", "rejected", "category", "annotator", "meta")
_REQUIRED_STRINGS = {
    "span": ("id", "prompt", "completion"),
    "preference": ("id", "prompt", "chosen", "rejected", "category"),
}
_SPAN_ITEM_FIELDS = ("start", "end", "label")

# Loaders raise with at most this many problems listed (plus a "... and N more" line): a file broken on
# every line should not flood the terminal.
LOAD_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Span:
    """An annotated error span ``completion[start:end]`` (code-point offsets, half-open)."""

    start: int
    end: int
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label}


@dataclass(frozen=True)
class SpanRecord:
    """One annotated completion: its error spans (possibly none) with labels from the schema."""

    id: str
    prompt: str
    completion: str
    spans: tuple[Span, ...] = ()
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    correction: str | None = None  # the annotator's corrected completion (dense DPO), None: none given

    kind = "span"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict in the file format (``annotator`` left out when unknown)."""
        out: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "completion": self.completion,
            "spans": [s.to_json() for s in self.spans],
        }
        if self.annotator is not None:
            out["annotator"] = self.annotator
        out["meta"] = dict(self.meta)
        if self.correction is not None:  # left out when absent: files without corrections stay as they were
            out["correction"] = self.correction
        return out


@dataclass(frozen=True)
class PreferenceRecord:
    """One pairwise judgement for one preference category: ``chosen`` is better than ``rejected``."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    category: str
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    kind = "preference"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict in the file format (``annotator`` left out when unknown)."""
        out: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "category": self.category,
        }
        if self.annotator is not None:
            out["annotator"] = self.annotator
        out["meta"] = dict(self.meta)
        return out


Record = Union[SpanRecord, PreferenceRecord]


@dataclass
class FileReport:
    """Everything ``inspect_file`` learned about one file: its kind, its valid records, every problem."""

    path: str
    kind: RecordKind | None
    records: list[Record]
    problems: list[Problem]
    n_lines_with_records: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------------------------------
# Single-record validation (shared with the annotation app)


def detect_kind(obj: object) -> RecordKind | None:
    """``"span"`` for an object with ``completion`` or ``spans``, ``"preference"`` for one with
    ``chosen`` or ``rejected``; ``None`` when it is not an object or has neither (or both)."""
    if not isinstance(obj, dict):
        return None
    is_span = "completion" in obj or "spans" in obj
    is_preference = "chosen" in obj or "rejected" in obj
    if is_span == is_preference:
        return None
    return "span" if is_span else "preference"


def describe_json_value(value: object) -> str:
    """A JSON-flavoured name of a value's type, for messages (``true`` is reported as a boolean)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _is_int(value: object) -> bool:
    # JSON true/false parse as Python bool, a subclass of int: they are not offsets.
    return isinstance(value, int) and not isinstance(value, bool)


def validate_record(
    obj: object,
    schema: AnnotationSchema,
    file: str = "<input>",
    line: int | None = None,
    kind: RecordKind | None = None,
) -> list[Problem]:
    """Every problem of one parsed JSON value as a span or preference record (``[]`` when valid).

    ``kind`` forces the record kind; by default it is detected from the fields (``detect_kind``).
    Duplicate ids are a file-level matter and are checked by ``inspect_file``, not here.
    """
    problems: list[Problem] = []

    def bad(message: str, field_name: str | None = None) -> None:
        problems.append(Problem(file, line, message, field_name))

    if not isinstance(obj, dict):
        bad(f"a record must be a JSON object, got {describe_json_value(obj)}")
        return problems
    if kind is None:
        kind = detect_kind(obj)
    if kind is None:
        bad("cannot tell the record kind: a span record has 'completion' and 'spans', "
            "a preference record has 'chosen' and 'rejected'")  # fmt: skip
        return problems

    allowed = SPAN_FIELDS if kind == "span" else PREFERENCE_FIELDS
    for key in obj:
        if key == "correction" and kind == "preference":
            bad("a preference record cannot carry a correction (corrections belong to span records: "
                "the annotator's corrected completion)", key)  # fmt: skip
        elif key not in allowed:
            bad(f"unknown field in a {kind} record (expected {', '.join(allowed)}; "
                "extra information belongs under 'meta')", key)  # fmt: skip
    for key in _REQUIRED_STRINGS[kind]:
        if key not in obj:
            bad("missing required field", key)
        elif not isinstance(obj[key], str):
            bad(f"must be a string, got {describe_json_value(obj[key])}", key)
    if isinstance(obj.get("id"), str) and not obj["id"].strip():
        bad("must not be empty", "id")
    if "annotator" in obj and obj["annotator"] is not None and not isinstance(obj["annotator"], str):
        bad(f"must be a string or null, got {describe_json_value(obj['annotator'])}", "annotator")
    if "meta" in obj and not isinstance(obj["meta"], dict):
        bad(f"must be an object, got {describe_json_value(obj['meta'])}", "meta")

    if kind == "span":
        _validate_spans(obj, schema, bad)
    else:
        _validate_preference(obj, schema, bad)
    return problems


def _validate_correction(obj: dict, bad) -> None:
    """``correction``, when present: a non-empty string that differs from ``completion``."""
    if "correction" not in obj:
        return
    correction = obj["correction"]
    if not isinstance(correction, str):
        bad(f"must be a string (the corrected completion), got {describe_json_value(correction)}", "correction")
    elif not correction.strip():
        bad("must not be empty (leave the field out when there is no correction)", "correction")
    elif correction == obj.get("completion"):
        bad("is the same text as 'completion'; a correction must change it (leave the field out when "
            "the completion needs no change)", "correction")  # fmt: skip


def _validate_spans(obj: dict, schema: AnnotationSchema, bad) -> None:
    _validate_correction(obj, bad)
    if "spans" not in obj:
        bad("missing required field (use [] for an annotated completion without errors)", "spans")
        return
    spans = obj["spans"]
    if not isinstance(spans, list):
        bad(f"must be a list of spans, got {describe_json_value(spans)}", "spans")
        return
    completion = obj.get("completion")
    text_length = len(completion) if isinstance(completion, str) else None
    span_labels = [label for c in schema.span_categories for label in c.labels]
    for i, span in enumerate(spans):
        where = f"spans[{i}]"
        if not isinstance(span, dict):
            bad(f"must be an object with start, end, label; got {describe_json_value(span)}", where)
            continue
        for key in span:
            if key not in _SPAN_ITEM_FIELDS:
                bad("unknown field in a span (expected start, end, label)", f"{where}.{key}")
        offsets_ok = True
        for key in ("start", "end"):
            if key not in span:
                bad("missing required field", f"{where}.{key}")
                offsets_ok = False
            elif not _is_int(span[key]):
                bad(f"must be an integer offset, got {describe_json_value(span[key])}", f"{where}.{key}")
                offsets_ok = False
            elif span[key] < 0:
                bad(f"must not be negative, got {span[key]}", f"{where}.{key}")
                offsets_ok = False
            elif text_length is not None and span[key] > text_length:
                bad(f"offset {span[key]} is past the end of the completion "
                    f"({text_length} characters)", f"{where}.{key}")  # fmt: skip
                offsets_ok = False
        if offsets_ok and span["start"] >= span["end"]:
            bad(f"start ({span['start']}) must be smaller than end ({span['end']})", where)
        label = span.get("label")
        if "label" not in span:
            bad("missing required field", f"{where}.label")
        elif not isinstance(label, str):
            bad(f"must be a string, got {describe_json_value(label)}", f"{where}.label")
        elif label not in span_labels:
            category = schema.category_of_label(label)
            if category is not None:
                bad(f"{label!r} is the preference category {category.name!r}; span labels are span "
                    f"categories or their error types: {', '.join(span_labels)}", f"{where}.label")  # fmt: skip
            else:
                bad(f"unknown label {label!r} in schema {schema.name!r} "
                    f"(known: {', '.join(span_labels)})", f"{where}.label")  # fmt: skip


def _validate_preference(obj: dict, schema: AnnotationSchema, bad) -> None:
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) and chosen == rejected:
        bad("'chosen' and 'rejected' are the same text; a preference needs two different outputs", "rejected")
    category = obj.get("category")
    if isinstance(category, str):
        preference_names = [c.name for c in schema.preference_categories]
        if category not in schema.category_names:
            bad(f"unknown category {category!r} in schema {schema.name!r} "
                f"(preference categories: {', '.join(preference_names)})", "category")  # fmt: skip
        elif schema.category(category).kind != "preference":
            bad(f"{category!r} is a {schema.category(category).kind} category, not a preference category "
                f"(preference categories: {', '.join(preference_names)})", "category")  # fmt: skip


def record_from_json(obj: dict, kind: RecordKind | None = None) -> Record:
    """Build a record from an already validated object (``validate_record`` returned no problems)."""
    kind = kind or detect_kind(obj)
    meta = dict(obj.get("meta") or {})
    if kind == "span":
        spans = tuple(Span(int(s["start"]), int(s["end"]), s["label"]) for s in obj["spans"])
        return SpanRecord(obj["id"], obj["prompt"], obj["completion"], spans, obj.get("annotator"), meta,
                          obj.get("correction"))
    if kind == "preference":
        return PreferenceRecord(
            obj["id"], obj["prompt"], obj["chosen"], obj["rejected"], obj["category"], obj.get("annotator"), meta
        )
    raise ValueError(f"not a span or preference record: {sorted(obj)}")


# --------------------------------------------------------------------------------------------------
# Files


def _as_schema(schema: AnnotationSchema | str | Path) -> AnnotationSchema:
    return schema if isinstance(schema, AnnotationSchema) else load_schema(schema)


def read_nonblank_lines(path: Path, problems: list[Problem]) -> list[tuple[int, str]] | None:
    """``(line_number, text)`` of every non-blank line, or ``None`` when the file cannot be read.

    Reads bytes and splits on ``\\n`` only, so line numbers are the ones an editor shows and a ``\\r\\n``
    line ending is just trailing whitespace; a line that is not UTF-8 is reported on its own.
    """
    file = str(path)
    if not path.exists():
        problems.append(Problem(file, None, "no such file"))
        return None
    if path.is_dir():
        problems.append(Problem(file, None, "is a directory, not a JSONL file"))
        return None
    try:
        raw = path.read_bytes()
    except OSError as e:
        problems.append(Problem(file, None, f"cannot read: {e.strerror or e}"))
        return None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark some editors add
        raw = raw[3:]
    lines = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(file, number, f"not valid UTF-8 (byte {e.start + 1} of the line)"))
            continue
        if text.strip():
            lines.append((number, text))
    return lines


def inspect_file(path: str | Path, schema: AnnotationSchema | str | Path) -> FileReport:
    """Read and validate a whole JSONL file: its kind, its valid records, and every problem found."""
    schema = _as_schema(schema)
    path = Path(path)
    file = str(path)
    problems: list[Problem] = []
    lines = read_nonblank_lines(path, problems)
    report = FileReport(file, None, [], problems)
    if lines is None:
        return report
    if not lines and not problems:
        problems.append(Problem(file, None, "empty file: no records"))
        return report
    first_line_of_id: dict[str, int] = {}
    kind_line = 0
    for number, text in lines:
        report.n_lines_with_records += 1
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(Problem(file, number, f"malformed JSON: {e.msg} (column {e.colno})"))
            continue
        record_kind = detect_kind(obj)
        if report.kind is None and record_kind is not None:
            report.kind, kind_line = record_kind, number
        elif record_kind is not None and record_kind != report.kind:
            problems.append(Problem(file, number, f"a {record_kind} record in a file of {report.kind} records "
                                    f"(detected from line {kind_line}); keep one kind per file"))  # fmt: skip
            continue
        record_kind = record_kind or report.kind  # e.g. a span record missing both 'completion' and 'spans'
        record_problems = validate_record(obj, schema, file, number, kind=record_kind)
        problems.extend(record_problems)
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            record_id = obj["id"]
            if record_id in first_line_of_id:
                problems.append(Problem(file, number, f"duplicate id {record_id!r} (first used on line "
                                        f"{first_line_of_id[record_id]}); if this file was written by finegrained annotate, "
                                        f"take the latest submission per id with finegrained annotate --export", "id"))  # fmt: skip
                continue
            first_line_of_id[record_id] = number
        if not record_problems:
            report.records.append(record_from_json(obj, record_kind))
    return report


def cap_problems(problems: Sequence[Problem], max_problems: int | None, file: str) -> list[Problem]:
    """The first ``max_problems`` problems, then one ``... and N more problems`` line if any were cut."""
    if max_problems is None or len(problems) <= max_problems:
        return list(problems)
    hidden = len(problems) - max_problems
    return [*problems[:max_problems], Problem(file, None, f"... and {hidden} more problem{'s' * (hidden != 1)}")]


def validate_file(
    path: str | Path, schema: AnnotationSchema | str | Path, max_problems: int | None = 20
) -> list[Problem]:
    """Problems of one span or preference JSONL file (``[]`` when valid); the kind is detected per file.

    At most ``max_problems`` are listed, followed by a ``... and N more problems`` entry when cut.
    """
    return cap_problems(inspect_file(path, schema).problems, max_problems, str(path))


def _load(path: str | Path, schema: AnnotationSchema | str | Path, kind: RecordKind) -> list[Record]:
    report = inspect_file(path, schema)
    problems = list(report.problems)
    if not problems and report.kind != kind:
        problems.append(Problem(report.path, None, f"expected {kind} records, found {report.kind} records"))
    if problems:
        raise InputError(cap_problems(problems, LOAD_MAX_PROBLEMS, report.path))
    return report.records


def load_span_records(path: str | Path, schema: AnnotationSchema | str | Path) -> list[SpanRecord]:
    """All span records of a JSONL file; raises ``InputError`` listing the problems when any is invalid."""
    return _load(path, schema, "span")  # type: ignore[return-value]


def load_preference_records(
    path: str | Path, schema: AnnotationSchema | str | Path, category: str | None = None
) -> list[PreferenceRecord]:
    """Preference records of a JSONL file, only those of ``category`` when given.

    Raises ``InputError`` when the file has problems, when ``category`` is not a preference category of
    the schema, or when no record of that category is in the file (training on nothing is a mistake).
    """
    schema = _as_schema(schema)
    if category is not None:
        names = [c.name for c in schema.preference_categories]
        if category not in names:
            raise InputError(
                f"{category!r} is not a preference category of schema {schema.name!r} (known: {', '.join(names)})",
                file=schema.source,
            )
    records: list[PreferenceRecord] = _load(path, schema, "preference")  # type: ignore[assignment]
    if category is None:
        return records
    selected = [r for r in records if r.category == category]
    if not selected:
        found = sorted({r.category for r in records})
        raise InputError(f"no preference records of category {category!r} (found: {', '.join(found)})", file=path)
    return selected


def write_records(path: str | Path, records: Iterable[Record]) -> None:
    """Write records as JSONL atomically (readers see the old file or the whole new one)."""
    atomic_write_jsonl(path, (r.to_json() for r in records))


# --------------------------------------------------------------------------------------------------
# datasets.Dataset round trip


def _features(kind: RecordKind, with_correction: bool = False):
    from datasets import Features, Value

    # Explicit features: an all-empty 'spans' column would otherwise be inferred as list<null>.
    # 'meta' is stored as a JSON string: metas differ between records and Arrow needs one struct type.
    if kind == "span":
        return Features({
            "id": Value("string"), "prompt": Value("string"), "completion": Value("string"),
            # a plain list of structs: rows read back as a list of {start, end, label} dicts
            "spans": [{"start": Value("int64"), "end": Value("int64"), "label": Value("string")}],
            "annotator": Value("string"), "meta": Value("string"),
            **({"correction": Value("string")} if with_correction else {}),
        })  # fmt: skip
    return Features({
        "id": Value("string"), "prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string"),
        "category": Value("string"), "annotator": Value("string"), "meta": Value("string"),
    })  # fmt: skip


def records_to_dataset(records: Sequence[Record], kind: RecordKind | None = None):
    """A ``datasets.Dataset`` with one row per record; ``meta`` is a JSON string column.

    All records must be of one kind; ``kind`` is needed only for an empty list. Span records get a
    ``correction`` column (null where a record has none) only when at least one of them carries a correction.
    """
    from datasets import Dataset

    kinds = {r.kind for r in records}
    if len(kinds) > 1:
        raise ValueError("records_to_dataset needs records of one kind, got both span and preference records")
    kind = kind or (next(iter(kinds)) if kinds else None)
    if kind is None:
        raise ValueError("records_to_dataset of an empty list needs kind='span' or kind='preference'")
    rows = []
    for r in records:
        row = r.to_json()
        row["annotator"] = r.annotator
        row["meta"] = json.dumps(r.meta, ensure_ascii=False)
        if r.kind == "span":
            row["correction"] = r.correction
        rows.append(row)
    with_correction = kind == "span" and any(row["correction"] is not None for row in rows)
    columns = SPAN_FIELDS if kind == "span" else PREFERENCE_FIELDS
    columns = tuple(c for c in columns if c != "correction" or with_correction)
    data = {name: [row[name] for row in rows] for name in columns}
    return Dataset.from_dict(data, features=_features(kind, with_correction))


def dataset_to_records(dataset) -> list[Record]:
    """The records of a dataset made by ``records_to_dataset`` (kind read from its columns)."""
    columns = set(dataset.column_names)
    if {"completion", "spans"} <= columns:
        kind: RecordKind = "span"
    elif {"chosen", "rejected", "category"} <= columns:
        kind = "preference"
    else:
        raise ValueError(f"not a span or preference dataset: columns {sorted(columns)}")
    records: list[Record] = []
    for row in dataset:
        meta = row.get("meta")
        meta = json.loads(meta) if isinstance(meta, str) and meta else (meta or {})
        annotator = row.get("annotator")
        if kind == "span":
            raw = row["spans"]
            if isinstance(raw, dict):  # datasets' dict-of-lists form of a sequence of structs
                raw = [dict(zip(raw, values)) for values in zip(*raw.values())] if raw else []
            spans = tuple(Span(int(s["start"]), int(s["end"]), s["label"]) for s in raw)
            records.append(SpanRecord(row["id"], row["prompt"], row["completion"], spans, annotator, meta,
                                      row.get("correction")))
        else:
            records.append(
                PreferenceRecord(
                    row["id"], row["prompt"], row["chosen"], row["rejected"], row["category"], annotator, meta
                )
            )
    return records
