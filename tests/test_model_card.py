"""Model cards: every reward-model directory and every final/ policy gets a README.md whose front matter a
hub parser reads, and whose text says what the directory holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from finegrained import model_card

sys.path.insert(0, str(Path(__file__).parent))
from test_reward_models import planted_preference_records, write_jsonl, zebra_span_records  # noqa: E402


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


def test_policy_cards_leave_a_tiny_base_model_and_configs_plain():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"ppo": {"iterations": 2, "lr": "${lr}"}, "lr": 0.1})
    text = model_card.policy_card(algorithm="sft", base_model="tiny", config=cfg, summary={"steps": 3, "eval_loss": None})
    assert "base_model" not in front_matter(text)  # "tiny" is built from a config, not a hub model
    assert "lr: 0.1" in text and "${lr}" not in text  # resolved
    assert "| steps | 3 |" in text and "eval_loss" not in text  # what was not measured is not claimed


# ------------------------------------------------------------------- every writer leaves a card
def card_of(directory: Path) -> tuple[dict, str]:
    text = (directory / model_card.CARD_FILE).read_text(encoding="utf-8")
    return front_matter(text), text


def test_train_rm_leaves_a_card_naming_category_and_metrics(tmp_path):
    from finegrained.commands import train_rm

    train = write_jsonl(tmp_path / "train.jsonl", zebra_span_records(24, seed=1))
    held_out = write_jsonl(tmp_path / "eval.jsonl", zebra_span_records(8, seed=2))
    out = tmp_path / "rm"
    assert train_rm.main(["schema=synthetic_qa", "category=factuality", f"data.train={train}", f"data.eval={held_out}",
                          f"output_dir={out}", "train.epochs=1", "train.progress=false"]) == 0  # fmt: skip
    meta, text = card_of(out)
    assert meta["pipeline_tag"] == "token-classification" and "factuality" in meta["tags"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"| n_segments | {metrics['n_segments']} |" in text
    assert f"| segment_accuracy | {metrics['segment_accuracy']:.4f} |" in text
    assert "Wrong-Grounding, Unverifiable" in text and str(train) in text

    pref_train = write_jsonl(tmp_path / "pairs.jsonl", planted_preference_records(16, seed=1))
    pref_eval = write_jsonl(tmp_path / "pairs_eval.jsonl", planted_preference_records(6, seed=2))
    assert train_rm.main(["category=completeness", f"data.train={pref_train}", f"data.eval={pref_eval}",
                          f"output_dir={tmp_path / 'pref'}", "train.epochs=1", "train.progress=false"]) == 0  # fmt: skip
    meta, text = card_of(tmp_path / "pref")
    assert meta["pipeline_tag"] == "text-classification" and "completeness" in meta["tags"]
    assert "| n_pairs | 6 |" in text and "| pairwise_accuracy |" in text


def test_ppo_final_leaves_a_card_with_rewards_and_run_summary(tmp_path):
    from finegrained.commands import ppo

    assert ppo.main(["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "ppo.iterations=1",
                     "ppo.batch_size=4", "ppo.minibatch_size=4", "checkpoint.every=0", "generation.max_new_tokens=4"]) == 0  # fmt: skip
    meta, text = card_of(tmp_path / "final")
    assert meta["pipeline_tag"] == "text-generation" and "ppo" in meta["tags"] and "base_model" not in meta
    for name in ("printable", "no_filler"):  # the smoke run's rule-based categories
        assert f"**{name}**" in text
    assert "| iterations | 1 |" in text and "| last_mean_score_reward |" in text
    assert "batch_size: 4" in text  # the resolved config


def test_sft_final_leaves_a_card(tmp_path):
    from finegrained.commands import sft

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"question {i}:", "completion": f" answer {i}"}) + "\n" for i in range(8)))
    assert sft.main([f"output_dir={tmp_path / 'sft'}", f"data.train={pairs}", "train.epochs=1", "train.batch_size=4",
                     "model.n_layer=1", "model.n_embd=32", "model.vocab_size=300", "train.progress=false"]) == 0  # fmt: skip
    meta, text = card_of(tmp_path / "sft" / "final")
    assert "sft" in meta["tags"] and meta["pipeline_tag"] == "text-generation"
    assert "| steps | 2 |" in text and "Supervised fine-tuning" in text and str(pairs) in text


@pytest.mark.parametrize("argv0, expected", [("/venv/bin/finegrained", "finegrained"), ("/src/finegrained/cli.py", "finegrained"),
                                             ("/src/finegrained/__main__.py", "finegrained"), ("/venv/pytest/__main__.py", "/venv/pytest/__main__.py")])  # fmt: skip
def test_invocation_names_the_finegrained_command_only_when_it_ran(monkeypatch, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0, "ppo", "output_dir=a b"])
    assert model_card.invocation() == f"{expected} ppo 'output_dir=a b'"
