"""Prompts from the user's own files: task=jsonl, task=hf_dataset, and a prompts function; one checker."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from finegrained.config import compose
from finegrained.errors import FinegrainedError, InputError
from finegrained.prompts import load_prompts


def jsonl_task(train=None, eval=None):
    return compose("ppo", ["task=jsonl", *([f"task.train={train}"] if train else []),
                           *([f"task.eval={eval}"] if eval else [])]).task  # fmt: skip


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_task_reads_train_and_eval_files(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [{"id": "a", "prompt": "first"}, {"prompt": "second", "reference": "r"}])
    held = write_lines(tmp_path / "held.jsonl", [{"id": 7, "prompt": "held out"}])
    task = jsonl_task(train, held)
    records = load_prompts(task, "train")
    assert [(r["id"], r["prompt"]) for r in records] == [("a", "first"), ("p2", "second")]
    assert "reference" not in records[0] and records[1]["reference"] == "r"
    assert [(r["id"], r["prompt"]) for r in load_prompts(task, "test")] == [("7", "held out")]
    assert len(load_prompts(task, "train", n=1)) == 1
    with pytest.raises(FinegrainedError, match=r"task=jsonl: set task.eval="):
        load_prompts(jsonl_task(train), "eval")


@pytest.mark.parametrize("rows, expected", [
    ([{"prompt": "x"}, {"prompt": 3}], r"p.jsonl:2: prompt: must be a string"),
    ([{"prompt": "   "}], r"p.jsonl:1: prompt: is blank"),
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], r"p.jsonl:2: id: duplicate id 'a' \(first used on line 1\)"),
    ([{"prompt": "x", "reference": 5}], r"p.jsonl:1: reference: must be a string when given"),
    ([{"id": [1], "prompt": "x"}], r"p.jsonl:1: id: must be a string or an integer"),
    (["{oops"], r"p.jsonl:1: not valid JSON"),
])  # fmt: skip
def test_jsonl_problems_name_file_line_and_field(tmp_path, rows, expected):
    task = jsonl_task(write_lines(tmp_path / "p.jsonl", rows))
    with pytest.raises(InputError, match=expected):
        load_prompts(task, "train")


def test_missing_and_empty_files_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        load_prompts(jsonl_task(tmp_path / "nope.jsonl"), "train")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="empty.jsonl: empty file"):
        load_prompts(jsonl_task(tmp_path / "empty.jsonl"), "train")


def hf_task(*overrides):
    return compose("evaluate", ["task=hf_dataset", *overrides]).task


def test_dataset_saved_to_disk_with_a_column_mapping(tmp_path):
    import datasets

    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["q1", "q2", "q3"], "answer": ["a1", "a2", "a3"], "key": ["k1", "k2", "k3"]}),
        "test": datasets.Dataset.from_dict({"question": ["t1"], "answer": ["b1"], "key": ["t"]}),
    })  # fmt: skip
    splits.save_to_disk(str(tmp_path / "ds"))
    task = hf_task(f"task.path={tmp_path / 'ds'}", "task.columns.prompt=question", "task.columns.id=key",
                   "task.columns.reference=answer")  # fmt: skip
    train = load_prompts(task, "train")
    assert [(r["id"], r["prompt"], r["reference"]) for r in train] == [("k1", "q1", "a1"), ("k2", "q2", "a2"), ("k3", "q3", "a3")]
    assert [r["prompt"] for r in load_prompts(task, "test")] == ["t1"]
    assert len(load_prompts(task, "train", n=2)) == 2
    with pytest.raises(FinegrainedError, match=r"no such column \(task.columns.prompt='prompt'\); its columns: question"):
        load_prompts(hf_task(f"task.path={tmp_path / 'ds'}"), "train")
    with pytest.raises(FinegrainedError, match=r"no split 'validation' \(its splits: train, test\)"):
        load_prompts(hf_task(f"task.path={tmp_path / 'ds'}", "task.columns.prompt=question", "task.eval_split=validation"), "test")
    # one Dataset (no splits) serves every split; its rows are checked like file lines
    datasets.Dataset.from_dict({"prompt": ["ok", ""]}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(InputError, match=r"one:2: prompt: is blank"):
        load_prompts(hf_task(f"task.path={tmp_path / 'one'}"), "train")


def test_local_json_and_csv_files_through_load_dataset(tmp_path):
    write_lines(tmp_path / "a.jsonl", [{"text": "from json 1"}, {"text": "from json 2"}])
    write_lines(tmp_path / "b.jsonl", [{"text": "held out json"}])
    task = hf_task("task.path=json", f"task.data_files={{train: {tmp_path / 'a.jsonl'}, test: {tmp_path / 'b.jsonl'}}}",
                   "task.columns.prompt=text")  # fmt: skip
    assert [r["prompt"] for r in load_prompts(task, "train")] == ["from json 1", "from json 2"]
    assert [r["prompt"] for r in load_prompts(task, "eval")] == ["held out json"]
    (tmp_path / "p.csv").write_text("prompt,reference\nfirst csv,r1\nsecond csv,r2\n")
    csv = load_prompts(hf_task(f"task.path={tmp_path / 'p.csv'}", "task.columns.reference=reference"), "train")
    assert [(r["id"], r["prompt"], r["reference"]) for r in csv] == [("p1", "first csv", "r1"), ("p2", "second csv", "r2")]
    with pytest.raises(FinegrainedError, match="no such directory"):
        load_prompts(hf_task(f"task.path={tmp_path / 'missing' / 'ds'}"), "train")


def my_prompts(split):
    return [{"prompt": f"{split} prompt {i}"} for i in range(5)]


def test_a_prompts_function_gets_only_the_arguments_it_takes():
    task = OmegaConf.create({"prompts": {"_target_": f"{__name__}.my_prompts"}})
    records = load_prompts(task, "train", n=3, seed=4)  # my_prompts takes neither n nor seed
    assert [r["prompt"] for r in records] == ["train prompt 0", "train prompt 1", "train prompt 2"]
    builtin = load_prompts(compose("ppo", []).task, "train", n=4, seed=0)
    assert len(builtin) == 4 and all(r["prompt"].startswith("facts:") and r["reference"] for r in builtin)
    with pytest.raises(FinegrainedError, match="cannot import"):
        load_prompts(OmegaConf.create({"prompts": {"_target_": "no.such.module.fn"}}), "train")
