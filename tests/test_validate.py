"""``finegrained validate``: one small bad file per refused case, each checked for its exact FILE:LINE."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finegrained.commands import validate
from finegrained.data import load_span_records

SCHEMA = "qa_feedback"
GOOD_SPAN = {"id": "ok", "prompt": "p", "completion": "Hello world.", "spans": [{"start": 0, "end": 5, "label": "Irrelevant"}]}
GOOD_PREF = {"id": "ok", "prompt": "p", "chosen": "a", "rejected": "b", "category": "holistic"}


def span(**changes) -> str:
    record = {"id": "bad", "prompt": "p", "completion": "Hello world.", "spans": []}
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not MISSING}, ensure_ascii=False)


def one_span(**changes) -> str:
    item = {"start": 0, "end": 5, "label": "Unverifiable"}
    item.update(changes)
    return span(spans=[item])


def pref(**changes) -> str:
    record = {"id": "bad", "prompt": "p", "chosen": "a", "rejected": "b", "category": "completeness"}
    record.update(changes)
    return json.dumps(record)


MISSING = object()

# name -> (lines of the file, line number of the problem or None for the file itself, message fragment)
# The first line is always a valid record, so a wrong line number cannot pass by accident.
CASES = {
    "malformed_json": ([json.dumps(GOOD_SPAN), '{"id": "bad", "prompt": '], 2, "malformed JSON"),
    "not_an_object": ([json.dumps(GOOD_SPAN), "[1, 2, 3]"], 2, "a record must be a JSON object, got a list"),
    "string_line": ([json.dumps(GOOD_SPAN), '"just text"'], 2, "a record must be a JSON object, got a string"),
    "missing_field": ([json.dumps(GOOD_SPAN), span(completion=MISSING)], 2, "completion: missing required field"),
    "missing_spans": ([json.dumps(GOOD_SPAN), span(spans=MISSING)], 2, "spans: missing required field"),
    "null_field": ([json.dumps(GOOD_SPAN), span(completion=None)], 2, "completion: must be a string, got null"),
    "list_for_string": ([json.dumps(GOOD_SPAN), span(prompt=["p"])], 2, "prompt: must be a string, got a list"),
    "true_as_offset": (
        [json.dumps(GOOD_SPAN), one_span(start=True)], 2, "spans[0].start: must be an integer offset, got the boolean true",
    ),
    "negative_offset": ([json.dumps(GOOD_SPAN), one_span(start=-1)], 2, "spans[0].start: must not be negative, got -1"),
    "offset_past_end": (
        [json.dumps(GOOD_SPAN), one_span(end=13)], 2, "spans[0].end: offset 13 is past the end of the completion (12 characters)",
    ),
    "float_offset": (
        [json.dumps(GOOD_SPAN), one_span(end=4.0)], 2, "spans[0].end: must be an integer offset, got the number 4.0",
    ),
    "start_not_before_end": (
        [json.dumps(GOOD_SPAN), one_span(start=5, end=5)], 2, "spans[0]: start (5) must be smaller than end (5)",
    ),
    "unknown_label": ([json.dumps(GOOD_SPAN), one_span(label="Typo")], 2, "spans[0].label: unknown label 'Typo'"),
    "preference_category_as_span_label": (
        [json.dumps(GOOD_SPAN), one_span(label="holistic")], 2, "spans[0].label: 'holistic' is the preference category",
    ),
    "chosen_equals_rejected": (
        [json.dumps(GOOD_PREF), pref(chosen="same", rejected="same")], 2, "rejected: 'chosen' and 'rejected' are the same text",
    ),
    "unknown_preference_category": (
        [json.dumps(GOOD_PREF), pref(category="helpfulness")], 2, "category: unknown category 'helpfulness'",
    ),
    "span_category_as_preference": (
        [json.dumps(GOOD_PREF), pref(category="relevance")], 2, "category: 'relevance' is a span category, not a preference",
    ),
    "duplicate_ids": (
        [json.dumps(GOOD_SPAN), span(id="x"), span(id="ok")], 3, "id: duplicate id 'ok' (first used on line 1)",
    ),
    "mixed_kinds": ([json.dumps(GOOD_SPAN), json.dumps(GOOD_PREF | {"id": "p"})], 2, "a preference record in a file of span"),
    "unknown_field": ([json.dumps(GOOD_SPAN), span(span=[])], 2, "span: unknown field in a span record"),
    "blank_line_keeps_numbering": ([json.dumps(GOOD_SPAN), "", "   ", span(completion=1)], 4, "completion: must be a string"),
    "correction_equals_completion": (
        [json.dumps(GOOD_SPAN), span(correction="Hello world.")], 2, "correction: is the same text as 'completion'",
    ),
    "correction_not_a_string": (
        [json.dumps(GOOD_SPAN), span(correction=["Hello."])], 2, "correction: must be a string (the corrected completion), got a list",
    ),
    "correction_empty": ([json.dumps(GOOD_SPAN), span(correction=" ")], 2, "correction: must not be empty"),
    "correction_on_a_preference": (
        [json.dumps(GOOD_PREF), pref(correction="better")], 2, "correction: a preference record cannot carry a correction",
    ),
    "empty_file": ([], None, "empty file: no records"),
    "only_blank_lines": (["", "  ", ""], None, "empty file: no records"),
}


def problem_lines(stderr: str, path) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(str(path))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_file_reports_its_line_and_exits_2(name, tmp_path, capsys):
    lines, line_number, fragment = CASES[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")

    code = validate.main(["--schema", SCHEMA, str(path)])

    out, err = capsys.readouterr()
    assert code == 2
    where = f"{path}:{line_number}: " if line_number is not None else f"{path}: "
    assert f"{where}{fragment}" in err, err
    # exactly one problem: the bad case, not a cascade of follow-on complaints
    assert len(problem_lines(err, path)) == 1, err
    assert "OK" not in out
    assert "Traceback" not in err


def test_unicode_and_crlf_file_is_valid(tmp_path, capsys):
    zoe = "Zoe\u0308"  # a combining diaeresis: two code points for one visible letter
    completion = f"Café 👍🏽 ok. 東京は大きい。 {zoe}\r\nnext line 🇯🇵."
    records = []
    for i, (needle, label) in enumerate([("👍🏽", "Irrelevant"), ("東京", "Unverifiable"), (zoe, "Redundant"), ("🇯🇵", "factuality")]):
        start = completion.index(needle)
        records.append({"id": f"u{i}", "prompt": "質問: なに?", "completion": completion,
                        "spans": [{"start": start, "end": start + len(needle), "label": label}]})
    path = tmp_path / "unicode.jsonl"
    # \r\n line endings in the file itself, and a raw (non-ASCII-escaped) encoding
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records).encode("utf-8"))

    code = validate.main(["--schema", SCHEMA, str(path)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{path}: OK, 4 span records" in out
    loaded = load_span_records(path, SCHEMA)
    assert [completion[s.start : s.end] for r in loaded for s in r.spans] == ["👍🏽", "東京", zoe, "🇯🇵"]
    assert loaded[2].spans[0].end - loaded[2].spans[0].start == 4  # code points, not graphemes
    assert loaded[0].completion == completion  # the \r\n inside the text survives


def test_problems_are_capped_per_file(tmp_path, capsys):
    path = tmp_path / "many.jsonl"
    path.write_text("".join("not json\n" for _ in range(30)), encoding="utf-8")

    code = validate.main(["--schema", SCHEMA, "--max-problems", "5", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert [line.split(":")[1] for line in problem_lines(err, path)[:5]] == ["1", "2", "3", "4", "5"]
    assert f"{path}: ... and 25 more problems" in err


def test_every_file_is_checked_and_good_ones_reported(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps(GOOD_PREF) + "\n", encoding="utf-8")
    bad.write_text(json.dumps(GOOD_SPAN) + "\n" + one_span(end=99) + "\n", encoding="utf-8")

    code = validate.main(["--schema", SCHEMA, str(bad), str(good)])

    out, err = capsys.readouterr()
    assert code == 2
    assert f"{good}: OK, 1 preference record" in out
    assert f"{bad}:2: spans[0].end" in err
    assert "1 of 2 files invalid" in err


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d / "absent.jsonl", "no such file"),
        (lambda d: d, "is a directory"),
    ],
)
def test_missing_file_or_directory(make, fragment, tmp_path, capsys):
    target = make(tmp_path)
    assert validate.main(["--schema", SCHEMA, str(target)]) == 2
    assert f"{target}: {fragment}" in capsys.readouterr().err


def test_bad_schema_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD_SPAN) + "\n", encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ncategories: [\n", encoding="utf-8")

    assert validate.main(["--schema", str(tmp_path / "nope.yaml"), str(data)]) == 2
    assert "no such schema file" in capsys.readouterr().err
    assert validate.main(["--schema", str(broken), str(data)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "not valid YAML" in err and "Traceback" not in err


def test_cli_subprocess_exit_codes_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD_SPAN) + "\n" + one_span(start=True) + "\n", encoding="utf-8")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD_SPAN) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "finegrained.cli", "validate", "--schema", SCHEMA]

    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True)
    passed = subprocess.run([*command, str(good)], capture_output=True, text=True)

    assert failed.returncode == 2
    assert f"{bad}:2: spans[0].start: must be an integer offset, got the boolean true" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert passed.returncode == 0, passed.stderr
    assert "OK, 1 span record" in passed.stdout


def test_a_correction_is_kept_through_load_json_and_datasets(tmp_path):
    from finegrained.data import SpanRecord, dataset_to_records, records_to_dataset

    path = tmp_path / "spans.jsonl"
    with_correction = span(id="c", correction="Hello, world!")
    path.write_text(json.dumps(GOOD_SPAN) + "\n" + with_correction + "\n", encoding="utf-8")
    plain, corrected = load_span_records(path, SCHEMA)
    assert plain.correction is None and "correction" not in plain.to_json()  # absent stays absent
    assert corrected.correction == "Hello, world!" and corrected.to_json()["correction"] == "Hello, world!"
    back = dataset_to_records(records_to_dataset([plain, corrected]))
    assert [r.correction for r in back] == [None, "Hello, world!"]
    assert all(isinstance(r, SpanRecord) for r in back)
