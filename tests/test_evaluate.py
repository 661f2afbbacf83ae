"""finegrained evaluate: oracle error rates, KL to the reference, length and ROUGE-L per policy."""

from __future__ import annotations

import json

import pytest

from finegrained import evaluate
from finegrained.commands import evaluate as evaluate_command
from finegrained.models.tiny import tiny_causal_lm, train_tokenizer
from finegrained.tasks.synthetic_qa import prompts


@pytest.fixture(scope="module")
def two_policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    tok = train_tokenizer([r["prompt"] + " " + r["reference"] for r in prompts("train", n=64)], vocab_size=300)
    dirs = {}
    for name, seed in (("a", 0), ("b", 1)):
        model = tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=seed)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def test_eval_json_has_every_figure(tmp_path, two_policies):
    argv = [f"output_dir={tmp_path}", "n_prompts=6", "generation.max_new_tokens=8", "reference=a",
            f"policies.a={two_policies['a']}", f"policies.b={two_policies['b']}"]  # fmt: skip
    assert evaluate_command.main(argv) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    a, b = report["policies"]["a"], report["policies"]["b"]
    assert a["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference against itself
    assert b["kl"] > 0.01
    for entry in (a, b):
        assert set(entry["error_rate"]) == {"relevance", "factuality", "completeness"}
        assert 0.0 <= entry["total_error_rate"] <= 1.0
        assert 0 < entry["mean_length"] <= 8
        assert 0.0 <= entry["rouge_l"] <= 1.0
        assert entry["n"] == 6
    assert "total_err" in evaluate.format_table(report["policies"])


def test_no_policy_is_a_user_error(tmp_path):
    from finegrained.errors import FinegrainedError

    with pytest.raises(FinegrainedError, match="at least one policy"):
        evaluate_command.main([f"output_dir={tmp_path}"])
