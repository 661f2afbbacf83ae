"""The RL math of dense-reward PPO as small pure functions on tensors.

Shapes: B = batch, T = response length (right-padded), K = reward categories, V = vocabulary.
Masks are boolean (or 0/1) with True = real response token (up to and including EOS).
Nothing here touches models, devices or configs; every function is tested against a plain Python loop.
Statistics that must be the same on every process (whitening, the KL that drives the controller) take
``sum_across``: a function that sums a tensor over processes (``accelerator.reduce(t, "sum")``); with it
every rank computes what one process holding the whole batch would; ``None`` means one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

SumAcross = Callable[[torch.Tensor], torch.Tensor]


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


def global_masked_moments(
    x: torch.Tensor, mask: torch.Tensor, sum_across: SumAcross | None = None, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (scalars) of the masked entries of ``x`` (any shape, ``mask`` same shape) over
    every process: the sums and counts are added across processes before dividing, so each rank gets the
    statistics of the whole batch (padding widths may differ between ranks). Two passes (mean, then the
    squared deviations from it), as ``masked_mean``/``masked_var``: on one process the result is the same."""
    m = mask.to(x.dtype)
    totals = torch.stack([(x * m).sum(), m.sum()])  # (2,): sum, count
    if sum_across is not None:
        totals = sum_across(totals)
    total, n = totals[0], totals[1]
    mean = total / n.clamp(min=1)
    squares = ((x - mean) ** 2 * m).sum()
    if sum_across is not None:
        squares = sum_across(squares)
    var = squares / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return mean, var


def global_mean(values: torch.Tensor, sum_across: SumAcross | None = None) -> torch.Tensor:
    """Mean of every entry of ``values`` (any shape) over all processes (sum and count added across them)."""
    totals = torch.stack([values.sum(), torch.tensor(float(values.numel()), dtype=values.dtype, device=values.device)])
    if sum_across is not None:
        totals = sum_across(totals)
    return totals[0] / totals[1].clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, sum_across: SumAcross | None = None
) -> torch.Tensor:
    """``x`` (B, T) scaled to unit variance over the masked entries; with ``shift_mean`` also centred.
    ``shift_mean=False`` (scale only) is how rewards are whitened: it keeps their sign. Padding stays 0.
    The mean and variance are those of every process's entries (``global_masked_moments``)."""
    mean, var = global_masked_moments(x, mask, sum_across)
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


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The logits the sampler draws from: ``logits`` (B, T, V) (any leading shape) -> float32 (B, T, V).

    Divided by ``temperature``; then, with ``top_k > 0``, every token whose logit is below the k-th largest
    set to -inf (ties with the k-th kept); then, with ``top_p < 1``, every token outside the smallest set
    of most likely tokens whose probability reaches ``top_p`` set to -inf (the most likely token always
    kept). Order, tie and boundary rules are those of transformers' ``TemperatureLogitsWarper``,
    ``TopKLogitsWarper`` and ``TopPLogitsWarper``, so ``softmax`` of the result is the distribution that
    ``generate(do_sample=True, temperature, top_k, top_p)`` samples each token from."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scores = logits.float() / temperature
    if top_k and top_k > 0:
        k = min(int(top_k), scores.shape[-1])
        kth_largest = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, T, 1)
        scores = scores.masked_fill(scores < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, sorted_indices = torch.sort(scores, dim=-1, descending=False)  # ascending, as HF
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - top_p)
        sorted_remove[..., -1:] = False  # keep at least the most likely token
        remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)  # back to vocabulary order
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def suppress_eos(logits: torch.Tensor, eos_token_id: int | None, min_new_tokens: int) -> torch.Tensor:
    """``logits`` (B, T, V) with the EOS logit set to -inf at response positions ``t < min_new_tokens``
    (what transformers' ``MinNewTokensLengthLogitsProcessor`` does while sampling, before the warpers)."""
    if eos_token_id is None or min_new_tokens <= 0:
        return logits
    early = torch.arange(logits.shape[1], device=logits.device) < min_new_tokens  # (T,)
    is_eos = torch.arange(logits.shape[-1], device=logits.device) == eos_token_id  # (V,)
    return logits.masked_fill(early[:, None] & is_eos[None, :], float("-inf"))  # (T, V) broadcast over B


def sampling_logprobs_and_entropy(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    eos_token_id: int | None = None, min_new_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Log-probs (B, T) of ``ids`` (B, T) and entropies (B, T) under the distribution the sampler draws
    from: raw ``logits`` (B, T, V) -> ``suppress_eos`` -> ``process_logits`` -> softmax. Both keep their
    gradient.

    The token in ``ids`` always stays in the support, so every log-prob is finite: generate's KV-cache
    logits and a full forward pass differ in the last bits, which can put a sampled token just outside a
    recomputed top-k / top-p set; and in the PPO epochs a token the updated policy would no longer keep
    gets a small, finite ratio instead of log-prob -inf (its clipped term then carries no gradient, or
    pushes it back up when its advantage is positive). Entropy is taken over the kept tokens."""
    scores = process_logits(suppress_eos(logits, eos_token_id, min_new_tokens), temperature, top_k, top_p)
    truncated = bool(top_k and top_k > 0) or (top_p is not None and top_p < 1.0) or (eos_token_id is not None and min_new_tokens > 0)
    if not truncated:
        return logprobs_and_entropy(scores, ids)
    index = ids.unsqueeze(-1)  # (B, T, 1)
    tempered = logits.float() / temperature
    scores = scores.scatter(-1, index, tempered.gather(-1, index))  # the sampled token back in the support
    logp = F.log_softmax(scores, dim=-1)
    token_logp = torch.gather(logp, -1, index).squeeze(-1)  # (B, T, 1) -> (B, T)
    # p log p is 0 outside the support; masking log p (not the product) keeps the gradient free of 0 x inf
    entropy = -(logp.exp() * logp.masked_fill(torch.isneginf(scores), 0.0)).sum(-1)
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


def accumulation_groups(n_minibatches: int, grad_accum: int) -> list[range]:
    """Consecutive minibatch indices sharing one optimizer step: groups of ``grad_accum``, the last one
    shorter when ``grad_accum`` does not divide ``n_minibatches``. Each minibatch's loss is divided by the
    length of *its* group, so every step follows the mean of its group's minibatch losses (a short last
    group is not under-weighted, as dividing by ``grad_accum`` would make it)."""
    step = max(1, int(grad_accum))
    return [range(start, min(start + step, n_minibatches)) for start in range(0, n_minibatches, step)]


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
