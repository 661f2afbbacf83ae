"""The RL math of dense-reward PPO as small pure functions on tensors.

Shapes: B = batch, T = response length (right-padded), K = reward categories, V = vocabulary.
Masks are boolean (or 0/1) with True = real response token (up to and including EOS).
Nothing here touches models, devices or configs; every function is tested against a plain Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (same shape as ``x``); over all entries when
    ``dim`` is None, else along ``dim``. An all-False slice gives 0."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (any shape, ``mask`` same shape); a scalar."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``x`` (B, T) scaled to unit variance over the masked entries; with ``shift_mean`` also centred.
    ``shift_mean=False`` (scale only) is how rewards are whitened: it keeps their sign. Padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean * torch.rsqrt(var + eps)
    return whitened * mask.to(x.dtype)


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each id: ``logits`` (B, T, V) predicting ``ids`` (B, T) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, ids.unsqueeze(-1)).squeeze(-1)  # (B, T, 1) -> (B, T)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: ``logits`` (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both of the above from one log-softmax: ``logits`` (B, T, V), ``ids`` (B, T) -> (B, T), (B, T).
    Both keep their gradient (the update's entropy bonus needs it)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    token_logp = torch.gather(logp, 2, ids.unsqueeze(-1)).squeeze(-1)  # (B, T, 1) -> (B, T)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens, (B, T) each -> (B, T).

    ``k1``: log p - log q (unbiased, can be negative); ``k3``: (r - 1) - log r with r = q / p
    (unbiased and non-negative; Schulman 2020)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: expected k1 or k3")


def combine_rewards(category_rewards: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token total reward: ``category_rewards`` (B, T, K) times ``weights`` (K,) summed over K -> (B, T).
    ``weights=None`` is a plain sum (the scorer has already applied each category's weight)."""
    if weights is None:
        return category_rewards.sum(-1)
    return (category_rewards * weights.to(category_rewards)).sum(-1)


def token_rewards_with_kl(
    score_rewards: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> torch.Tensor:
    """What PPO maximises per token: score rewards (B, T) minus ``kl_coef`` x per-token KL (B, T); 0 on padding."""
    return (score_rewards - kl_coef * kl) * mask.to(score_rewards.dtype)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    Args: ``rewards`` (B, T), ``values`` (B, T) (value before each token's reward), ``mask`` (B, T).
    Returns ``(advantages, returns)``, each (B, T), 0 on padding. The episode ends at the last real token:
    nothing is bootstrapped past it (its next value is 0)."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):  # T is the response length (tens of tokens): a loop over time, not samples
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * m
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss (PPO), all inputs (B, T).

    Returns ``(loss, clip_fraction, approx_kl)``: the masked mean of max(-A r, -A clip(r)), the share of
    tokens where the clipped term was chosen, and the mean of 0.5 (log r)^2 (a KL(old || new) estimate)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * log_ratio.pow(2), mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, inputs (B, T): 0.5 x masked mean of max((v - R)^2, (clip(v, old +- c) - R)^2).
    Returns ``(loss, value_clip_fraction)``."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, fraction.detach()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over masked entries of (B, T) inputs; a scalar
    (1 is a perfect value function, 0 no better than a constant)."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): moves the coefficient so that the measured KL
    approaches ``target``; the proportional error is clipped to [-0.2, 0.2] and scaled by
    ``n_steps / horizon``."""

    def __init__(self, init_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs a positive target and horizon")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
