"""``finegrained rloo``: critic-free fine-grained RLOO (``finegrained.rl.critic_free``)."""

from __future__ import annotations

from .ppo import run_learner


def main(argv: list[str]) -> int:
    return run_learner("rloo", argv)
