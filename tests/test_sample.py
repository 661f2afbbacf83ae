"""``finegrained sample``: a tiny local policy writes records the annotation app accepts."""

from __future__ import annotations

import json

import pytest

from finegrained.commands import sample
from finegrained.app.store import load_items
from finegrained.errors import FinegrainedError, InputError
from finegrained.schema import load_schema




def test_sample_writes_annotation_ready_records(policy_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q1", "prompt": "facts: Bora is a town."}\n{"prompt": "question: what is Bora?"}\n')
    out = tmp_path / "completions.jsonl"
    argv = ["--policy", str(policy_dir), "--prompts", str(prompts), "--output", str(out), "--n-per-prompt", "2",
            "--max-new-tokens", "5", "--batch-size", "3"]  # fmt: skip
    assert sample.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1-0", "q1-1", "p2-0", "p2-1"]
    assert [r["prompt"] for r in records][1:3] == ["facts: Bora is a town.", "question: what is Bora?"]
    assert all(isinstance(r["completion"], str) for r in records)
    assert [r["meta"]["sample"] for r in records] == [0, 1, 0, 1]
    # what sample writes is what annotate reads
    items = load_items(out, load_schema("synthetic_qa"))
    assert [i.kind for i in items] == ["span"] * 4

    # the same seed gives the same samples
    again = tmp_path / "again.jsonl"
    assert sample.main([*argv[:5], str(again), *argv[6:]]) == 0
    assert again.read_text() == out.read_text()


def test_pairs_become_pair_items_for_preference_categories(policy_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q1", "prompt": "facts: Bora is a town."}\n{"id": "q2", "prompt": "question: what?"}\n')
    out, singles = tmp_path / "pairs.jsonl", tmp_path / "singles.jsonl"
    common = ["--policy", str(policy_dir), "--prompts", str(prompts), "--max-new-tokens", "6", "--seed", "3"]
    assert sample.main([*common, "--output", str(out), "--pairs"]) == 0
    assert sample.main([*common, "--output", str(singles), "--n-per-prompt", "2"]) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    flat = [json.loads(line)["completion"] for line in singles.read_text().splitlines()]
    assert [p["id"] for p in pairs] == ["q1", "q2"]
    # the same draws as two samples per prompt, paired in order
    assert [(p["completion_a"], p["completion_b"]) for p in pairs] == [(flat[0], flat[1]), (flat[2], flat[3])]
    items = load_items(out, load_schema("synthetic_qa"))
    assert [i.kind for i in items] == ["pair", "pair"]
    with pytest.raises(FinegrainedError, match="--pairs samples two completions"):
        sample.main([*common, "--output", str(out), "--pairs", "--n-per-prompt", "3"])


def test_greedy_does_not_depend_on_batching(policy_dir, tmp_path):
    # Prompts of different lengths share a batch only through left padding: a padding bug (positions,
    # attention mask) would change what a prompt generates depending on its batch mates.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "facts: Bora is a town. question: what is Bora?"}\n{"prompt": "Bora"}\n'
                       '{"prompt": "question: what"}\n')  # fmt: skip
    texts = []
    for batch_size in ("1", "3"):
        out = tmp_path / f"greedy-{batch_size}.jsonl"
        sample.main(["--policy", str(policy_dir), "--prompts", str(prompts), "--output", str(out), "--greedy",
                     "--max-new-tokens", "6", "--batch-size", batch_size])  # fmt: skip
        texts.append([json.loads(line)["completion"] for line in out.read_text().splitlines()])
    assert texts[0] == texts[1]


def test_sample_input_and_argument_errors(policy_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    out = tmp_path / "completions.jsonl"
    argv = ["--policy", str(policy_dir), "--prompts", str(prompts), "--output", str(out)]
    prompts.write_text('{"prompt": 3}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:1: prompt"):
        sample.main(argv)
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:2: id: duplicate id 'a' \(first used on line 1\)"):
        sample.main(argv)
    with pytest.raises(FinegrainedError, match="--n-per-prompt must be at least 1"):
        sample.main([*argv, "--n-per-prompt", "0"])
    with pytest.raises(FinegrainedError, match="--top-p must be in"):
        sample.main([*argv, "--top-p", "1.5"])
    assert not out.exists()


def test_a_missing_policy_says_no_such_directory(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    common = ["--prompts", str(prompts), "--output", str(tmp_path / "out.jsonl")]
    with pytest.raises(FinegrainedError, match=r"--policy=.*outputs/nope/final: no such directory$"):
        sample.main(["--policy", str(tmp_path / "outputs" / "nope" / "final"), *common])
    # a bare name could be a hub id: it is tried, and the message still leads with the missing directory
    with pytest.raises(FinegrainedError, match=r"nope: no such directory, and not loadable as a Hugging Face hub id for a policy \(--policy\)"):
        sample.main(["--policy", "nope", *common])


def test_prompts_from_a_saved_dataset(policy_dir, tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["facts: Bora is a town.", "question: what?"]}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out.jsonl"
    assert sample.main(["--policy", str(policy_dir), "--prompts", str(tmp_path / "ds"), "--prompt-column", "question",
                        "--output", str(out), "--max-new-tokens", "4"]) == 0  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["prompt"]) for r in records] == [("p1-0", "facts: Bora is a town."), ("p2-0", "question: what?")]
