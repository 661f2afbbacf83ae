"""Model cards: every reward-model directory and every final/ policy gets a README.md whose front matter a
hub parser reads, and whose text says what the directory holds."""

from __future__ import annotations

import pytest
import yaml

from finegrained import model_card


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])


SPAN_METADATA = {
    "kind": "span", "category": "factuality", "granularity": "sentence", "error_types": ["Wrong-Grounding", "Unverifiable"],
    "backbone": "/models/minilm", "schema": {"name": "qa_feedback", "sha256": "ab" * 32},
    "segmentation": {"sentence": "sentencizer"}, "data": {"train": {"path": "out/spans.jsonl", "sha256": "cd" * 32}},
    "training": {"train": {"epochs": 3, "lr": 2e-5}},
}  # fmt: skip


def test_reward_model_card_front_matter_and_facts():
    text = model_card.reward_model_card(SPAN_METADATA, {"segment_accuracy": 0.9132, "n_segments": 412}, command="finegrained train-rm x=1")
    meta = front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "token-classification"
    assert "factuality" in meta["tags"] and "reward-model" in meta["tags"]
    assert "base_model" not in meta  # a local path is not a hub id: described in the text instead
    assert "| segment_accuracy | 0.9132 |" in text and "| n_segments | 412 |" in text
    assert "out/spans.jsonl" in text and "Wrong-Grounding, Unverifiable" in text
    assert "finegrained train-rm x=1" in text and "epochs: 3" in text
    assert "torch" in text  # library versions


def test_joint_and_preference_cards_name_every_category():
    joint = {
        "kind": "joint", "backbone": "sentence-transformers/all-MiniLM-L6-v2", "schema": {}, "segmentation": {},
        "categories": {"relevance": {"kind": "span", "granularity": "sub_sentence", "error_types": ["Irrelevant"]},
                       "completeness": {"kind": "preference", "granularity": "sequence", "error_types": []}},
    }  # fmt: skip
    meta = front_matter(model_card.reward_model_card(joint, None))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"relevance", "completeness"} <= set(meta["tags"])
    pref = dict(SPAN_METADATA, kind="preference", category="completeness", granularity="sequence", error_types=[])
    text = model_card.reward_model_card(pref, {"pairwise_accuracy": 0.75, "n_pairs": 8})
    assert front_matter(text)["pipeline_tag"] == "text-classification"
    assert "No held-out metrics" not in text


def test_policy_card_lists_rewards_and_config():
    reward = {"categories": {"relevance": {"model": "rm/relevance", "weight": 0.3},
                             "no_zebra": {"judge": {"_target_": "finegrained.rewards.rule_based.contains_words"}, "weight": 1.0}}}  # fmt: skip
    text = model_card.policy_card(algorithm="ppo", base_model="gpt2", config={"ppo": {"iterations": 3}}, reward=reward)
    meta = front_matter(text)
    assert meta["base_model"] == "gpt2" and meta["pipeline_tag"] == "text-generation" and "ppo" in meta["tags"]
    assert "weight 0.3, judged by `rm/relevance`" in text and "contains_words" in text and "iterations: 3" in text


@pytest.mark.parametrize("name, expected", [("gpt2", True), ("org/model-1", True), ("/abs/path", False),
                                            ("./rel", False), ("a/b/c", False), ("", False), (None, False)])  # fmt: skip
def test_hub_ids_are_told_from_paths(name, expected):
    assert model_card.is_hub_id(name) is expected


def test_a_hub_parser_reads_the_card(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    path = model_card.write_card(tmp_path, model_card.reward_model_card(SPAN_METADATA, {"segment_accuracy": 0.5}))
    card = hub.ModelCard.load(path)
    assert card.data.library_name == "transformers"
    assert "Reward model for factuality" in card.text
