"""What a reward model sees of the prompt: its category's ``context`` mode.

- ``none``: no prompt (the completion alone);
- ``question``: ``"question: " + Q``, where Q is the named group ``question`` of the schema's
  ``prompt.question_pattern`` matched against the prompt (QA-Feedback's relevance model: the paper reads
  ``question: Q answer: A``, passages left out);
- ``prompt``: the whole prompt.

Training, evaluation and RL-time scoring must give a model the same view, so every reward-model input
goes through ``PromptView.of`` and the view is stored in the model's ``finegrained.json``
(``context``, ``question_pattern``). Directories from before this key hold only ``uses_context``
(true = ``prompt``, false = ``none``) and still load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data import cap_problems
from ..errors import FinegrainedError, InputError, Problem
from ..schema import CONTEXT_MODES, Category

QUESTION_PREFIX = "question: "


class NoQuestionFound(FinegrainedError):
    """The question pattern finds no question in a prompt."""


def reward_model_prompt(prompt: str, mode: str, question_re: re.Pattern | None) -> str | None:
    """The prompt text a reward model of context ``mode`` reads; None for ``none``.

    Raises ``NoQuestionFound`` when ``mode`` is ``question`` and ``question_re`` finds no (non-blank)
    group ``question`` in ``prompt``.
    """
    if mode == "none":
        return None
    if mode == "prompt":
        return prompt
    if mode != "question":
        raise ValueError(f"unknown context mode {mode!r} (expected one of {', '.join(CONTEXT_MODES)})")
    if question_re is None:
        raise ValueError("context 'question' needs a question pattern")
    match = question_re.search(prompt)
    question = match.group("question").strip() if match and match.group("question") else ""
    if not question:
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        raise NoQuestionFound(f"the question pattern {question_re.pattern!r} finds no question in the prompt {shown!r}")
    return QUESTION_PREFIX + question


@dataclass(frozen=True)
class PromptView:
    """A context mode with its compiled question pattern (``pattern`` only for mode ``question``)."""

    mode: str = "prompt"
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in CONTEXT_MODES:
            raise FinegrainedError(f"unknown context {self.mode!r} (expected one of {', '.join(CONTEXT_MODES)})")
        if self.mode == "question" and not self.pattern:
            raise FinegrainedError("context: question needs a question_pattern (the schema's prompt.question_pattern)")
        compiled = None
        if self.mode == "question":
            try:
                compiled = re.compile(self.pattern)
            except re.error as e:
                raise FinegrainedError(f"question_pattern {self.pattern!r}: not a valid regular expression: {e}") from None
            if "question" not in compiled.groupindex:
                raise FinegrainedError(f"question_pattern {self.pattern!r}: needs a named group 'question'")
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def for_category(cls, category: Category, question_pattern: str | None) -> PromptView:
        """The view of ``category`` (the schema's ``question_pattern`` kept only for mode ``question``)."""
        return cls(category.context, question_pattern if category.context == "question" else None)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> PromptView:
        """The view stored in a ``finegrained.json`` (or an entry of it); old ones hold only ``uses_context``."""
        if "context" in metadata:
            return cls(str(metadata["context"]), metadata.get("question_pattern"))
        return cls("prompt" if bool(metadata.get("uses_context", True)) else "none")

    def to_metadata(self) -> dict[str, Any]:
        return {"context": self.mode, "question_pattern": self.pattern}

    @property
    def uses_prompt(self) -> bool:
        return self.mode != "none"

    def of(self, prompt: str) -> str | None:
        """What the model reads of ``prompt`` (``reward_model_prompt``); raises ``NoQuestionFound``."""
        return reward_model_prompt(prompt, self.mode, self._compiled)  # type: ignore[attr-defined]

    def of_many(self, prompts: Sequence[str]) -> list[str] | None:
        """``of`` for each prompt; None (no prompts at all) for mode ``none``."""
        return None if self.mode == "none" else [self.of(p) for p in prompts]

    def check_records(self, records: Sequence[Any], source: str, max_problems: int = 20) -> None:
        """Raise ``InputError`` naming every record (by ``id``) whose prompt the view cannot read."""
        if self.mode != "question":
            return
        problems = []
        for record in records:
            try:
                self.of(record.prompt)
            except NoQuestionFound as e:
                problems.append(Problem(str(source), None, f"record {record.id!r}: {e}", "prompt"))
        if problems:
            raise InputError(cap_problems(problems, max_problems, str(source)))


def joint_prompt_view(categories: Sequence[Category], question_pattern: str | None) -> PromptView:
    """The one view of a joint reward model (every category reads the same input).

    Raises ``FinegrainedError`` when the categories' context modes differ.
    """
    modes = {c.context for c in categories}
    if len(modes) > 1:
        listed = ", ".join(f"{c.name}: {c.context}" for c in categories)
        raise FinegrainedError(
            f"categories=[{','.join(c.name for c in categories)}]: a joint reward model gives every category the same "
            f"input, but their context differs ({listed}); train those categories as separate models "
            "(category=<name>), or joint-train only categories with the same context"
        )
    return PromptView.for_category(categories[0], question_pattern)
