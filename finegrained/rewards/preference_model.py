"""Preference (sequence) reward models: one scalar per (prompt, completion), Bradley-Terry trained.

Input layout is the span models' ``InputLayout`` without markers: ``prefix prompt separator completion
suffix``. When too long, the prompt is cut first (keeping its beginning), then the completion's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .span_model import InputLayout, tokenize_pieces


@dataclass
class SequenceEncoding:
    """Token ids of one input and what truncation removed."""

    input_ids: list[int]
    prompt_tokens_dropped: int = 0
    completion_tokens_dropped: int = 0


def encode_sequence_inputs(
    tokenizer,
    layout: InputLayout,
    prompts: Sequence[str] | None,
    completions: Sequence[str],
    max_length: int,
) -> list[SequenceEncoding]:
    """Encode a batch of (prompt, completion); ``prompts=None`` for categories that ignore the prompt."""
    completion_ids = tokenize_pieces(tokenizer, completions)
    prompt_ids = tokenize_pieces(tokenizer, prompts) if prompts is not None else [None] * len(completions)
    room = max_length - len(layout.prefix) - len(layout.suffix)
    out = []
    for p_ids, c_ids in zip(prompt_ids, completion_ids):
        separator = layout.separator if p_ids is not None else ()
        c_kept = c_ids[: max(room - len(separator), 0)]
        p_kept = (p_ids or [])[: max(room - len(separator) - len(c_kept), 0)]
        ids = [*layout.prefix, *p_kept, *separator, *c_kept, *layout.suffix]
        out.append(SequenceEncoding(ids, len(p_ids or []) - len(p_kept), len(c_ids) - len(c_kept)))
    return out


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad; returns ``input_ids`` and ``attention_mask``, both ``(B, L)`` (mask 1 = real token)."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(r_chosen - r_rejected)``; both ``(N,)``."""
    return -torch.nn.functional.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean()


def pairwise_metrics(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> dict[str, float]:
    """Share of pairs where the chosen output scores strictly higher (ties count as wrong)."""
    n = len(chosen_scores)
    wins = sum(1 for c, r in zip(chosen_scores, rejected_scores) if c > r)
    return {"pairwise_accuracy": wins / n if n else float("nan"), "n_pairs": n}


def normalisation_stats(scores: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` of raw scores (population std; 1.0 when the scores do not vary)."""
    t = torch.tensor(list(scores), dtype=torch.float64)
    if t.numel() == 0:
        return {"mean": 0.0, "std": 1.0}
    std = float(t.std(unbiased=False))
    return {"mean": float(t.mean()), "std": std if std > 1e-8 else 1.0}


@dataclass
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str


def load_preference_pairs(path, schema, category) -> list[PreferencePair]:
    """Read the pairs of ``category`` from a preference JSONL file validated against ``schema``."""
    from ..data import load_preference_records

    records = load_preference_records(path, schema, category=category.name)
    return [PreferencePair(str(r.id), r.prompt, r.chosen, r.rejected) for r in records]
