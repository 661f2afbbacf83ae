"""The progress helper: a bar on a terminal; in a log, a readable line every N seconds or steps."""

from __future__ import annotations

import io

from finegrained.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_non_terminal_stream_gets_a_line_every_interval_and_no_carriage_returns():
    stream, clock = io.StringIO(), FakeClock()
    bar = Progress(20, "train", stream=stream, every_seconds=30, clock=clock)
    for step in range(20):
        clock.now += 10  # 10 s per step: a line every third step
        bar.update(1, loss=1.0 / (step + 1))
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == ["3/20", "6/20", "9/20", "12/20", "15/20", "18/20", "20/20"]
    assert lines[0] == "[train] 3/20 steps (15%), 30 s elapsed, about 3 min left, loss=0.3333"
    assert "left" not in lines[-1]  # finished


def test_step_interval_and_bar_false_still_write_lines():
    stream, clock = io.StringIO(), FakeClock()
    with Progress(10, "ppo", unit="iterations", bar=False, stream=Terminal(), every_seconds=0, every_steps=4, clock=clock) as p:
        p.stream = stream  # bar=False on a terminal: lines, never a bar
        for _ in range(10):
            p.update(1)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["4/10", "8/10", "10/10"]


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar():
    quiet = io.StringIO()
    with Progress(5, "x", enabled=False, stream=quiet, every_steps=1) as p:
        for _ in range(5):
            p.update(1)
    assert quiet.getvalue() == ""
    terminal = Terminal()
    with Progress(5, "bar", stream=terminal) as p:
        for _ in range(5):
            p.update(1)
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()
