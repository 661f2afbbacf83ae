"""Named result types of the PPO learner (the scorer's, ``RewardBreakdown``, live in ``rewards.types``).

Everything the reward models say is exchanged as text and character spans (Python ``str`` indices,
half-open), so a reward model's tokenizer never has to match the policy's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rewards.types import CategoryRewards, RewardBreakdown, Span  # noqa: F401  (re-exported)


@dataclass
class Trajectory:
    """One rollout batch, left-aligned responses. B = batch, P = prompt length, T = response length.

    Attributes:
        query_ids: (B, P) prompt token ids, left-padded with the pad id.
        query_mask: (B, P) True where a prompt token is real.
        response_ids: (B, T) generated ids, right-padded after EOS with the pad id.
        response_mask: (B, T) True for generated tokens up to and including the first EOS.
        logprobs: (B, T) log-prob of each response token under the rollout policy.
        ref_logprobs: (B, T) the same under the frozen reference policy.
        values: (B, T) value estimates before each response token's reward; None without a critic.
        rewards: (B, T) combined per-token score rewards (weighted categories, no KL).
        category_rewards: (B, T, K) per-category rewards, for logging.
    """

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor | None
    rewards: torch.Tensor
    category_rewards: torch.Tensor


@dataclass
class PPOStats:
    """Scalars of one PPO update, averaged over minibatches and epochs."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    value_clip_fraction: float
    explained_variance: float
    grad_norm: float
