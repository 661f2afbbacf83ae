"""Reward models: planted rules learned end to end, marker mapping, fixed label ids, batched judging."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finegrained.errors import FinegrainedError
from finegrained.models.tiny import train_tokenizer
from finegrained.commands import eval_rm, train_rm
from finegrained.rewards.directory import init_reward_model_dir
from finegrained.rewards.inference import load_judge
from finegrained.rewards.span_model import (
    IGNORE_INDEX,
    LABEL_CLEAN,
    LABEL_ERROR,
    LABEL_MAP,
    MARKER_TOKEN,
    InputLayout,
    class_weights,
    encode_span_input,
    span_examples_from_records,
    span_metrics,
)
from finegrained.schema import Category, SegmentationConfig, schema_from_dict

WORDS = "the a cat dog bird river stone house green blue small large runs sleeps eats sees near under over".split()


def _sentence(rng: random.Random, word: str | None) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    words.insert(rng.randint(0, len(words)), word or rng.choice(["lion", "tiger", "horse"]))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def zebra_span_records(n: int, seed: int) -> list[dict]:
    """Completions of 2-4 sentences; the planted rule: a sentence containing 'zebra' is an error."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        parts, spans, position = [], [], 0
        for _ in range(rng.randint(2, 4)):
            is_error = rng.random() < 0.3
            sentence = _sentence(rng, "zebra" if is_error else None)
            if parts:
                position += 1  # the joining space
            if is_error:
                spans.append({"start": position, "end": position + len(sentence), "label": "Unverifiable"})
            parts.append(sentence)
            position += len(sentence)
        prompt = "question: which animals? context: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        records.append({"id": f"s{seed}-{i}", "prompt": prompt, "completion": " ".join(parts), "spans": spans})
    return records


def planted_preference_records(n: int, seed: int) -> list[dict]:
    """Planted preference: the answer mentioning 'zebra' is preferred."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        good = " ".join(_sentence(rng, "zebra" if k == 0 else None) for k in range(rng.randint(1, 3)))
        bad = " ".join(_sentence(rng, None) for _ in range(rng.randint(1, 3)))
        records.append({"id": f"p{seed}-{i}", "prompt": "question: which animal?", "chosen": good, "rejected": bad,
                        "category": "completeness"})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def span_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("span_rm")
    train = write_jsonl(root / "train.jsonl", zebra_span_records(240, seed=1))
    held_out = write_jsonl(root / "eval.jsonl", zebra_span_records(80, seed=2))
    out = root / "rm"
    code = train_rm.main([
        "schema=synthetic_qa", "category=factuality", f"data.train={train}", f"data.eval={held_out}",
        f"output_dir={out}", "train.epochs=10", "train.progress=false", "seed=0",
    ])
    assert code == 0
    return {"root": root, "train": train, "eval": held_out, "out": out}


def test_span_model_learns_planted_rule(span_run):
    metrics = json.loads((span_run["out"] / "metrics.json").read_text())
    assert metrics["segment_accuracy"] >= 0.95, metrics
    assert metrics["error_f1"] > metrics["all_error_f1"]
    assert metrics["segment_accuracy"] > metrics["majority_accuracy"]
    for key in ("error_precision", "error_recall", "error_fraction", "n_segments"):
        assert key in metrics


def test_span_output_directory_is_complete(span_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = span_run["out"]
    meta = json.loads((out / "finegrained.json").read_text())
    assert meta["category"] == "factuality" and meta["kind"] == "span" and meta["granularity"] == "sentence"
    assert meta["label_map"] == {"0": "clean", "1": "error"}
    assert meta["marker_token"] == MARKER_TOKEN
    assert len(meta["schema"]["sha256"]) == 64 and len(meta["data"]["train"]["sha256"]) == 64
    assert meta["segmentation"]["sentence"] == "sentencizer"
    assert meta["training"]["train"]["epochs"] == 10
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert list((out / "tb").iterdir()), "tensorboard events expected"
    model = AutoModelForTokenClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "clean", 1: "error"}
    assert tokenizer.convert_tokens_to_ids(MARKER_TOKEN) != tokenizer.unk_token_id


def test_judge_batch_equals_items_alone(span_run):
    judge = load_judge(span_run["out"], device="cpu", batch_size=7)
    assert (judge.category, judge.kind, judge.granularity) == ("factuality", "span", "sentence")
    assert judge.segmentation == SegmentationConfig(split_after=",;:", min_words=3)
    from finegrained.segment import get_segmenter

    records = zebra_span_records(12, seed=5)
    prompts = [r["prompt"] for r in records]
    completions = [r["completion"] for r in records]
    segments = get_segmenter(judge.segmentation).segment(completions, judge.granularity)
    batched = judge(prompts, completions, segments)
    for i in range(len(records)):
        alone = judge([prompts[i]], [completions[i]], [segments[i]])[0]
        assert alone == pytest.approx(batched[i], abs=1e-5)
    # the judge applies the planted rule to fresh text: zebra sentences get p_error > 0.5
    agree = [(p > 0.5) == ("zebra" in c[s:e]) for c, segs, ps in zip(completions, segments, batched)
             for (s, e), p in zip(segs, ps)]
    assert sum(agree) / len(agree) >= 0.9
    assert judge([], [], []) == []


def test_eval_rm_writes_metrics(span_run, capsys):
    out_dir = span_run["root"] / "eval_out"
    assert eval_rm.main([f"model={span_run['out']}", f"data={span_run['eval']}", f"output_dir={out_dir}"]) == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    trained = json.loads((span_run["out"] / "metrics.json").read_text())
    assert metrics["segment_accuracy"] == pytest.approx(trained["segment_accuracy"])
    assert metrics["n_segments"] == trained["n_segments"]
    assert "segment_accuracy" in capsys.readouterr().out


def test_refuses_to_overwrite_finished_dir(span_run):
    args = ["schema=synthetic_qa", "category=factuality", f"data.train={span_run['train']}",
            f"output_dir={span_run['out']}", "train.progress=false"]
    with pytest.raises(FinegrainedError, match="overwrite=true"):
        train_rm.main(args)
    assert (span_run["out"] / "finegrained.json").is_file()


def test_preference_model_learns_planted_preference(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", planted_preference_records(160, seed=1))
    held_out = write_jsonl(tmp_path / "eval.jsonl", planted_preference_records(60, seed=2))
    out = tmp_path / "rm"
    assert train_rm.main([
        "category=completeness", f"data.train={train}", f"data.eval={held_out}", f"output_dir={out}",
        "train.epochs=6", "train.progress=false",
    ]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairwise_accuracy"] >= 0.9, metrics
    assert metrics["n_pairs"] == 60
    meta = json.loads((out / "finegrained.json").read_text())
    assert meta["kind"] == "preference" and meta["label_map"] is None
    judge = load_judge(out, device="cpu")
    # normalisation = mean/std of the saved model's scores over the unique training outputs
    records = planted_preference_records(160, seed=1)
    unique = sorted({(r["prompt"], t) for r in records for t in (r["chosen"], r["rejected"])})
    scores = torch.tensor(judge([u[0] for u in unique], [u[1] for u in unique]), dtype=torch.float64)
    assert judge.normalisation["mean"] == pytest.approx(float(scores.mean()), abs=1e-4)
    assert judge.normalisation["std"] == pytest.approx(float(scores.std(unbiased=False)), abs=1e-4)
    one = judge(["question: which animal?"], ["The zebra runs."])
    assert isinstance(one, list) and len(one) == 1


# --------------------------------------------------------------------------------------------------
# Encoding


@pytest.fixture(scope="module")
def bpe_tokenizer():
    rng = random.Random(0)
    texts = [" ".join(_sentence(rng, None) for _ in range(3)) for _ in range(200)]
    texts += ["Zürich ünïcödé — ok? ✓ 東京 done!"] * 5
    return train_tokenizer(texts, vocab_size=400, extra_special_tokens=[MARKER_TOKEN])


_text = st.text(alphabet=st.sampled_from(list("ab cde,.!ü東 \n")), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(prompt=_text, completion=_text, cuts=st.lists(st.integers(0, 60), max_size=6), max_length=st.integers(4, 40),
       use_prompt=st.booleans())
def test_markers_map_back_to_segments_under_truncation(bpe_tokenizer, prompt, completion, cuts, max_length, use_prompt):
    tok = bpe_tokenizer
    bounds = sorted({min(c, len(completion)) for c in cuts} | {len(completion)})
    segments, start = [], 0
    for end in bounds:
        if end > start:
            segments.append((start, end))
            start = end
    marker = tok.convert_tokens_to_ids(MARKER_TOKEN)
    layout = InputLayout.for_tokenizer(tok)
    windows = encode_span_input(tok, layout, marker, prompt if use_prompt else None, completion, segments,
                                max_length, n_types=8)
    covered = [i for w in windows for i in w.segment_indices]
    assert covered == list(range(len(segments))), "every segment gets exactly one marker, in order"
    full_prompt = tok(prompt, add_special_tokens=False, split_special_tokens=True).input_ids
    for w in windows:
        assert len(w.input_ids) <= max_length
        assert [w.input_ids[p] for p in w.marker_positions] == [marker] * len(w.marker_positions)
        assert w.input_ids.count(marker) == len(w.marker_positions)
        assert len(w.token_type_ids) == len(w.input_ids)
    for w in windows:
        if not w.whole_completion:
            # split windows: the tokens before each marker decode to the end of the segment's own text
            previous = len(layout.prefix) - 1
            for position, index in zip(w.marker_positions, w.segment_indices):
                piece = completion[segments[index - 1][1] if index else 0 : segments[index][1]]
                # (a cut through a multi-byte character decodes to U+FFFD at the very start)
                assert piece.endswith(tok.decode(w.input_ids[previous + 1 : position]).lstrip("\ufffd"))
                previous = position
    if windows and windows[0].whole_completion:
        (w,) = windows
        # the prompt keeps its beginning
        kept = w.input_ids[len(layout.prefix): len(layout.prefix) + w.prompt_tokens_kept]
        assert kept == full_prompt[: w.prompt_tokens_kept]
        # the text between consecutive markers decodes to exactly the segment piece it ends
        previous_marker, previous_end = None, 0
        first_piece_start = len(layout.prefix) + w.prompt_tokens_kept + (len(layout.separator) if use_prompt else 0)
        for position, (s, e) in zip(w.marker_positions, segments):
            lo = first_piece_start if previous_marker is None else previous_marker + 1
            assert tok.decode(w.input_ids[lo:position]) == completion[previous_end:e]
            previous_marker, previous_end = position, e


def test_literal_marker_text_in_completion_is_not_a_marker(bpe_tokenizer):
    tok = bpe_tokenizer
    marker = tok.convert_tokens_to_ids(MARKER_TOKEN)
    completion = f"a {MARKER_TOKEN} b. c."
    (window,) = encode_span_input(tok, InputLayout.for_tokenizer(tok), marker, None, completion, [(0, 10), (11, 13)], 64)
    assert window.input_ids.count(marker) == 2


def test_label_ids_do_not_depend_on_label_names():
    segmentation = SegmentationConfig()

    def labels_for(error_type: str, category_name: str) -> list[int]:
        schema = schema_from_dict({"name": "s", "categories": [
            {"name": category_name, "granularity": "sentence", "kind": "span", "error_types": [error_type]}]})
        record = type("R", (), {})()
        record.id, record.prompt, record.completion = "r", "p", "Fine here. Bad one here. Fine again."
        record.spans = [{"start": 11, "end": 24, "label": error_type}]
        (example,) = span_examples_from_records([record], schema.categories[0], segmentation)
        return example.labels

    # names sorting before and after "clean"/"error"/each other give identical ids
    assert labels_for("Aardvark", "zzz") == labels_for("Zzz", "aaa") == [LABEL_CLEAN, LABEL_ERROR, LABEL_CLEAN]
    assert (LABEL_CLEAN, LABEL_ERROR, IGNORE_INDEX) == (0, 1, -100)
    assert LABEL_MAP == {"0": "clean", "1": "error"}


def test_span_metrics_and_class_weights_by_hand():
    m = span_metrics([1, 0, 0, 1, 0], [1, 1, 0, 0, 0])
    assert m["segment_accuracy"] == pytest.approx(3 / 5)
    assert m["error_precision"] == pytest.approx(0.5) and m["error_recall"] == pytest.approx(0.5)
    assert m["majority_accuracy"] == pytest.approx(3 / 5)
    assert m["all_error_f1"] == pytest.approx(2 * 0.4 / 1.4)
    assert class_weights(0.25).tolist() == pytest.approx([1.0, 3.0])
    assert class_weights(0.8).tolist() == pytest.approx([4.0, 1.0])
    assert class_weights(0.0).tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------------------------------
# Backbones via from_pretrained, and untrained directories


def _tiny_pretrained_dirs(tmp_path: Path, texts: list[str]) -> tuple[Path, Path]:
    from transformers import BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    from finegrained.models.tiny import tiny_encoder_config

    tokenizer = train_tokenizer(texts, vocab_size=300)
    encoder_dir, decoder_dir = tmp_path / "bert", tmp_path / "gpt2"
    BertForMaskedLM(tiny_encoder_config(tokenizer, num_labels=2, hidden=32, n_layer=1)).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).save_pretrained(decoder_dir)
    decoder_tokenizer = train_tokenizer(texts, vocab_size=300)
    decoder_tokenizer.pad_token = None  # like GPT-2: no pad token, the loader must pad with EOS
    decoder_tokenizer.save_pretrained(decoder_dir)
    return encoder_dir, decoder_dir


@pytest.mark.parametrize("backbone", ["bert", "gpt2"])
def test_pretrained_backbones_from_local_dirs(tmp_path, backbone):
    records = zebra_span_records(24, seed=3)
    pairs = planted_preference_records(16, seed=3)
    encoder_dir, decoder_dir = _tiny_pretrained_dirs(tmp_path, [r["completion"] for r in records])
    path = encoder_dir if backbone == "bert" else decoder_dir
    spans = write_jsonl(tmp_path / "spans.jsonl", records)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    for category, data in (("factuality", spans), ("completeness", prefs)):
        out = tmp_path / f"rm-{category}"
        args = [f"category={category}", f"data.train={data}", "model=pretrained", f"model.name_or_path={path}",
                f"output_dir={out}", "train.epochs=1", "train.progress=false", "max_length=128"]
        assert train_rm.main(args) == 0
        judge = load_judge(out, device="cpu")
        if judge.kind == "span":
            out_probs = judge(["p", "q"], ["One two three. Four five six.", ""], [[(0, 14), (15, 29)], []])
            assert len(out_probs[0]) == 2 and out_probs[1] == []
        else:
            assert len(judge(["p", "q"], ["a b c", "d e"])) == 2


def test_init_reward_model_dir_is_loadable(tmp_path, bpe_tokenizer):
    span_category = Category("relevance", "sub_sentence", "span", ("Irrelevant",), uses_context=False)
    pref_category = Category("completeness", "sequence", "preference")
    span_dir = init_reward_model_dir(span_category, tmp_path / "span", bpe_tokenizer, hidden=32, n_layer=1)
    pref_dir = init_reward_model_dir(pref_category, tmp_path / "pref", bpe_tokenizer, hidden=32, n_layer=1)
    span_judge, pref_judge = load_judge(span_dir, device="cpu"), load_judge(pref_dir, device="cpu")
    probs = span_judge(["x"], ["Cat runs. Dog sleeps."], [[(0, 9), (10, 21)]])
    assert len(probs[0]) == 2 and all(0.0 <= p <= 1.0 for p in probs[0])
    assert pref_judge.normalisation == {"mean": 0.0, "std": 1.0}
    with pytest.raises(FinegrainedError):
        init_reward_model_dir(pref_category, pref_dir, bpe_tokenizer)


def test_user_errors_are_clear(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", zebra_span_records(3, seed=0))
    with pytest.raises(FinegrainedError, match="no category"):
        train_rm.main(["category=nope", f"data.train={data}", f"output_dir={tmp_path / 'o'}"])
    with pytest.raises(FinegrainedError, match="no such file"):
        train_rm.main(["category=factuality", f"data.train={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path / 'o'}"])
    with pytest.raises(FinegrainedError, match="not a reward-model directory"):
        eval_rm.main([f"model={tmp_path}", f"data={data}"])


def test_periodic_evaluation_keeps_a_checkpoint_and_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = write_jsonl(tmp_path / "train.jsonl", zebra_span_records(48, seed=7))
    out = tmp_path / "rm"
    assert train_rm.main([
        "category=factuality", f"data.train={train}", "data.eval_fraction=0.25", f"output_dir={out}",
        "train.epochs=2", "train.batch_size=8", "train.eval_every=2", "train.best_metric=error_f1",
        "train.progress=false",
    ]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "held out 12 of data.train" and 1 <= metrics["step"] <= 10
    events = EventAccumulator(str(out / "tb")).Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "eval/error_f1" in tags and "final/segment_accuracy" in tags
    with pytest.raises(FinegrainedError, match="best_metric"):
        train_rm.main(["category=factuality", f"data.train={train}", f"output_dir={tmp_path / 'x'}",
                       "train.best_metric=loss", "train.progress=false"])


@pytest.mark.parametrize("trainer", ["one-category", "joint"])
def test_training_labels_of_one_class_warn_loudly(tmp_path, capsys, trainer):
    records = [dict(r, spans=[]) for r in zebra_span_records(12, seed=3)]  # annotated, and not one error
    data = write_jsonl(tmp_path / "clean.jsonl", records)
    which = ["category=factuality"] if trainer == "one-category" else ["categories=[relevance,factuality]"]
    assert train_rm.main([*which, "schema=synthetic_qa", f"data.train={data}", "data.eval=null", "train.epochs=1",
                          f"output_dir={tmp_path / 'rm'}"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "WARNING: train-rm factuality" in err and "no error segment" in err
