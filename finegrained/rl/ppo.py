"""``finegrained ppo``: dense-reward PPO, fine-grained or holistic: the learner (``rl/learner.py``) with a
critic. Step 5 is GAE (gamma, lambda) over the value model's estimates of the KL-penalised token rewards,
with optional reward (scale-only) and advantage whitening; step 6 adds the clipped value loss.

Launching on several devices (the output directory is resolved before processes start)::

    finegrained ppo experiment=smoke                                             # one process
    torchrun --nproc_per_node 2 -m finegrained.cli ppo experiment=smoke accelerate.cpu=true   # 2 CPU procs (gloo)
    accelerate launch --config_file conf/accelerate/cpu_2proc.yaml -m finegrained.cli ppo experiment=smoke accelerate.cpu=true
    accelerate launch --config_file conf/accelerate/ddp.yaml -m finegrained.cli ppo ...       # multi-GPU DDP
    accelerate launch --config_file conf/accelerate/fsdp.yaml -m finegrained.cli ppo ...      # FSDP
    accelerate launch --config_file conf/accelerate/deepspeed_zero2.yaml -m finegrained.cli ppo ...  # ZeRO-2
"""

from __future__ import annotations

import torch

from . import functional as F
from .learner import Learner, PhaseTimer
from .policy import build_value_model
from .rollout import policy_forward
from .types import Trajectory


class PPOTrainer(Learner):
    """PPO: a value model (a separate trunk or a head on the policy's), GAE, clipped policy and value losses."""

    algorithm = "ppo"

    def build_critic(self, policy):
        return build_value_model(self.cfg, policy, self.tokenizer)

    @property
    def wants_hidden(self) -> bool:
        return bool(self.cfg.value.shared)

    def critic_values(self, ids, mask, position_ids, prompt_length, hidden=None) -> torch.Tensor:
        """Values (B, T) before each response token's reward."""
        if self.cfg.value.shared:
            return self.value(hidden)
        return self.value(ids, mask.long(), position_ids)[:, prompt_length - 1 : -1]

    def estimate(self, traj: Trajectory, decoded, breakdown, timer: PhaseTimer):
        advantages, returns, kl = self.advantages(traj, timer)
        return advantages, returns, kl, {}

    def advantages(self, traj: Trajectory, timer: PhaseTimer):
        """Steps 4-5: KL-penalised token rewards, then GAE. Returns (advantages, returns, kl) each (B, T).
        Whitening uses the mean and variance over every process's tokens (``sum_across``)."""
        cfg = self.cfg
        with timer("advantage"):
            mask = traj.response_mask
            kl = F.kl_penalty(traj.logprobs, traj.ref_logprobs, cfg.kl.estimator) * mask  # (B, T)
            rewards = F.token_rewards_with_kl(traj.rewards, kl, self.kl_ctl.value, mask)
            self._record_whitening("rewards", rewards, mask)
            if cfg.ppo.whiten_rewards:
                rewards = F.masked_whiten(rewards, mask, shift_mean=False, sum_across=self.sum_across)
            advantages, returns = F.gae(rewards, traj.values, mask, cfg.ppo.gamma, cfg.ppo.lam)
            self._record_whitening("advantages", advantages, mask)
            if cfg.ppo.whiten_advantages:
                advantages = F.masked_whiten(advantages, mask, sum_across=self.sum_across)
        self._check_finite("the advantages", "advantage", advantages)
        return advantages, returns, kl

    def minibatch_loss(self, traj: Trajectory, inputs, idx, advantages, returns) -> tuple[torch.Tensor, dict]:
        """The PPO loss of the minibatch ``idx`` (indices into the batch) and its statistics."""
        cfg, p = self.cfg, self.cfg.ppo
        ids, mask, position_ids, P = inputs
        rmask = traj.response_mask[idx]
        with self.accelerator.autocast():
            logprobs, entropy, hidden = policy_forward(
                self.policy, ids[idx], mask[idx], position_ids[idx], P, traj.response_ids[idx], cfg.value.shared, self.policy_distribution
            )  # fmt: skip
            values = self.critic_values(ids[idx], mask[idx], position_ids[idx], P, hidden).float()
        pg_loss, clip_frac, approx_kl = F.policy_loss(logprobs.float(), traj.logprobs[idx], advantages[idx], rmask, p.clip_range)
        v_loss, v_clip = F.value_loss(values, traj.values[idx], returns[idx], rmask, p.clip_range_value)
        entropy_mean = F.masked_mean(entropy, rmask)
        loss = pg_loss + p.value_coef * v_loss - p.entropy_coef * entropy_mean
        self._check_finite("the PPO loss", "update", loss.detach())
        stats = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy_mean, "approx_kl": approx_kl,
                 "clip_fraction": clip_frac, "value_clip_fraction": v_clip}  # fmt: skip
        return loss, {k: float(v.detach()) for k, v in stats.items()}

    def rename_update_stats(self, stats: dict) -> dict:
        # tensorboard groups the two losses under one "loss/" section
        stats["loss/policy"] = stats.pop("policy_loss")
        stats["loss/value"] = stats.pop("value_loss")
        return stats

    def iteration_stats(self, traj: Trajectory, returns) -> dict:
        return {"explained_variance": float(F.explained_variance(traj.values, returns, traj.response_mask))}
