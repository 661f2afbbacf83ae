"""Batched generation from a causal LM, following the project's policy text convention.

Prompt ids are ``tokenizer(prompt, add_special_tokens=False).input_ids``; generation continues them
(left-padded, KV cache through ``model.generate``). A response is cut after its first EOS; its text is
what the reward models and the oracle judge: the decoded ids before EOS, special tokens skipped.
Used by ``finegrained evaluate``, ``finegrained demo`` and ``finegrained sample``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Generation:
    prompt: str
    completion: str
    response_ids: list[int]  # generated ids up to and including the first EOS (if any)
    ended: bool  # True when the model produced EOS before max_new_tokens


def load_policy(name_or_path: str, device: str | torch.device | None = None):
    """A causal LM and its tokenizer from a local HF directory (checked by ``model_dirs.load_causal_lm``:
    a reward model or a broken directory is refused), in eval mode, left padding."""
    from .errors import FinegrainedError
    from .model_dirs import load_causal_lm

    model, tokenizer = load_causal_lm(name_or_path, "a policy")
    if tokenizer.eos_token_id is None:
        raise FinegrainedError(f"{name_or_path}: cannot use it as a policy: its tokenizer has no EOS token")
    prepare_tokenizer(tokenizer)
    model.to(device or "cpu").eval()
    return model, tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for generation; a pad token (EOS when the tokenizer has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids (B, P) and mask (B, P), True = real token."""
    rows = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = True
    return ids.to(device), mask.to(device)


def cut_at_eos(ids: list[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """Ids up to and including the first EOS, and whether there was one."""
    if eos_token_id is not None and eos_token_id in ids:
        return ids[: ids.index(eos_token_id) + 1], True
    return ids, False


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 96,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
    progress: bool = False,
) -> list[Generation]:
    """Generate one completion per prompt, batched; deterministic for a fixed ``seed``."""
    from .rewards.placement import decode_with_offsets

    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": top_p} if do_sample else {"do_sample": False}
    results: list[Generation] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = prompts[start : start + batch_size]
        ids, mask = encode_prompts(tokenizer, batch, device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask.long(),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        responses = [cut_at_eos(row, tokenizer.eos_token_id) for row in out[:, ids.shape[1] :].tolist()]
        decoded = decode_with_offsets(tokenizer, [r for r, _ in responses])
        results += [
            Generation(prompt=p, completion=d.text, response_ids=r, ended=ended)
            for p, d, (r, ended) in zip(batch, decoded, responses)
        ]
    return results


@torch.inference_mode()
def response_kl(policy, reference, tokenizer, generations: list[Generation], batch_size: int = 32) -> list[float]:
    """Per generation, sum over its response tokens of the exact KL(policy || reference) of the next-token
    distributions along the generated path (non-negative for any decoding, greedy included)."""
    import torch.nn.functional as F

    device = next(policy.parameters()).device
    kls: list[float] = []
    for start in range(0, len(generations), batch_size):
        batch = generations[start : start + batch_size]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, [g.prompt for g in batch], device)
        width = max(1, max(len(g.response_ids) for g in batch))
        resp = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        resp_mask = torch.zeros((len(batch), width), dtype=torch.bool, device=device)
        for i, g in enumerate(batch):
            resp[i, : len(g.response_ids)] = torch.tensor(g.response_ids, device=device)
            resp_mask[i, : len(g.response_ids)] = True
        ids = torch.cat([prompt_ids, resp], dim=1)  # (B, P + T)
        mask = torch.cat([prompt_mask, resp_mask], dim=1)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        P = prompt_ids.shape[1]
        # logits at position t predict token t + 1: response token j is predicted at P + j - 1
        logp = F.log_softmax(policy(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids).logits[:, P - 1 : -1].float(), -1)
        logq = F.log_softmax(reference(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids).logits[:, P - 1 : -1].float(), -1)
        per_token = (logp.exp() * (logp - logq)).sum(-1)  # (B, T)
        kls += (per_token * resp_mask).sum(-1).tolist()
    return kls
