"""Annotation schemas: the shipped ones load, bad ones are refused naming the file and the key."""

from __future__ import annotations

import pytest

from finegrained.errors import InputError
from finegrained.schema import load_schema

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


def test_unknown_schema_name_lists_shipped():
    with pytest.raises(InputError, match="qa_feedback"):
        load_schema("no_such_schema")
