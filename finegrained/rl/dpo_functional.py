"""DPO, IPO and dense DPO (DDPO) as small pure functions on tensors.

Notation: ``B`` pairs, ``T`` completion tokens (right-padded; ``mask`` True on real completion tokens, the
EOS included, False on padding; the prompt is never part of these tensors). Log-probs are of the pair's
own tokens under a policy, one per completion token.

- DPO (Rafailov et al. 2023), ``loss="sigmoid"``: ``-log sigmoid(beta * h)`` with the margin
  ``h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))`` and sequence log-probs that are
  sums over the completion tokens (``sequence_logprob``).
- IPO (Azar et al. 2023), ``loss="ipo"``: ``(h - 1 / (2 beta))^2`` on the same sums (the paper's
  formula; TRL averages the log-probs per token instead).
- DDPO (Yu et al. 2024, RLHF-V, section 3.2), ``loss="ddpo"``: the sigmoid loss on the *dense* sequence
  log-prob ``log pi(y|x) = (sum_{unchanged} log p + gamma * sum_{changed} log p) / (N_unchanged + gamma *
  N_changed)`` (``weighted_sequence_logprob`` with per-token weights 1 or gamma, see
  ``finegrained.rl.dense_weights``): the tokens of the segments the annotator corrected count gamma times,
  and the sum is normalised by the weighted token count (as RLHF-V writes it, with N = |y_u| + gamma |y_c|).
  With gamma = 1 this is the mean log-prob per token (length-normalised DPO), not DPO's sum.

Implicit rewards, as TRL names and logs them: ``rewards/chosen = beta * (log pi(y_w) - log ref(y_w))``,
``rewards/rejected`` likewise, ``rewards/margins`` their difference, ``rewards/accuracies`` the share of pairs
whose chosen reward is the larger.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "ddpo")


def sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the real tokens' log-probs: ``token_logprobs`` (B, T), ``mask`` (B, T) bool -> (B,)."""
    return (token_logprobs * mask).sum(-1)


def weighted_sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """RLHF-V's dense sequence log-prob: ``sum(w * log p) / sum(w)`` over real tokens.

    ``token_logprobs`` (B, T), ``mask`` (B, T) bool, ``weights`` (B, T) (1 on unchanged tokens, gamma on
    changed ones; values on padding are ignored) -> (B,). A row without real tokens gives 0."""
    w = weights * mask  # (B, T): padding weighs nothing
    return (w * token_logprobs).sum(-1) / w.sum(-1).clamp(min=torch.finfo(w.dtype).tiny)


@dataclass
class PreferenceLoss:
    """Per pair (each (B,)): the loss, the implicit rewards of both sides, the margin ``h`` before ``beta``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    logits: torch.Tensor


def preference_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float, loss_type: str = "sigmoid",
) -> PreferenceLoss:  # fmt: skip
    """DPO (``sigmoid``, also DDPO's: ``ddpo``) or IPO loss per pair from sequence log-probs, each (B,).

    The sequence log-probs are sums for ``sigmoid``/``ipo`` and dense weighted means for ``ddpo`` (the
    caller computes them: ``sequence_logprob`` / ``weighted_sequence_logprob``). The rewards carry no
    gradient (they are for logging)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
    chosen_ratio = policy_chosen - ref_chosen  # (B,)
    rejected_ratio = policy_rejected - ref_rejected  # (B,)
    logits = chosen_ratio - rejected_ratio  # (B,)
    if loss_type == "ipo":
        losses = (logits - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits)
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach(), logits.detach())


def reward_statistics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL's logged figures over pairs (each (B,)): ``rewards/chosen``, ``rewards/rejected`` (means),
    ``rewards/margins`` (mean difference), ``rewards/accuracies`` (share with chosen > rejected)."""
    margins = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": float(chosen_rewards.float().mean()),
        "rewards/rejected": float(rejected_rewards.float().mean()),
        "rewards/margins": float(margins.float().mean()),
        "rewards/accuracies": float((margins > 0).float().mean()),
    }
