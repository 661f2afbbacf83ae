"""The single entry point: usage, unknown commands, user errors without tracebacks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from finegrained.cli import COMMANDS, main


def test_usage_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_exists_and_has_main(name):
    module_name = COMMANDS[name][0]
    assert importlib.util.find_spec(module_name) is not None, f"{name}: module {module_name} missing"
    module = importlib.import_module(module_name)
    assert callable(getattr(module, "main", None))


def test_console_script_reports_user_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "finegrained.cli", "validate", "--schema", str(bad), str(tmp_path / "x.jsonl")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
