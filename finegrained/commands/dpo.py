"""``finegrained dpo``: compose the config, train (``finegrained.rl.dpo.DPOTrainer``), report."""

from __future__ import annotations

from pathlib import Path

from ..config import compose_from_argv, log


def main(argv: list[str]) -> int:
    cfg = compose_from_argv("dpo", argv)
    if cfg is None:
        return 0
    from ..rl.dpo import DPOTrainer

    trainer = DPOTrainer(cfg)
    summary = trainer.train()
    if trainer.is_main:
        held_out = summary.get("rewards/accuracies")
        accuracy = f"; held-out reward accuracy {held_out:.3f}" if held_out is not None else ""
        log(f"[dpo] {summary['steps']} steps{accuracy}; wrote {Path(cfg.output_dir) / 'final'}")
    return 0
