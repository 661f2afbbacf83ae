"""Label Studio in and out: tasks and a labeling config from a schema, and exports in Label Studio's documented
JSON format (tasks -> annotations -> result regions) read back into valid span and preference records with exact
offsets, also around characters outside the Basic Multilingual Plane."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET

import pytest

from finegrained import cli
from finegrained.commands import sample
from finegrained.convert import label_studio as ls
from finegrained.errors import FinegrainedError, InputError
from finegrained.schema import load_schema

SCHEMA = load_schema("qa_feedback")
PROMPT = "question: where is Bora? context: wikipage: Bora text: Bora is a town."
# emoji outside the BMP (one of them with a skin-tone modifier, two code points), CJK, a combining accent
COMPLETION = "Bora 🐱 is a town 🚀 in Fiji. 这是一个错误的句子。 It has 👍🏽 two ports, and a café zoo."
# overlapping spans (the first two), one holding an emoji, one in CJK, one after every emoji
SPANS = [
    ("a town 🚀 in Fiji", "Unverifiable"),
    ("town 🚀", "Irrelevant"),
    ("这是一个错误的句子。", "Wrong-Grounding"),
    ("👍🏽 two ports", "Redundant"),
    ("café zoo", "Incoherent"),
]


def py_span(text: str, sub: str) -> tuple[int, int]:
    start = text.index(sub)
    return start, start + len(sub)


def text_region(text: str, start: int, end: int, label: str, control: str, utf16: bool = False, k: int = 0) -> dict:
    """One result region as Label Studio exports it, from a Python span (offsets converted when ``utf16``)."""
    offset = (lambda i: ls.index_to_utf16(text, i)) if utf16 else (lambda i: i)
    return {"id": f"r{k}", "from_name": control, "to_name": "completion", "type": "labels", "origin": "manual",
            "value": {"start": offset(start), "end": offset(end), "text": text[start:end], "labels": [label]}}  # fmt: skip


def choice_region(control: str, choice: str, to_name: str = "completion_a") -> dict:
    return {"id": f"c-{control}", "from_name": control, "to_name": to_name, "type": "choices", "origin": "manual",
            "value": {"choices": [choice]}}  # fmt: skip


def annotation(result: list[dict], annotation_id: int = 1, completed_by: object = 7, cancelled: bool = False) -> dict:
    return {"id": annotation_id, "completed_by": completed_by, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T10:01:00Z",
            "lead_time": 12.5, "result_count": len(result), "task": annotation_id, "prediction": {}}  # fmt: skip


def task(task_id: int, data: dict, annotations: list[dict]) -> dict:
    return {"id": task_id, "data": data, "annotations": annotations, "predictions": [], "drafts": [], "project": 3,
            "meta": {}, "created_at": "2024-05-01T09:00:00Z", "updated_at": "2024-05-01T10:01:00Z"}  # fmt: skip


def span_task(task_id: int, item_id: str, completion: str, result: list[dict], **kw) -> dict:
    data = {"item_id": item_id, "prompt": PROMPT, "completion": completion}
    return task(task_id, data, [annotation(result, annotation_id=task_id, **kw)])


def documented_regions(utf16: bool) -> list[dict]:
    control = {label: SCHEMA.category_of_label(label).name for _, label in SPANS}
    return [text_region(COMPLETION, *py_span(COMPLETION, sub), label, control[label], utf16, k)
            for k, (sub, label) in enumerate(SPANS)]  # fmt: skip


def pair_task(task_id: int, result: list[dict]) -> dict:
    data = {"item_id": f"pair{task_id}", "prompt": PROMPT, "completion_a": "Bora is a town 🚀.", "completion_b": "No idea."}
    return task(task_id, data, [annotation(result, annotation_id=100 + task_id, completed_by={"id": 9, "email": "x@y.z"})])


def documented_export() -> list[dict]:
    """Current Label Studio (code-point offsets), an older release (UTF-16 offsets), a cancelled annotation,
    an annotation without regions, one that says "No errors", and pair tasks."""
    return [
        span_task(1, "cp", COMPLETION, documented_regions(utf16=False)),
        span_task(2, "utf16", COMPLETION, documented_regions(utf16=True)),
        span_task(3, "cancelled", COMPLETION, documented_regions(utf16=False), cancelled=True),
        span_task(4, "clean", COMPLETION, []),
        span_task(5, "said-clean", COMPLETION, [choice_region(ls.NO_ERRORS_CONTROL, ls.NO_ERRORS, "completion")]),
        pair_task(6, [choice_region("completeness", "B"), choice_region("holistic", "Tie")]),
        pair_task(7, [choice_region("holistic", "A")]),
    ]


def expected_spans() -> list[dict]:
    spans = [{"start": s, "end": e, "label": label} for sub, label in SPANS for s, e in [py_span(COMPLETION, sub)]]
    return sorted(spans, key=lambda s: (s["start"], s["end"], s["label"]))


# ----------------------------------------------------------------------------------------- offsets
def test_the_text_really_has_characters_outside_the_bmp():
    assert len(ls.utf16_boundaries(COMPLETION)) - 1 == len(COMPLETION)
    assert ls.utf16_boundaries(COMPLETION)[-1] == len(COMPLETION.encode("utf-16-le")) // 2 > len(COMPLETION)


def test_utf16_offsets_match_javascript_string_units():
    rng = random.Random(0)
    alphabet = "ab 中文é\u0301🐱🚀👍🏽\U0001F9D1"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        boundaries = ls.utf16_boundaries(text)
        for i in range(len(text) + 1):
            units = len(text[:i].encode("utf-16-le")) // 2  # reference: count the encoded units
            assert ls.index_to_utf16(text, i) == boundaries[i] == units
            assert ls.utf16_to_index(boundaries, units) == i


# ----------------------------------------------------------------------------------------- in
def test_a_documented_export_converts_exactly(tmp_path):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(documented_export(), ensure_ascii=False), encoding="utf-8")
    written = ls.convert_export(export, tmp_path / "out", SCHEMA)
    assert written["spans.jsonl"] == 4 and written["preferences.jsonl"] == 2
    spans = [json.loads(line) for line in (tmp_path / "out" / "spans.jsonl").read_text("utf-8").splitlines()]
    by_id = {r["id"]: r for r in spans}
    assert sorted(by_id) == ["clean", "cp", "said-clean", "utf16"]  # the cancelled annotation is skipped
    for item_id in ("cp", "utf16"):  # both offset conventions give the same Python spans
        assert by_id[item_id]["spans"] == expected_spans()
        regions = documented_regions(utf16=item_id == "utf16")
        texts = sorted(r["value"]["text"] for r in regions)
        assert sorted(COMPLETION[s["start"]:s["end"]] for s in by_id[item_id]["spans"]) == texts
    assert by_id["clean"]["spans"] == [] and by_id["said-clean"]["spans"] == []  # annotated, no errors
    assert by_id["cp"]["annotator"] == "label-studio:7" and by_id["cp"]["meta"]["label_studio"]["task"] == 1

    prefs = [json.loads(line) for line in (tmp_path / "out" / "preferences.jsonl").read_text("utf-8").splitlines()]
    assert [(p["id"], p["category"]) for p in prefs] == [("pair6-completeness", "completeness"), ("pair7-holistic", "holistic")]
    assert (prefs[0]["chosen"], prefs[0]["rejected"]) == ("No idea.", "Bora is a town 🚀.")  # B preferred; the Tie dropped
    assert (prefs[1]["chosen"], prefs[1]["rejected"]) == ("Bora is a town 🚀.", "No idea.")
    assert prefs[0]["annotator"] == "label-studio:x@y.z"

    files = [str(tmp_path / "out" / name) for name in ("spans.jsonl", "preferences.jsonl")]
    assert cli.main(["validate", "--schema", "qa_feedback", *files]) == 0


@pytest.mark.parametrize("offsets", ["code-points", "utf16"])
def test_a_stated_offset_convention_is_read_as_stated(offsets):
    export = [span_task(1, "x", COMPLETION, documented_regions(utf16=offsets == "utf16"))]
    spans, _ = ls.records_from_export(export, SCHEMA, offsets=offsets)
    assert spans[0]["spans"] == expected_spans()
    with pytest.raises(InputError, match="differs from the completion|surrogate pair"):
        other = "utf16" if offsets == "code-points" else "code-points"
        ls.records_from_export(export, SCHEMA, offsets=other)  # the other reading: another text, refused


def refused(export: list[dict], offsets: str = "auto") -> list[str]:
    with pytest.raises(InputError) as caught:
        ls.records_from_export(export, SCHEMA, source="export.json", offsets=offsets)
    return [str(p) for p in caught.value.problems]


def test_an_offset_inside_a_surrogate_pair_is_refused():
    start, _ = py_span(COMPLETION, "🐱")
    inside = ls.index_to_utf16(COMPLETION, start) + 1  # between the two halves of the cat
    region = text_region(COMPLETION, 0, 1, "Irrelevant", "relevance")
    region["value"] |= {"start": inside, "end": inside + 3}
    del region["value"]["text"]
    problems = refused([span_task(1, "x", "ok", []), span_task(2, "y", COMPLETION, [region])], offsets="utf16")
    assert len(problems) == 1
    assert problems[0].startswith("export.json: task[1].annotations[0].result[0]: ") and "surrogate pair" in problems[0]
    assert "U+1F431" in problems[0]


def test_unknown_labels_and_broken_regions_are_refused_naming_task_and_result():
    good = text_region(COMPLETION, *py_span(COMPLETION, "café zoo"), "Incoherent", "relevance")
    unknown = text_region(COMPLETION, 0, 4, "Made-Up", "relevance")
    wrong_control = text_region(COMPLETION, 0, 4, "Unverifiable", "relevance")
    no_label = text_region(COMPLETION, 0, 4, "Irrelevant", "relevance")
    no_label["value"]["labels"] = []
    bad_text = text_region(COMPLETION, 0, 4, "Irrelevant", "relevance")
    bad_text["value"]["text"] = "Fiji"
    not_int = text_region(COMPLETION, 0, 4, "Irrelevant", "relevance")
    not_int["value"]["start"] = "0"
    past_end = text_region(COMPLETION, 0, 4, "Irrelevant", "relevance")
    past_end["value"] |= {"end": 10_000, "text": None}
    preference_label = text_region(COMPLETION, 0, 4, "completeness", "relevance")
    result = [good, unknown, wrong_control, no_label, bad_text, not_int, past_end, preference_label]
    problems = refused([span_task(1, "x", COMPLETION, result)])
    assert [p.split(": ")[1] for p in problems] == [f"task[0].annotations[0].result[{k}]" for k in range(1, 8)]
    assert "unknown label 'Made-Up'" in problems[0] and "Wrong-Grounding" in problems[0]  # lists the known labels
    assert "belongs to category 'factuality'" in problems[1]
    assert "at least one label" in problems[2]
    assert "'Fiji'" in problems[3] and "not the completion's text" in problems[3]
    assert "integer offsets" in problems[4]
    assert "not a span of the completion" in problems[5]
    assert "unknown label 'completeness'" in problems[6]


def test_malformed_tasks_and_choices_are_refused():
    problems = refused([
        {"id": 1, "annotations": []},
        task(2, {"text": "a plain Label Studio task"}, []),
        task(3, {"item_id": "p", "prompt": PROMPT, "completion_a": "a", "completion_b": "b"},
             [annotation([choice_region("relevance", "A"), choice_region("holistic", "Maybe")])]),
        span_task(4, "x", COMPLETION, [text_region(COMPLETION, 0, 4, "Irrelevant", "relevance"),
                                       choice_region(ls.NO_ERRORS_CONTROL, ls.NO_ERRORS, "completion")]),
        task(5, {"item_id": "q", "prompt": PROMPT, "completion": "x"}, {"not": "a list"}),
    ])  # fmt: skip
    assert problems[0] == "export.json: task[0]: a task needs a 'data' object"
    assert problems[1].startswith("export.json: task[1]: data needs 'completion'")
    assert problems[2].startswith("export.json: task[2].annotations[0].result[0]: 'relevance' is not a preference")
    assert problems[3].startswith("export.json: task[2].annotations[0].result[1]: expected one of A, B, Tie")
    assert problems[4].startswith("export.json: task[3].annotations[0]: marked 'No errors' and also has 1 error span")
    assert problems[5] == "export.json: task[4]: 'annotations' must be a list, got dict"
    with pytest.raises(InputError, match="JSON-MIN"):
        ls.records_from_export({"tasks": []}, SCHEMA)


def test_several_annotators_of_one_task_get_distinct_ids(tmp_path):
    one = span_task(1, "x", COMPLETION, [])
    one["annotations"].append(annotation(documented_regions(utf16=False), annotation_id=55, completed_by=8))
    one["annotations"].append(annotation([], annotation_id=56, completed_by=9, cancelled=True))
    export = tmp_path / "export.json"
    export.write_text(json.dumps([one, span_task(2, "y", "Fine.", [])]), encoding="utf-8")
    ls.convert_export(export, tmp_path / "out", SCHEMA)
    records = [json.loads(line) for line in (tmp_path / "out" / "spans.jsonl").read_text("utf-8").splitlines()]
    assert [(r["id"], r["annotator"]) for r in records] == [("x@1", "label-studio:7"), ("x@55", "label-studio:8"),
                                                            ("y", "label-studio:7")]  # fmt: skip
    assert {r["meta"]["label_studio"]["item_id"] for r in records[:2]} == {"x"}
    assert not (tmp_path / "out" / "preferences.jsonl").exists()  # no pairs: no (invalid, empty) file


def test_items_round_trip_through_tasks_and_a_simulated_annotator():
    """items -> tasks_from_items -> an annotator marks known Python spans, exported in UTF-16 units as older
    Label Studio releases did and in code points as current ones do -> the same spans come back."""
    rng = random.Random(1)
    alphabet = list("abc de, fg. ") + ["中", "文", "🐱", "🚀", "👍🏽", "é", "\U00010348"]
    labels = [label for c in SCHEMA.span_categories for label in c.error_types]
    items = [{"id": f"q{i}-0", "prompt": PROMPT, "completion": "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 30))),
              "meta": {"sample": 0}} for i in range(40)]  # fmt: skip
    tasks = ls.tasks_from_items(items)
    assert [t["data"]["item_id"] for t in tasks] == [i["id"] for i in items]
    for utf16 in (True, False):
        truth, export = {}, []
        for n, t in enumerate(tasks):
            text = t["data"]["completion"]
            spans = []
            for _ in range(rng.randint(0, 4)):
                start = rng.randrange(len(text))
                spans.append((start, rng.randint(start + 1, len(text)), rng.choice(labels)))
            result = [text_region(text, s, e, label, SCHEMA.category_of_label(label).name, utf16, k)
                      for k, (s, e, label) in enumerate(spans)]  # fmt: skip
            export.append({"id": n + 1, **t, "annotations": [annotation(result, annotation_id=n + 1)]})
            truth[t["data"]["item_id"]] = sorted(spans)
        records, prefs = ls.records_from_export(json.loads(json.dumps(export)), SCHEMA)
        assert prefs == []
        assert {r["id"]: sorted((s["start"], s["end"], s["label"]) for s in r["spans"]) for r in records} == truth
        assert [r["completion"] for r in records] == [i["completion"] for i in items]


def test_the_convert_command_reports_problems_as_file_and_place(tmp_path, capsys):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([span_task(1, "x", COMPLETION, [text_region(COMPLETION, 0, 4, "Nope", "relevance")])]))
    assert cli.main(["convert", "label-studio", str(export), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{export}: task[0].annotations[0].result[0]: unknown label 'Nope'") and "Traceback" not in err
    assert not (tmp_path / "out" / "spans.jsonl").exists()
    export.write_text(json.dumps(documented_export(), ensure_ascii=False), encoding="utf-8")
    assert cli.main(["convert", "label-studio", str(export), str(tmp_path / "out"), "--offsets", "auto"]) == 0
    assert "4 span records" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- out
@pytest.mark.parametrize("schema_name", ["qa_feedback", "synthetic_qa"])
def test_the_labeling_config_asks_for_every_label_of_the_schema(schema_name):
    schema = load_schema(schema_name)
    spans_view = ET.fromstring(ls.labeling_config(schema))
    controls = {el.get("name"): [lab.get("value") for lab in el.findall("Label")] for el in spans_view.iter("Labels")}
    assert controls == {c.name: list(c.error_types or (c.name,)) for c in schema.span_categories}
    assert {el.get("toName") for el in spans_view.iter("Labels")} == {"completion"}
    assert {el.get("value") for el in spans_view.iter("Text")} == {"$prompt", "$completion"}
    no_errors = [el for el in spans_view.iter("Choices") if el.get("name") == ls.NO_ERRORS_CONTROL]
    assert [c.get("value") for c in no_errors[0].findall("Choice")] == [ls.NO_ERRORS]

    pairs_view = ET.fromstring(ls.labeling_config(schema, pairs=True))
    choices = {el.get("name"): [c.get("value") for c in el.findall("Choice")] for el in pairs_view.iter("Choices")}
    assert choices == {c.name: ["A", "B", "Tie"] for c in schema.preference_categories}
    assert {el.get("value") for el in pairs_view.iter("Text")} == {"$prompt", "$completion_a", "$completion_b"}


def test_a_schema_without_the_asked_kind_is_refused(tmp_path):
    path = tmp_path / "spans_only.yaml"
    path.write_text("name: spans_only\ncategories:\n  - {name: style, granularity: sentence, kind: span}\n")
    schema = load_schema(path)
    assert [lab.get("value") for lab in ET.fromstring(ls.labeling_config(schema)).iter("Label")] == ["style"]
    with pytest.raises(FinegrainedError, match="no preference category"):
        ls.labeling_config(schema, pairs=True)


def test_label_studio_parses_the_generated_configs_and_our_export():
    """label-studio-sdk's own parser (the optional extra ``labelstudio``: it pulls in opencv and more; CI has it)."""
    pytest.importorskip("label_studio_sdk", reason="label-studio-sdk is not installed (pip install 'finegrained[labelstudio]')")
    from label_studio_sdk.label_interface import LabelInterface

    spans = LabelInterface(ls.labeling_config(SCHEMA))
    spans.validate()
    assert {c.name: list(c.labels) for c in spans.controls if c.name != ls.NO_ERRORS_CONTROL} == {
        c.name: list(c.error_types) for c in SCHEMA.span_categories
    }
    pairs = LabelInterface(ls.labeling_config(SCHEMA, pairs=True))
    pairs.validate()
    assert {c.name: list(c.labels) for c in pairs.controls} == {c.name: ["A", "B", "Tie"] for c in SCHEMA.preference_categories}
    for t in documented_export():
        interface = pairs if "completion_a" in t["data"] else spans
        # (validate_task itself calls validate_annotation without its argument in label-studio-sdk 2.x)
        assert all(t["data"].get(obj.value_name) is not None for obj in interface.objects if obj.value_is_variable)
        assert all(interface.validate_annotation(a) for a in t["annotations"])
    assert not spans.validate_annotation(annotation([text_region(COMPLETION, 0, 4, "Made-Up", "relevance")]))


# ----------------------------------------------------------------------------------------- sample


def test_sample_writes_label_studio_tasks_and_their_config(policy_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q1", "prompt": "facts: Bora is a town."}\n{"id": "q2", "prompt": "question: what?"}\n')
    common = ["--policy", str(policy_dir), "--prompts", str(prompts), "--max-new-tokens", "5", "--format", "label-studio"]
    out = tmp_path / "ls" / "tasks.json"
    assert sample.main([*common, "--output", str(out), "--n-per-prompt", "2", "--schema", "synthetic_qa"]) == 0
    config = ls.labeling_config_path(out)
    assert config.parent == out.parent and config.name == "tasks.labeling_config.xml"
    printed = capsys.readouterr().out
    assert str(out) in printed and str(config) in printed
    tasks = json.loads(out.read_text("utf-8"))
    assert [t["data"]["item_id"] for t in tasks] == ["q1-0", "q1-1", "q2-0", "q2-1"]
    assert all(set(t["data"]) == {"item_id", "prompt", "completion"} for t in tasks)
    assert config.read_text() == ls.labeling_config(load_schema("synthetic_qa"))

    pairs_out = tmp_path / "ls" / "pairs.json"
    assert sample.main([*common, "--output", str(pairs_out), "--pairs"]) == 0  # the default schema: qa_feedback
    pair_tasks = json.loads(pairs_out.read_text("utf-8"))
    assert [set(t["data"]) for t in pair_tasks] == [{"item_id", "prompt", "completion_a", "completion_b"}] * 2
    assert ls.labeling_config_path(pairs_out).read_text() == ls.labeling_config(SCHEMA, pairs=True)

    # what Label Studio would send back with nobody marking anything: valid, "no errors"
    export = [{"id": k, **t, "annotations": [annotation([], annotation_id=k)]} for k, t in enumerate(tasks)]
    records, _ = ls.records_from_export(export, load_schema("synthetic_qa"))
    assert [r["completion"] for r in records] == [t["data"]["completion"] for t in tasks]


def test_sample_checks_the_schema_before_loading_the_policy(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    argv = ["--policy", str(tmp_path / "no-policy"), "--prompts", str(prompts), "--output", str(tmp_path / "t.json"),
            "--format", "label-studio", "--schema", str(tmp_path / "missing.yaml")]  # fmt: skip
    with pytest.raises(FinegrainedError, match="missing.yaml"):
        sample.main(argv)
    assert not (tmp_path / "t.json").exists()


def test_auto_breaks_a_tie_by_what_the_rest_of_the_export_confirms():
    """After an emoji, "aaa" reads as "a" both ways: the reading the export's other regions confirm wins."""
    text = "🐱aaa"
    ambiguous = text_region(text, 2, 3, "Irrelevant", "relevance", utf16=True)  # UTF-16 3..4: code points 3..4 are "a" too
    assert ls.region_span(text, ambiguous["value"]) == (3, 4)  # alone: code points, what current Label Studio saves
    telling = text_region(text, 0, 1, "Irrelevant", "relevance", utf16=True)  # the cat: only UTF-16 fits
    export = [span_task(1, "a", text, [ambiguous]), span_task(2, "b", text, [telling])]
    assert ls.preferred_offsets(export) == "utf16"
    spans, _ = ls.records_from_export(export, SCHEMA)
    assert [(s["start"], s["end"]) for r in spans for s in r["spans"]] == [(2, 3), (0, 1)]


def test_collapsed_whitespace_is_the_same_text_and_a_missing_text_must_not_be_ambiguous():
    text = "One line.\n\n  🐱 Then   more."
    start, end = py_span(text, "line.\n\n  🐱 Then")
    collapsed = {"start": start, "end": end, "text": "line. 🐱 Then"}  # as a <Text> without pre-wrap saves it
    assert ls.region_span(text, collapsed) == (start, end)
    start, end = py_span(text, "more")
    no_text = {"start": start, "end": end}  # after the cat: code points and UTF-16 units name different text
    assert "--offsets code-points or --offsets utf16" in ls.region_span(text, no_text)
    assert ls.region_span(text, no_text, "code-points") == (start, end)
    assert ls.region_span(text, {"start": start + 1, "end": end + 1}, "utf16") == (start, end)
