"""Step 1 of PPO: sample responses and compute the per-token quantities the update needs.

Prompts are left-padded; responses are right-padded after their first EOS. ``response_mask`` is True for
generated tokens up to and including the first EOS (the convention of ``finegrained.rl.types``).

Which distribution the log-probs belong to (``TokenDistribution``): the policy's are taken under exactly
the distribution ``generate`` samples from (temperature, then top-k / top-p, EOS held back for
``min_new_tokens``), in the rollout and in every PPO epoch alike, so the PPO ratio compares the sampling
distribution before and after an update. The reference's are taken under the same temperature but no
top-k / top-p truncation: its support is then the whole vocabulary, so the KL estimate
log pi(y) - log ref(y) is finite for every token the policy can sample (truncating the reference to its
own top-k set would make it -inf wherever the two sets differ).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .generation import encode_prompts, generate_ids, generation_settings
from .functional import sampling_logprobs_and_entropy


@dataclass(frozen=True)
class TokenDistribution:
    """The next-token distribution log-probs are taken under (see the module docstring)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0
    eos_token_id: int | None = None

    @classmethod
    def of_sampling(cls, generation_cfg, eos_token_id: int | None) -> TokenDistribution:
        """The policy's distribution under the ``generation`` config group (temperature, top_k, top_p, min_new_tokens)."""
        return cls(
            temperature=float(generation_cfg.temperature), top_k=int(generation_cfg.top_k or 0),
            top_p=float(1.0 if generation_cfg.top_p is None else generation_cfg.top_p),
            min_new_tokens=int(generation_cfg.min_new_tokens or 0), eos_token_id=eos_token_id,
        )  # fmt: skip

    def for_reference(self) -> TokenDistribution:
        """Same temperature, nothing truncated: the reference keeps the whole vocabulary as its support."""
        return replace(self, top_k=0, top_p=1.0, min_new_tokens=0)

    def logprobs_and_entropy(self, logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits`` (B, T, V), ``ids`` (B, T) -> log-probs (B, T), entropies (B, T)."""
        return sampling_logprobs_and_entropy(
            logits, ids, self.temperature, self.top_k, self.top_p, self.eos_token_id, self.min_new_tokens
        )


@torch.no_grad()
def sample_responses(
    policy, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
    top_p: float = 1.0, min_new_tokens: int = 0, max_prompt_tokens: int | None = None, truncate: str = "left",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Sample one response per prompt with KV cache. Returns ``query_ids`` (B, P), ``query_mask`` (B, P),
    ``response_ids`` (B, T) and ``response_mask`` (B, T); padding after EOS is the pad id. A prompt longer
    than ``max_prompt_tokens`` is cut by ``truncate`` (``left``: keeps its last tokens, ``right``: its first;
    ``finegrained.rl.generation.encode_prompts``). Only these
    settings shape sampling: the policy's own ``generation_config`` is not consulted (``generate_ids``)."""
    device = next(policy.parameters()).device
    query_ids, query_mask = encode_prompts(tokenizer, prompts, device, max_tokens=max_prompt_tokens, truncate=truncate)
    settings = generation_settings(
        tokenizer, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
        min_new_tokens=min_new_tokens,
    )  # fmt: skip
    out = generate_ids(policy, query_ids, query_mask, settings)
    response_ids = out[:, query_ids.shape[1] :]  # (B, T)
    is_eos = response_ids == tokenizer.eos_token_id
    # Tokens after the first EOS: a running count of EOS seen *before* each position is positive.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    response_mask = eos_before == 0
    response_ids = response_ids.masked_fill(~response_mask, tokenizer.pad_token_id)
    return query_ids, query_mask, response_ids, response_mask


def joint_inputs(query_ids, query_mask, response_ids, response_mask):
    """Prompt and response side by side: ids, attention mask and position ids, each (B, P + T)."""
    ids = torch.cat([query_ids, response_ids], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids


def policy_forward(
    policy, ids, mask, position_ids, prompt_length: int, response_ids, output_hidden_states: bool = False,
    distribution: TokenDistribution = TokenDistribution(),
):  # fmt: skip
    """Log-probs (B, T) and entropies (B, T) of the response tokens under ``distribution``; optionally the
    last hidden states (B, T, H) at the positions that predict them. Logits at position i predict token
    i + 1, so response token t is predicted at ``prompt_length - 1 + t``: only those T logits rows are
    computed when the model accepts ``logits_to_keep`` (the LM head over the prompt would be wasted work)."""
    T = response_ids.shape[1]
    inputs = {"input_ids": ids, "attention_mask": mask.long(), "position_ids": position_ids, "output_hidden_states": output_hidden_states}
    try:
        out = policy(**inputs, logits_to_keep=T + 1)
    except TypeError:  # a model without logits_to_keep computes every position's logits
        out = policy(**inputs)
    logits = out.logits[:, -(T + 1) : -1]  # (B, T, V)
    logprobs, entropy = distribution.logprobs_and_entropy(logits, response_ids)
    hidden = out.hidden_states[-1][:, prompt_length - 1 : -1] if output_hidden_states else None
    return logprobs, entropy, hidden
