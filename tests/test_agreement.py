"""Agreement figures on hand-computed cases, and the majority-vote merge."""

from __future__ import annotations

import json
import math

import pytest

from finegrained import agreement
from finegrained.commands import agreement as agreement_command
from finegrained.errors import FinegrainedError
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
    assert agreement_command.main(["--schema", "synthetic_qa", *files, "--json", str(tmp_path / "r.json"), "--merge", str(merged)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())["categories"]
    assert report["relevance"]["krippendorff_alpha"] == pytest.approx(1.0)  # everyone marked the weather clause only
    assert report["factuality"]["krippendorff_alpha"] < 0.5
    out = [json.loads(line) for line in merged.read_text().splitlines()]
    by_id = {r["id"]: r for r in out}
    assert {(s["start"], s["end"], s["label"]) for s in by_id["a"]["spans"]} == {(34, 54, "relevance")}
    assert by_id["b"]["spans"] == []
    assert validate_file(merged, load_schema("synthetic_qa")) == []
    assert "krippendorff_alpha" in capsys.readouterr().out


def test_cohen_kappa_three_labels_hand_computed():
    # a: x x y y z z   b: x y y y z x  -> p_o = 4/6 (positions 1, 3, 4, 5)
    # marginals a: x2 y2 z2; b: x2 y3 z1 -> p_e = (2*2 + 2*3 + 2*1) / 36 = 12/36 = 1/3
    # kappa = (2/3 - 1/3) / (1 - 1/3) = 1/2
    assert agreement.cohen_kappa(list("xxyyzz"), list("xyyyzx")) == pytest.approx(0.5)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_two_annotators_segment_level_kappa(tmp_path, capsys):
    # factuality is judged per sentence; two items of three sentences each = 6 units.
    one = "Bora is a town. It has 3 bridges. The weather is mild."
    two = "Kelt is a village. It has a lake. Kelt is old."

    def sentence(text, k):
        starts = [0, text.index(". ") + 2, text.rindex(". ") + 2]
        ends = [starts[1] - 1, starts[2] - 1, len(text)]
        return {"start": starts[k], "end": ends[k], "label": "Wrong-Grounding"}

    # A marks one: s2; two: s1, s3 -> [0 1 0 | 1 0 1]
    # B marks one: s2, s3; two: s1 -> [0 1 1 | 1 0 0]
    # p_o = 4/6; each marks 3 of 6: p_e = 1/2 * 1/2 + 1/2 * 1/2 = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3
    # No annotator field: the file names (ann-a, ann-b) stand in for the annotators.
    a = write_jsonl(tmp_path / "ann-a.jsonl", [
        {"id": "one", "prompt": "q", "completion": one, "spans": [sentence(one, 1)]},
        {"id": "two", "prompt": "q", "completion": two, "spans": [sentence(two, 0), sentence(two, 2)]},
    ])  # fmt: skip
    b = write_jsonl(tmp_path / "ann-b.jsonl", [
        {"id": "one", "prompt": "q", "completion": one, "spans": [sentence(one, 1), sentence(one, 2)]},
        {"id": "two", "prompt": "q", "completion": two, "spans": [sentence(two, 0)]},
    ])  # fmt: skip
    merged = tmp_path / "merged.jsonl"
    assert agreement_command.main(["--schema", "synthetic_qa", a, b, "--json", str(tmp_path / "r.json"), "--merge", str(merged)]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    factuality = result["categories"]["factuality"]
    assert factuality["statistic"] == "cohen_kappa" and factuality["units"] == 6
    assert factuality["cohen_kappa"] == pytest.approx(1 / 3)
    assert factuality["percent_agreement"] == pytest.approx(4 / 6)
    # two segments split 1-1 between two annotators: ties, left clean in the merge and listed
    assert len(result["ties"]) == 2 and all("factuality" in t for t in result["ties"])
    out = {r["id"]: r for r in map(json.loads, merged.read_text().splitlines())}
    assert [(s["start"], s["end"]) for s in out["one"]["spans"]] == [(16, 33)]
    assert out["one"]["meta"]["annotators"] == ["ann-a", "ann-b"]
    assert "tie:" in capsys.readouterr().out


def pref(item, category, chosen, rejected, annotator, tie=False):
    meta = {"item": item, **({"tie": True} if tie else {})}
    return {"id": f"{item}/{category}", "prompt": f"prompt {item}", "chosen": chosen, "rejected": rejected,
            "category": category, "annotator": annotator, "meta": meta}  # fmt: skip


def test_preference_agreement_from_app_journals(tmp_path):
    # Pair k compares "Alpha k" with "Beta k" (sorted: Alpha is "first"). Answers on completeness:
    #   X: P1 first, P2 first (after re-submitting: its earlier "second" is history), P3 second, P4 tie
    #   Y: P1 first, P2 second, P3 second, P4 tie
    # p_o = 3/4. Marginals X: first 2, second 1, tie 1; Y: first 1, second 2, tie 1.
    # p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16; kappa = (12/16 - 5/16) / (11/16) = 7/11
    def answer(k, who, a):
        alpha, beta = f"Alpha {k}", f"Beta {k}"
        if a == "tie":
            return pref(f"P{k}", "completeness", alpha, beta, who, tie=True)
        return pref(f"P{k}", "completeness", *((alpha, beta) if a == "first" else (beta, alpha)), who)

    x = write_jsonl(tmp_path / "x.jsonl", [answer(1, "X", "first"), answer(2, "X", "second"), answer(3, "X", "second"),
                                           answer(4, "X", "tie"), answer(2, "X", "first")])  # fmt: skip
    y = write_jsonl(tmp_path / "y.jsonl", [answer(k, "Y", a) for k, a in zip(range(1, 5), ["first", "second", "second", "tie"])])
    result = agreement.report([x, y], load_schema("synthetic_qa"))
    completeness = result.categories["completeness"]
    assert completeness["cohen_kappa"] == pytest.approx(7 / 11)
    assert completeness["percent_agreement"] == pytest.approx(3 / 4) and completeness["units"] == 4
    # merge: P1 -> Alpha, P3 -> Beta; P2 split 1-1 (listed as a tie); P4 both tie (no preference to write)
    assert [(r["id"], r["chosen"]) for r in result.merged_preferences] == [("P1/completeness", "Alpha 1"), ("P3/completeness", "Beta 3")]
    assert len(result.ties) == 1 and result.ties[0].startswith("P2/completeness")

    merged = tmp_path / "merged.jsonl"
    assert agreement_command.main(["--schema", "synthetic_qa", x, y, "--merge", str(merged)]) == 0
    assert validate_file(merged, load_schema("synthetic_qa")) == []
    assert len(merged.read_text().splitlines()) == 2


def test_one_annotator_is_refused_with_exit_2(tmp_path, capsys):
    from finegrained import cli

    path = tmp_path / "solo.jsonl"
    write_jsonl(path, [span("a", "Bora is a town.", [], "ann-1"), span("b", "Kelt is a village.", [], "ann-1")])
    with pytest.raises(FinegrainedError, match=r"at least two annotators; the files hold only one annotator \(ann-1\)"):
        agreement_command.main(["--schema", "synthetic_qa", str(path), "--json", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()
    assert cli.main(["agreement", "--schema", "synthetic_qa", str(path)]) == 2
    assert "nan" not in capsys.readouterr().out


def test_undefined_figures_print_as_n_a_with_the_reason():
    table = agreement.format_table({
        "relevance": {"kind": "span", "annotators": 1, "units": 0, "statistic": "krippendorff_alpha",
                      "krippendorff_alpha": math.nan, "percent_agreement": math.nan},
        "factuality": {"kind": "span", "annotators": 2, "units": 4, "statistic": "cohen_kappa",
                       "cohen_kappa": 0.5, "percent_agreement": 0.75},
    })  # fmt: skip
    assert "nan" not in table and "note: relevance: n/a (one annotator)" in table
    assert "0.500" in table and "75.0" in table
