"""``finegrained grpo`` and ``finegrained rloo``: critic-free fine-grained RL. The learner
(``rl/learner.py``) with no value model: step 5 compares every category's per-segment rewards with the
other rewards of the prompt's group of ``ppo.samples_per_prompt`` samples (``rl/advantages.py``: GRPO's
group mean and standard deviation, or RLOO's leave-one-out mean), and a token's advantage is the
reward-to-go of those normalised rewards. The KL to the reference is a per-token penalty in the reward
(``kl.mode=reward``, as PPO), a loss term (``kl.mode=loss``, GRPO's k3), or off (``kl.mode=none``).
Step 6 is PPO's clipped surrogate, aggregated by ``loss.aggregation``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import FinegrainedError
from ..rewards.placement import place_rewards
from . import advantages as A
from . import functional as F
from .learner import Learner, PhaseTimer
from .rollout import policy_forward
from .types import RewardBreakdown, Trajectory

KL_MODES = ("reward", "loss", "none")


def reward_positions(breakdown: RewardBreakdown, decoded, response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, K) True where ``place_rewards`` puts a reward of category k (a reward of 0 included): the
    same placement with every reward set to 1."""
    ones = {name: dataclasses.replace(c, rewards=[[1.0] * len(r) for r in c.rewards]) for name, c in breakdown.categories.items()}
    return place_rewards(RewardBreakdown(ones), decoded, response_mask) > 0


class CriticFreeTrainer(Learner):
    """GRPO / RLOO: group-baseline advantages per segment and category, no value model."""

    estimator = "grpo"

    def __init__(self, cfg):
        samples = int(cfg.ppo.get("samples_per_prompt", 1))
        if samples < 2:
            raise FinegrainedError(f"{self.estimator}: ppo.samples_per_prompt must be at least 2 (got {samples}): "
                                   "the baseline of a sample is the other samples of its prompt")  # fmt: skip
        super().__init__(cfg)

    def estimate(self, traj: Trajectory, decoded, breakdown, timer: PhaseTimer):
        """Step 5: ``(advantages, None, kl, stats)``; the group statistics are a group's own (its G samples
        sit on one process), only the logged fractions are summed across processes."""
        cfg, a = self.cfg, self.cfg.advantage
        with timer("advantage"):
            mask = traj.response_mask
            positions = reward_positions(breakdown, decoded, mask.cpu()).to(mask.device)
            weights = torch.tensor([c.weight for c in self.scorer.categories], dtype=torch.float32)
            advantages, _, constant = A.critic_free_advantages(
                traj.category_rewards, positions, mask, weights, self.group_size, self.estimator, a.order, a.scale_std, a.eps
            )  # fmt: skip
            kl = F.kl_penalty(traj.logprobs, traj.ref_logprobs, cfg.kl.estimator) * mask  # (B, T)
            if cfg.kl.mode == "reward":
                advantages = advantages + A.reward_to_go(-self.kl_ctl.value * kl, mask)
        self._check_finite("the advantages", "advantage", advantages)
        stats = {"frac_zero_std": float(F.global_mean(constant.float(), self.sum_across)),
                 "advantages/mean": float(F.masked_mean(advantages, mask)),
                 "advantages/std": float(F.masked_var(advantages, mask).sqrt()),
                 "advantages/abs_max": float((advantages.abs() * mask).max())}  # fmt: skip
        per_category = A.group_moments(traj.category_rewards, positions, self.group_size)[3]  # (n_groups, K)
        for k, name in enumerate(breakdown.names):
            stats[f"rewards/{name}/frac_zero_std"] = float(F.global_mean(per_category[:, k].float(), self.sum_across))
        return advantages, None, kl, stats

    def minibatch_loss(self, traj: Trajectory, inputs, idx, advantages, returns) -> tuple[torch.Tensor, dict]:
        """The clipped surrogate of the minibatch ``idx``, aggregated by ``loss.aggregation``, plus the KL
        term (``kl.mode=loss``) and the entropy bonus."""
        cfg, p = self.cfg, self.cfg.ppo
        ids, mask, position_ids, P = inputs
        rmask = traj.response_mask[idx]
        with self.accelerator.autocast():
            logprobs, entropy, _ = policy_forward(
                self.policy, ids[idx], mask[idx], position_ids[idx], P, traj.response_ids[idx], False, self.policy_distribution
            )  # fmt: skip
        logprobs = logprobs.float()
        per_token, clipped = A.clipped_surrogate(logprobs, traj.logprobs[idx], advantages[idx], p.clip_range)

        def aggregate(x: torch.Tensor) -> torch.Tensor:
            return A.aggregate_loss(x, rmask, cfg.loss.aggregation, cfg.generation.max_new_tokens)

        pg_loss = aggregate(per_token)
        kl_loss = torch.zeros((), device=pg_loss.device)
        if cfg.kl.mode == "loss":
            kl_loss = aggregate(F.kl_penalty(logprobs, traj.ref_logprobs[idx], cfg.kl.estimator))
        entropy_mean = F.masked_mean(entropy, rmask)
        loss = pg_loss + self.kl_ctl.value * kl_loss - p.entropy_coef * entropy_mean
        log_ratio = (logprobs - traj.logprobs[idx]).detach()
        stats = {"policy_loss": pg_loss, "kl_loss": kl_loss, "entropy": entropy_mean,
                 "approx_kl": F.masked_mean(0.5 * log_ratio.pow(2), rmask), "clip_fraction": F.masked_mean(clipped, rmask)}  # fmt: skip
        return loss, {k: float(v.detach()) for k, v in stats.items()}

    def rename_update_stats(self, stats: dict) -> dict:
        stats["loss/policy"] = stats.pop("policy_loss")
        stats["loss/kl"] = stats.pop("kl_loss")
        return stats


class GRPOTrainer(CriticFreeTrainer):
    algorithm = estimator = "grpo"


class RLOOTrainer(CriticFreeTrainer):
    algorithm = estimator = "rloo"
