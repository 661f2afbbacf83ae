"""finegrained.data: records, loaders, single-record validation, atomic writing, datasets round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finegrained.data import (
    PreferenceRecord,
    Span,
    SpanRecord,
    dataset_to_records,
    detect_kind,
    inspect_file,
    load_preference_records,
    load_span_records,
    records_to_dataset,
    validate_file,
    validate_record,
    write_records,
)
from finegrained.errors import InputError
from finegrained.schema import load_schema

SCHEMA = load_schema("qa_feedback")


def span_records() -> list[SpanRecord]:
    return [
        SpanRecord("a", "question: q", "First one. Second 東京 one.", (Span(11, 17, "Unverifiable"), Span(0, 5, "relevance")),
                   "ann-1", {"source": {"file": "x.json", "index": 0}, "tags": [1, "二"]}),  # fmt: skip
        SpanRecord("b", "question: q", "No errors here 👍.", (), None, {}),
    ]


def preference_records() -> list[PreferenceRecord]:
    return [
        PreferenceRecord("p1", "q", "better", "worse", "holistic", "ann-2", {"pair": "1v2"}),
        PreferenceRecord("p2", "q", "more", "less", "completeness", None, {}),
        PreferenceRecord("p3", "q", "x", "y", "holistic"),
    ]


def test_detect_kind():
    assert detect_kind({"completion": "x", "spans": []}) == "span"
    assert detect_kind({"chosen": "a", "rejected": "b"}) == "preference"
    assert detect_kind({"completion": "x", "chosen": "a"}) is None
    assert detect_kind({"id": "x"}) is None
    assert detect_kind([1]) is None


def test_validate_record_reports_field_and_position():
    problems = validate_record(
        {"id": "x", "prompt": "p", "completion": "abc", "spans": [{"start": 2, "end": 9, "label": "Nope"}]},
        SCHEMA, file="app", line=7,
    )  # fmt: skip
    assert [(p.file, p.line, p.field) for p in problems] == [("app", 7, "spans[0].end"), ("app", 7, "spans[0].label")]
    assert validate_record({"id": "x", "prompt": "p", "completion": "abc", "spans": []}, SCHEMA) == []
    # annotator may be null or absent, but not a number; meta must be an object
    assert validate_record(GOOD := {"id": "x", "prompt": "p", "completion": "a", "spans": [], "annotator": None}, SCHEMA) == []
    assert {p.field for p in validate_record(GOOD | {"annotator": 3, "meta": []}, SCHEMA)} == {"annotator", "meta"}
    assert [p.field for p in validate_record(GOOD | {"id": " "}, SCHEMA)] == ["id"]


def test_write_then_load_round_trip(tmp_path):
    spans_path, prefs_path = tmp_path / "spans.jsonl", tmp_path / "out" / "prefs.jsonl"
    write_records(spans_path, span_records())
    write_records(prefs_path, preference_records())

    assert load_span_records(spans_path, SCHEMA) == span_records()
    assert load_preference_records(prefs_path, SCHEMA) == preference_records()
    assert validate_file(spans_path, SCHEMA) == [] and validate_file(prefs_path, "qa_feedback") == []
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"
    first = json.loads(spans_path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["id", "prompt", "completion", "spans", "annotator", "meta"]
    assert "東京" in spans_path.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes


def test_load_preference_records_by_category(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_records(path, preference_records())
    assert [r.id for r in load_preference_records(path, SCHEMA, category="holistic")] == ["p1", "p3"]
    with pytest.raises(InputError, match="'relevance' is not a preference category"):
        load_preference_records(path, SCHEMA, category="relevance")
    write_records(path, preference_records()[:1])
    with pytest.raises(InputError, match="no preference records of category 'completeness'"):
        load_preference_records(path, SCHEMA, category="completeness")


def test_loaders_refuse_the_wrong_kind_and_list_every_problem(tmp_path):
    path = tmp_path / "spans.jsonl"
    write_records(path, span_records())
    with pytest.raises(InputError, match="expected preference records, found span records"):
        load_preference_records(path, SCHEMA)

    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n" + json.dumps(span_records()[0].to_json()) + "\n{}\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_span_records(bad, SCHEMA)
    problems = info.value.problems
    assert (problems[0].line, problems[0].message.split(":")[0]) == (1, "malformed JSON")
    # an empty object in a span file is checked as a span record: every required field is missing
    assert [(p.line, p.field) for p in problems[1:]] == [(3, "id"), (3, "prompt"), (3, "completion"), (3, "spans")]


def test_loader_caps_problem_list(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("x\n" * 120, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_span_records(bad, SCHEMA)
    assert len(info.value.problems) == 51
    assert info.value.problems[-1].message == "... and 70 more problems"
    assert len(validate_file(bad, SCHEMA, max_problems=3)) == 4
    assert len(validate_file(bad, SCHEMA, max_problems=None)) == 120


def test_bom_crlf_and_non_utf8_lines(tmp_path):
    path = tmp_path / "bom.jsonl"
    record = json.dumps(span_records()[1].to_json(), ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + record.encode() + b"\r\n\xff\xfe\r\n")
    report = inspect_file(path, SCHEMA)
    assert len(report.records) == 1
    assert [(p.line, p.message.startswith("not valid UTF-8")) for p in report.problems] == [(2, True)]


def test_dataset_round_trip_keeps_id_annotator_meta():
    spans = span_records()
    ds = records_to_dataset(spans)
    assert ds.column_names == ["id", "prompt", "completion", "spans", "annotator", "meta"]
    assert ds[0]["spans"][0] == {"start": 11, "end": 17, "label": "Unverifiable"}
    assert ds[1]["spans"] == []
    assert dataset_to_records(ds) == spans

    prefs = preference_records()
    assert dataset_to_records(records_to_dataset(prefs)) == prefs
    assert len(records_to_dataset([], kind="span")) == 0
    with pytest.raises(ValueError):
        records_to_dataset([*spans, *prefs])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(min_size=1, max_size=40),
    cuts=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=4),
    label=st.sampled_from(SCHEMA.all_labels[:7]),
)
def test_any_unicode_text_with_in_range_spans_round_trips(tmp_path, text, cuts, label):
    spans = tuple(
        Span(min(a, b) % len(text), min(a, b) % len(text) + 1 + abs(a - b) % (len(text) - min(a, b) % len(text)), label)
        for a, b in cuts
    )
    record = SpanRecord("r", "p", text, spans, None, {"t": text})
    assert validate_record(record.to_json(), SCHEMA) == []
    path = tmp_path / "r.jsonl"
    write_records(path, [record])
    assert load_span_records(path, SCHEMA) == [record]
