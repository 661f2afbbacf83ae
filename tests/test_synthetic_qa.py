"""The built-in task: prompts, the noisy writer, the oracle and the simulated annotators agree."""

from __future__ import annotations

import random

import pytest

from finegrained.data import validate_record
from finegrained.labels import project_labels
from finegrained.schema import load_schema
from finegrained.segment import get_segmenter
from finegrained.tasks import synthetic_qa as task

SCHEMA = load_schema("synthetic_qa")


def test_prompts_are_deterministic_and_splits_disjoint():
    train = task.prompts("train", n=300, seed=0)
    assert train == task.prompts("train", n=300, seed=0)
    assert [r["prompt"] for r in train] != [r["prompt"] for r in task.prompts("train", n=300, seed=1)]
    test = task.prompts("test", n=100, seed=0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["id"] for r in train}) == 300
    with pytest.raises(ValueError):
        task.prompts("validation")


def test_references_are_error_free_and_parse_back():
    records = task.prompts("eval", n=200)
    for r in records[:20]:
        parsed = task.parse_prompt(r["prompt"])
        assert parsed["place"] == r["place"] and parsed["asked"] == tuple(r["asked"])
    rates = task.oracle_error_rates([r["prompt"] for r in records], [r["reference"] for r in records])
    assert rates["total_error_rate"] == 0.0
    assert rates["counts"]["asked"] == sum(len(r["asked"]) for r in records)


@pytest.mark.parametrize(
    "kind, category",
    [("wrong", "factuality"), ("unverifiable", "factuality"), ("irrelevant", "relevance"),
     ("redundant", "relevance"), ("missing", "completeness")],
)  # fmt: skip
def test_each_planted_error_is_seen_in_its_category_only(kind, category):
    records = task.prompts("train", n=200)
    rng = random.Random(0)
    answers = [task.write_answer(r, rng, {kind: 1.0}) for r in records]
    rates = task.oracle_error_rates([r["prompt"] for r in records], answers)["error_rate"]
    assert rates[category] > 0.1
    others = [c for c in rates if c != category and not (kind == "wrong" and c == "completeness")]
    assert all(rates[c] == 0.0 for c in others), rates


def test_writer_rates_follow_configuration():
    corpus_clean = task.sft_corpus(300, error_rates={})
    corpus_noisy = task.sft_corpus(300)
    clean = task.oracle_error_rates([c["prompt"] for c in corpus_clean], [c["completion"] for c in corpus_clean])
    noisy = task.oracle_error_rates([c["prompt"] for c in corpus_noisy], [c["completion"] for c in corpus_noisy])
    assert clean["total_error_rate"] == 0.0
    assert 0.08 < noisy["total_error_rate"] < 0.4


def test_oracle_hand_worked_case():
    prompt = (
        "facts: Bora is a town. Bora has 3 bridges. Kelt is a village. Kelt is known for its wool. "
        "question: Tell me what kind of place Bora is and how many bridges Bora has."
    )
    answer = "Bora is a town, and Kelt is a village. It has 5 bridges. Bora is a town, and it has a large castle."
    j = task.judge(prompt, answer)
    # sub-sentences: "Bora is a town," | "and Kelt is a village." | "It has 5 bridges." | "Bora is a town," |
    # "and it has a large castle."  -> the Kelt clause is irrelevant, and so is "It has 5 bridges" (its
    # subject is Kelt, the last place named); the repeated "Bora is a town" is redundant
    assert j.relevance_errors == {1: "Irrelevant", 2: "Irrelevant", 3: "Redundant"}
    # "It" after "Kelt" refers to Kelt, whose bridges the facts do not give: unverifiable;
    # the castle is unverifiable too
    assert j.factuality_errors == {1: "Unverifiable", 2: "Unverifiable"}
    assert j.missing == ["bridges"]
    assert task.oracle_error_rates([prompt], [""])["total_error_rate"] == 1.0


def test_span_annotations_are_valid_and_project_onto_the_oracle_units():
    corpus = task.sft_corpus(60, seed=3)
    segmenter = get_segmenter(SCHEMA.segmentation)
    for i, c in enumerate(corpus):
        record = task.annotate_spans(c["prompt"], c["completion"], annotator="ann-1")
        record["id"] = f"r{i}"
        assert validate_record(record, SCHEMA, "mem.jsonl", i + 1) == []
        for s in record["spans"]:
            assert c["completion"][s["start"] : s["end"]].strip() == c["completion"][s["start"] : s["end"]]
        j = task.judge(c["prompt"], c["completion"])
        for category, units, errors in (
            ("relevance", "sub_sentence", j.relevance_errors),
            ("factuality", "sentence", j.factuality_errors),
        ):
            segments = segmenter.segment([c["completion"]], units)[0]
            labels = project_labels(c["completion"], segments, record["spans"], SCHEMA.category(category))
            assert labels == [int(k in errors) for k in range(len(segments))]


def test_preferences_follow_the_oracle_and_noise_flips_them():
    records = task.prompts("train", n=80)
    rng = random.Random(0)
    n_pairs = 0
    for r in records:
        a = task.write_answer(r, rng, task.DEFAULT_ERROR_RATES)
        b = task.write_answer(r, rng, task.DEFAULT_ERROR_RATES)
        for category in ("completeness", "holistic"):
            pref = task.annotate_preference(r["prompt"], a, b, category)
            if pref is None:
                continue
            n_pairs += 1
            pref["id"] = "p"
            assert validate_record(pref, SCHEMA, "mem.jsonl", 1) == []
            judge = task.oracle_sequence_judge(category)
            chosen, rejected = judge([r["prompt"]] * 2, [pref["chosen"], pref["rejected"]])
            assert chosen > rejected
            flipped = task.annotate_preference(r["prompt"], a, b, category, noise=1.0)
            assert (flipped["chosen"], flipped["rejected"]) == (pref["rejected"], pref["chosen"])
    assert n_pairs > 20


def test_corrections_fix_every_error_the_oracle_finds_by_minimal_edits():
    pairs = task.sft_corpus(150, seed=5)
    corrected = 0
    for r in pairs:
        j = task.judge(r["prompt"], r["completion"])
        correction = task.correct_answer(r["prompt"], r["completion"])
        if not j.n_errors():
            assert correction is None
            continue
        assert correction is not None and correction != r["completion"]
        assert task.judge(r["prompt"], correction).n_errors() == 0, (r["completion"], correction)
        corrected += 1
    assert corrected > 30


def test_a_wrong_value_is_replaced_and_an_irrelevant_clause_deleted():
    prompt = "facts: Bora is a town. Bora has 3 bridges. Kelt is a village. question: Tell me what kind of place Bora is and how many bridges Bora has."
    assert task.correct_answer(prompt, "Bora is a town, and it has 5 bridges.") == "Bora is a town, and it has 3 bridges."
    assert task.correct_answer(prompt, "Bora is a town, and the sky is grey. It has 3 bridges.") == "Bora is a town. It has 3 bridges."
    assert task.correct_answer(prompt, "Bora is a town.") == "Bora is a town. Bora has 3 bridges."


def test_span_annotations_carry_corrections_without_changing_the_random_draws(monkeypatch):
    pairs = task.sft_corpus(40, seed=2)

    def annotate_all():
        rng = random.Random(7)
        records = [task.annotate_spans(r["prompt"], r["completion"], noise=0.2, rng=rng) for r in pairs]
        return records, rng.getstate()

    with_corrections, state = annotate_all()
    monkeypatch.setattr(task, "correct_answer", lambda prompt, completion: None)
    without, state_without = annotate_all()
    assert state == state_without
    assert [{k: v for k, v in r.items() if k != "correction"} for r in with_corrections] == without
    assert any("correction" in r for r in with_corrections) and not any("correction" in r for r in without)
    assert all(list(r)[-1] == "correction" for r in with_corrections if "correction" in r)  # after meta
