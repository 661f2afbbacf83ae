"""Reward models of several categories on one shared backbone (``train-rm categories=[...]``).

Planted rules, one per category, learned together: a sentence naming a zebra is a factuality error, a
clause ", said the old owl" is a relevance error (a sub-sentence), and an answer naming a zebra is the
more complete one. The joint model must judge all three in one forward pass and agree with itself
whether called per category, per item or through the scorer.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finegrained.errors import FinegrainedError
from finegrained.models.tiny import train_tokenizer
from finegrained.commands import eval_rm, train_rm
from finegrained.rewards.inference import load_judge
from finegrained.rewards.joint_model import (
    HEADS_FILE,
    JointCategoryJudge,
    JointJudge,
    encode_joint_input,
    load_joint_model,
    union_segments,
)
from finegrained.rewards.preference_model import bradley_terry_loss
from finegrained.rewards.scorer import RewardScorer
from finegrained.rewards.span_model import IGNORE_INDEX, MARKER_TOKEN, InputLayout, span_loss
from finegrained.rewards.training import endless_batches, heads_loss, in_step
from finegrained.schema import SegmentationConfig
from finegrained.segment import get_segmenter
from test_reward_models import _sentence, _tiny_pretrained_dirs, planted_preference_records, write_jsonl

CATEGORIES = ["relevance", "factuality", "completeness"]


def flat(rows: list[list[float]]) -> list[float]:
    """Nested judgements as one list (pytest.approx compares flat sequences), lengths checked apart."""
    return [x for row in rows for x in row]
OWL = ", said the old owl"


def planted_span_records(n: int, seed: int) -> list[dict]:
    """2-4 sentences; zebra sentences are factuality errors, the owl clause a relevance error."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        parts, spans, position = [], [], 0
        for _ in range(rng.randint(2, 4)):
            zebra, owl = rng.random() < 0.3, rng.random() < 0.3
            sentence = _sentence(rng, "zebra" if zebra else None)
            if owl:
                sentence = sentence[:-1] + OWL + "."
            if parts:
                position += 1
            if zebra:
                spans.append({"start": position, "end": position + len(sentence), "label": "Unverifiable"})
            if owl:
                start = position + sentence.index(OWL) + 2
                spans.append({"start": start, "end": position + len(sentence) - 1, "label": "Irrelevant"})
            parts.append(sentence)
            position += len(sentence)
        records.append({"id": f"j{seed}-{i}", "prompt": "question: which animals?", "completion": " ".join(parts), "spans": spans})
    return records


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint_rm")
    files = {
        "train": write_jsonl(root / "spans.jsonl", planted_span_records(200, seed=1)),
        "eval": write_jsonl(root / "spans_eval.jsonl", planted_span_records(60, seed=2)),
        "preferences": write_jsonl(root / "prefs.jsonl", planted_preference_records(120, seed=1)),
        "eval_preferences": write_jsonl(root / "prefs_eval.jsonl", planted_preference_records(60, seed=2)),
    }
    out = root / "joint"
    assert train_rm.main([
        f"categories=[{','.join(CATEGORIES)}]", *[f"data.{k}={v}" for k, v in files.items()], f"output_dir={out}",
        "train.epochs=20", "train.progress=false", "seed=0",
    ]) == 0  # fmt: skip
    return {"root": root, "out": out, **files}


def test_every_category_learns_its_planted_rule(joint_run):
    metrics = json.loads((joint_run["out"] / "metrics.json").read_text())
    for category in ("relevance", "factuality"):
        assert metrics[f"{category}/segment_accuracy"] >= 0.9, metrics
        assert metrics[f"{category}/segment_accuracy"] > metrics[f"{category}/majority_accuracy"], metrics
        assert metrics[f"{category}/error_f1"] > metrics[f"{category}/all_error_f1"], metrics
    assert metrics["completeness/pairwise_accuracy"] >= 0.9, metrics
    assert metrics["completeness/n_pairs"] == 60
    # relevance is judged per clause, factuality per sentence: different segment counts on the same texts
    assert metrics["relevance/n_segments"] > metrics["factuality/n_segments"]


def test_directory_is_safetensors_with_one_entry_per_category(joint_run):
    out = joint_run["out"]
    meta = json.loads((out / "finegrained.json").read_text())
    assert meta["kind"] == "joint" and list(meta["categories"]) == CATEGORIES
    assert meta["categories"]["relevance"]["granularity"] == "sub_sentence"
    assert meta["categories"]["factuality"]["granularity"] == "sentence"
    assert meta["marker_token"] == MARKER_TOKEN
    assert (out / "model.safetensors").is_file() and (out / HEADS_FILE).is_file() and not list(out.glob("*.bin"))
    assert list((out / "tb").iterdir())
    judge = load_judge(out, device="cpu")
    assert isinstance(judge, JointJudge)
    # the preference head's normalisation: mean/std of its scores over the unique training outputs
    pairs = planted_preference_records(120, seed=1)
    unique = sorted({(p["prompt"], t) for p in pairs for t in (p["chosen"], p["rejected"])})
    scores = torch.tensor(judge.view("completeness")([u[0] for u in unique], [u[1] for u in unique]), dtype=torch.float64)
    saved = meta["categories"]["completeness"]["normalisation"]
    assert saved["std"] > 0
    # training held out 0 pairs here (data.eval_preferences given), so every training pair counts
    assert saved["mean"] == pytest.approx(float(scores.mean()), abs=1e-4)
    assert saved["std"] == pytest.approx(float(scores.std(unbiased=False)), abs=1e-4)


def test_reload_gives_identical_outputs(joint_run):
    meta = json.loads((joint_run["out"] / "finegrained.json").read_text())
    first, second = load_joint_model(joint_run["out"], meta).eval(), load_joint_model(joint_run["out"], meta).eval()
    ids = torch.randint(5, 100, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = first(input_ids=ids, attention_mask=mask), second(input_ids=ids, attention_mask=mask)
    assert set(a) == set(CATEGORIES)
    assert a["relevance"].shape == (2, 12, 2) and a["completeness"].shape == (2,)
    for name in CATEGORIES:
        assert torch.equal(a[name], b[name])


def test_one_call_judges_every_category_and_matches_items_alone(joint_run):
    judge = load_judge(joint_run["out"], device="cpu", batch_size=5)
    records = planted_span_records(11, seed=7)
    prompts, completions = [r["prompt"] for r in records], [r["completion"] for r in records]
    calls = []
    handle = judge.model.register_forward_pre_hook(lambda *_: calls.append(1))
    together = judge.score(prompts, completions)
    handle.remove()
    assert len(calls) == 3  # 11 inputs, batches of 5: one pass per batch for all three categories
    segmenter = get_segmenter(judge.segmentation)
    for name, granularity in (("relevance", "sub_sentence"), ("factuality", "sentence")):
        segments = segmenter.segment(completions, granularity)
        assert [len(p) for p in together[name]] == [len(s) for s in segments]
        assert flat(judge.view(name)(prompts, completions, segments)) == pytest.approx(flat(together[name]), abs=1e-6)
        for i in range(len(records)):
            assert judge.score([prompts[i]], [completions[i]])[name][0] == pytest.approx(together[name][i], abs=1e-5)
        # the planted rules on fresh text
        if name == "factuality":
            agree = [(p > 0.5) == ("zebra" in c[s:e].lower()) for c, segs, ps in zip(completions, segments, together[name])
                     for (s, e), p in zip(segs, ps)]  # fmt: skip
            assert sum(agree) / len(agree) >= 0.9
    assert judge.view("completeness")(prompts, completions) == pytest.approx(together["completeness"], abs=1e-6)
    assert judge.score([], []) == {"relevance": [], "factuality": [], "completeness": []}
    blank = judge.score(["q"], [""])
    assert blank["relevance"] == [[]] and blank["factuality"] == [[]] and len(blank["completeness"]) == 1


def test_scorer_loads_a_joint_model_once_and_calls_it_once(joint_run):
    cfg = {"span_mode": "hard", "categories": {n: {"model": str(joint_run["out"]), "weight": w}
                                               for n, w in zip(CATEGORIES, (0.3, 0.5, 0.3))}}  # fmt: skip
    scorer = RewardScorer.from_config(cfg, device="cpu")
    judges = [c.judge for c in scorer.categories]
    assert all(isinstance(j, JointCategoryJudge) for j in judges)
    assert judges[0].parent is judges[1].parent is judges[2].parent
    calls = []
    judges[0].model.register_forward_pre_hook(lambda *_: calls.append(1))
    texts = ["The zebra runs near the house, said the old owl. A cat sleeps.", "A dog eats.", ""]
    breakdown = scorer(["q"] * 3, texts)
    assert len(calls) == 1
    parent = judges[0].parent
    direct = parent.score(["q"] * 3, texts)
    for name in ("relevance", "factuality"):
        assert [len(r) for r in breakdown.categories[name].p_error] == [len(r) for r in direct[name]]
        assert flat(breakdown.categories[name].p_error) == pytest.approx(flat(direct[name]), abs=1e-6)
    completeness = breakdown.categories["completeness"]
    norm = parent.categories["completeness"]["normalisation"]
    assert completeness.rewards[0][0] == pytest.approx(0.3 * (direct["completeness"][0] - norm["mean"]) / norm["std"], abs=1e-5)
    bad = {"categories": {"holistic": {"model": str(joint_run["out"])}}}
    with pytest.raises(FinegrainedError, match="no category 'holistic'"):
        RewardScorer.from_config(bad, device="cpu")


def test_eval_rm_scores_every_category_in_the_file(joint_run, capsys):
    out = joint_run["root"] / "eval-spans"
    assert eval_rm.main([f"model={joint_run['out']}", f"data={joint_run['eval']}", f"output_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((joint_run["out"] / "metrics.json").read_text())
    for key in ("relevance/segment_accuracy", "factuality/segment_accuracy", "factuality/n_segments"):
        assert metrics[key] == pytest.approx(trained[key])
    assert not any(k.startswith("completeness/") for k in metrics)
    out = joint_run["root"] / "eval-prefs"
    assert eval_rm.main([f"model={joint_run['out']}", f"data={joint_run['eval_preferences']}", f"output_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completeness/pairwise_accuracy"] == pytest.approx(trained["completeness/pairwise_accuracy"])
    assert "completeness/pairwise_accuracy" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Pure pieces against plain loops


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 40), max_size=6), min_size=1, max_size=3))
def test_union_segments_against_a_loop(ends_per_granularity):
    per_granularity = {}
    for g, ends in enumerate(ends_per_granularity):
        ends = sorted(set(ends))
        per_granularity[f"g{g}"] = list(zip([0, *ends[:-1]], ends))
    union, index = union_segments(per_granularity, completion_length=50)
    expected_ends = sorted({e for segs in per_granularity.values() for _, e in segs}) or [50]
    assert [e for _, e in union] == expected_ends
    assert all(union[k][0] == (union[k - 1][1] if k else 0) for k in range(len(union)))
    for g, segs in per_granularity.items():
        for j, (_, end) in enumerate(segs):
            assert union[index[g][j]][1] == end


def test_markers_follow_every_granularitys_segment_ends():
    texts = [" ".join(_sentence(random.Random(i), None) for _ in range(3)) for i in range(100)]
    tokenizer = train_tokenizer(texts + [OWL] * 20, vocab_size=400, extra_special_tokens=[MARKER_TOKEN])
    marker = tokenizer.convert_tokens_to_ids(MARKER_TOKEN)
    completion = "The cat runs near the house, said the old owl. A dog sleeps under a stone, near the river."
    segmenter = get_segmenter(SegmentationConfig(split_after=",;:", min_words=3))  # the synthetic_qa schema's
    per_granularity = {g: segmenter.segment([completion], g)[0] for g in ("sub_sentence", "sentence")}
    assert len(per_granularity["sub_sentence"]) > len(per_granularity["sentence"])
    windows, index = encode_joint_input(tokenizer, InputLayout.for_tokenizer(tokenizer), marker, "q", completion,
                                        per_granularity, max_length=128)  # fmt: skip
    (window,) = windows
    start = window.input_ids.index(tokenizer.eos_token_id) + 1  # after "prompt <eos>"
    for granularity, segments in per_granularity.items():
        for j, (_, end) in enumerate(segments):
            position = window.marker_positions[window.segment_indices.index(index[granularity][j])]
            before = [t for t in window.input_ids[start:position] if t != marker]
            assert tokenizer.decode(before) == completion[:end]


def test_joint_loss_is_the_sum_of_each_categorys_loss():
    torch.manual_seed(0)
    B, L = 4, 6
    outputs = {"a": torch.randn(B, L, 2, requires_grad=True), "b": torch.randn(B, L, 2, requires_grad=True),
               "p": torch.randn(B, requires_grad=True)}  # fmt: skip
    labels_a = torch.full((B, L), IGNORE_INDEX)
    labels_a[0, 2], labels_a[1, 5], labels_a[1, 1] = 1, 0, 1
    labels_b = torch.full((B, L), IGNORE_INDEX)  # no labelled marker of b in this batch
    weights = {"a": torch.tensor([1.0, 3.0]), "b": None}
    pair_rows = {"p": (torch.tensor([2]), torch.tensor([3]))}
    loss, parts = heads_loss(outputs, {"a": labels_a, "b": labels_b}, pair_rows, weights)
    # reference: weighted mean cross-entropy over labelled positions, by hand
    log_probs = torch.log_softmax(outputs["a"], dim=-1)
    terms = [(weights["a"][y] * -log_probs[i, t, y], weights["a"][y]) for (i, t), y in (((0, 2), 1), ((1, 5), 0), ((1, 1), 1))]
    expected_a = sum(t for t, _ in terms) / sum(w for _, w in terms)
    expected_p = -torch.nn.functional.logsigmoid(outputs["p"][2] - outputs["p"][3])
    assert loss.item() == pytest.approx((expected_a + expected_p).item(), rel=1e-5)
    assert parts["a"] == pytest.approx(span_loss(outputs["a"], labels_a, weights["a"]).item())
    assert parts["p"] == pytest.approx(bradley_terry_loss(outputs["p"][2:3], outputs["p"][3:4]).item())
    assert "b" not in parts
    loss.backward()
    assert outputs["b"].grad is not None and not outputs["b"].grad.any()  # in the graph, zero gradient


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.data())
def test_each_dataset_gets_its_batches_spread_over_the_epoch(steps_per_epoch, data):
    n_batches = data.draw(st.integers(1, steps_per_epoch))
    steps = [k for k in range(steps_per_epoch) if in_step(k, n_batches, steps_per_epoch)]
    assert len(steps) == n_batches  # exactly one pass per epoch
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spread, no bunching at the start
    assert all(in_step(k, steps_per_epoch, steps_per_epoch) for k in range(steps_per_epoch))  # the largest: every step


def test_a_category_without_data_in_the_step_adds_nothing_but_stays_in_the_graph():
    scores = torch.randn(4, requires_grad=True)
    logits = torch.randn(4, 3, 2, requires_grad=True)
    labels = torch.full((4, 3), IGNORE_INDEX)
    labels[0, 1] = 1
    empty = torch.zeros(0, dtype=torch.long)
    loss, parts = heads_loss({"a": logits, "p": scores}, {"a": labels}, {"p": (empty, empty)}, {"a": None})
    assert loss.item() == pytest.approx(span_loss(logits, labels).item()) and set(parts) == {"a"}
    loss.backward()
    assert scores.grad is not None and not scores.grad.any()


def test_endless_batches_cover_every_item_once_per_pass():
    stream = endless_batches(list(range(10)), 4, random.Random(0))
    seen = [x for _ in range(5) for x in next(stream)]  # 20 items: exactly two passes
    assert sorted(seen) == sorted(list(range(10)) * 2)
    assert next(endless_batches([1, 2], 16, random.Random(0))) in ([1, 2], [2, 1])


# --------------------------------------------------------------------------------------------------
# Backbones and errors


def test_decoder_backbone_from_a_local_dir(tmp_path):
    records = planted_span_records(24, seed=3)
    _, decoder_dir = _tiny_pretrained_dirs(tmp_path, [r["completion"] for r in records])
    spans = write_jsonl(tmp_path / "spans.jsonl", records)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", planted_preference_records(16, seed=3))
    out = tmp_path / "joint"
    assert train_rm.main([
        "categories=[relevance,factuality,completeness]", f"data.train={spans}", f"data.preferences={prefs}",
        "model=pretrained", f"model.name_or_path={decoder_dir}", f"output_dir={out}", "train.epochs=1",
        "train.progress=false", "max_length=128",
    ]) == 0  # fmt: skip
    judge = load_judge(out, device="cpu")
    assert type(judge.model.backbone).__name__ == "GPT2Model"
    scored = judge.score(["p", "q"], ["One two three, four five six. Seven eight nine.", ""])
    assert len(scored["factuality"][0]) == 2 and len(scored["relevance"][0]) == 3 and len(scored["completeness"]) == 2


def test_user_errors_are_clear(tmp_path):
    spans = write_jsonl(tmp_path / "spans.jsonl", planted_span_records(4, seed=0))
    base = [f"data.train={spans}", f"output_dir={tmp_path / 'out'}", "train.progress=false"]
    cases = [
        (["category=factuality", "categories=[factuality,relevance]"], "not both"),
        (["categories=[factuality,completeness]"], "data.preferences"),
        (["categories=[factuality,nonsense]"], "nonsense"),
        (["categories=[factuality,factuality]"], "twice"),
        (["categories=[factuality]", "train.best_metric=relevance/error_f1"], "train.best_metric"),
        (["categories=[factuality,completeness]", f"data.preferences={tmp_path / 'missing.jsonl'}"], "no such file"),
    ]
    for extra, message in cases:
        with pytest.raises(FinegrainedError, match=message):
            train_rm.main([*base, *extra])
    assert not (tmp_path / "out").exists()
    with pytest.raises(FinegrainedError, match="joint reward model"):
        load_joint_model(tmp_path, {"categories": {"a": {"kind": "span"}}})


@pytest.mark.slow
@pytest.mark.parametrize("categories", [["factuality"], CATEGORIES], ids=["one-category", "joint"])
def test_two_processes_train_and_one_writes_the_directory(tmp_path, categories):
    spans = write_jsonl(tmp_path / "spans.jsonl", planted_span_records(40, seed=4))
    prefs = write_jsonl(tmp_path / "prefs.jsonl", planted_preference_records(24, seed=4))
    out = tmp_path / "out" / "rm"
    which = f"category={categories[0]}" if len(categories) == 1 else f"categories=[{','.join(categories)}]"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "finegrained.cli", "train-rm", which,
         f"data.train={spans}", f"data.preferences={prefs}", f"output_dir={out}", "train.epochs=1",
         "train.progress=false", "device=cpu"],  # fmt: skip
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(f"wrote {out}") == 1  # the main process writes, the other only trains
    assert [p.name for p in out.parent.iterdir()] == ["rm"]  # no temporary directory left behind
    judge = load_judge(out, device="cpu")
    assert set(judge.categories if isinstance(judge, JointJudge) else [judge.category]) == set(categories)
