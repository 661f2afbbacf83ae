"""DPO's data: preference pairs from preference records and from span records' corrections, tokenized.

A pair is (prompt, chosen, rejected). Preference records give their ``chosen`` / ``rejected``; a span
record with a ``correction`` gives chosen = the correction, rejected = the annotated completion, and is
marked ``dense``: dense DPO weighs the tokens its annotator changed (``finegrained.rl.dense_weights``).
A span record without a correction gives no pair (counted, so the trainer can say how many it skipped).

Tokens follow the policy text convention (as ``finegrained sft``): the prompt ids (no special tokens), then
the completion ids and EOS; a prompt too long for the model is cut by ``task.truncate``. The loss covers the
completion tokens (and EOS) only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..data import PreferenceRecord, SpanRecord, inspect_file, record_from_json, validate_record
from ..errors import FinegrainedError, InputError, Problem
from ..schema import AnnotationSchema
from .dense_weights import dense_weights_of_ids


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    dense: bool = False  # from a correction: dense DPO weighs the changed tokens


@dataclass
class PairSource:
    """Pairs read from records, and how many span records had no correction."""

    pairs: list[Pair]
    without_correction: int = 0
    span_records: int = 0


def pairs_from_records(records: Iterable, category: str | None = None) -> PairSource:
    """Pairs of preference records (only ``category``'s when given) and of span records with a correction."""
    source = PairSource([])
    for r in records:
        if isinstance(r, PreferenceRecord):
            if category is None or r.category == category:
                source.pairs.append(Pair(r.id, r.prompt, r.chosen, r.rejected))
        elif isinstance(r, SpanRecord):
            source.span_records += 1
            if r.correction is None:
                source.without_correction += 1
            else:
                source.pairs.append(Pair(r.id, r.prompt, r.correction, r.completion, dense=True))
    return source


def as_paths(value) -> list[str]:
    """``data.train`` and friends: null, one path, or a list of paths."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # a list (an OmegaConf ListConfig from the command line)


def read_files(paths: Sequence[str], schema: AnnotationSchema, expected: str, option: str) -> list:
    """The records of every file (each validated whole; ``InputError`` listing the problems of all); every
    file must hold ``expected`` records (``preference`` or ``span``)."""
    problems: list[Problem] = []
    records: list = []
    for path in paths:
        report = inspect_file(path, schema)
        problems += report.problems
        if not report.problems and report.kind != expected:
            problems.append(Problem(path, None, f"{option} expects {expected} records, this file holds {report.kind} records"))
        records += report.records
    if problems:
        raise InputError(problems[:50])
    return records


def records_from_dicts(objs: Sequence[dict], schema: AnnotationSchema, source: str) -> list:
    """Records built by a function (the built-in task), validated as a file's would be."""
    problems = [p for i, obj in enumerate(objs) for p in validate_record(obj, schema, source, i + 1)]
    if problems:
        raise InputError(problems[:50])
    return [record_from_json(obj) for obj in objs]


def held_out_split(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): about ``fraction`` of the prompts, chosen by a seeded hash of the prompt text, so
    both pairs of one prompt stay on one side and the split does not depend on the order of the files."""
    if fraction <= 0:
        return pairs, []

    def bucket(prompt: str) -> float:
        digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    held = [p for p in pairs if bucket(p.prompt) < fraction]
    train = [p for p in pairs if bucket(p.prompt) >= fraction]
    return train, held


@dataclass
class EncodedPair:
    """Token ids of prompt + completion + EOS per side; ``*_start`` is the index of the first completion token;
    ``*_weights`` one weight per completion token (EOS included): 1, or gamma on changed tokens (dense)."""

    chosen_ids: list[int]
    chosen_start: int
    chosen_weights: list[float]
    rejected_ids: list[int]
    rejected_start: int
    rejected_weights: list[float]


def encode_pair(tokenizer, pair: Pair, max_length: int, truncate: str, gamma: float, dense: bool) -> EncodedPair | None:
    """One pair as token ids (see the module docstring); None when a completion alone does not fit."""
    from .generation import cut_prompt_ids

    eos = tokenizer.eos_token_id
    chosen = tokenizer(pair.chosen, add_special_tokens=False).input_ids
    rejected = tokenizer(pair.rejected, add_special_tokens=False).input_ids
    room = max_length - 1 - max(len(chosen), len(rejected))  # EOS included
    if room < 1:
        return None
    prompt = tokenizer(pair.prompt, add_special_tokens=False).input_ids
    if truncate == "error" and len(prompt) > room:
        raise FinegrainedError(f"pair {pair.id!r}: prompt and completion have {len(prompt) + max_length - room} tokens; "
                               f"the model holds {max_length} (task.truncate=left or right would cut the prompt)")  # fmt: skip
    # an empty prompt: EOS stands in, so that the first completion token has a position predicting it
    prompt = cut_prompt_ids(prompt, room, truncate) or [eos]
    if dense and pair.dense:
        rejected_weights, chosen_weights = dense_weights_of_ids(tokenizer, rejected, chosen, gamma)
    else:
        chosen_weights, rejected_weights = [1.0] * (len(chosen) + 1), [1.0] * (len(rejected) + 1)
    return EncodedPair(prompt + chosen + [eos], len(prompt), chosen_weights, prompt + rejected + [eos], len(prompt), rejected_weights)


def collate_pairs(encoded: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..B-1 the chosen sides, B..2B-1 the rejected ones, right-padded to L tokens:
    ``input_ids`` (2B, L), ``attention_mask`` (2B, L); for the token predicted at each position,
    ``completion_mask`` (2B, L - 1) True on completion tokens and EOS, and ``weights`` (2B, L - 1)."""
    rows = [(e.chosen_ids, e.chosen_start, e.chosen_weights) for e in encoded]
    rows += [(e.rejected_ids, e.rejected_start, e.rejected_weights) for e in encoded]
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    weights = torch.zeros((len(rows), width - 1))
    for i, (ids, start, w) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        # token t (t >= start) is predicted at position t - 1
        completion_mask[i, start - 1 : len(ids) - 1] = True
        weights[i, start - 1 : len(ids) - 1] = torch.tensor(w)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask, "weights": weights}
