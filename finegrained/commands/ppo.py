"""``finegrained ppo``: dense-reward PPO, fine-grained or holistic (``finegrained.rl.ppo``)."""

from __future__ import annotations

from pathlib import Path


def run_learner(algorithm: str, argv: list[str]) -> int:
    """Compose ``conf/<algorithm>.yaml`` from the command line, train, report: every RL command's main."""
    from omegaconf import OmegaConf

    from ..config import compose_from_argv, log

    cfg = compose_from_argv(algorithm, argv)
    if cfg is None:
        return 0
    from ..rl.trainer import build_trainer

    trainer = build_trainer(cfg, algorithm)
    if trainer.is_main:
        log(f"[{algorithm}] resolved config:\n" + OmegaConf.to_yaml(cfg, resolve=True))
    trainer.train()
    if trainer.is_main:
        log(f"[{algorithm}] wrote {Path(cfg.output_dir) / 'final'}")
    return 0


def main(argv: list[str]) -> int:
    return run_learner("ppo", argv)
