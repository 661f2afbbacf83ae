"""The one reward-model training path: the one-head case is exactly a one-category model's training, batches
are drawn as each model shape promises, and the library runs from Python with a composed config."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from finegrained.config_checks import compose_checked
from finegrained.rewards.encoders import PairItem, SpanItem
from finegrained.rewards.preference_model import bradley_terry_loss, pad_sequences
from finegrained.rewards.span_model import IGNORE_INDEX, SpanWindow, pad_windows, span_loss
from finegrained.rewards.training import SPANS, collate, heads_loss, shuffled_epochs, wrapping_streams
from test_reward_models import planted_preference_records, write_jsonl, zebra_span_records

ONE_PROCESS = SimpleNamespace(process_index=0, num_processes=1, prepare=lambda loader: loader)


def _window(rng: random.Random, with_markers: bool) -> tuple[SpanWindow, list[int]]:
    ids = [rng.randrange(5, 50) for _ in range(rng.randint(3, 9))]
    markers = sorted(rng.sample(range(len(ids)), rng.randint(1, len(ids)))) if with_markers else []
    labels = [IGNORE_INDEX] * len(ids)
    for m in markers:
        labels[m] = rng.randint(0, 1)
    types = [rng.randint(0, 3) for _ in ids] if with_markers else None
    return SpanWindow(ids, markers, list(range(len(markers))), token_type_ids=types), labels


def test_one_span_head_batch_and_loss_are_those_of_a_plain_token_classifier():
    rng = random.Random(0)
    rows = [_window(rng, True) for _ in range(5)]
    batch = collate([SpanItem(w, {"fact": labels}) for w, labels in rows], {}, ["fact"], pad_id=0, token_types=True)
    plain = pad_windows([w for w, _ in rows], 0, [labels for _, labels in rows])
    assert torch.equal(batch.input_ids, plain.input_ids) and torch.equal(batch.attention_mask, plain.attention_mask)
    assert torch.equal(batch.token_type_ids, plain.token_type_ids) and torch.equal(batch.labels["fact"], plain.labels)
    logits = torch.randn(*plain.input_ids.shape, 2, requires_grad=True)
    weights = torch.tensor([1.0, 2.5])
    loss, parts = heads_loss({"fact": logits}, batch.labels, batch.pair_rows, {"fact": weights})
    assert torch.equal(loss, span_loss(logits, plain.labels, weights)) and set(parts) == {"fact"}


def test_one_preference_head_batch_and_loss_are_those_of_a_plain_sequence_classifier():
    rng = random.Random(1)
    pairs = [(_window(rng, False)[0], _window(rng, False)[0]) for _ in range(4)]
    batch = collate([], {"comp": [PairItem(c, r) for c, r in pairs]}, [], pad_id=0, token_types=False)
    input_ids, mask = pad_sequences([c.input_ids for c, _ in pairs] + [r.input_ids for _, r in pairs], 0)
    assert torch.equal(batch.input_ids, input_ids) and torch.equal(batch.attention_mask, mask)
    assert batch.token_type_ids is None and batch.labels == {}
    scores = torch.randn(8, requires_grad=True)
    loss, _ = heads_loss({"comp": scores}, batch.labels, batch.pair_rows, {})
    reference_scores = scores.detach().clone().requires_grad_(True)
    reference = bradley_terry_loss(reference_scores[:4], reference_scores[4:])  # chosen rows, then rejected rows
    assert torch.equal(loss, reference)
    loss.backward()
    reference.backward()
    assert torch.equal(scores.grad, reference_scores.grad)


def test_a_one_category_epoch_draws_every_example_once_and_reshuffles():
    schedule = shuffled_epochs(ONE_PROCESS, {SPANS: list(range(10))}, 4, seed=0)
    assert schedule.steps_per_epoch == 3
    epochs = [[x for step in range(1 + 3 * e, 4 + 3 * e) for x in schedule.rows(step)[SPANS]] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]
    again = shuffled_epochs(ONE_PROCESS, {SPANS: list(range(10))}, 4, seed=0)
    assert [x for step in (1, 2, 3) for x in again.rows(step)[SPANS]] == epochs[0]  # seeded


def test_joint_datasets_each_get_their_batches_per_epoch():
    schedule = wrapping_streams(ONE_PROCESS, {SPANS: list(range(10)), "comp": ["a", "b", "c"]}, 4, seed=0)
    steps = [schedule.rows(step) for step in range(1, 7)]  # two epochs of three steps
    assert all(len(rows[SPANS]) == 4 for rows in steps)  # the largest: a full batch every step, wrapping around
    assert [len(rows["comp"]) for rows in steps].count(3) == 2  # the small one: once per epoch
    assert sorted(x for rows in steps[:3] for x in rows["comp"]) == ["a", "b", "c"]


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_training")
    return {"spans": write_jsonl(root / "spans.jsonl", zebra_span_records(24, seed=5)),
            "prefs": write_jsonl(root / "prefs.jsonl", planted_preference_records(16, seed=5)), "root": root}


@pytest.mark.parametrize("selection", ["category=factuality", "categories=[factuality]"])
def test_train_reward_model_from_python_returns_what_it_writes(small_files, selection, capsys):
    from transformers import AutoModelForTokenClassification

    from finegrained.rewards.inference import load_judge
    from finegrained.rewards.train import train_reward_model

    out = small_files["root"] / selection.split("=")[0]
    cfg = compose_checked("train_rm", [selection, f"data.train={small_files['spans']}", f"output_dir={out}",
                                       "train.epochs=1", "train.progress=false", "model.hidden=16", "model.n_layer=1"])
    metrics = train_reward_model(cfg)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "wrote" in capsys.readouterr().err  # progress through the library's log, as on the command line
    joint = selection.startswith("categories")
    accuracy = metrics["factuality/segment_accuracy" if joint else "segment_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    judge = load_judge(out, device="cpu")
    assert judge.kind == ("joint" if joint else "span")
    if not joint:  # a one-category model is a plain HF token classifier
        assert AutoModelForTokenClassification.from_pretrained(out).config.num_labels == 2
