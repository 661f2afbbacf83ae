"""Critic-free advantages (GRPO, RLOO) that keep every segment's reward, as small pure functions.

Shapes: B = batch = n_groups x G (the G samples of one prompt are consecutive rows: row ``g * G + j``),
T = response length (right-padded), K = reward categories. ``rewards`` (B, T, K) are the placed rewards
(``rewards.placement.place_rewards``: each segment's reward on the token that ends it, a sequence
category's on the last real token), category weights already applied; ``positions`` (B, T, K) is True
where a category placed a reward (a reward of 0 is still a reward: the ``penalty`` span mode gives 0 to a
clean segment). Segments of one category that end on the same token count as one step reward (their sum).

The estimate, per category k and group (the DeepSeekMath process-supervision recipe, per category):

1. baseline  every step reward r of category k in the group is compared with the group's other rewards:
             GRPO: r - mean, the mean over all of category k's step rewards in the group's G samples;
             RLOO: r - mean over the step rewards of category k in the *other* G - 1 samples (the sample's
             own segments are left out whole, so the baseline does not depend on the sample's own
             response); 0 when the other samples hold none;
2. scale     optionally divided by the group's (unbiased) standard deviation of those rewards + eps
             (GRPO's default; Dr. GRPO turns it off); a group whose rewards of category k are all equal
             (or that has fewer than two of them) gives exactly 0;
3. combine   the categories' normalised rewards, weighted and summed (GDPO's order, arXiv 2601.05242;
             ``order="per_category"``), or the categories summed first and then normalised as one
             (plain GRPO's order, ``order="sum"``);
4. to go     a token's advantage is the sum of the normalised step rewards at or after it (reward-to-go,
             no discount): a sequence reward on the last token counts for every token of the response.

With one holistic (sequence) category, GRPO gives every token A_i = (r_i - mean(r)) / (std(r) + eps) and
RLOO A_i = r_i - mean_{j != i} r_j: the textbook estimators.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo")
ORDERS = ("per_category", "sum")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "token_sum")


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, T, K) -> (n_groups, G, T, K); B must be a multiple of G."""
    B = x.shape[0]
    if group_size < 1 or B % group_size:
        raise ValueError(f"a batch of {B} rows is not made of groups of {group_size}")
    return x.reshape(B // group_size, group_size, *x.shape[1:])


def group_moments(
    rewards: torch.Tensor, positions: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group and category: ``(count, mean, std, constant)``, each (n_groups, K), of the step rewards
    ``rewards`` (B, T, K) at ``positions`` (B, T, K). ``std`` is unbiased (0 with fewer than two rewards);
    ``constant`` is True where the rewards are all equal (or fewer than two), decided exactly (max == min),
    not by a rounded standard deviation."""
    r = _grouped(rewards.float(), group_size).flatten(1, 2)  # (n, G * T, K)
    m = _grouped(positions.bool(), group_size).flatten(1, 2)  # (n, G * T, K)
    w = m.float()
    count = w.sum(1)  # (n, K)
    mean = (r * w).sum(1) / count.clamp(min=1)
    var = (((r - mean[:, None]) ** 2) * w).sum(1) / (count - 1).clamp(min=1)
    highest = r.masked_fill(~m, float("-inf")).amax(1)
    lowest = r.masked_fill(~m, float("inf")).amin(1)
    constant = (count < 2) | (highest == lowest)
    return count, mean, var.sqrt(), constant


def group_baseline_advantages(
    rewards: torch.Tensor,
    positions: torch.Tensor,
    group_size: int,
    estimator: str = "grpo",
    scale_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the module doc for every category at once: ``rewards``, ``positions`` (B, T, K) ->
    ``(normalised, constant)``: normalised step rewards (B, T, K), 0 off ``positions`` and in constant
    groups, and ``constant`` (n_groups, K) (see ``group_moments``)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    count, mean, std, constant = group_moments(rewards, positions, group_size)
    r = _grouped(rewards.float(), group_size)  # (n, G, T, K)
    w = _grouped(positions.bool(), group_size).float()
    if estimator == "grpo":
        baseline = mean[:, None, None, :]  # (n, 1, 1, K)
        usable = torch.ones_like(w, dtype=torch.bool)
    else:  # leave the sample's own rewards out: the others' sum over the others' count
        own_sum, own_count = (r * w).sum(2), w.sum(2)  # (n, G, K)
        other_count = count[:, None] - own_count
        baseline = (((r * w).sum((1, 2))[:, None] - own_sum) / other_count.clamp(min=1))[:, :, None, :]  # (n, G, 1, K)
        usable = (other_count > 0)[:, :, None, :].expand_as(w)
    advantages = r - baseline
    if scale_std:
        advantages = advantages / (std[:, None, None, :] + eps)
    keep = w.bool() & usable & ~constant[:, None, None, :]
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    return advantages.reshape(rewards.shape), constant


def reward_to_go(step_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``step_rewards`` (B, T) -> (B, T): at each token the sum of the step rewards at or after it
    (undiscounted), 0 on padding (``mask`` (B, T), True = real token)."""
    m = mask.to(step_rewards.dtype)
    return torch.flip(torch.cumsum(torch.flip(step_rewards * m, [1]), 1), [1]) * m


def critic_free_advantages(
    rewards: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    group_size: int,
    estimator: str = "grpo",
    order: str = "per_category",
    scale_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token advantages of the module doc, steps 1-4.

    Args: ``rewards``, ``positions`` (B, T, K) (weights applied, see the module doc), ``mask`` (B, T),
    ``weights`` (K,) the categories' weights (dividing by a category's std divides its weight out: it is
    multiplied back, so that A = w (r - baseline) / std), ``group_size`` G.
    Returns ``(advantages, step_rewards, constant)``: (B, T), (B, T) the normalised step rewards summed
    over categories, and (n_groups,) True for a group that gives zero advantage everywhere (every
    category constant; with ``order="sum"``, the summed rewards constant)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: expected one of {', '.join(ORDERS)}")
    if order == "sum":
        rewards, positions = rewards.sum(-1, keepdim=True), positions.bool().any(-1, keepdim=True)
        weights = torch.ones(1)
    normalised, constant = group_baseline_advantages(rewards, positions, group_size, estimator, scale_std, eps)
    if scale_std and order == "per_category":
        normalised = normalised * weights.abs().to(normalised)
    step_rewards = normalised.sum(-1)  # (B, T)
    return reward_to_go(step_rewards, mask), step_rewards, constant.all(-1)


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, all inputs (B, T): ``(loss, clipped)`` (B, T) each, loss =
    max(-A r, -A clip(r, 1 - c, 1 + c)) with r = exp(logprobs - old_logprobs), clipped = where the clipped
    term was chosen. Aggregate the loss with ``aggregate_loss``."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_length: int) -> torch.Tensor:
    """A scalar from a per-token loss (B, T) over the real tokens of ``mask`` (B, T):

    ``token_mean``    sum over every real token of the batch / their number (long responses weigh more);
    ``sequence_mean`` mean over responses of each response's token mean (GRPO's paper; every response
                      weighs the same, so a long response's tokens weigh less);
    ``token_sum``     sum over every real token / (B x ``max_length``) (Dr. GRPO: a constant divisor, so
                      neither a response's length nor the batch's token count rescales its gradient)."""
    m = mask.to(per_token.dtype)
    if mode == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1)
    if mode == "sequence_mean":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if mode == "token_sum":
        return (per_token * m).sum() / (per_token.shape[0] * max_length)
    raise ValueError(f"unknown loss aggregation {mode!r}: expected one of {', '.join(LOSS_AGGREGATIONS)}")
