"""The RL trainers by algorithm, for callers that build one from a config: ``build_trainer(cfg,
algorithm)``. The learner they share is ``rl/learner.py``; PPO (with a critic) is ``rl/ppo.py``, GRPO and
RLOO (critic-free, group baselines) ``rl/critic_free.py``; the commands are ``finegrained.commands.ppo``,
``grpo`` and ``rloo``."""

from __future__ import annotations

from omegaconf import DictConfig

from .critic_free import GRPOTrainer, RLOOTrainer
from .learner import DUMP_STATS_ENV, PHASES, Learner, NonFiniteError, PhaseTimer, format_samples, load_task_prompts, load_task_records
from .ppo import PPOTrainer

TRAINERS: dict[str, type[Learner]] = {"ppo": PPOTrainer, "grpo": GRPOTrainer, "rloo": RLOOTrainer}

__all__ = ["DUMP_STATS_ENV", "PHASES", "GRPOTrainer", "Learner", "NonFiniteError", "PPOTrainer", "PhaseTimer", "RLOOTrainer",
           "TRAINERS", "build_trainer", "format_samples", "load_task_prompts", "load_task_records"]  # fmt: skip


def build_trainer(cfg: DictConfig, algorithm: str = "ppo") -> Learner:
    return TRAINERS[algorithm](cfg)
