"""Annotation schemas: the shipped ones load, bad ones are refused naming the file and the key."""

from __future__ import annotations

import pytest

from finegrained.errors import InputError
from finegrained.schema import SegmentationConfig, SpanLengthFilter, load_schema

GOOD = """
name: mini
segmentation: {sentence: sentencizer, sub_sentence: {split_after: ",;", min_words: 3}}
categories:
  - {name: relevance, granularity: sub_sentence, kind: span, error_types: [Irrelevant], uses_context: false}
  - {name: completeness, granularity: sequence, kind: preference}
"""


def test_shipped_qa_feedback_schema():
    schema = load_schema("qa_feedback")
    assert schema.category_names == ("relevance", "factuality", "completeness", "holistic")
    assert schema.category("relevance").granularity == "sub_sentence"
    assert schema.category("relevance").error_types == ("Irrelevant", "Redundant", "Incoherent")
    assert schema.category("factuality").granularity == "sentence"
    assert {c.name for c in schema.preference_categories} == {"completeness", "holistic"}
    assert schema.category_of_label("Unverifiable").name == "factuality"
    assert schema.category_of_label("factuality").name == "factuality"
    assert schema.category_of_label("Nonsense") is None
    assert len(schema.sha256) == 64


def test_shipped_synthetic_schema_has_the_demo_categories():
    schema = load_schema("synthetic_qa")
    assert set(schema.category_names) == {"relevance", "factuality", "completeness", "holistic"}


def test_schema_from_path(tmp_path):
    p = tmp_path / "mini.yaml"
    p.write_text(GOOD)
    schema = load_schema(p)
    assert schema.segmentation.min_words == 3
    assert schema.segmentation.split_after == ",;"
    assert schema.category("relevance").uses_context is False
    with pytest.raises(KeyError, match="no category 'factuality'"):
        schema.category("factuality")


BAD = {
    "not_yaml": ("name: [unclosed\n", "not valid YAML"),
    "not_mapping": ("- a\n- b\n", "must be a YAML mapping"),
    "no_categories": ("name: x\ncategories: []\n", "categories: a schema needs a non-empty list"),
    "repeated_name": (
        "categories:\n  - {name: a, granularity: sentence, kind: span}\n  - {name: a, granularity: sentence, kind: span}\n",
        "categories[1] (a).name: repeats the category name 'a'",
    ),
    "repeated_error_type": (
        "categories:\n  - {name: a, granularity: sentence, kind: span, error_types: [X]}\n"
        "  - {name: b, granularity: sentence, kind: span, error_types: [X]}\n",
        "categories[1] (b).error_types: repeats the label 'X'",
    ),
    "unknown_granularity": (
        "categories:\n  - {name: a, granularity: paragraph, kind: span}\n",
        "categories[0] (a).granularity: unknown granularity 'paragraph'",
    ),
    "unknown_kind": (
        "categories:\n  - {name: a, granularity: sentence, kind: ranking}\n",
        "categories[0] (a).kind: unknown kind 'ranking'",
    ),
    "preference_not_sequence": (
        "categories:\n  - {name: a, granularity: sentence, kind: preference}\n",
        "granularity must be 'sequence'",
    ),
    "unknown_key": (
        "categories:\n  - {name: a, granularity: sentence, kind: span, weight: 3}\n",
        "categories[0].weight: unknown key",
    ),
    "unknown_rule": (
        "segmentation: {sub_sentence: {rule: wu}}\ncategories:\n  - {name: a, granularity: sentence, kind: span}\n",
        "segmentation.sub_sentence.rule: unknown rule 'wu' (expected one of finegrained, paper)",
    ),
    "unknown_sub_sentence_key": (
        "segmentation: {sub_sentence: {rules: paper}}\ncategories:\n  - {name: a, granularity: sentence, kind: span}\n",
        "segmentation.sub_sentence.rules: unknown key (expected rule, split_after, min_words)",
    ),
    "split_after_with_space": (
        "segmentation: {sub_sentence: {split_after: ', '}}\ncategories:\n  - {name: a, granularity: sentence, kind: span}\n",
        "segmentation.sub_sentence.split_after: must be a non-empty string of punctuation",
    ),
    "bad_min_words": (
        "segmentation: {sub_sentence: {min_words: true}}\ncategories:\n  - {name: a, granularity: sentence, kind: span}\n",
        "segmentation.sub_sentence.min_words: must be a positive integer",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_schema_names_file_and_key(tmp_path, case):
    text, expected = BAD[case]
    p = tmp_path / f"{case}.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as info:
        load_schema(p)
    message = str(info.value)
    assert str(p) in message
    assert expected in message


# Two span categories and a preference one; {rel} / {fact} / {pref} are replaced by extra keys.
NEW_KEYS = """
categories:
  - {{name: relevance, granularity: sub_sentence, kind: span, error_types: [Irrelevant, Redundant]{rel}}}
  - {{name: factuality, granularity: sentence, kind: span, error_types: [Unverifiable]{fact}}}
  - {{name: completeness, granularity: sequence, kind: preference{pref}}}
"""
BAD_NEW_KEYS = {
    "min_words_zero": (dict(rel=", min_span_words: {words: 0}"), "categories[0] (relevance).min_span_words.words: must be a positive integer"),
    "min_words_text": (dict(rel=", min_span_words: {words: '5'}"), "categories[0] (relevance).min_span_words.words: must be a positive integer"),
    "min_words_bool": (dict(rel=", min_span_words: true"), "categories[0] (relevance).min_span_words.words: must be a positive integer"),
    "min_words_missing": (dict(rel=", min_span_words: {error_types: [Irrelevant]}"), "categories[0] (relevance).min_span_words.words: must be"),
    "min_words_unknown_key": (dict(rel=", min_span_words: {words: 5, labels: [Irrelevant]}"), "categories[0] (relevance).min_span_words.labels: unknown key"),
    "min_words_foreign_type": (
        dict(rel=", min_span_words: {words: 5, error_types: [Irrelevant, Unverifiable]}"),
        "categories[0] (relevance).min_span_words.error_types: 'Unverifiable' not a label of this category",
    ),
    "min_words_empty_types": (dict(rel=", min_span_words: {words: 5, error_types: []}"), "categories[0] (relevance).min_span_words.error_types: must be a non-empty list"),
    "min_words_types_not_list": (dict(rel=", min_span_words: {words: 5, error_types: Irrelevant}"), "categories[0] (relevance).min_span_words.error_types: must be a non-empty list"),
    "min_words_on_preference": (dict(pref=", min_span_words: 5"), "categories[2] (completeness).min_span_words: only a span category has spans"),
    "ignore_not_list": (dict(fact=", ignore_overlapping: relevance"), "categories[1] (factuality).ignore_overlapping: must be a list"),
    "ignore_unknown": (dict(fact=", ignore_overlapping: [relevanse]"), "categories[1] (factuality).ignore_overlapping: 'relevanse' is not a category or error type"),
    "ignore_itself": (dict(fact=", ignore_overlapping: [Unverifiable]"), "categories[1] (factuality).ignore_overlapping: 'Unverifiable' is a label of this category itself"),
    "ignore_preference": (dict(fact=", ignore_overlapping: [completeness]"), "categories[1] (factuality).ignore_overlapping: 'completeness' belongs to the preference category"),
    "ignore_on_preference": (dict(pref=", ignore_overlapping: [relevance]"), "categories[2] (completeness).ignore_overlapping: only a span category has spans"),
}


@pytest.mark.parametrize("case", sorted(BAD_NEW_KEYS))
def test_bad_label_rule_keys_are_refused_by_name(tmp_path, case):
    extra, expected = BAD_NEW_KEYS[case]
    p = tmp_path / f"{case}.yaml"
    p.write_text(NEW_KEYS.format(**{"rel": "", "fact": "", "pref": "", **extra}))
    with pytest.raises(InputError) as info:
        load_schema(p)
    assert f"{p}: {expected}" in str(info.value)


def test_label_rule_keys_and_their_defaults(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(NEW_KEYS.format(rel=", min_span_words: 3", fact=", ignore_overlapping: [Redundant]", pref=""))
    schema = load_schema(p)
    relevance, factuality, completeness = schema.categories
    # error_types default: every label of the category (its name included)
    assert relevance.min_span_words == SpanLengthFilter(3, ("relevance", "Irrelevant", "Redundant"))
    assert factuality.min_span_words is None and relevance.ignore_overlapping == ()
    assert schema.ignore_labels(factuality) == {"Redundant"}  # an error type names only itself
    p.write_text(NEW_KEYS.format(rel="", fact=", ignore_overlapping: [relevance]", pref=""))
    assert load_schema(p).ignore_labels(load_schema(p).category("factuality")) == {"relevance", "Irrelevant", "Redundant"}
    # without the keys: today's behaviour
    assert load_schema(tmp_path.joinpath("rules.yaml")).segmentation == SegmentationConfig()
    assert SegmentationConfig().rule == "finegrained"


def test_paper_rule_defaults_to_the_papers_split_characters(tmp_path):
    p = tmp_path / "paper.yaml"
    p.write_text("segmentation: {sub_sentence: {rule: paper}}\ncategories:\n  - {name: a, granularity: sentence, kind: span}\n")
    assert load_schema(p).segmentation == SegmentationConfig(rule="paper", split_after=",;!?", min_words=5)


def test_shipped_schemas_label_rules():
    qa = load_schema("qa_feedback")
    assert qa.segmentation == SegmentationConfig(sentence="en_core_web_sm", split_after=",;!?", min_words=5, rule="paper")
    relevance, factuality = qa.category("relevance"), qa.category("factuality")
    assert relevance.min_span_words == SpanLengthFilter(5, ("Irrelevant", "Redundant", "Incoherent"))
    assert factuality.min_span_words is None  # factual spans are never dropped
    assert qa.ignore_labels(factuality) == set(relevance.labels)
    assert qa.ignore_labels(relevance) == set()
    synthetic = load_schema("synthetic_qa")  # the demo's schema: today's rules
    assert synthetic.segmentation.rule == "finegrained"
    assert all(c.min_span_words is None and not c.ignore_overlapping for c in synthetic.categories)


def test_unknown_schema_name_lists_shipped():
    with pytest.raises(InputError, match="qa_feedback"):
        load_schema("no_such_schema")
