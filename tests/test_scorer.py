"""The scorer: reward values per mode, batching, one judge call per batch, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

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
    # a judge returning NaN is an error of the scorer itself (tests/test_reliability.py covers every span mode)
    entry = {"kind": "preference", "granularity": "sequence", "judge": {"_target_": "finegrained.rewards.rule_based.nan_after"}}
    with pytest.raises(FinegrainedError, match="category 'bad': its judge returned a non-finite score"):
        RewardScorer.from_config(config(bad=entry))(["q"], ["text"])
    fine = RewardScorer.from_config(config(good=zebra()))(["q"], ["text"])
    assert has_non_finite(fine) is None


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


class FakeModelJudge:
    """Mimics ``finegrained.rewards.inference.RewardModelJudge``: metadata attributes plus a batched call."""

    def __init__(self, kind="span", granularity="sentence", normalisation=None, segmentation=None):
        from finegrained.schema import SegmentationConfig

        self.category, self.kind, self.granularity = "fake", kind, granularity
        self.normalisation = normalisation
        self.segmentation = segmentation or SegmentationConfig(**SEG)
        self.calls = []

    def __call__(self, prompts, completions, segments=None):
        self.calls.append(len(completions))
        if self.kind == "span":
            # p_error grows with the segment's length, so soft rewards differ per segment.
            return [[min(1.0, (e - s) / 40) for s, e in segs] for segs in segments]
        return [float(len(c.split())) for c in completions]


@pytest.fixture
def fake_models(tmp_path, monkeypatch):
    """Reward-model directories whose ``load_judge`` returns fake judges (by directory name)."""
    from finegrained.rewards import inference

    judges = {
        "span": FakeModelJudge(),
        "sub": FakeModelJudge(granularity="sub_sentence"),
        "pref": FakeModelJudge("preference", "sequence", normalisation={"mean": 4.0, "std": 2.0}),
    }
    for name in judges:
        (tmp_path / name).mkdir()
        (tmp_path / name / "finegrained.json").write_text("{}")
    monkeypatch.setattr(inference, "load_judge", lambda model_dir, device=None: judges[Path(model_dir).name])
    return tmp_path, judges


def test_model_judges_are_called_once_per_batch_with_their_own_segmentation(fake_models):
    root, judges = fake_models
    cfg = {"span_mode": "soft", "categories": {
        "span": {"model": str(root / "span"), "weight": 1.0},
        "sub": {"model": str(root / "sub"), "weight": 0.5, "mode": "hard"},
        "pref": {"model": str(root / "pref"), "weight": 0.3},
        "zebra": zebra(),
    }}  # fmt: skip
    scorer = RewardScorer.from_config(cfg)
    assert scorer.names == ["span", "sub", "pref", "zebra"]  # config order
    b = scorer(["q"] * 3, TEXTS)
    assert b.names == ["span", "sub", "pref", "zebra"]
    assert [j.calls for j in judges.values()] == [[3], [3], [3]]
    span = b.categories["span"]
    assert span.segments[0] == [(0, 15), (16, 35), (36, 53)]
    assert span.p_error[0] == pytest.approx([15 / 40, 19 / 40, 17 / 40])
    assert span.rewards[0] == pytest.approx([1 - 2 * p for p in span.p_error[0]])  # soft from span_mode
    sub = b.categories["sub"]
    assert sub.segments[1] == [(0, 17), (18, 39)] and sub.rewards[1] == [0.5, -0.5]  # its own mode wins
    pref = b.categories["pref"]
    assert pref.raw_scores == [12.0, 9.0, 0.0]
    assert pref.rewards == [[pytest.approx(0.3 * (s - 4.0) / 2.0)] for s in (12.0, 9.0, 0.0)]
    assert pref.p_error is None and pref.segments[0] == [(0, 53)]
    assert set(scorer.last_timings) == {"segment", "score"} and all(t >= 0 for t in scorer.last_timings.values())


def test_model_entries_null_or_weight_zero_are_skipped_and_unset_is_an_error(fake_models):
    root, _ = fake_models
    scorer = RewardScorer.from_config({"categories": {"span": {"model": str(root / "span")},
                                                      "off": {"model": None, "weight": 0.3},
                                                      "empty": {"model": ""}, "zero": {"model": "???", "weight": 0}}})  # fmt: skip
    assert scorer.names == ["span"] and scorer.skipped == ["off", "empty", "zero"]
    with pytest.raises(FinegrainedError, match=r"reward.categories.rel.model: not set"):
        RewardScorer.from_config(OmegaConf.create({"categories": {"rel": {"model": "???", "weight": 0.3}}}))
    with pytest.raises(FinegrainedError, match="no active category"):
        RewardScorer.from_config({"categories": {"off": {"model": None}}})
    with pytest.raises(FinegrainedError, match=r"reward.categories.span.granularity: 'sub_sentence' but"):
        RewardScorer.from_config({"categories": {"span": {"model": str(root / "span"), "granularity": "sub_sentence"}}})


def test_wrong_judgement_counts_are_reported(monkeypatch):
    monkeypatch.setattr(rule_based, "repetition", lambda: (lambda p, c, segs: [[0.0] for _ in segs]))
    scorer = RewardScorer.from_config(config(rep={"kind": "span", "granularity": "sentence",
                                                  "judge": {"_target_": "finegrained.rewards.rule_based.repetition"}}))  # fmt: skip
    with pytest.raises(FinegrainedError, match="rep.*3 segments of sample 0"):
        scorer(["q"] * 2, TEXTS[:2])


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"span_mode": "medium", "categories": {"z": zebra()}}, "reward.span_mode"),
        ({"segmentation": {"colour": 1}, "categories": {"z": zebra()}}, "reward.segmentation"),
        ({"categories": {"z": zebra(weight="heavy")}}, "reward.categories.z.weight"),
        ({"categories": {"z": 0.3}}, "reward.categories.z: expected a mapping"),
        ({"categories": {"z": zebra(judge={"words": ["x"]})}}, "reward.categories.z.judge"),
        ({"categories": {"z": zebra(judge={"_target_": "finegrained.rewards.rule_based.nope"})}}, "reward.categories.z.judge"),
        ({"categories": {"z": zebra(granularity="sequence")}}, "reward.categories.z.granularity"),
    ],
)
def test_more_config_errors(cfg, message):
    with pytest.raises(FinegrainedError, match=message):
        RewardScorer.from_config(cfg)


def test_real_untrained_reward_models(tmp_path):
    """Directories written by init_reward_model_dir load through the scorer; batch equals items alone."""
    from finegrained.rewards.directory import init_reward_model_dir
    from finegrained.models.tiny import train_tokenizer
    from finegrained.schema import Category, SegmentationConfig

    tokenizer = train_tokenizer(TEXTS[:2] * 20 + ["Cats run, dogs sleep, birds fly away now."] * 20, vocab_size=300,
                                extra_special_tokens=["<seg>"])  # fmt: skip
    seg = SegmentationConfig(**SEG)
    span_dir = init_reward_model_dir(Category("relevance", "sub_sentence", "span", uses_context=False),
                                     tmp_path / "rel", tokenizer, n_layer=1, hidden=32, segmentation=seg)  # fmt: skip
    pref_dir = init_reward_model_dir(Category("completeness", "sequence", "preference"), tmp_path / "comp",
                                     tokenizer, n_layer=1, hidden=32, normalisation={"mean": 0.1, "std": 0.5})  # fmt: skip
    scorer = RewardScorer.from_config(
        {"span_mode": "soft", "categories": {"relevance": {"model": str(span_dir), "weight": 0.3},
                                             "completeness": {"model": str(pref_dir), "weight": 0.3}}}, device="cpu")  # fmt: skip
    batch = scorer(["q1", "q2", "q3"], TEXTS)
    rel, comp = batch.categories["relevance"], batch.categories["completeness"]
    assert len(rel.p_error[0]) == len(rel.segments[0]) >= 3 and rel.p_error[2] == []
    assert all(0.0 <= p <= 1.0 for row in rel.p_error for p in row)
    assert rel.rewards[0] == pytest.approx([0.3 * (1 - 2 * p) for p in rel.p_error[0]])
    assert comp.rewards[0] == [pytest.approx(0.3 * (comp.raw_scores[0] - 0.1) / 0.5)]
    for i, text in enumerate(TEXTS):
        alone = scorer([f"q{i + 1}"], [text])
        assert alone.categories["relevance"].p_error[0] == pytest.approx(rel.p_error[i], abs=1e-5)
        assert alone.categories["completeness"].raw_scores[0] == pytest.approx(comp.raw_scores[i], abs=1e-5)
