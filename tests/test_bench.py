"""finegrained bench writes every field of bench.json (no timing assertions: timings belong to the benchmark)."""

from __future__ import annotations

import json

import pytest

from finegrained import bench

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
