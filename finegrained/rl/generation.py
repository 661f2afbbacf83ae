"""Batched generation from a causal LM, following the project's policy text convention.

Prompt ids are ``tokenizer(prompt, add_special_tokens=False).input_ids``; generation continues them
(left-padded, KV cache through ``model.generate``). A response is cut after its first EOS; its text is
what the reward models and the oracle judge: the decoded ids before EOS, special tokens skipped.
Used by ``finegrained evaluate``, ``finegrained demo``, ``finegrained sample`` and PPO's rollouts.

Long prompts. A causal LM has a position limit (GPT-2's ``n_positions``); prompt and response together
must fit in it, so a prompt may keep at most ``limit - max_new_tokens`` tokens (``prompt_token_budget``).
The rule (``task.truncate`` / ``sample --truncate``): ``left`` drops a longer prompt's *first* tokens and
keeps its end, the text generation continues from; ``right`` keeps its *first* tokens and drops its end
(for prompts that open with what matters, such as QA-Feedback's ``question: ... context: ...``, whose
question a left cut would lose; the paper's T5 encoder cut its input the same way); ``error`` refuses,
naming every record too long. ``fit_prompts`` counts and reports either way;
``encode_prompts(..., max_tokens=budget, truncate=rule)`` applies the cut (``cut_prompt_ids``).
The prompt *text* is never changed: records written out and the reward models see the whole prompt.
Only our own settings shape decoding (``generation_settings`` + ``generate_ids``): a pretrained model's
``generation_config.json`` may set ``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``,
``typical_p``, ``min_p``, ... and transformers fills every field a caller leaves unset from it, which would
silently change the distribution we sample from (and make PPO's log-probs belong to another one).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

TRUNCATE_RULES = ("left", "right", "error")


@dataclass
class Generation:
    prompt: str
    completion: str
    response_ids: list[int]  # generated ids up to and including the first EOS (if any)
    ended: bool  # True when the model produced EOS before max_new_tokens
    prompt_budget: int | None = None  # the prompt kept at most this many tokens; None: no limit
    prompt_truncate: str = "left"  # which of them: left = its last tokens, right = its first (TRUNCATE_RULES)


def load_policy(name_or_path: str, device: str | torch.device | None = None, option: str | None = None):
    """A causal LM and its tokenizer from an HF directory or hub id (checked by ``model_dirs.load_causal_lm``:
    a reward model or a broken directory is refused), in eval mode, left padding. ``option`` names the
    setting it came from in error messages (e.g. ``policies.a``)."""
    from ..errors import FinegrainedError
    from ..model_dirs import check_local_source, load_causal_lm

    if option:
        check_local_source(name_or_path, option)
    model, tokenizer = load_causal_lm(name_or_path, f"a policy ({option})" if option else "a policy")
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


def max_positions(model) -> int | None:
    """The most positions ``model`` can attend over (``n_positions``, ``max_position_embeddings``,
    ``n_ctx``), or None when its config states none (e.g. rotary models without a limit)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_token_budget(models: Sequence, max_new_tokens: int) -> int | None:
    """Prompt tokens that still leave room for ``max_new_tokens`` in every model of ``models`` (the policy,
    and any model that reads prompt + response, such as a separate value model); None: no limit."""
    from ..errors import FinegrainedError

    limits = [(m, n) for m in models if (n := max_positions(m)) is not None]
    if not limits:
        return None
    limit = min(n for _, n in limits)
    if max_new_tokens >= limit:
        raise FinegrainedError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt: the model holds "
                               f"{limit} positions (prompt + response); lower max_new_tokens")  # fmt: skip
    return limit - max_new_tokens


@dataclass
class PromptFit:
    """What fitting prompts to a budget did: ``n_truncated`` of ``n`` prompts cut by ``rule``, ``dropped`` tokens each."""

    n: int
    budget: int | None
    dropped: list[int]
    rule: str = "left"

    @property
    def n_truncated(self) -> int:
        return len(self.dropped)

    def message(self, who: str) -> str:
        if not self.dropped:
            return f"[{who}] every prompt fits in {self.budget} tokens"
        kept = "first" if self.rule == "right" else "last"
        return (f"[{who}] cut {self.n_truncated} of {self.n} prompts from the {self.rule} to their {kept} {self.budget} tokens "
                f"(dropped {min(self.dropped)}-{max(self.dropped)} tokens, mean {sum(self.dropped) / len(self.dropped):.0f})")  # fmt: skip


def fit_prompts(tokenizer, records: Sequence[dict], budget: int | None, rule: str, *, who: str, source: str = "prompts",
                quiet: bool = False) -> PromptFit:  # fmt: skip
    """Check every record's prompt against ``budget`` tokens under ``rule`` (``left`` | ``right`` | ``error``;
    see the module docstring). ``left`` / ``right``: counts and logs the cuts; ``error``: raises
    ``InputError`` naming each record that is too long (``SOURCE: id: ...``)."""
    from ..config import log
    from ..errors import FinegrainedError, InputError, Problem

    if rule not in TRUNCATE_RULES:
        raise FinegrainedError(f"truncate={rule!r}: expected one of {', '.join(TRUNCATE_RULES)}")
    if budget is None or not records:
        return PromptFit(len(records), budget, [], rule)
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in records], add_special_tokens=False).input_ids]
    too_long = [(r, n) for r, n in zip(records, lengths) if n > budget]
    if too_long and rule == "error":
        problems = [Problem(source, None, f"record {r['id']!r} has {n} tokens; the policy allows {budget} with "
                            f"its max_new_tokens (truncate=left would keep the last {budget}, truncate=right the first {budget})",
                            "prompt")
                    for r, n in too_long]  # fmt: skip
        raise InputError(problems[:50])
    fit = PromptFit(len(records), budget, [n - budget for _, n in too_long], rule)
    if too_long and not quiet:
        log(fit.message(who))
    return fit


def cut_prompt_ids(ids: list[int], max_tokens: int | None, rule: str = "left") -> list[int]:
    """``ids`` cut to at most ``max_tokens`` (None: no limit) by ``rule``: ``left`` keeps the last tokens,
    ``right`` the first. ``error`` cuts nothing and raises ``ValueError`` on a longer prompt (``fit_prompts``
    refuses those before any generation, so reaching it is a bug)."""
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    if rule == "left":
        return ids[len(ids) - max_tokens :]
    if rule == "right":
        return ids[:max_tokens]
    raise ValueError(f"a prompt of {len(ids)} tokens exceeds max_tokens={max_tokens} under truncate={rule!r}")


def left_pad(rows: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> left-padded ids (B, P) and mask (B, P), True = real token."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = True
    return ids.to(device), mask.to(device)


def encode_prompts(tokenizer, prompts: list[str], device, max_tokens: int | None = None,
                   truncate: str = "left") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Left-padded prompt ids (B, P) and mask (B, P), True = real token. A prompt longer than
    ``max_tokens`` is cut by ``truncate`` (``cut_prompt_ids``: ``left`` keeps its last tokens, ``right`` its
    first; see ``fit_prompts``)."""
    rows = [cut_prompt_ids(tokenizer(p, add_special_tokens=False).input_ids, max_tokens, truncate) for p in prompts]
    return left_pad(rows, tokenizer.pad_token_id, device)


def cut_at_eos(ids: list[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """Ids up to and including the first EOS, and whether there was one."""
    if eos_token_id is not None and eos_token_id in ids:
        return ids[: ids.index(eos_token_id) + 1], True
    return ids, False


def generation_settings(
    tokenizer, *, max_new_tokens: int, do_sample: bool, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
    min_new_tokens: int = 0,
):  # fmt: skip
    """A ``GenerationConfig`` holding our settings; sampling with ``top_k=0`` means no top-k (transformers'
    own default would be 50). Every other field is left unset, to be filled by ``generate_ids`` with
    transformers' neutral defaults, never with a model's."""
    from transformers import GenerationConfig

    sampling = {"temperature": float(temperature), "top_k": int(top_k or 0), "top_p": float(1.0 if top_p is None else top_p)}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None, do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **(sampling if do_sample else {}),
    )  # fmt: skip


@contextmanager
def neutral_generation_config(model):
    """Within the block ``model.generation_config`` is a blank ``GenerationConfig`` (transformers' global
    defaults: no repetition penalty, no n-gram blocking, no banned words...); restored afterwards."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield model
    finally:
        model.generation_config = saved


def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings) -> torch.Tensor:
    """``model.generate`` under ``settings`` (from ``generation_settings``) and nothing else: the prompt
    (B, P) and the generated ids, (B, P + T)."""
    with neutral_generation_config(model):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask.long(), generation_config=settings)


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
    truncate: str = "left",
) -> list[Generation]:
    """Generate one completion per prompt, batched; deterministic for a fixed ``seed``. Prompts longer
    than the model allows with ``max_new_tokens`` are cut by ``truncate`` (``left``: keep their last tokens,
    ``right``: their first; call ``fit_prompts`` first to count them or refuse them)."""
    from ..progress import Progress
    from ..rewards.placement import decode_with_offsets

    device = next(model.parameters()).device
    budget = prompt_token_budget([model], max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    settings = generation_settings(
        tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p
    )
    results: list[Generation] = []
    starts = range(0, len(prompts), batch_size)
    bar = Progress(len(starts), "generate", unit="batches", enabled=progress)
    for start in starts:
        batch = prompts[start : start + batch_size]
        ids, mask = encode_prompts(tokenizer, batch, device, max_tokens=budget, truncate=truncate)
        out = generate_ids(model, ids, mask, settings)
        responses = [cut_at_eos(row, tokenizer.eos_token_id) for row in out[:, ids.shape[1] :].tolist()]
        decoded = decode_with_offsets(tokenizer, [r for r, _ in responses])
        results += [
            Generation(prompt=p, completion=d.text, response_ids=r, ended=ended, prompt_budget=budget, prompt_truncate=truncate)
            for p, d, (r, ended) in zip(batch, decoded, responses)
        ]
        bar.update(1)
    bar.close()
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
        width = max(1, max(len(g.response_ids) for g in batch))
        # each prompt cut exactly as generate cut it, so the KL is measured on what was generated from
        rows = [cut_prompt_ids(tokenizer(g.prompt, add_special_tokens=False).input_ids, g.prompt_budget, g.prompt_truncate)
                for g in batch]  # fmt: skip
        prompt_ids, prompt_mask = left_pad(rows, tokenizer.pad_token_id, device)
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
