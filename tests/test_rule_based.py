"""Rule-based judges: whole-word matching, repetition, sequence scores, and the shipped rule_based config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finegrained.rewards import rule_based
from finegrained.rewards.scorer import NonFiniteJudgementError, RewardScorer, has_non_finite

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward" / "rule_based.yaml"


def spans(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Char spans of ``pieces`` found left to right in ``text``."""
    out, pos = [], 0
    for piece in pieces:
        start = text.index(piece, pos)
        out.append((start, start + len(piece)))
        pos = start + len(piece)
    return out


def test_contains_words_matches_whole_words_only_inside_the_segment():
    judge = rule_based.contains_words(["zebra", "C++"])
    text = "A Zebra runs. Zebras sleep. I like C++ a lot. zebra"
    segs = spans(text, ["A Zebra runs.", "Zebras sleep.", "I like C++ a lot.", "zebra"])
    assert judge(["p"], [text], [segs]) == [[1.0, 0.0, 1.0, 1.0]]
    # A segment cut mid-text only sees its own characters: "zebra" just outside the span does not count.
    assert judge(["p"], ["zebra crossing"], [[(6, 14)]]) == [[0.0]]
    assert judge(["p"], ["zebra crossing"], [[(0, 5)]]) == [[1.0]]
    sensitive = rule_based.contains_words(["Zebra"], case_sensitive=True)
    assert sensitive(["p", "p"], ["Zebra.", "zebra."], [[(0, 6)], [(0, 6)]]) == [[1.0], [0.0]]
    assert judge([], [], []) == []
    assert judge(["p"], [""], [[]]) == [[]]


def test_contains_words_needs_a_word():
    with pytest.raises(ValueError):
        rule_based.contains_words([])
    with pytest.raises(ValueError):
        rule_based.contains_words([""])


def test_repetition_flags_later_copies_of_a_segment():
    judge = rule_based.repetition()
    text = "It is red, it  is RED, and it is blue, it is red"
    segs = spans(text, ["It is red,", "it  is RED,", "and it is blue,", "it is red"])
    # Commas are part of the text, so the last piece ("it is red" without a comma) is new.
    assert judge(["p"], [text], [segs]) == [[0.0, 1.0, 0.0, 0.0]]
    # Repetition is per completion: the same text in another sample is not a repeat.
    assert judge(["p", "p"], ["Same.", "Same."], [[(0, 5)], [(0, 5)]]) == [[0.0], [0.0]]


def test_share_of_chars_is_graded():
    judge = rule_based.share_of_chars()
    assert judge(["p"], ["ab üü  "], [[(0, 2), (3, 5), (0, 5), (5, 7)]]) == [[0.0, 1.0, 0.5, 0.0]]


def test_sequence_judges():
    length = rule_based.target_length(4)
    assert length(["p"] * 3, ["a b c d", "a b", ""]) == [0.0, -0.5, -1.0]
    with pytest.raises(ValueError):
        rule_based.target_length(0)
    bonus = rule_based.keyword_bonus(["cat", "dog", "cat"])
    assert bonus(["p"] * 3, ["Cat and dog.", "cats only", "a cat, a cat"]) == [2.0, 0.0, 1.0]


def test_nan_helpers():
    after = rule_based.nan_after(calls=1)
    assert after(["p"], ["x"]) == [0.0]
    assert math.isnan(after(["p"], ["x"])[0])
    assert all(math.isnan(v) for v in rule_based.always_nan()(["p", "q"], ["x", "y"]))
    scorer = RewardScorer.from_config(
        {"categories": {"bad": {"kind": "preference", "granularity": "sequence",
                                "judge": {"_target_": "finegrained.rewards.rule_based.always_nan"}}}}
    )  # fmt: skip
    # a judge that returns NaN is an error of the scorer itself, naming the category (never a reward)
    with pytest.raises(NonFiniteJudgementError, match="category 'bad'"):
        scorer(["p"], ["x"])


def test_shipped_rule_based_config_scores_the_planted_rules():
    """conf/reward/rule_based.yaml (experiment=smoke) builds without files and its rules fire as documented."""
    scorer = RewardScorer.from_config(OmegaConf.load(CONF))
    texts = [
        "The answer is here and it is short today.",
        "We talk about the weather and the roads today. We talk about the weather and the roads today.",
        "Zürich ü ü ü ü is nice.",
        "",
    ]
    b = scorer(["q"] * len(texts), texts)
    assert b.names == [c.name for c in scorer.categories]
    kinds = {c.name: (c.kind, c.granularity) for c in scorer.categories}
    assert ("span", "sentence") in kinds.values() and ("span", "sub_sentence") in kinds.values()
    assert ("preference", "sequence") in kinds.values()
    filler = b.categories["no_filler"]
    assert filler.p_error[0] == [0.0] and filler.p_error[1] == [1.0, 1.0]
    assert b.categories["no_repetition"].p_error[1][-1] == 1.0
    printable = b.categories["printable"]
    assert printable.rewards[0] == [1.0] and printable.rewards[2][0] < 0.5
    assert all(len(c.rewards[3]) == (1 if c.kind == "preference" else 0) for c in b.categories.values())
    assert has_non_finite(b) is None


def test_rule_judges_can_segment_by_the_papers_rule():
    from finegrained.rewards.scorer import parse_segmentation

    paper = parse_segmentation({"rule": "paper", "min_words": 2})
    assert (paper.rule, paper.split_after) == ("paper", ",;!?")  # the paper's rule does not split after ':'
    assert parse_segmentation({}).split_after == ",;:!?"
    with pytest.raises(Exception, match="reward.segmentation.rule"):
        parse_segmentation({"rule": "papr"})
