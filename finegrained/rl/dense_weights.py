"""Dense DPO's token weights: which tokens of an original and a corrected completion the annotator changed.

The two texts are compared character by character (``difflib.SequenceMatcher``, no junk heuristic). A
character is *changed* when it lies in a replaced, deleted (original side) or inserted (corrected side)
stretch. A pure insertion has no characters on the other side; there it marks the character right after
the insertion point: the place where that side went on differently (its first token "should" have been
the inserted text). An insertion at the very end marks the other side's end position, which belongs to the
EOS token: the original stopped where the correction went on, or went on where the correction stopped.

Tokens map to characters through their exact char ends (``finegrained.rewards.placement.decode_with_offsets``,
the reward placement's offsets; never by re-tokenising): token k covers ``[ends[k - 1], ends[k])``. A token
is changed when any character it covers is; a token that completes no character (the first bytes of a
multi-byte character) belongs to the character it starts, the one at its end position; the EOS token
covers the end position ``len(text)``. Changed tokens weigh ``gamma``, the others 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def changed_characters(original: str, corrected: str) -> tuple[list[bool], list[bool]]:
    """Per side, ``len(text) + 1`` flags: each character changed or not, and last the end position
    (the EOS's), marked when the other side inserted text at the very end (see the module docstring)."""
    a = [False] * (len(original) + 1)
    b = [False] * (len(corrected) + 1)
    matcher = difflib.SequenceMatcher(None, original, corrected, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if i2 > i1:
            a[i1:i2] = [True] * (i2 - i1)
        else:  # an insertion into the original: its character after the insertion point
            a[i1] = True
        if j2 > j1:
            b[j1:j2] = [True] * (j2 - j1)
        else:  # a deletion from the original: the corrected side's character after the deletion point
            b[j1] = True
    return a, b


def token_flags(changed: Sequence[bool], token_ends: Sequence[int], with_eos: bool) -> list[bool]:
    """One flag per token: ``changed`` (``len(text) + 1`` flags from ``changed_characters``), ``token_ends``
    the text tokens' exclusive char ends (non-decreasing, the last equal to ``len(text)``); with ``with_eos``
    one more flag for the EOS, which covers the end position."""
    n = len(changed) - 1
    flags = []
    start = 0
    for end in token_ends:
        if end > start:
            flags.append(any(changed[start:end]))
        else:  # completes no character: the character it starts (the end position after the text)
            flags.append(changed[min(end, n)])
        start = max(start, end)
    if with_eos:
        flags.append(changed[n])
    return flags


def dense_token_weights(
    original: str, corrected: str, original_ends: Sequence[int], corrected_ends: Sequence[int], gamma: float,
    with_eos: bool = True,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Weights (1 or ``gamma``) of the original's and the corrected completion's tokens (EOS last when
    ``with_eos``): ``original_ends`` / ``corrected_ends`` are their text tokens' char ends in those texts."""
    changed_a, changed_b = changed_characters(original, corrected)
    weights = []
    for changed, ends in ((changed_a, original_ends), (changed_b, corrected_ends)):
        weights.append([gamma if flag else 1.0 for flag in token_flags(changed, ends, with_eos)])
    return weights[0], weights[1]


def dense_weights_of_ids(tokenizer, original_ids: Sequence[int], corrected_ids: Sequence[int], gamma: float) -> tuple[list[float], list[float]]:
    """Weights of two completions given as token ids (without EOS), one more weight each for the EOS that
    follows them. The texts compared are the ids decoded (what the tokens spell), with each token's exact
    char end from ``decode_with_offsets``."""
    from ..rewards.placement import decode_with_offsets

    original, corrected = decode_with_offsets(tokenizer, [list(original_ids), list(corrected_ids)])
    return dense_token_weights(original.text, corrected.text, original.token_ends, corrected.token_ends, gamma)
