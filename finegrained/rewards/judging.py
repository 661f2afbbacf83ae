"""What every judge shares: scoring in eval mode without autograd, and the call dispatched on its kind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


@contextmanager
def judging(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode`` for the block; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


class JudgeCall:
    """``judge(prompts, completions, segments)`` for span judges, ``judge(prompts, completions)`` for
    sequence judges, dispatched on ``self.kind`` to ``score_segments`` / ``score_sequences``."""

    kind: str

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], segments=None):
        if self.kind == "span":
            if segments is None:
                raise TypeError(f"{self!r} is a span judge: call it with (prompts, completions, segments)")
            return self.score_segments(prompts, completions, segments)
        return self.score_sequences(prompts, completions)
