"""Agreement figures on hand-computed cases, and the majority-vote merge."""

from __future__ import annotations

import json

import pytest

from finegrained import agreement
from finegrained.data import validate_file
from finegrained.schema import load_schema


def test_cohen_kappa_hand_computed():
    # p_o = 4/6; both raters say 1 three times of six: p_e = 0.5*0.5 + 0.5*0.5 = 0.5; kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert agreement.cohen_kappa([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]) == pytest.approx(1 / 3)
    assert agreement.cohen_kappa([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    assert agreement.cohen_kappa([1, 1], [0, 0]) == pytest.approx(0.0)  # p_e = 0: kappa = p_o = 0


def test_krippendorff_alpha_hand_computed():
    # units [a,a,a], [a,b,a], [b,b], [a] (unpairable). Coincidences: o_aa = 3 + 1 = 4, o_ab = o_ba = 1,
    # o_bb = 2; n_a = 5, n_b = 3, n = 8. D_o = 2/8; D_e = 2*5*3 / (8*7) = 30/56; alpha = 1 - 0.25 / (30/56) = 8/15
    units = [["a", "a", "a"], ["a", "b", "a"], ["b", "b"], ["a"]]
    assert agreement.krippendorff_alpha(units) == pytest.approx(8 / 15)
    assert agreement.krippendorff_alpha([["x", "x"], ["y", "y"]]) == pytest.approx(1.0)


def span(id_, completion, spans, annotator):
    return {"id": id_, "prompt": "q", "completion": completion, "spans": spans, "annotator": annotator, "meta": {}}


def test_cli_report_and_merge(tmp_path, capsys):
    text = "Bora is a town. It has 3 bridges. The weather is mild."
    weather = {"start": 34, "end": 54, "label": "Irrelevant"}
    bridges = {"start": 16, "end": 33, "label": "Wrong-Grounding"}
    rows = [
        span("a", text, [weather], "ann-1"), span("a", text, [weather, bridges], "ann-2"), span("a", text, [weather], "ann-3"),
        span("b", "Kelt is a village.", [], "ann-1"), span("b", "Kelt is a village.", [], "ann-2"),
        span("b", "Kelt is a village.", [{"start": 0, "end": 18, "label": "Unverifiable"}], "ann-3"),
    ]  # fmt: skip
    files = []
    for annotator in ("ann-1", "ann-2", "ann-3"):
        path = tmp_path / f"{annotator}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["annotator"] == annotator))
        files.append(str(path))
    merged = tmp_path / "merged.jsonl"
    assert agreement.main(["--schema", "synthetic_qa", *files, "--json", str(tmp_path / "r.json"), "--merge", str(merged)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())["categories"]
    assert report["relevance"]["krippendorff_alpha"] == pytest.approx(1.0)  # everyone marked the weather clause only
    assert report["factuality"]["krippendorff_alpha"] < 0.5
    out = [json.loads(line) for line in merged.read_text().splitlines()]
    by_id = {r["id"]: r for r in out}
    assert {(s["start"], s["end"], s["label"]) for s in by_id["a"]["spans"]} == {(34, 54, "relevance")}
    assert by_id["b"]["spans"] == []
    assert validate_file(merged, load_schema("synthetic_qa")) == []
    assert "krippendorff_alpha" in capsys.readouterr().out
