"""Progress of long work, readable both on a terminal and in a redirected log.

``progress(total, desc)`` gives a tqdm bar when the stream (stderr by default) is a terminal; otherwise a
one-line summary every ``every_seconds`` seconds (default 30, or ``$FINEGRAINED_PROGRESS_SECONDS``) and/or
every ``every_steps`` steps, and one at the end, with no carriage returns, so a log file holds a few
readable lines instead of thousands of bar redraws::

    [ppo] 12/50 iterations (24%), 96 s elapsed, about 5 min left, reward=0.412 kl=0.031

``bar=False`` (e.g. ``train.progress=false``) never draws a bar but still writes the summary lines: a
long run that prints nothing for half an hour looks like a hung one. ``enabled=False`` (non-main
processes) prints nothing at all.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

DEFAULT_EVERY_SECONDS = 30.0
EVERY_SECONDS_ENV = "FINEGRAINED_PROGRESS_SECONDS"


def default_every_seconds() -> float:
    value = os.environ.get(EVERY_SECONDS_ENV)
    try:
        return float(value) if value else DEFAULT_EVERY_SECONDS
    except ValueError:
        return DEFAULT_EVERY_SECONDS


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A progress reporter: ``update(n, **postfix)`` after each unit of work, ``close()`` at the end (or use
    it as a context manager). See the module docstring for what it prints where."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "steps", initial: int = 0, bar: bool = True,
                 enabled: bool = True, stream=None, every_seconds: float | None = None,
                 every_steps: int | None = None, clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds = default_every_seconds() if every_seconds is None else every_seconds
        self.every_steps = every_steps
        self.clock = clock
        self.started = self.last_line = clock()
        self.initial = initial
        self.last_line_n = initial
        self.postfix: dict[str, object] = {}
        self.closed = False
        self._bar = None
        if enabled and bar and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit.rstrip("s") or "it", file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(**{k: _short(v) for k, v in postfix.items()}, refresh=False)
            return
        now = self.clock()
        due_time = self.every_seconds > 0 and now - self.last_line >= self.every_seconds
        due_steps = bool(self.every_steps) and self.n - self.last_line_n >= self.every_steps
        if due_time or due_steps:
            self._write_line(now)

    def summary(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.started
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"[{self.desc}] {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{format_duration(elapsed)} elapsed")
        worked = self.n - self.initial
        if self.total and 0 < worked and self.n < self.total:
            parts.append(f"about {format_duration(elapsed / worked * (self.total - self.n))} left")
        text = ", ".join(parts)
        if self.postfix:
            text += ", " + " ".join(f"{k}={_short(v)}" for k, v in self.postfix.items())
        return text

    def _write_line(self, now: float) -> None:
        self.stream.write(self.summary(now) + "\n")
        self.stream.flush()
        self.last_line, self.last_line_n = now, self.n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.n != self.last_line_n:
            self._write_line(self.clock())  # the final state, once

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str, **kwargs) -> Progress:
    """A ``Progress`` (see the module docstring); keyword arguments as ``Progress``."""
    return Progress(total, desc, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
