"""The scorer: reward values per mode, batching, one judge call per batch, config errors."""

from __future__ import annotations

import pytest

from finegrained.errors import FinegrainedError
from finegrained.rewards import rule_based
from finegrained.rewards.scorer import RewardScorer, has_non_finite

SEG = {"sentence": "sentencizer", "split_after": ",;:", "min_words": 3}
TEXTS = ["Bora is a town. A zebra lives here. It has 3 bridges.", "Kelt has a zebra, and the zebra is old.", ""]


def config(**categories):
    return {"segmentation": SEG, "span_mode": "hard", "categories": categories}


def zebra(**extra):
    return {"kind": "span", "granularity": "sentence", "weight": 0.5,
            "judge": {"_target_": "finegrained.rewards.rule_based.contains_words", "words": ["zebra"]}, **extra}  # fmt: skip


def test_hard_and_soft_span_rewards():
    scorer = RewardScorer.from_config(config(zebra=zebra()))
    b = scorer(["q"] * 3, TEXTS)
    c = b.categories["zebra"]
    assert c.segments[0] == [(0, 15), (16, 35), (36, 53)]
    assert c.p_error[0] == [0.0, 1.0, 0.0]
    assert c.rewards[0] == [0.5, -0.5, 0.5]
    assert c.rewards[2] == [] and c.segments[2] == []
    soft = RewardScorer.from_config(config(zebra=zebra(mode="soft")))
    assert soft(["q"], TEXTS[:1]).categories["zebra"].rewards[0] == [0.5, -0.5, 0.5]
    penalty = RewardScorer.from_config(config(zebra=zebra(mode="penalty")))
    assert penalty(["q"], TEXTS[:1]).categories["zebra"].rewards[0] == [0.0, -0.5, 0.0]


class FakeSequenceJudge:
    def __init__(self):
        self.calls = 0

    def __call__(self, prompts, completions):
        self.calls += 1
        return [float(len(c)) for c in completions]


def test_preference_rewards_are_normalised_and_judges_called_once(monkeypatch):
    fake = FakeSequenceJudge()
    monkeypatch.setattr(rule_based, "keyword_bonus", lambda words: fake)
    entry = {"kind": "preference", "granularity": "sequence", "weight": 2.0, "normalisation": {"mean": 10.0, "std": 5.0},
             "judge": {"_target_": "finegrained.rewards.rule_based.keyword_bonus", "words": ["x"]}}  # fmt: skip
    scorer = RewardScorer.from_config(config(length=entry))
    b = scorer(["q"] * 3, TEXTS)
    assert fake.calls == 1
    c = b.categories["length"]
    assert c.raw_scores == [float(len(t)) for t in TEXTS]
    assert c.rewards == [[2.0 * (len(t) - 10.0) / 5.0] for t in TEXTS]
    assert c.segments[2] == [(0, 0)]  # a blank completion keeps its sequence reward
    assert b.total_per_sample()[2] == pytest.approx(-4.0)


def test_batch_equals_items_alone():
    scorer = RewardScorer.from_config(
        config(zebra=zebra(), rep={"kind": "span", "granularity": "sub_sentence", "weight": 1.0,
                                   "judge": {"_target_": "finegrained.rewards.rule_based.repetition"}})
    )  # fmt: skip
    batch = scorer(["q"] * 3, TEXTS)
    for i, text in enumerate(TEXTS):
        alone = scorer(["q"], [text])
        for name in batch.names:
            assert alone.categories[name].rewards[0] == batch.categories[name].rewards[i]
            assert alone.categories[name].segments[0] == batch.categories[name].segments[i]


def test_nan_detection():
    entry = {"kind": "preference", "granularity": "sequence", "judge": {"_target_": "finegrained.rewards.rule_based.nan_after"}}
    b = RewardScorer.from_config(config(bad=entry))(["q"], ["text"])
    assert has_non_finite(b) == "bad"


@pytest.mark.parametrize(
    "entry, message",
    [
        (zebra(mode="medium"), "unknown mode"),
        ({"weight": 1.0}, "give exactly one of model"),
        ({"model": "/nonexistent/rm"}, "not a reward-model directory"),
        ({"kind": "span", "judge": {"_target_": "finegrained.rewards.rule_based.repetition"}}, "granularity"),
        (zebra(colour="red"), "unknown key"),
        ({"kind": "preference", "granularity": "sequence", "normalisation": {"mean": 0, "std": 0},
          "judge": {"_target_": "finegrained.rewards.rule_based.target_length", "target_words": 3}}, "std must be positive"),
    ],
)  # fmt: skip
def test_config_errors_name_the_category(entry, message):
    with pytest.raises(FinegrainedError, match=message) as info:
        RewardScorer.from_config(config(cat=entry))
    assert "reward.categories.cat" in str(info.value)


def test_zero_weight_categories_are_skipped():
    scorer = RewardScorer.from_config(config(zebra=zebra(), off={"weight": 0}))
    assert scorer.names == ["zebra"]
