"""eval-rm says when the evaluated file holds the reward model's own training records."""

from __future__ import annotations

import json

from finegrained.commands import eval_rm
from finegrained.rewards.directory import file_sha256, init_reward_model_dir
from finegrained.rewards.evaluate import training_overlap
from finegrained.rewards.inference import METADATA_FILE
from finegrained.models.tiny import train_tokenizer
from finegrained.schema import load_schema


def span_record(i: int, annotator: str = "ann-1") -> dict:
    return {"id": f"r{i}", "prompt": f"facts: Bora has {i} bridges.", "completion": f"Bora has {i} bridges.",
            "spans": [], "annotator": annotator, "meta": {}}  # fmt: skip


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_overlap_with_the_training_file_is_counted_and_reported(tmp_path, capsys):
    schema = load_schema("synthetic_qa")
    tok = train_tokenizer([span_record(i)["completion"] for i in range(20)] * 3, vocab_size=300)
    model = init_reward_model_dir(schema.category("relevance"), tmp_path / "rm", tok, hidden=32, n_layer=1, max_length=64)
    train = write(tmp_path / "train.jsonl", [span_record(i) for i in range(6)])
    metadata = json.loads((model / METADATA_FILE).read_text())
    metadata["data"] = {"train": {"path": str(train), "sha256": file_sha256(train)}}
    (model / METADATA_FILE).write_text(json.dumps(metadata))

    # two records of the training file, annotated again by someone else, and one new record
    mixed = write(tmp_path / "mixed.jsonl", [span_record(1, "ann-2"), span_record(4, "ann-2"), span_record(99)])
    base = [f"model={model}", "schema=synthetic_qa", f"output_dir={tmp_path / 'eval'}"]
    assert eval_rm.main([*base, f"data={mixed}"]) == 0
    captured = capsys.readouterr()
    assert "warning: 2 of 3 records of" in captured.err and "in the model's training data" in captured.err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["records_in_training_data"] == 2

    assert eval_rm.main([*base, f"data={train}"]) == 0  # the training file itself
    assert "warning: 6 of 6 records" in capsys.readouterr().err

    fresh = write(tmp_path / "fresh.jsonl", [span_record(i) for i in range(50, 53)])
    assert eval_rm.main([*base, f"data={fresh}"]) == 0
    assert "warning" not in capsys.readouterr().err

    train.write_text(train.read_text() + json.dumps(span_record(7)) + "\n")  # changed since training
    assert training_overlap(metadata, mixed)[0] == 0
    assert "changed since training" in training_overlap(metadata, mixed)[2][0]
