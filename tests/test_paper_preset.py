"""experiment=qa_feedback_paper: the settings of Wu et al. 2023 compose and resolve as documented, and the
completeness reward is normalised with the statistics its reward model carries."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from finegrained.config import compose
from finegrained.models.tiny import train_tokenizer
from finegrained.rewards.scorer import RewardScorer
from finegrained.rewards.directory import init_reward_model_dir
from finegrained.schema import load_schema

MODELS = {name: f"/rm/{name}" for name in ("relevance", "factuality", "completeness")}


def paper(*overrides: str):
    return compose("ppo", ["experiment=qa_feedback_paper", "policy.name_or_path=/sft/final",
                           *[f"reward.categories.{n}.model={d}" for n, d in MODELS.items()], *overrides])  # fmt: skip


def test_preset_resolves_to_the_papers_settings():
    cfg = OmegaConf.to_container(paper(), resolve=True)
    p, kl, gen = cfg["ppo"], cfg["kl"], cfg["generation"]
    assert (kl["coef"], kl["adaptive"], kl["estimator"]) == (0.3, False, "k1")
    assert (p["value_coef"], p["gamma"], p["lam"], p["clip_range"], p["clip_range_value"]) == (1.0, 1.0, 0.95, 0.2, 0.2)
    assert (p["epochs"], p["lr"], p["batch_size"], p["iterations"] * p["batch_size"]) == (4, 1e-5, 32, 80_000)
    assert p["whiten_rewards"] and p["whiten_advantages"] and p["entropy_coef"] == 0 and math.isinf(p["max_grad_norm"])
    assert p["minibatch_size"] * p["grad_accum"] == p["batch_size"]  # one optimizer step per epoch on one process
    assert (gen["temperature"], gen["top_k"], gen["top_p"], gen["max_new_tokens"]) == (0.7, 20, 1.0, 200)
    assert cfg["policy"]["name_or_path"] == "/sft/final" and cfg["seed"] == 42
    reward = cfg["reward"]
    assert reward["span_mode"] == "hard"
    assert {n: c["weight"] for n, c in reward["categories"].items()} == {"relevance": 0.3, "factuality": 0.5, "completeness": 0.3}
    assert {n: c["model"] for n, c in reward["categories"].items()} == MODELS
    assert reward["categories"]["completeness"].get("normalisation") is None  # read from the model, never copied


def test_preset_leaves_models_to_the_user_and_takes_overrides():
    cfg = compose("ppo", ["experiment=qa_feedback_paper"])
    with pytest.raises(Exception, match="name_or_path"):
        OmegaConf.to_container(cfg.policy, resolve=True, throw_on_missing=True)
    assert paper("kl.coef=0.1", "generation.top_k=0").kl.coef == 0.1


def test_preset_reward_config_builds_a_scorer_with_the_saved_completeness_statistics(tmp_path):
    schema = load_schema("qa_feedback")
    tok = train_tokenizer(["question: who wrote it? answer: Ann wrote it, in 1990."] * 20, vocab_size=300)
    saved = {"mean": -0.4468, "std": 8.3012}  # as train-rm would store them
    dirs = {}
    for name in MODELS:
        dirs[name] = init_reward_model_dir(
            schema.category(name), tmp_path / name, tok, n_layer=1, hidden=32, n_head=2, max_length=64,
            segmentation=schema.segmentation, normalisation=saved if name == "completeness" else None,
            question_pattern=schema.question_pattern,
        )  # fmt: skip
    cfg = compose("ppo", ["experiment=qa_feedback_paper", "policy.name_or_path=/sft/final",
                          *[f"reward.categories.{n}.model={d}" for n, d in dirs.items()]])  # fmt: skip
    scorer = RewardScorer.from_config(cfg.reward, device="cpu")
    by_name = {c.name: c for c in scorer.categories}
    assert {n: c.weight for n, c in by_name.items()} == {"relevance": 0.3, "factuality": 0.5, "completeness": 0.3}
    assert by_name["relevance"].mode == by_name["factuality"].mode == "hard"
    assert (by_name["completeness"].mean, by_name["completeness"].std) == (saved["mean"], saved["std"])
    breakdown = scorer(["question: who wrote it? context: wikipage: Ann text: Ann wrote it in 1990."], ["Ann wrote it. It was in 1990, in Oslo, on a Monday."])
    assert set(breakdown.names) == set(MODELS)
    assert all(abs(r) == 0.3 for r in breakdown.categories["relevance"].rewards[0])  # +-w per segment
