"""``finegrained convert qa-feedback``: a small hand-made file in the public QA-Feedback format."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from finegrained.commands import convert as convert_command
from finegrained.commands import validate as validate_command
from finegrained.convert import completeness as comp
from finegrained.convert.qa_feedback import build_prompt, convert
from finegrained.data import load_preference_records, load_span_records, validate_file

P1 = "Die Brücke ist 1 km lang. Sie wurde 1900 gebaut, angeblich. 東京 liegt weit weg. Die Brücke ist 1 km lang. Blau Haus springt."
# hand-computed offsets (code points) of each error span in P1, one error of each of the five types
ERRORS = [
    ("Wrong-Grounding", "1 km lang", 15),
    ("Unverifiable", "Sie wurde 1900 gebaut", 26),
    ("Irrelevant", "東京 liegt weit weg.", 60),
    ("Redundant", "Die Brücke ist 1 km lang.", 79),
    ("Incoherent", "Blau Haus springt.", 105),
]


def example_with_every_error() -> dict:
    errors = [{"error type": t, "explanation": f"why {t}", "start": s, "end": s + len(text)} for t, text, s in ERRORS]
    return {
        "question": "Wie lang ist die Brücke? ¿Y cuándo?",
        "passages": [["Brücke (Köln)", "Die Brücke ist 1,2 km lang.", "Sie wurde 1899 eröffnet."], ["東京", "東京は首都です。"]],
        "gold": "Die Brücke ist 1,2 km lang.",
        "prediction 1": P1,
        "prediction 2": "Die Brücke ist 1,2 km lang und wurde 1899 eröffnet.",
        "prediction 3": "Keine Ahnung.",
        "prediction 4": "Sie ist lang.",
        "feedback": {
            "errors": errors,
            "missing-info": [{"error type": "Missing-Answer", "passage_id": 1, "sentence_id": [2]}],
            "corrected-prediction": "Die Brücke ist 1,2 km lang und wurde 1899 eröffnet.",
        },
        # 1v2: 2 preferred; 1v3: 1 preferred; 1v4: tie; 2v3: 1; 2v4: 1; 3v4: 2
        "preference": [2, 1, 0, 1, 1, 2],
    }


def example_with_bad_offsets() -> dict:
    text = "Short answer."
    return {
        "question": "q?",
        "passages": [["T", "s1.", "s2."]],
        "gold": "g",
        "prediction 1": text,
        "prediction 2": "Other answer.",
        "prediction 3": text,  # identical to prediction 1
        "prediction 4": "Fourth.",
        "feedback": {
            "errors": [
                {"error type": "Irrelevant", "explanation": "", "start": 6, "end": 40},  # past the end: clipped
                {"error type": "Redundant", "explanation": "", "start": 5, "end": 5},  # empty: dropped
                {"error type": "Unverifiable", "explanation": "", "start": 20, "end": 30},  # beyond the text: dropped
            ],
            "missing-info": [],
            "corrected-prediction": "",
        },
        "preference": [1, 1, 2, 0, 0, 0],  # 1v3 compares identical texts: dropped
    }


@pytest.fixture()
def feedback_file(tmp_path):
    path = tmp_path / "dev_feedback.json"
    path.write_text(json.dumps([example_with_every_error(), example_with_bad_offsets()], ensure_ascii=False), encoding="utf-8")
    return path


def test_converts_spans_with_exact_offsets_and_meta(feedback_file, tmp_path):
    out = tmp_path / "out"
    stats = convert(feedback_file, out, progress=False)

    records = load_span_records(out / "spans.jsonl", "qa_feedback")
    assert [r.id for r in records] == ["dev-0", "dev-1"]
    first = records[0]
    assert first.completion == P1
    assert [(s.label, s.start, s.end, P1[s.start : s.end]) for s in first.spans] == [
        (label, start, start + len(text), text) for label, text, start in ERRORS
    ]
    assert first.prompt == (
        "question: Wie lang ist die Brücke? ¿Y cuándo? context: "
        "wikipage: Brücke (Köln) text: Die Brücke ist 1,2 km lang. Sie wurde 1899 eröffnet. "
        "wikipage: 東京 text: 東京は首都です。"
    )
    assert first.prompt == build_prompt(example_with_every_error()["question"], example_with_every_error()["passages"])
    assert first.meta["missing-info"] == [{"error type": "Missing-Answer", "passage_id": 1, "sentence_id": [2]}]
    assert first.meta["corrected-prediction"] == "Die Brücke ist 1,2 km lang und wurde 1899 eröffnet."
    assert first.meta["source"] == {"file": "dev_feedback.json", "index": 0, "prediction": 1}
    assert first.meta["explanations"] == [f"why {t}" for t, _, _ in ERRORS]
    # the corrected prediction differs from prediction 1: it is the record's correction (dense DPO's input)
    assert first.correction == "Die Brücke ist 1,2 km lang und wurde 1899 eröffnet." != first.completion
    assert records[1].correction is None  # an empty corrected-prediction is no correction

    # offsets past the end are clipped to the text; empty spans are dropped, and both are counted
    assert [(s.label, s.start, s.end) for s in records[1].spans] == [("Irrelevant", 6, 13)]
    assert (stats.spans_clipped, stats.spans_dropped_empty) == (2, 2)
    assert stats.spans == 6 and stats.questions == 2
    assert len(stats.warnings()) == 3


def test_preferences_direction_ties_and_ids(feedback_file, tmp_path):
    out = tmp_path / "out"
    stats = convert(feedback_file, out, progress=False)

    prefs = load_preference_records(out / "preferences.jsonl", "qa_feedback", category="holistic")
    example = example_with_every_error()
    got = {r.id: (r.chosen, r.rejected) for r in prefs if r.id.startswith("dev-0-")}
    p = {k: example[f"prediction {k}"] for k in (1, 2, 3, 4)}
    assert got == {
        "dev-0-p1v2": (p[2], p[1]),  # value 2: the second is preferred
        "dev-0-p1v3": (p[1], p[3]),  # value 1: the first is preferred
        "dev-0-p2v3": (p[2], p[3]),
        "dev-0-p2v4": (p[2], p[4]),
        "dev-0-p3v4": (p[4], p[3]),
    }  # 1v4 was a tie: dropped
    assert [r.id for r in prefs if r.id.startswith("dev-1-")] == ["dev-1-p1v2", "dev-1-p1v4"]
    assert (stats.ties_dropped, stats.identical_pairs_dropped, stats.preferences) == (4, 1, 7)
    assert all(r.category == "holistic" and r.prompt == build_prompt(example["question"], example["passages"])
               for r in prefs[:5])  # fmt: skip
    assert prefs[0].meta["source"] == {"file": "dev_feedback.json", "index": 0, "pair": "1v2", "chosen": 2, "rejected": 1}


def test_cli_writes_valid_files_and_reports(feedback_file, tmp_path, capsys):
    out = tmp_path / "converted"
    (out).mkdir()
    (out / "spans.jsonl").write_text("stale\n", encoding="utf-8")  # an older output is replaced whole

    assert convert_command.main(["qa-feedback", str(feedback_file), str(out), "--no-progress"]) == 0

    captured = capsys.readouterr()
    assert "7 preference records" in captured.out and "4 ties dropped" in captured.out
    assert "warning: clipped 2 error span(s)" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["preferences.jsonl", "prompts.jsonl", "spans.jsonl"]  # no temp dir left
    spans = [json.loads(line) for line in (out / "spans.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    # one prompt per question, the span record's id and prompt, the gold answer as the reference
    assert [(p["id"], p["prompt"]) for p in prompts] == [(r["id"], r["prompt"]) for r in spans]
    assert all(isinstance(p["reference"], str) and p["reference"] for p in prompts)
    assert "prompts.jsonl: " in captured.out
    assert validate_file(out / "spans.jsonl", "qa_feedback") == []
    assert validate_file(out / "preferences.jsonl", "qa_feedback") == []
    assert validate_command.main(["--schema", "qa_feedback", str(out / "spans.jsonl"), str(out / "preferences.jsonl")]) == 0


def _break(change):
    data = [example_with_every_error()]
    change(data)
    return data


MALFORMED = {
    "not_json": ("[{", "malformed JSON"),
    "not_an_array": ({"question": "q"}, "a QA-Feedback file is one JSON array, got an object"),
    "empty_array": ([], "empty array"),
    "element_not_object": ([[1]], "element 0: must be a JSON object"),
    "missing_prediction": (_break(lambda d: d[0].pop("prediction 3")), "element 0: missing field 'prediction 3'"),
    "question_not_string": (_break(lambda d: d[0].update(question=None)), "element 0: field 'question' must be a string, got null"),
    "bad_passage": (_break(lambda d: d[0].update(passages=[[]])), "element 0: passages[0] must be a non-empty list"),
    "unknown_error_type": (
        _break(lambda d: d[0]["feedback"]["errors"][0].update({"error type": "Typo"})),
        "element 0: feedback.errors[0]: unknown error type 'Typo'",
    ),
    "float_offset": (
        _break(lambda d: d[0]["feedback"]["errors"][1].update(start=1.5)),
        "element 0: feedback.errors[1]: field 'start' must be an integer, got the number 1.5",
    ),
    "bool_offset": (
        _break(lambda d: d[0]["feedback"]["errors"][1].update(end=True)),
        "element 0: feedback.errors[1]: field 'end' must be an integer, got the boolean true",
    ),
    "five_preferences": (_break(lambda d: d[0].update(preference=[1, 1, 1, 1, 1])), "element 0: 'preference' must hold 6 values"),
    "preference_value_3": (
        _break(lambda d: d[0].update(preference=[1, 1, 3, 1, 1, 1])), "element 0: preference value for pair 1v4 must be 0, 1 or 2",
    ),
    "all_ties": (_break(lambda d: d[0].update(preference=[0] * 6)), "no preference records"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_is_refused_with_file_and_message(name, tmp_path, capsys):
    content, fragment = MALFORMED[name]
    path = tmp_path / "train_feedback.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    out = tmp_path / "out"

    assert convert_command.main(["qa-feedback", str(path), str(out), "--no-progress"]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"{path}"), err
    assert fragment in err, err
    assert "Traceback" not in err
    assert not (out / "spans.jsonl").exists()


def test_missing_input_file(tmp_path, capsys):
    assert convert_command.main(["qa-feedback", str(tmp_path / "nope.json"), str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nope.json'}: no such file" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Completeness comparisons derived from corrected-prediction (the paper's create_comp_rm_files rule)

BRIDGE = ["Bridge", "The bridge is 1.2 km long.", "It was   opened in 1899.", "Its architect was Franz Schwechten."]
RIVER = ["River", "The Rhine flows through Cologne."]


def split_at_sentence_ends(text: str) -> list[str]:
    """A stand-in for the paper's sub-sentence rule: one piece per sentence."""
    return [piece for piece in re.split(r"(?<=\.)\s+", text) if piece]


def completeness_example(correction: str, predictions: list[str], missing_info=()) -> dict:
    return {
        "question": "How long is the bridge?",
        "passages": [BRIDGE, RIVER],
        "gold": "",
        **{f"prediction {k}": p for k, p in enumerate(predictions, start=1)},
        "feedback": {"errors": [], "missing-info": list(missing_info), "corrected-prediction": correction},
        "preference": [0] * 6,
    }


def reference_quick_ratio(a: str, b: str) -> float:
    """difflib's quick_ratio by its definition: twice the shared characters (as multisets) over both lengths."""
    return 2 * sum((Counter(a) & Counter(b)).values()) / (len(a) + len(b))


def reference_best_match(sentence: str, sub: str) -> float:
    n = len(sub.split()) + int(0.05 * len(sub.split()))
    words = sentence.split()
    while len(words) < n + 1:  # the paper pads a sentence of at most n words to n + 1 with '#'
        words.append("#")
    if sub in " ".join(words):
        return 1.0
    return max(reference_quick_ratio(" ".join(words[i : i + n]), sub) for i in range(len(words) - n + 1))


def test_best_match_ratio_against_a_reference_loop():
    rng = random.Random(0)
    vocabulary = ["the", "bridge", "is", "long", "1899", "km", "It", "opened", "Köln", "東京", "a,b"]
    for _ in range(300):
        sentence = " ".join(rng.choices(vocabulary, k=rng.randint(1, 30)))
        sub = " ".join(rng.choices(vocabulary, k=rng.randint(1, 25)))
        assert comp.best_match_ratio(sentence, sub) == pytest.approx(reference_best_match(sentence, sub))
    # verbatim: 1.0; a typo: the shared characters of the best window; blank: 0
    assert comp.best_match_ratio("The bridge is 1.2 km long.", "is 1.2 km") == 1.0
    typo = comp.best_match_ratio("The bridge is 1.2 km long.", "The bridge is 1.2 km lon.")
    assert typo == pytest.approx(2 * 25 / (26 + 25))
    # a sub-sentence longer than the sentence still compares (against the padded sentence)
    assert 0.5 < comp.best_match_ratio("It opened in 1899.", "It was opened in 1899 indeed.") < 1.0
    assert comp.best_match_ratio("anything", "  ") == 0.0


def test_passage_sentence_ids_are_one_based_and_skip_titles():
    sentences = comp.passage_sentences([BRIDGE, RIVER])
    assert sentences == {
        (1, 1): "The bridge is 1.2 km long.", (1, 2): "It was opened in 1899.",
        (1, 3): "Its architect was Franz Schwechten.", (2, 1): "The Rhine flows through Cologne.",
    }  # fmt: skip


def test_coverage_all_half_none_and_ties_dropped():
    correction = "The bridge is 1.2 km long. It was opened in 1899."
    predictions = [
        "The bridge is 1.2 km long. It was opened in 1899.",  # all of the required information
        "The bridge is 1.2 km long. Nobody knows more.",  # half
        "Nobody knows anything about it.",  # none
        "  The bridge   is 1.2 km\nlong.  Its name is unknown.",  # half, after whitespace normalisation
    ]
    example = completeness_example(correction, predictions)
    scored = comp.score_predictions(example, split_at_sentence_ends)
    assert scored.required == {(1, 1), (1, 2)}
    assert scored.scores == {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.5}

    pairs = comp.completeness_pairs(example, split_at_sentence_ends, record_id="dev-7")
    got = {r.id: (r.chosen, r.rejected) for r in pairs}
    p = dict(enumerate(predictions, start=1))
    assert got == {
        "dev-7-c1v2": (p[1], p[2]), "dev-7-c1v3": (p[1], p[3]), "dev-7-c1v4": (p[1], p[4]),
        "dev-7-c2v3": (p[2], p[3]), "dev-7-c3v4": (p[4], p[3]),
    }  # 2v4: equal coverage, dropped  # fmt: skip
    assert all(r.category == "completeness" for r in pairs)
    assert pairs[0].meta["derived"] == "corrected-prediction coverage"
    assert pairs[0].meta["n_required"] == 2 and pairs[0].meta["scores"]["3"] == 0.0
    assert pairs[-1].meta["source"] == {"pair": "3v4", "chosen": 4, "rejected": 3}
    assert pairs[0].prompt.startswith("question: How long is the bridge? context: wikipage: Bridge text: ")


def test_minor_auxiliary_sentence_dropped_unless_prediction_1_contains_it():
    correction = "The bridge is 1.2 km long. Its architect was Franz Schwechten."
    minor = [{"error type": "Missing-Minor-Auxiliary", "passage_id": 1, "sentence_id": [3]},
             {"error type": "Missing-Major-Auxiliary", "passage_id": 2, "sentence_id": [1]}]  # fmt: skip
    others = ["The bridge is 1.2 km long.", "Nobody knows.", "Its architect was Franz Schwechten."]

    without = comp.score_predictions(completeness_example(correction, ["It is long."] + others, minor), split_at_sentence_ends)
    assert without.required == {(1, 1)}
    assert without.scores == {1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}  # stating the minor sentence earns nothing

    # prediction 1 contains the correction's sub-sentence (case-insensitive): the sentence is required
    with_it = comp.score_predictions(
        completeness_example(correction, ["Long. its ARCHITECT was Franz Schwechten."] + others, minor), split_at_sentence_ends
    )
    assert with_it.required == {(1, 1), (1, 3)}
    # ... though prediction 1 itself covers neither: the similarity, unlike the containment, sees case
    assert with_it.scores == {1: 0.0, 2: 0.5, 3: 0.0, 4: 0.5}
    same_case = comp.score_predictions(
        completeness_example(correction, ["Long. Its architect was Franz Schwechten."] + others, minor), split_at_sentence_ends
    )
    assert same_case.scores == {1: 0.5, 2: 0.5, 3: 0.0, 4: 0.5}

    # without the annotation, the sentence is plainly required
    plain = comp.score_predictions(completeness_example(correction, ["It is long."] + others), split_at_sentence_ends)
    assert plain.required == {(1, 1), (1, 3)}


def test_examples_without_required_information_are_skipped():
    predictions = ["The bridge is 1.2 km long.", "b.", "c.", "d."]
    minor = [{"error type": "Missing-Minor-Auxiliary", "passage_id": 1, "sentence_id": [3]}]
    for correction, missing in [
        ("Nobody knows anything at all about this.", []),  # states no passage sentence
        ("Its architect was Franz Schwechten.", minor),  # only a minor sentence, not in prediction 1
        ("", []),
        (None, []),
    ]:
        example = completeness_example(correction, predictions, missing)
        assert comp.score_predictions(example, split_at_sentence_ends) is None, correction
        assert comp.completeness_pairs(example, split_at_sentence_ends) == []


def test_the_splitter_sees_whitespace_normalised_text():
    seen = []

    def recording_splitter(text):
        seen.append(text)
        return split_at_sentence_ends(text)

    example = completeness_example(" The bridge\tis 1.2 km\n\nlong.   It was opened in 1899. ", ["a.", "b.", "c.", "d."])
    assert comp.score_predictions(example, recording_splitter).required == {(1, 1), (1, 2)}
    assert seen[0] == "The bridge is 1.2 km long. It was opened in 1899."
    assert all(t == " ".join(t.split()) for t in seen)


def test_malformed_missing_info_is_refused():
    bad = [{"error type": "Missing-Minor-Auxiliary", "passage_id": "1", "sentence_id": [3]}]
    with pytest.raises(comp.MalformedExample, match=r"missing-info\[0\]: field 'passage_id'"):
        comp.score_predictions(completeness_example("The bridge is 1.2 km long.", ["a"] * 4, bad), split_at_sentence_ends)


def test_converter_writes_completeness_pairs_beside_holistic(tmp_path, capsys):
    # short sentences without split characters: one sub-sentence each under any sub-sentence rule
    predictions = ["The bridge is 1.2 km long. It was opened in 1899.", "The bridge is 1.2 km long.",
                   "Nobody knows.", "It was opened in 1899."]  # fmt: skip
    covered = completeness_example("The bridge is 1.2 km long. It was opened in 1899.", predictions)
    covered["preference"] = [1, 1, 1, 0, 0, 0]
    skipped = completeness_example("Nobody knows anything at all about this.", predictions)
    skipped["preference"] = [2, 0, 0, 0, 0, 0]
    path = tmp_path / "train_feedback.json"
    path.write_text(json.dumps([covered, skipped]), encoding="utf-8")
    out = tmp_path / "out"

    assert convert_command.main(["qa-feedback", str(path), str(out), "--no-progress"]) == 0

    printed = capsys.readouterr().out
    assert "5 completeness pairs" in printed and "1 examples skipped" in printed and "1 equal-coverage" in printed
    assert validate_command.main(["--schema", "qa_feedback", str(out / "spans.jsonl"), str(out / "preferences.jsonl")]) == 0
    holistic = load_preference_records(out / "preferences.jsonl", "qa_feedback", category="holistic")
    derived = load_preference_records(out / "preferences.jsonl", "qa_feedback", category="completeness")
    assert [r.id for r in holistic] == ["train-0-p1v2", "train-0-p1v3", "train-0-p1v4", "train-1-p1v2"]
    assert [r.id for r in derived] == ["train-0-c1v2", "train-0-c1v3", "train-0-c1v4", "train-0-c2v3", "train-0-c3v4"]
    assert (derived[-1].chosen, derived[-1].rejected) == (predictions[3], predictions[2])
    assert derived[0].meta["scores"] == {"1": 1.0, "2": 0.5, "3": 0.0, "4": 0.5}
    assert derived[0].meta["source"] == {"file": "train_feedback.json", "index": 0, "pair": "1v2", "chosen": 1, "rejected": 2}
    assert derived[0].prompt == holistic[0].prompt
