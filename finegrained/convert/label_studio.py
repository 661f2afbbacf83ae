"""Label Studio in and out: tasks and a labeling config generated from a schema, and Label Studio's JSON
export read back into our span and preference records.

Out (``finegrained sample --format label-studio``): each span item becomes a task
``{"data": {"item_id", "prompt", "completion"}}`` and each pair item ``{"data": {"item_id", "prompt",
"completion_a", "completion_b"}}``; ``labeling_config(schema, pairs)`` writes the matching XML: the prompt
shown as context, span categories as ``<Labels>`` over the completion (one ``<Label>`` per error type, the
category name when it has none) with a ``No errors`` choice, preference categories as ``<Choices>`` of
``A`` / ``B`` / ``Tie``.

In (``finegrained convert label-studio EXPORT.json OUT_DIR``): the JSON export (a list of tasks, each with
``annotations``, each with a ``result`` list of regions ``{"type", "from_name", "value"}``; a text region's
``value`` has ``start``, ``end``, ``text``, ``labels``, a choice's ``choices``). Current Label Studio counts
a ``<Text>`` region's offsets in code points, as Python does; releases before its emoji fix (2021-2022)
counted JavaScript string units, UTF-16 code units, where a character outside the Basic Multilingual Plane
(most emoji) counts twice. ``region_span`` reads either exactly and checks each region's ``text`` against
the converted offsets (``auto`` picks the reading the text confirms). An annotation with no region on a
span task says "annotated, no errors" (``spans: []``); cancelled annotations (``was_cancelled``) are
skipped; a ``Tie`` expresses no preference and writes no pair.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..data import cap_problems, validate_record
from ..errors import FinegrainedError, InputError, Problem
from ..schema import AnnotationSchema

NO_ERRORS = "No errors"
NO_ERRORS_CONTROL = "no_errors"  # the span config's optional "I read it and found no error" choice
CHOICE_A, CHOICE_B, CHOICE_TIE = "A", "B", "Tie"
OFFSET_READINGS = ("auto", "code-points", "utf16")
# Label Studio collapses whitespace in a <Text> unless told otherwise; completions keep their line breaks.
_PRE_WRAP = "  <Style>.htx-text { white-space: pre-wrap; }</Style>"


# ----------------------------------------------------------------------------------------- offsets
def utf16_boundaries(text: str) -> list[int]:
    """UTF-16 offset of the start of each code point of ``text``, plus the end: ``len(text) + 1`` ints."""
    out = [0]
    for ch in text:
        out.append(out[-1] + (2 if ord(ch) > 0xFFFF else 1))
    return out


def utf16_to_index(boundaries: Sequence[int], offset: int) -> int | None:
    """The ``str`` index at UTF-16 ``offset``; ``None`` when it falls inside a surrogate pair or past the end."""
    i = bisect.bisect_left(boundaries, offset)
    return i if i < len(boundaries) and boundaries[i] == offset else None


def index_to_utf16(text: str, index: int) -> int:
    """The UTF-16 offset of ``str`` index ``index`` (what Label Studio would show)."""
    return index + sum(1 for ch in text[:index] if ord(ch) > 0xFFFF)


# ----------------------------------------------------------------------------------------- out
def labeling_config(schema: AnnotationSchema, pairs: bool = False) -> str:
    """A Label Studio labeling config (XML) for span items (``pairs=False``) or pair items.

    Raises ``FinegrainedError`` when the schema has no category of that kind."""
    wanted = schema.preference_categories if pairs else schema.span_categories
    if not wanted:
        kind = "preference" if pairs else "span"
        raise FinegrainedError(f"schema {schema.name!r} has no {kind} category to label"
                               + (" (drop --pairs)" if pairs else " (use --pairs for its preference categories)"))  # fmt: skip
    lines = ["<View>", _PRE_WRAP, '  <Header value="Prompt"/>', '  <Text name="prompt" value="$prompt" granularity="word"/>']
    if pairs:
        lines += ['  <Header value="Answer A"/>', '  <Text name="completion_a" value="$completion_a"/>',
                  '  <Header value="Answer B"/>', '  <Text name="completion_b" value="$completion_b"/>']  # fmt: skip
        for c in wanted:
            title = f"{c.name}: {' '.join(c.description.split())}" if c.description else c.name
            lines.append(f"  <Header value={quoteattr(title)}/>")
            lines.append(f'  <Choices name={quoteattr(c.name)} toName="completion_a" choice="single" required="true">')
            lines += [f'    <Choice value="{v}"/>' for v in (CHOICE_A, CHOICE_B, CHOICE_TIE)]
            lines.append("  </Choices>")
    else:
        if NO_ERRORS_CONTROL in schema.category_names:
            raise FinegrainedError(f"schema {schema.name!r}: a category named {NO_ERRORS_CONTROL!r} clashes with the "
                                   "labeling config's no-errors choice; rename it")  # fmt: skip
        lines.append('  <Header value="Answer: select error spans"/>')
        for c in wanted:
            lines.append(f'  <Labels name={quoteattr(c.name)} toName="completion">')
            for label in c.error_types or (c.name,):
                hint = f" hint={quoteattr(' '.join(c.description.split()))}" if c.description else ""
                lines.append(f"    <Label value={quoteattr(label)}{hint}/>")
            lines.append("  </Labels>")
        lines.append('  <Text name="completion" value="$completion"/>')
        # Without a region Label Studio may ask whether to submit an empty annotation; this says it on purpose.
        lines.append(f'  <Choices name="{NO_ERRORS_CONTROL}" toName="completion" choice="single">')
        lines.append(f'    <Choice value="{NO_ERRORS}"/>')
        lines.append("  </Choices>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def tasks_from_items(items: Iterable[dict]) -> list[dict]:
    """Label Studio tasks (``{"data": ...}``) from ``finegrained sample`` items (span or pair items)."""
    tasks = []
    for item in items:
        data = {"item_id": str(item["id"]), "prompt": item["prompt"]}
        if "completion_a" in item:
            data |= {"completion_a": item["completion_a"], "completion_b": item["completion_b"]}
        else:
            data["completion"] = item["completion"]
        tasks.append({"data": data, "meta": item.get("meta") or {}})
    return tasks


# ----------------------------------------------------------------------------------------- in
def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # the export with user details: {"id", "email", "first_name", "last_name"}
        who = who.get("email") or who.get("id")
    return f"label-studio:{who}" if who not in (None, "") else "label-studio"


def _same_text(region_text: str, selected: str) -> bool:
    """Whether a region's ``text`` is the completion's text at its offsets. Label Studio may save the
    selection with runs of whitespace collapsed (a ``<Text>`` shown without ``white-space: pre-wrap``),
    so whitespace runs compare equal."""
    return region_text == selected or region_text.split() == selected.split()


def _code_point_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    return (start, end) if 0 <= start < end <= len(text) else None


def _utf16_span(text: str, boundaries: Sequence[int], start: int, end: int) -> tuple[int, int] | str | None:
    """The ``str`` span of UTF-16 offsets; a message when one falls inside a surrogate pair; None out of range."""
    if not 0 <= start < end <= boundaries[-1]:
        return None
    span = utf16_to_index(boundaries, start), utf16_to_index(boundaries, end)
    for offset, index in zip((start, end), span):
        if index is None:
            char = text[bisect.bisect_right(boundaries, offset) - 1]
            return f"UTF-16 offset {offset} falls inside the surrogate pair of {char!r} (U+{ord(char):04X})"
    return span  # type: ignore[return-value]


def region_span(
    text: str, value: dict, offsets: str = "auto", boundaries: Sequence[int] | None = None, prefer: str = "code-points"
) -> tuple[int, int] | str:
    """The ``str`` span ``[start, end)`` of a Label Studio text region's ``value``, or a message saying why not.

    ``offsets``: ``code-points`` (what current Label Studio saves for ``<Text>``), ``utf16`` (JavaScript
    string units, what releases before the emoji fix saved), or ``auto``: the reading whose slice equals the
    region's ``text`` (``prefer`` when both do, e.g. ``"aa"`` after an emoji). Both readings agree on a
    completion without characters outside the Basic Multilingual Plane; where they differ and the region
    has no ``text``, ``auto`` refuses.
    """
    start, end = value.get("start"), value.get("end")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        return f"start and end must be integer offsets, got {start!r} and {end!r}"
    boundaries = boundaries if boundaries is not None else utf16_boundaries(text)
    region_text = value.get("text")
    readings = {"code-points": _code_point_span(text, start, end), "utf16": _utf16_span(text, boundaries, start, end)}
    if prefer == "utf16":
        readings = dict(reversed(readings.items()))
    if offsets == "auto":
        spans = [s for s in readings.values() if isinstance(s, tuple)]
        notes = "".join(f"; {s}" for s in readings.values() if isinstance(s, str))
        if isinstance(region_text, str):
            spans = [s for s in spans if _same_text(region_text, text[s[0]:s[1]])]
            if not spans:
                return (f"region text {region_text!r} is not the completion's text at offsets {start}..{end}, read "
                        f"as code points or as UTF-16 units ({len(text)} code points, {boundaries[-1]} UTF-16 "
                        f"units){notes}")  # fmt: skip
        elif len(set(spans)) > 1:
            return (f"offsets {start}..{end} mean different text as code points and as UTF-16 units and the region "
                    "has no 'text' to tell them apart; pass --offsets code-points or --offsets utf16")  # fmt: skip
        return spans[0] if spans else _out_of_range(text, boundaries, start, end) + notes
    span = readings[offsets]
    if isinstance(span, str):
        return span
    if span is None:
        return _out_of_range(text, boundaries, start, end)
    if isinstance(region_text, str) and not _same_text(region_text, text[span[0]:span[1]]):
        return f"region text {region_text!r} differs from the completion at its offsets ({text[span[0]:span[1]]!r})"
    return span


def preferred_offsets(export: list) -> str:
    """The offset reading an export's regions confirm most often where only one reading matches their
    ``text`` (``code-points`` without such evidence): the tie-break of ``auto`` for regions both readings
    fit. One export normally comes from one Label Studio release; a region at odds with the majority is
    still read the way its own text confirms."""
    votes = {"code-points": 0, "utf16": 0}
    for task in export:
        data = task.get("data") if isinstance(task, dict) else None
        text = data.get("completion") if isinstance(data, dict) else None
        annotations = task.get("annotations") if isinstance(text, str) else None
        boundaries = utf16_boundaries(text) if annotations else []
        for annotation in annotations if isinstance(annotations, list) else []:
            result = annotation.get("result") if isinstance(annotation, dict) else None
            for region in result if isinstance(result, list) else []:
                value = region.get("value") if isinstance(region, dict) else None
                if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                    continue
                fits = [r for r in votes if isinstance(region_span(text, value, r, boundaries), tuple)]
                if len(fits) == 1:
                    votes[fits[0]] += 1
    return "utf16" if votes["utf16"] > votes["code-points"] else "code-points"


def _out_of_range(text: str, boundaries: Sequence[int], start: int, end: int) -> str:
    return (f"offsets {start}..{end} are not a span of the completion ({len(text)} code points, "
            f"{boundaries[-1]} UTF-16 units)")  # fmt: skip


def _record_id(task: dict, annotation: dict, n_annotations: int) -> str:
    """The item id; ``<item id>@<annotation id>`` when several annotators labelled the task, so that ids stay
    unique in one file (``finegrained validate`` refuses repeats)."""
    item_id = str(task["data"].get("item_id", task.get("id")))
    return item_id if n_annotations == 1 else f"{item_id}@{annotation.get('id')}"


def _span_record(task: dict, annotation: dict, schema: AnnotationSchema, ctx: _Context) -> dict:
    data = task["data"]
    text = data["completion"]
    boundaries = utf16_boundaries(text)
    spans, said_no_errors = [], False
    for k, region in enumerate(annotation.get("result") or []):
        at = f"{ctx.where}.result[{k}]"
        if not isinstance(region, dict):
            ctx.problem(f"a result is an object, got {type(region).__name__}", at)
            continue
        value = region.get("value") if isinstance(region.get("value"), dict) else {}
        if region.get("type") == "choices" and region.get("from_name") == NO_ERRORS_CONTROL:
            said_no_errors = NO_ERRORS in (value.get("choices") or [])
            continue
        if region.get("type") != "labels":
            continue  # relations, text areas, ...: nothing of ours
        span = region_span(text, value, ctx.offsets, boundaries, ctx.prefer)
        if isinstance(span, str):
            ctx.problem(span, at)
            continue
        labels = value.get("labels")
        if not isinstance(labels, list) or not labels:
            ctx.problem(f"a region needs at least one label, got {labels!r}", at)
            continue
        for label in labels:
            problem = _label_problem(label, region.get("from_name"), schema)
            if problem:
                ctx.problem(problem, at)
            else:
                spans.append({"start": span[0], "end": span[1], "label": label})
    if said_no_errors and spans:
        ctx.problem(f"marked {NO_ERRORS!r} and also has {len(spans)} error span(s); keep one", ctx.where)
    return {"id": _record_id(task, annotation, ctx.n_annotations), "prompt": data.get("prompt", ""),
            "completion": text, "spans": sorted(spans, key=lambda s: (s["start"], s["end"], s["label"])),
            "annotator": _annotator(annotation), "meta": _meta(task, annotation)}  # fmt: skip


def _label_problem(label: object, control: object, schema: AnnotationSchema) -> str | None:
    span_labels = [lab for c in schema.span_categories for lab in c.labels]
    if label not in span_labels:
        return f"unknown label {label!r} in schema {schema.name!r} (known: {', '.join(span_labels)})"
    category = schema.category_of_label(label)
    if isinstance(control, str) and control in schema.category_names and control != category.name:
        return f"label {label!r} belongs to category {category.name!r}, not to the control {control!r}"
    return None


def _meta(task: dict, annotation: dict) -> dict:
    return {"label_studio": {"task": task.get("id"), "annotation": annotation.get("id"),
                             "item_id": task["data"].get("item_id")}}  # fmt: skip


def _preference_records(task: dict, annotation: dict, schema: AnnotationSchema, ctx: _Context) -> list[dict]:
    data = task["data"]
    wanted = [c.name for c in schema.preference_categories]
    out = []
    for k, region in enumerate(annotation.get("result") or []):
        at = f"{ctx.where}.result[{k}]"
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue
        category = region.get("from_name")
        choices = (region.get("value") or {}).get("choices") if isinstance(region.get("value"), dict) else None
        if category not in wanted:
            ctx.problem(f"{category!r} is not a preference category of schema {schema.name!r} "
                        f"(known: {', '.join(wanted)})", at)  # fmt: skip
            continue
        if not isinstance(choices, list) or len(choices) != 1 or choices[0] not in (CHOICE_A, CHOICE_B, CHOICE_TIE):
            ctx.problem(f"expected one of {CHOICE_A}, {CHOICE_B}, {CHOICE_TIE}; got {choices!r}", at)
            continue
        if choices[0] == CHOICE_TIE:
            continue  # a tie prefers neither answer: no pair to learn from
        a, b = data["completion_a"], data["completion_b"]
        chosen, rejected = (a, b) if choices[0] == CHOICE_A else (b, a)
        out.append({"id": f"{_record_id(task, annotation, ctx.n_annotations)}-{category}", "prompt": data.get("prompt", ""),
                    "chosen": chosen, "rejected": rejected, "category": category,
                    "annotator": _annotator(annotation), "meta": _meta(task, annotation)})  # fmt: skip
    return out


@dataclass
class _Context:
    """Where the reader is (for messages), how offsets are read, and the problems found so far."""

    source: str
    offsets: str
    prefer: str = "code-points"
    problems: list[Problem] = field(default_factory=list)
    where: str = ""
    n_annotations: int = 1

    def problem(self, message: str, at: str | None = None) -> None:
        self.problems.append(Problem(self.source, None, message, at or self.where))


def _task_kind(task: object, ctx: _Context) -> str | None:
    """``span`` or ``pair`` for a well-formed task, else None (with the problem recorded)."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        ctx.problem("a task needs a 'data' object")
        return None
    if isinstance(data.get("completion_a"), str) and isinstance(data.get("completion_b"), str):
        return "pair"
    if isinstance(data.get("completion"), str):
        return "span"
    ctx.problem("data needs 'completion' (a span task) or 'completion_a' and 'completion_b' (a pair task); "
                "was it made by finegrained sample --format label-studio?")  # fmt: skip
    return None


def records_from_export(
    export: object, schema: AnnotationSchema, source: str = "<export>", offsets: str = "auto"
) -> tuple[list[dict], list[dict]]:
    """Span and preference records (JSON objects in our formats) from a Label Studio JSON export.

    Every problem is collected and raised as one ``InputError``; a problem's field names the place, e.g.
    ``task[3].annotations[0].result[2]``. ``offsets``: see ``region_span``.
    """
    if offsets not in OFFSET_READINGS:
        raise ValueError(f"offsets must be one of {OFFSET_READINGS}, got {offsets!r}")
    if not isinstance(export, list):
        hint = " (the JSON-MIN export? export as JSON)" if isinstance(export, dict) else ""
        raise InputError([Problem(source, None, f"a Label Studio JSON export is a list of tasks{hint}")])
    ctx = _Context(source, offsets, preferred_offsets(export) if offsets == "auto" else offsets)
    spans, preferences = [], []
    for i, task in enumerate(export):
        ctx.where = f"task[{i}]"
        kind = _task_kind(task, ctx)
        annotations = task.get("annotations") if kind else None
        if annotations is None:
            continue
        if not isinstance(annotations, list):
            ctx.problem(f"'annotations' must be a list, got {type(annotations).__name__}")
            continue
        kept = [(j, a) for j, a in enumerate(annotations) if not (isinstance(a, dict) and a.get("was_cancelled"))]
        ctx.n_annotations = len(kept)
        for j, annotation in kept:
            ctx.where = f"task[{i}].annotations[{j}]"
            if not isinstance(annotation, dict) or not isinstance(annotation.get("result", []), list):
                ctx.problem("an annotation is an object with a 'result' list")
            elif kind == "pair":
                preferences += _preference_records(task, annotation, schema, ctx)
            else:
                spans.append(_span_record(task, annotation, schema, ctx))
    if ctx.problems:
        raise InputError(cap_problems(ctx.problems, 50, source))
    return spans, preferences


def read_export(path: str | Path) -> object:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError([Problem(str(path), None, "no such file")]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise InputError([Problem(str(path), line, f"not a JSON file: {e}")]) from None


def labeling_config_path(tasks_path: str | Path) -> Path:
    """Where ``sample --format label-studio`` writes the labeling config: beside the tasks file."""
    tasks_path = Path(tasks_path)
    return tasks_path.with_name(tasks_path.stem + ".labeling_config.xml")


def _checked(records: list[dict], schema: AnnotationSchema, name: str) -> list[Problem]:
    """Every problem ``finegrained validate`` would report on ``records`` written as ``name`` (ids included)."""
    problems, seen = [], set()
    for line, record in enumerate(records, start=1):
        problems += validate_record(record, schema, name, line)
        if record["id"] in seen:
            problems.append(Problem(name, line, f"duplicate id {record['id']!r}", "id"))
        seen.add(record["id"])
    return problems


def convert_export(
    export_path: str | Path, out_dir: str | Path, schema: AnnotationSchema, offsets: str = "auto"
) -> dict[str, Any]:
    """Read a Label Studio export; write ``OUT_DIR/spans.jsonl`` and ``OUT_DIR/preferences.jsonl`` (valid).

    Both are checked before either is written; a kind without records writes no file (an empty file is not
    a valid one) and removes that file of an earlier conversion into the same directory, which would
    otherwise be mistaken for this export's. Returns the number of records per file name.
    """
    from ..io import atomic_write_jsonl

    export_path, out_dir = Path(export_path), Path(out_dir)
    spans, preferences = records_from_export(read_export(export_path), schema, str(export_path), offsets)
    outputs = {"spans.jsonl": spans, "preferences.jsonl": preferences}
    problems = [p for name, records in outputs.items() for p in _checked(records, schema, str(out_dir / name))]
    if problems:
        raise InputError(cap_problems(problems, 50, str(export_path)))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in outputs.items():
        if records:
            atomic_write_jsonl(out_dir / name, records)
        else:
            (out_dir / name).unlink(missing_ok=True)
    return {"out_dir": str(out_dir), **{name: len(records) for name, records in outputs.items()}}
