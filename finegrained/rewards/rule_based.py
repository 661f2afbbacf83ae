"""Rule-based judges: categories backed by plain Python callables instead of trained reward models.

Each factory returns a judge with the signatures of docs/ARCHITECTURE.md "Judges" and is meant to be
named by ``_target_`` in a reward config:

- span judges ``(prompts, completions, segments) -> p_error per segment`` (0.0 or 1.0 here);
- sequence judges ``(prompts, completions) -> one score per completion`` (higher is better).

They make PPO runnable with no files at all (``experiment=smoke``) and let tests plant a reward whose
optimum is known. Every judge is pure Python (regular expressions compiled once per factory call), with
no model and no per-call setup, so it costs microseconds per segment.

``nan_after`` and ``always_nan`` are test helpers (they exercise the learner's NaN guard), not rewards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Span = tuple[int, int]


def _word_pattern(words: Sequence[str], case_sensitive: bool) -> re.Pattern:
    """One regex matching any of ``words`` as a whole word (not inside a longer word)."""
    if isinstance(words, str):
        words = [words]
    words = [w for w in words if w]
    if not words:
        raise ValueError("needs at least one non-empty word")
    # Lookarounds instead of \b so that words starting or ending with punctuation ("C++") work too.
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?!\w)", 0 if case_sensitive else re.IGNORECASE)


def contains_words(words: Sequence[str], case_sensitive: bool = False):
    """Span judge: a segment is an error (p_error 1.0) when it contains any of ``words`` as a whole word
    (case-insensitive unless ``case_sensitive``); otherwise 0.0. Only the segment's own text is read."""
    pattern = _word_pattern(words, case_sensitive)

    def judge(prompts: Sequence[str], completions: Sequence[str], segments: Sequence[Sequence[Span]]) -> list[list[float]]:
        return [[1.0 if pattern.search(text[s:e]) else 0.0 for s, e in segs] for text, segs in zip(completions, segments)]

    return judge


def share_of_chars(pattern: str = r"[^ -~]"):
    """Span judge with graded judgements: p_error = the share of a segment's non-space characters that
    match the regex character class ``pattern`` (default: anything outside printable ASCII). Meant for
    ``mode: soft``; it gives a freshly initialised policy a signal on every segment."""
    char_class = re.compile(pattern)

    def judge(prompts, completions, segments):
        out = []
        for text, segs in zip(completions, segments):
            row = []
            for s, e in segs:
                chars = [ch for ch in text[s:e] if not ch.isspace()]
                row.append(sum(bool(char_class.match(ch)) for ch in chars) / len(chars) if chars else 0.0)
            out.append(row)
        return out

    return judge


def repetition():
    """Span judge: a segment is an error when its text (case- and space-normalised) already appeared as
    an earlier segment of the same completion."""

    def judge(prompts, completions, segments):
        out = []
        for text, segs in zip(completions, segments):
            seen, flags = set(), []
            for s, e in segs:
                key = " ".join(text[s:e].lower().split())
                flags.append(1.0 if key in seen else 0.0)
                seen.add(key)
            out.append(flags)
        return out

    return judge


def target_length(target_words: int):
    """Sequence judge: ``-|words - target| / target`` (0 at the target length, lower further away)."""
    if target_words <= 0:
        raise ValueError("target_words must be positive")

    def judge(prompts, completions) -> list[float]:
        return [-abs(len(c.split()) - target_words) / target_words for c in completions]

    return judge


def keyword_bonus(words: Sequence[str]):
    """Sequence judge: the number of distinct ``words`` the completion contains as whole words
    (case-insensitive)."""
    if isinstance(words, str):
        words = [words]
    wanted = [_word_pattern([w], case_sensitive=False) for w in dict.fromkeys(words) if w]
    if not wanted:
        raise ValueError("keyword_bonus needs at least one non-empty word")

    def judge(prompts, completions) -> list[float]:
        return [float(sum(bool(p.search(c)) for p in wanted)) for c in completions]

    return judge


def nan_after(calls: int = 0):
    """Test helper, not a reward: a sequence judge that returns 0.0 for its first ``calls`` calls and NaN
    afterwards (the learner must stop with the iteration and phase, keeping its checkpoints)."""
    seen = {"calls": 0}

    def judge(prompts, completions) -> list[float]:
        seen["calls"] += 1
        return [0.0 if seen["calls"] <= calls else float("nan")] * len(completions)

    return judge


def always_nan():
    """Test helper, not a reward: a sequence judge that always returns NaN."""

    def judge(prompts, completions) -> list[float]:
        return [float("nan")] * len(completions)

    return judge
