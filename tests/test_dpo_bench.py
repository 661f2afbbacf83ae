"""bench_dpo writes bench.json at tiny sizes (no timing assertions: timings belong to the benchmark)."""

from __future__ import annotations

import json

import pytest

from finegrained.bench import build_policy_dir
from finegrained.config import compose
from finegrained.rl.dpo_bench import PROMPT_TOKENS, bench_dpo, random_pairs

TINY = ["bench.n_layer=1", "bench.n_embd=32", "bench.n_head=2", "bench.vocab_size=400", "bench.batch_size=2",
        "bench.response_length=8", "bench.iterations=2"]  # fmt: skip


@pytest.mark.parametrize("loss", ["sigmoid", "ddpo"])
def test_bench_dpo_writes_its_fields(tmp_path, loss):
    cfg = compose("bench", [f"output_dir={tmp_path}", *TINY])
    result = bench_dpo(cfg, build_policy_dir(cfg.bench, tmp_path, 0)[0], loss=loss)
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(result))
    for key in ("seconds_per_iteration", "tokens_per_second", "peak_rss_mb"):
        assert result[key] > 0, key
    assert len(result["iteration_seconds"]) == 2 and set(result["phases"]) == {"ref_value_forward", "update"}
    assert result["phases"]["ref_value_forward"] > 0 and result["loss"] == loss
    state = result["model_state_mb"]
    assert state["policy"] > 0 and state["reference"] == pytest.approx(state["policy"], rel=1e-3)  # a full frozen copy
    assert state["optimizer"] == pytest.approx(2 * state["policy"], rel=1e-3)  # AdamW: two moments per weight


def test_bench_dpo_with_lora_keeps_no_reference_copy(tmp_path):
    cfg = compose("bench", [f"output_dir={tmp_path}", *TINY, "bench.lora_r=2"])
    result = bench_dpo(cfg, build_policy_dir(cfg.bench, tmp_path, 0)[0])
    state = result["model_state_mb"]
    assert state["reference"] == 0.0 and state["optimizer"] < 0.5 * state["policy"]


def test_random_pairs_have_the_bench_shapes():
    pairs = random_pairs(3, vocab_size=400, completion_tokens=8, eos=0, gamma=5.0, seed=0)
    for p in pairs:
        assert len(p.chosen_ids) == len(p.rejected_ids) == PROMPT_TOKENS + 8
        assert p.chosen_ids[:PROMPT_TOKENS] == p.rejected_ids[:PROMPT_TOKENS] and p.chosen_ids[-1] == 0
        assert len(p.chosen_weights) == 8 and set(p.chosen_weights) <= {1.0, 5.0}


def test_bench_command_times_dpo_with_bench_algorithm_dpo(tmp_path, capsys):
    from finegrained.cli import main

    assert main(["bench", "bench.algorithm=dpo", f"output_dir={tmp_path}", *TINY]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["loss"] == "sigmoid" and len(result["iteration_seconds"]) == 2
    assert "seconds/iteration" in capsys.readouterr().out
