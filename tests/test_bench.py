"""finegrained bench writes every field of bench.json (no timing assertions: timings belong to the benchmark)."""

from __future__ import annotations

import json

import pytest

from finegrained.commands import bench
from finegrained.errors import FinegrainedError

TINY = ["bench.n_layer=1", "bench.n_embd=32", "bench.n_head=2", "bench.vocab_size=400", "bench.batch_size=2",
        "bench.response_length=8", "bench.iterations=2", "bench.ppo_epochs=1"]  # fmt: skip


@pytest.mark.parametrize("mode", ["holistic", "fine_grained"])
def test_bench_writes_every_field(tmp_path, mode):
    assert bench.main([f"output_dir={tmp_path}", f"bench.mode={mode}", *TINY]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    for key in ("seconds_per_iteration", "bare_seconds", "overhead_factor", "tokens_per_second", "peak_rss_mb"):
        assert result[key] > 0, key
    assert set(result["phases"]) == {"generate", "segment", "score", "place", "ref_value_forward", "advantage", "update"}
    assert len(result["iteration_seconds"]) == 2
    assert result["config"]["bench"]["mode"] == mode


def test_options_that_cut_the_work_show_in_model_state(tmp_path):
    """LoRA drops the reference copy and most optimizer state; a shared value head drops the value trunk."""
    results = {}
    for name, options in (("default", []), ("cut", ["bench.lora_r=2", "bench.shared_value=true"])):
        assert bench.main([f"output_dir={tmp_path / name}", *TINY, "bench.bare_repeats=1", *options]) == 0
        results[name] = json.loads((tmp_path / name / "bench.json").read_text())
    default, cut = results["default"]["model_state_mb"], results["cut"]["model_state_mb"]
    assert default["reference"] == pytest.approx(default["policy"])  # a full frozen copy
    assert cut["reference"] == 0
    assert cut["value"] < default["value"] / 20  # a head, not a trunk
    assert cut["optimizer"] < default["optimizer"] / 5  # Adam state of the adapters and the head only
    assert cut["policy"] > default["policy"]  # the adapters add a little
    assert results["cut"]["bare_seconds"] > 0


def test_shared_reward_model_backbone_cuts_reward_model_state(tmp_path):
    """Fine-grained with one reward-model backbone for three categories: a third of the weights."""
    results = {}
    for shared in ("false", "true"):
        out = tmp_path / shared
        assert bench.main([f"output_dir={out}", *TINY, "bench.mode=fine_grained", f"bench.shared_rm={shared}"]) == 0
        results[shared] = json.loads((out / "bench.json").read_text())
    separate, joint = results["false"]["model_state_mb"], results["true"]["model_state_mb"]
    assert joint["reward_models"] < separate["reward_models"] / 2.5
    assert joint["policy"] == pytest.approx(separate["policy"])
    assert results["true"]["bare_seconds"] > 0 and results["true"]["phases"]["score"] > 0
    with pytest.raises(FinegrainedError, match="bench.shared_rm"):
        bench.main([f"output_dir={tmp_path / 'bad'}", *TINY, "bench.mode=holistic", "bench.shared_rm=true"])


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_bench_has_no_value_model(tmp_path, algorithm):
    tiny = [o for o in TINY if not o.startswith("bench.batch_size")]
    assert bench.main([f"output_dir={tmp_path}", f"bench.algorithm={algorithm}", *tiny, "bench.batch_size=4", "bench.bare_repeats=1"]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["model_state_mb"]["value"] == 0 and result["model_state_mb"]["policy"] > 0
    assert result["bare_seconds"] > 0 and result["config"]["bench"]["algorithm"] == algorithm
    with pytest.raises(FinegrainedError, match="multiple of 4"):
        bench.main([f"output_dir={tmp_path / 'bad'}", f"bench.algorithm={algorithm}", *tiny, "bench.batch_size=6"])
