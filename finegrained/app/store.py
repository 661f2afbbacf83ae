"""What the annotation app reads and writes: the items to annotate and the append-only annotation journal.

Items (the ``--input`` JSONL, e.g. from ``finegrained sample``), one object per line:

- a *span item* ``{"id", "prompt", "completion"}`` (optionally ``spans`` as suggestions and ``meta``): the
  annotator marks error spans of the schema's span categories, or "no errors";
- a *pair item* ``{"id", "prompt", "completion_a", "completion_b"}`` (optionally ``meta``): the annotator
  picks A, B or a tie for each preference category of the schema.

The journal (the ``--output`` JSONL) receives one line per submission, appended in one write and fsync'd
before the server answers, so a killed server loses nothing that was acknowledged. A write that fails (a full
disk) is undone: the file is truncated back to its length before the append, and the client hears an error,
not "saved". A line torn by a crash or by an undo that itself failed is skipped on reading, with a warning
naming ``FILE:LINE``, and the next append starts on a fresh line. Lines use the record formats of the design
notes (section 3):

- a span item's submission is a span record with the item's ``id``, with ``correction`` when the annotator
  edited the completion's text (the page's correction box starts as the completion; left unchanged, no
  correction is written);
- a pair item's submission is one preference record per preference category, with id
  ``<item id>/<category>`` and ``meta.item = <item id>``. A tie has no chosen side, so it is written with
  ``meta.tie = true`` (``chosen`` = A, ``rejected`` = B only to keep the record well-formed); ``export``
  leaves ties out, because a reward model trained on them would learn a preference nobody expressed.

Every journal line carries ``annotator`` and ``meta.submitted_at`` (UTC, ISO 8601). Re-submitting an item
appends new lines (history is kept); ``latest_submissions`` and ``export`` keep the latest line per id.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..data import LOAD_MAX_PROBLEMS, describe_json_value, inspect_file, read_nonblank_lines, validate_record
from ..errors import InputError, Problem
from ..io import atomic_write_jsonl
from ..schema import AnnotationSchema

PAIR_FIELDS = ("id", "prompt", "completion_a", "completion_b", "meta")
SPAN_ITEM_FIELDS = ("id", "prompt", "completion", "spans", "annotator", "meta")
CHOICES = ("A", "B", "tie")
MAX_LISTED_PROBLEMS = LOAD_MAX_PROBLEMS
MAX_SPANS_PER_SUBMISSION = 1000  # far more than any real completion has errors; bounds a hostile submission
MAX_PROBLEMS_IN_MESSAGE = 5
# Every journal line starts with this (json.dumps keeps the record's key order): how a torn write is recognised.
RECORD_START = b'{"id": '

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One thing to annotate. ``kind`` is ``"span"`` (``completion``) or ``"pair"`` (``completion_a``/``_b``)."""

    index: int
    id: str
    kind: str
    prompt: str
    completion: str = ""
    completion_a: str = ""
    completion_b: str = ""
    suggested_spans: tuple[dict, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.id, "kind": self.kind, "prompt": self.prompt}
        if self.kind == "span":
            out["completion"] = self.completion
        else:
            out["completion_a"], out["completion_b"] = self.completion_a, self.completion_b
        return out


def _validate_pair(obj: dict, file: str, line: int) -> list[Problem]:
    """Problems of a pair item, worded like ``finegrained validate``'s messages for records."""
    problems = []
    for key in obj:
        if key not in PAIR_FIELDS:
            problems.append(Problem(file, line, f"unknown field in a pair item (expected {', '.join(PAIR_FIELDS)}; "
                                    "extra information belongs under 'meta')", key))  # fmt: skip
    for key in ("id", "prompt", "completion_a", "completion_b"):
        if key not in obj:
            problems.append(Problem(file, line, "missing required field", key))
        elif not isinstance(obj[key], str):
            problems.append(Problem(file, line, f"must be a string, got {describe_json_value(obj[key])}", key))
    if isinstance(obj.get("id"), str) and not obj["id"].strip():
        problems.append(Problem(file, line, "must not be empty", "id"))
    if "meta" in obj and not isinstance(obj["meta"], dict):
        problems.append(Problem(file, line, f"must be an object, got {describe_json_value(obj['meta'])}", "meta"))
    a, b = obj.get("completion_a"), obj.get("completion_b")
    if isinstance(a, str) and a == b:
        problems.append(Problem(file, line, "'completion_a' and 'completion_b' are the same text; a comparison "
                                "needs two different outputs", "completion_b"))  # fmt: skip
    return problems


def load_items(path: str | Path, schema: AnnotationSchema) -> list[Item]:
    """Every item of ``path``; raises ``InputError`` listing every problem (``FILE:LINE: field: message``).

    Span items are checked by ``finegrained.data.validate_record`` (the checks and messages of
    ``finegrained validate``), with ``spans`` defaulting to ``[]``; pair items by the same rules.
    """
    path = Path(path)
    file = str(path)
    problems: list[Problem] = []
    lines = read_nonblank_lines(path, problems)
    if lines is None:
        raise InputError(problems)
    items: list[Item] = []
    first_line_of_id: dict[str, int] = {}
    for number, text in lines:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(Problem(file, number, f"malformed JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(file, number, f"a record must be a JSON object, got {describe_json_value(obj)}"))
            continue
        is_pair = "completion_a" in obj or "completion_b" in obj
        if is_pair:
            record_problems = _validate_pair(obj, file, number)
        else:
            record_problems = validate_record({"spans": [], **obj}, schema, file, number, kind="span")
        problems += record_problems
        item_id = obj.get("id")
        if isinstance(item_id, str):
            if item_id in first_line_of_id:
                problems.append(Problem(file, number, f"duplicate id {item_id!r} (first used on line "
                                        f"{first_line_of_id[item_id]})", "id"))  # fmt: skip
                continue
            first_line_of_id[item_id] = number
        if record_problems:
            continue
        index = len(items)
        if is_pair:
            items.append(Item(index, obj["id"], "pair", obj["prompt"], completion_a=obj["completion_a"],
                              completion_b=obj["completion_b"], meta=dict(obj.get("meta") or {})))  # fmt: skip
        else:
            items.append(Item(index, obj["id"], "span", obj["prompt"], completion=obj["completion"],
                              suggested_spans=tuple(obj.get("spans") or ()), meta=dict(obj.get("meta") or {})))  # fmt: skip
    if not items and not problems:
        problems.append(Problem(file, None, "empty file: no items to annotate"))
    kinds = {i.kind for i in items}
    if "span" in kinds and not schema.span_categories:
        problems.append(Problem(file, None, f"has completions to annotate with spans, but schema {schema.name!r} "
                                "has no span categories"))  # fmt: skip
    if "pair" in kinds and not schema.preference_categories:
        problems.append(Problem(file, None, f"has pairs to compare, but schema {schema.name!r} has no preference "
                                "categories"))  # fmt: skip
    if problems:
        if len(problems) > MAX_LISTED_PROBLEMS:
            hidden = len(problems) - MAX_LISTED_PROBLEMS
            problems = [*problems[:MAX_LISTED_PROBLEMS], Problem(file, None, f"... and {hidden} more problems")]
        raise InputError(problems)
    return items


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SubmissionError(ValueError):
    """A submission the client got wrong (answered with HTTP 400 and this message)."""


class Journal:
    """The append-only output file: submissions in, the latest annotation per item out.

    Thread-safe: one lock serialises appends and reads of the in-memory index.
    """

    def __init__(self, path: str | Path, schema: AnnotationSchema, items: list[Item], annotator: str):
        self.path = Path(path)
        self.schema = schema
        self.items = items
        self.by_id = {item.id: item for item in items}
        self.annotator = annotator
        self._lock = threading.Lock()
        # item id -> the latest submission: {"spans": [...]} or {"choices": {category: "A"|"B"|"tie"}},
        # plus "submitted_at" and "annotator".
        self.latest: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        if self.path.exists():
            self._replay()

    # -- reading back --------------------------------------------------------------------------------

    def _replay(self) -> None:
        """Rebuild ``latest`` from an existing journal (a restart resumes where the last session stopped)."""
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror or e}", file=self.path) from None
        records, problems, skipped = read_journal(self.path, self.schema, raw)
        self.warnings += skipped
        other_annotators: set[str] = set()
        unknown_items: set[str] = set()
        for obj in records:
            meta = obj.get("meta") or {}
            item_id = meta.get("item", obj["id"]) if "category" in obj else obj["id"]
            item = self.by_id.get(item_id)
            if item is None:
                unknown_items.add(str(item_id))
                continue
            if obj.get("annotator") not in (None, self.annotator):
                other_annotators.add(str(obj.get("annotator")))
            when = meta.get("submitted_at", "")
            if "category" in obj:
                if item.kind != "pair":
                    continue
                choice = "tie" if meta.get("tie") else ("A" if obj["chosen"] == item.completion_a else "B")
                entry = self.latest.get(item_id)
                if entry is None or "choices" not in entry or entry.get("submission") != meta.get("submission"):
                    entry = {"choices": {}, "submission": meta.get("submission")}
                entry["choices"][obj["category"]] = choice
                entry.update(submitted_at=when, annotator=obj.get("annotator"))
                self.latest[item_id] = entry
            elif item.kind == "span":
                self.latest[item_id] = span_entry(obj, when)
        if problems:
            raise InputError(problems[:MAX_LISTED_PROBLEMS])
        if unknown_items:
            shown = ", ".join(sorted(unknown_items)[:5])
            self.warnings.append(f"{self.path}: {len(unknown_items)} annotated id(s) are not in the input "
                                 f"(kept in the file, not shown): {shown}")  # fmt: skip
        if other_annotators:
            self.warnings.append(f"{self.path}: also holds annotations by {', '.join(sorted(other_annotators))}; "
                                 f"they count as done (use one output file per annotator)")  # fmt: skip

    def is_annotated(self, item_id: str) -> bool:
        with self._lock:
            return item_id in self.latest

    def annotated_flags(self) -> list[bool]:
        with self._lock:
            return [item.id in self.latest for item in self.items]

    def first_unannotated(self, start: int = 0) -> int | None:
        """Index of the first item without an annotation at or after ``start`` (wrapping), or ``None``."""
        flags = self.annotated_flags()
        n = len(flags)
        for k in range(n):
            i = (start + k) % n
            if not flags[i]:
                return i
        return None

    def annotation_of(self, item_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self.latest.get(item_id)
            return json.loads(json.dumps(entry)) if entry is not None else None

    # -- writing -------------------------------------------------------------------------------------

    def _records_for(self, item: Item, payload: dict[str, Any], when: str) -> list[dict[str, Any]]:
        """Journal lines for one submission; raises ``SubmissionError`` naming what is wrong."""
        meta = {"submitted_at": when}
        if item.kind == "span":
            spans = payload.get("spans")
            if not isinstance(spans, list):
                raise SubmissionError("'spans' must be a list of {start, end, label}")
            if len(spans) > MAX_SPANS_PER_SUBMISSION:
                raise SubmissionError(f"too many spans ({len(spans)}; at most {MAX_SPANS_PER_SUBMISSION})")
            record = {"id": item.id, "prompt": item.prompt, "completion": item.completion, "spans": spans,
                      "annotator": self.annotator, "meta": meta}  # fmt: skip
            correction = payload.get("correction")
            if correction is not None and not isinstance(correction, str):
                raise SubmissionError("'correction' must be the corrected completion (a string) or null")
            if correction is not None and correction != item.completion:  # the text left as it was: no correction
                record["correction"] = correction
            records = [record]
        else:
            choices = payload.get("choices")
            names = [c.name for c in self.schema.preference_categories]
            if not isinstance(choices, dict) or sorted(choices) != sorted(names):
                raise SubmissionError(f"'choices' must give A, B or tie for each of: {', '.join(names)}")
            records = []
            submission = uuid.uuid4().hex[:16]  # groups the per-category lines of one submission
            for name in names:
                choice = choices[name]
                if choice not in CHOICES:
                    raise SubmissionError(f"choice for {name!r} must be one of A, B, tie; got {choice!r}")
                chosen, rejected = (item.completion_b, item.completion_a) if choice == "B" else (item.completion_a, item.completion_b)
                record_meta = {**meta, "item": item.id, "submission": submission}
                if choice == "tie":
                    record_meta["tie"] = True
                records.append({"id": f"{item.id}/{name}", "prompt": item.prompt, "chosen": chosen,
                                "rejected": rejected, "category": name, "annotator": self.annotator,
                                "meta": record_meta})  # fmt: skip
        for record in records:
            problems = validate_record(record, self.schema, "submission")
            if problems:
                shown = [f"{p.field}: {p.message}" if p.field else p.message for p in problems[:MAX_PROBLEMS_IN_MESSAGE]]
                if len(problems) > MAX_PROBLEMS_IN_MESSAGE:
                    shown.append(f"... and {len(problems) - MAX_PROBLEMS_IN_MESSAGE} more problems")
                raise SubmissionError("; ".join(shown))
        return records

    def submit(self, item_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Validate, append (one write + fsync) and index one submission; returns the stored annotation.

        Raises ``SubmissionError`` for a bad submission, ``OSError`` when the line could not be made durable
        (the journal is then as it was before, and the submission is not indexed).
        """
        item = self.by_id.get(item_id)
        if item is None:
            raise SubmissionError(f"unknown item id {item_id!r}")
        when = _now()
        records = self._records_for(item, payload, when)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with self._lock:
            self._append(data)
            if item.kind == "span":
                entry = span_entry(records[0], when)
            else:
                entry = {"choices": dict(payload["choices"]), "submitted_at": when, "annotator": self.annotator,
                         "submission": records[0]["meta"]["submission"]}  # fmt: skip
            self.latest[item.id] = entry
            return json.loads(json.dumps(entry))

    def _append(self, data: bytes) -> None:
        """Append whole lines durably, or leave the file as it was and raise ``OSError``."""
        created = not self.path.exists()
        # O_APPEND: each write lands at the current end even if another process appended meanwhile.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data  # a torn line (a crash, a failed undo) ends here: ours must not join it
            try:
                written = os.write(fd, data)  # one call: no other line can land between parts of ours
                if written != len(data):
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of {len(data)} bytes)")
                os.fsync(fd)
                if created:
                    _fsync_directory(self.path.parent)  # the new directory entry itself must be durable
            except OSError:
                self._undo_append(fd, start, created)
                raise
        finally:
            os.close(fd)

    def _undo_append(self, fd: int, start: int, created: bool) -> None:
        """Cut the file back to ``start`` bytes after a failed append (the client hears an error, not "saved")."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
            if created:
                os.unlink(self.path)
        except OSError as e:
            # What is left is a torn line without a newline: the next append starts a fresh line after it,
            # and reading skips it with a warning. Every acknowledged line stays whole.
            log.warning("%s: could not undo a failed append (%s); a torn line remains at the end and will "
                        "be skipped", self.path, e.strerror or e)  # fmt: skip


def span_entry(record: dict[str, Any], when: str) -> dict[str, Any]:
    """The stored annotation of a span item: its spans, when and by whom, and its correction if any."""
    entry = {"spans": record["spans"], "submitted_at": when, "annotator": record.get("annotator")}
    if "correction" in record:
        entry["correction"] = record["correction"]
    return entry


def _fsync_directory(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_journal(path: Path, schema: AnnotationSchema, raw: bytes) -> tuple[list[dict], list[Problem], list[str]]:
    """The valid records of a journal's bytes, in file order; the problems of the other lines; and a warning
    (``FILE:LINE: ...``) for each torn line skipped.

    A torn line is what an interrupted append leaves: the start of a record (``RECORD_START``, or a prefix
    of it) that does not parse. It was never acknowledged, so it is skipped, wherever it is. A whole record
    glued after a torn fragment on the same line (what earlier versions wrote after a failed append) is
    recovered. A line that is neither a record nor a torn one is a problem: the file is not a journal.
    """
    lines = raw.split(b"\n")
    records: list[dict] = []
    problems: list[Problem] = []
    skipped: list[str] = []
    for number, chunk in enumerate(lines, start=1):
        if not chunk.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(chunk.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            if not _is_torn(chunk):
                problems.append(Problem(str(path), number, f"malformed JSON in the annotation journal: {e}"))
                continue
            obj, fragment = _recover_glued(chunk, schema)
            kind = "an incomplete last line" if number == len(lines) else "a broken line"
            skipped.append(f"{where}: ignoring {kind} of {fragment} bytes (an interrupted write; it was "
                           "never acknowledged)" + (", keeping the whole record after it" if obj else ""))  # fmt: skip
            if obj is None:
                continue
        record_problems = validate_record(obj, schema, str(path), number)
        if record_problems:
            problems += record_problems
        else:
            records.append(obj)
    return records, problems, skipped


def _is_torn(chunk: bytes) -> bool:
    """Whether a line that does not parse begins like a journal record (or is cut inside that beginning)."""
    return RECORD_START.startswith(chunk.lstrip()[: len(RECORD_START)])


def _recover_glued(chunk: bytes, schema: AnnotationSchema) -> tuple[dict | None, int]:
    """The last whole, valid record glued after torn fragments on one line, and the number of bytes before it
    (``(None, len(chunk))`` when there is none)."""
    position = chunk.rfind(RECORD_START)
    while position > 0:
        try:
            obj = json.loads(chunk[position:].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            obj = None
        if obj is not None and not validate_record(obj, schema):
            return obj, position
        position = chunk.rfind(RECORD_START, 0, position)
    return None, len(chunk)


def latest_records(path: str | Path, schema: AnnotationSchema, keep_ties: bool = False) -> tuple[list[dict], int]:
    """The latest journal line per record id, in order of first appearance, and the number of ties dropped.

    Lines are checked with ``validate_record``; a torn line (an interrupted write) is skipped with a logged
    warning naming ``FILE:LINE``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    journal, problems, skipped = read_journal(path, schema, path.read_bytes())
    for warning in skipped:
        log.warning("warning: %s", warning)
    latest: dict[str, dict] = {}
    for obj in journal:
        latest.pop(obj["id"], None)  # re-insert: order follows the latest submission
        latest[obj["id"]] = obj
    if problems:
        raise InputError(problems[:MAX_LISTED_PROBLEMS])
    records = list(latest.values())
    ties = [r for r in records if "category" in r and (r.get("meta") or {}).get("tie")]
    if not keep_ties:
        records = [r for r in records if not ("category" in r and (r.get("meta") or {}).get("tie"))]
    return records, len(ties)


def export(journal_path: str | Path, out_path: str | Path, schema: AnnotationSchema) -> tuple[list[tuple[Path, int]], int]:
    """Write the latest record per id (ties left out) atomically; each written file passes
    ``finegrained validate``, which wants one record kind per file: span records go to ``out_path`` and,
    when the journal also holds preferences, those go to ``<stem>.preferences<suffix>`` beside it (only
    preferences: all to ``out_path``). Returns ([(file, records written)], ties left out)."""
    records, n_ties = latest_records(journal_path, schema)
    out_path = Path(out_path)
    if out_path.resolve() == Path(journal_path).resolve():
        raise InputError("the export must go to another file than the annotation journal", file=out_path)
    spans = [r for r in records if "category" not in r]
    preferences = [r for r in records if "category" in r]
    targets: list[tuple[Path, list[dict]]] = []
    if spans or not preferences:
        targets.append((out_path, spans))
    if preferences:
        target = out_path.with_name(f"{out_path.stem}.preferences{out_path.suffix}") if spans else out_path
        targets.append((target, preferences))
    written = []
    for target, rows in targets:
        atomic_write_jsonl(target, rows)
        if rows:
            report = inspect_file(target, schema)
            if report.problems:  # a bug, not a user error: an export must always be valid
                raise AssertionError("export produced an invalid file: " + "; ".join(map(str, report.problems[:5])))
        written.append((target, len(rows)))
    return written, n_ties
