"""Named result types exchanged between the scorer, reward placement and the PPO learner.

Everything the reward models say is exchanged as text and character spans (Python ``str`` indices,
half-open), so a reward model's tokenizer never has to match the policy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Span = tuple[int, int]


@dataclass
class CategoryRewards:
    """One category's judgement of a batch of completions.

    Attributes:
        name: category name (e.g. ``"factuality"``).
        granularity: ``"sub_sentence"``, ``"sentence"`` or ``"sequence"``.
        kind: ``"span"`` (per-segment error judgements) or ``"preference"`` (one score per completion).
        segments: per sample, the char spans judged. For sequence categories one span covering the
            stripped completion (``[]`` for a blank completion); its reward still lands on EOS.
        rewards: per sample, one reward per segment, category weight already applied.
        p_error: span categories: per sample, probability of error per segment (0/1 for rules);
            ``None`` for preference categories.
        raw_scores: preference categories: per sample, the unnormalised score; ``None`` for spans.
    """

    name: str
    granularity: str
    kind: str
    segments: list[list[Span]]
    rewards: list[list[float]]
    p_error: list[list[float]] | None = None
    raw_scores: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.segments) != len(self.rewards):
            raise ValueError(f"{self.name}: {len(self.segments)} segment lists but {len(self.rewards)} reward lists")
        for i, (segs, rews) in enumerate(zip(self.segments, self.rewards)):
            if len(segs) != len(rews):
                raise ValueError(f"{self.name}: sample {i} has {len(segs)} segments but {len(rews)} rewards")

    @property
    def batch_size(self) -> int:
        return len(self.segments)

    def error_fraction(self) -> float:
        """Share of judged segments with p_error > 0.5 (nan for preference categories or no segments)."""
        if self.p_error is None:
            return float("nan")
        flat = [p for sample in self.p_error for p in sample]
        return sum(p > 0.5 for p in flat) / len(flat) if flat else float("nan")


@dataclass
class RewardBreakdown:
    """Every category's judgement of one batch; ``categories`` order fixes the K axis of (B, T, K)."""

    categories: dict[str, CategoryRewards] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.categories)

    def total_per_sample(self) -> list[float]:
        """Sum of every category's rewards per sample (weights already applied)."""
        if not self.categories:
            return []
        n = next(iter(self.categories.values())).batch_size
        return [sum(sum(c.rewards[i]) for c in self.categories.values()) for i in range(n)]


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
