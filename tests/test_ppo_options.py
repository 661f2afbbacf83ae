"""PPO options beyond the defaults run end to end: shared value head, adaptive KL with k3, whitening,
gradient accumulation, a value model initialised from another backbone directory."""

from __future__ import annotations

import math

from finegrained.config import compose
from finegrained.rl import trainer as ppo


def run(tmp_path, *overrides):
    cfg = compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "checkpoint.every=0",
                          "ppo.iterations=2", "ppo.batch_size=4", "ppo.minibatch_size=2", *overrides])  # fmt: skip
    trainer = ppo.build_trainer(cfg)
    return trainer, [trainer.run_iteration() for _ in range(2)]


def test_shared_value_head_adaptive_k3_whitening_accumulation(tmp_path):
    trainer, stats = run(tmp_path, "value.shared=true", "kl.adaptive=true", "kl.estimator=k3", "kl.target=0.001",
                         "ppo.whiten_rewards=true", "ppo.grad_accum=2")  # fmt: skip
    assert all(math.isfinite(s["loss/value"]) for s in stats)
    assert trainer.kl_ctl.value != 0.01  # the adaptive controller moved the coefficient
    assert all(s["kl"] >= 0 for s in stats)  # k3 is non-negative


def test_value_model_from_a_backbone_directory(tmp_path):
    backbone = tmp_path / "backbone"
    trainer, _ = run(tmp_path / "a")
    trainer.accelerator.unwrap_model(trainer.policy).save_pretrained(backbone)
    trainer.tokenizer.save_pretrained(backbone)  # value.init_from checks that its vocabulary is the policy's
    trainer, stats = run(tmp_path / "b", f"value.init_from={backbone}")
    assert math.isfinite(stats[-1]["explained_variance"])
