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
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "did you mean" not in err


@pytest.mark.parametrize("typo,meant", [("trian-rm", "train-rm"), ("evalaute", "evaluate"), ("pop", "ppo")])
def test_misspelled_command_suggests_the_right_one(typo, meant, capsys):
    assert main([typo]) == 2
    assert f"did you mean {meant!r}?" in capsys.readouterr().err


def test_every_hydra_command_is_checked_before_its_module_loads():
    from finegrained.cli import HYDRA_CONFIGS

    assert set(HYDRA_CONFIGS) == {"train-rm", "eval-rm", "sft", "ppo", "grpo", "rloo", "dpo", "evaluate", "demo", "bench"}
    assert set(HYDRA_CONFIGS) <= set(COMMANDS)


def test_bad_setting_exits_2_before_the_command_runs(capsys, monkeypatch):
    import finegrained.cli as cli

    for command in ("ppo", "train-rm"):  # importing the module would now fail: the check must come first
        monkeypatch.setitem(cli.COMMANDS, command, ("finegrained.no_such_module", ""))
    assert main(["ppo", "ppo.lr=0", "ppo.epochs=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["finegrained ppo: ppo.epochs: 0: must be an integer >= 1", "finegrained ppo: ppo.lr: 0: must be a number > 0"]
    assert main(["train-rm", "--help"]) == 0
    assert "finegrained train-rm --cfg" in capsys.readouterr().out.replace("[group=option ...] ", "")


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
