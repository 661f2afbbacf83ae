"""Label Studio in and out: tasks and a labeling config generated from a schema, and Label Studio's JSON
export read back into our span and preference records.

Out (``finegrained sample --format label-studio``): each span item becomes a task
``{"data": {"item_id", "prompt", "completion"}}`` and each pair item ``{"data": {"item_id", "prompt",
"completion_a", "completion_b"}}``; ``labeling_config(schema, pairs)`` writes the matching XML: the prompt
shown as context, span categories as ``<Labels>`` over the completion (one ``<Label>`` per error type, the
category name when it has none), preference categories as ``<Choices>`` of ``A`` / ``B`` / ``Tie``.

In (``finegrained convert label-studio EXPORT.json OUT_DIR``): Label Studio counts character offsets in
JavaScript string units, UTF-16 code units, so a character outside the Basic Multilingual Plane (most
emoji) counts twice there and once in a Python ``str``. Offsets are converted exactly, and each region's
``text`` is checked against the converted offsets. An annotation with no region on a span task says
"annotated, no errors" (``spans: []``); cancelled annotations are skipped; a ``Tie`` expresses no
preference and writes no pair.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..errors import InputError, Problem
from ..schema import AnnotationSchema

NO_ERRORS = "No errors"
CHOICE_A, CHOICE_B, CHOICE_TIE = "A", "B", "Tie"


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
    """A Label Studio labeling config (XML) for span items (``pairs=False``) or pair items."""
    lines = ["<View>", '  <Header value="Prompt"/>', '  <Text name="prompt" value="$prompt" granularity="word"/>']
    if pairs:
        lines += ['  <Header value="Answer A"/>', '  <Text name="completion_a" value="$completion_a"/>',
                  '  <Header value="Answer B"/>', '  <Text name="completion_b" value="$completion_b"/>']  # fmt: skip
        for c in schema.preference_categories:
            lines.append(f"  <Header value={quoteattr(f'{c.name}: {c.description}' if c.description else c.name)}/>")
            lines.append(f'  <Choices name={quoteattr(c.name)} toName="completion_a" choice="single" required="true">')
            lines += [f'    <Choice value="{v}"/>' for v in (CHOICE_A, CHOICE_B, CHOICE_TIE)]
            lines.append("  </Choices>")
    else:
        lines.append('  <Header value="Answer: select error spans"/>')
        for c in schema.span_categories:
            lines.append(f'  <Labels name={quoteattr(c.name)} toName="completion">')
            for label in c.error_types or (c.name,):
                hint = f" hint={quoteattr(c.description)}" if c.description else ""
                lines.append(f"    <Label value={quoteattr(label)}{hint}/>")
            lines.append("  </Labels>")
        lines.append('  <Text name="completion" value="$completion"/>')
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
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"label-studio:{who}" if who not in (None, "") else "label-studio"


def _span_record(task: dict, annotation: dict, schema: AnnotationSchema, where: str, problems: list[Problem]) -> dict | None:
    data = task["data"]
    text = data["completion"]
    boundaries = utf16_boundaries(text)
    known = set(schema.all_labels)
    spans = []
    for k, region in enumerate(annotation.get("result") or []):
        if region.get("type") != "labels":
            continue
        value = region.get("value") or {}
        at = f"{where}.result[{k}]"
        start, end = utf16_to_index(boundaries, value.get("start", -1)), utf16_to_index(boundaries, value.get("end", -1))
        if start is None or end is None or not start < end:
            problems.append(Problem(where, None, f"offsets {value.get('start')}..{value.get('end')} are not a span of "
                                    f"the completion ({boundaries[-1]} UTF-16 units)", at))  # fmt: skip
            continue
        if "text" in value and value["text"] != text[start:end]:
            problems.append(Problem(where, None, f"region text {value['text']!r} differs from the completion at its "
                                    f"offsets ({text[start:end]!r})", at))  # fmt: skip
            continue
        for label in value.get("labels") or []:
            if label not in known:
                problems.append(Problem(where, None, f"label {label!r} is not in schema {schema.name!r}", at))
                continue
            spans.append({"start": start, "end": end, "label": label})
    meta = {"label_studio": {"task": task.get("id"), "annotation": annotation.get("id")}}
    return {"id": str(data.get("item_id", task.get("id"))), "prompt": data.get("prompt", ""), "completion": text,
            "spans": sorted(spans, key=lambda s: (s["start"], s["end"], s["label"])),
            "annotator": _annotator(annotation), "meta": meta}  # fmt: skip


def _preference_records(task: dict, annotation: dict, schema: AnnotationSchema, where: str, problems) -> list[dict]:
    data = task["data"]
    wanted = {c.name for c in schema.preference_categories}
    out = []
    for k, region in enumerate(annotation.get("result") or []):
        if region.get("type") != "choices":
            continue
        category = region.get("from_name")
        choices = (region.get("value") or {}).get("choices") or []
        at = f"{where}.result[{k}]"
        if category not in wanted:
            problems.append(Problem(where, None, f"{category!r} is not a preference category of schema {schema.name!r}", at))
            continue
        if len(choices) != 1 or choices[0] not in (CHOICE_A, CHOICE_B, CHOICE_TIE):
            problems.append(Problem(where, None, f"expected one of {CHOICE_A}, {CHOICE_B}, {CHOICE_TIE}; got {choices}", at))
            continue
        if choices[0] == CHOICE_TIE:
            continue
        a, b = data["completion_a"], data["completion_b"]
        chosen, rejected = (a, b) if choices[0] == CHOICE_A else (b, a)
        item_id = str(data.get("item_id", task.get("id")))
        out.append({"id": f"{item_id}-{category}", "prompt": data.get("prompt", ""), "chosen": chosen, "rejected": rejected,
                    "category": category, "annotator": _annotator(annotation),
                    "meta": {"label_studio": {"task": task.get("id"), "annotation": annotation.get("id")}}})  # fmt: skip
    return out


def records_from_export(export: object, schema: AnnotationSchema, source: str = "<export>") -> tuple[list[dict], list[dict]]:
    """Span and preference records (JSON objects in our formats) from a Label Studio JSON export."""
    if not isinstance(export, list):
        raise InputError([Problem(source, None, "a Label Studio JSON export is a list of tasks")])
    problems: list[Problem] = []
    spans, preferences = [], []
    for i, task in enumerate(export):
        where = f"{source}: task[{i}]"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            problems.append(Problem(where, None, "a task needs a 'data' object"))
            continue
        is_pair = "completion_a" in data and "completion_b" in data
        if not is_pair and not isinstance(data.get("completion"), str):
            problems.append(Problem(where, None, "data needs 'completion' (a span task) or 'completion_a' and "
                                    "'completion_b' (a pair task)", "data"))  # fmt: skip
            continue
        for j, annotation in enumerate(task.get("annotations") or []):
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            at = f"{where}.annotations[{j}]"
            if is_pair:
                preferences += _preference_records(task, annotation, schema, at, problems)
            else:
                record = _span_record(task, annotation, schema, at, problems)
                if record is not None:
                    spans.append(record)
    if problems:
        raise InputError(problems[:50])
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


def _json_lines(records: list[dict]) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in records]


def convert_export(export_path: str | Path, out_dir: str | Path, schema: AnnotationSchema) -> dict[str, Any]:
    """Read a Label Studio export; write ``OUT_DIR/spans.jsonl`` and ``OUT_DIR/preferences.jsonl`` (valid)."""
    from ..data import validate_file
    from ..io import atomic_write_jsonl

    export_path, out_dir = Path(export_path), Path(out_dir)
    spans, preferences = records_from_export(read_export(export_path), schema, str(export_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, records in (("spans.jsonl", spans), ("preferences.jsonl", preferences)):
        path = out_dir / name
        atomic_write_jsonl(path, records)
        if records:
            problems = validate_file(path, schema)
            if problems:
                path.unlink()
                raise InputError(problems)
        written[name] = len(records)
    return {"out_dir": str(out_dir), **written}
