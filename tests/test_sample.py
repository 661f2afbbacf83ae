from __future__ import annotations

import json

import pytest

from finegrained import sample
from finegrained.errors import InputError
from finegrained.models.tiny import tiny_causal_lm, train_tokenizer


def test_sample_writes_annotation_ready_records(tmp_path):
    tok = train_tokenizer(["facts: Bora is a town. question: what is Bora?"] * 30, vocab_size=300)
    tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q1", "prompt": "facts: Bora is a town."}\n{"prompt": "question: what is Bora?"}\n')
    out = tmp_path / "completions.jsonl"
    argv = ["--policy", str(tmp_path / "policy"), "--prompts", str(prompts), "--output", str(out), "--n-per-prompt", "2", "--max-new-tokens", "5"]
    assert sample.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q1-0", "q1-1", "p2-0", "p2-1"]
    assert all(isinstance(r["completion"], str) for r in records)
    prompts.write_text('{"prompt": 3}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:1: prompt"):
        sample.main(argv)
