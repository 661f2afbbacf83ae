"""``finegrained dpo`` end to end: every loss runs with no files, the outputs, exact resume after SIGKILL,
two processes over gloo, dense weights on the built-in corrections, bad settings and data refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finegrained.commands import dpo as dpo_command
from finegrained.config import compose
from finegrained.config_checks import compose_checked
from finegrained.errors import FinegrainedError, InputError
from finegrained.plots import read_scalars
from finegrained.rl.checkpoint import checkpoint_dirs
from finegrained.rl.dpo import DPOTrainer

QUIET = ["log.progress=false"]


def smoke(tmp_path: Path, *overrides: str):
    return compose_checked("dpo", ["experiment=smoke", f"output_dir={tmp_path}", *QUIET, *overrides])


def test_smoke_run_leaves_checkpoints_final_card_and_trl_named_scalars(tmp_path):
    assert dpo_command.main(["experiment=smoke", f"output_dir={tmp_path}", "checkpoint.every=2", "log.eval_every=3", *QUIET]) == 0
    assert [n for n, _ in checkpoint_dirs(tmp_path)] == [4, 6]  # keep 2
    state = json.loads((tmp_path / "checkpoints" / "iter-6" / "state.json").read_text())
    assert state["iteration"] == 6 and state["data_position"] == 6 * 8
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert "finegrained dpo" in (tmp_path / "final" / "README.md").read_text()
    scalars = read_scalars(tmp_path)
    steps = max(scalars["loss"])
    for tag in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "eval/loss"):
        assert sorted(scalars[tag]) == [0, 3, 6, steps], tag  # held out: before training, every 3 steps, at the end
    assert sorted(scalars["loss"]) == list(range(1, steps + 1))
    assert 0.0 <= scalars["rewards/accuracies"][steps] <= 1.0
    with pytest.raises(FinegrainedError, match="resume=true"):
        dpo_command.main(["experiment=smoke", f"output_dir={tmp_path}", *QUIET])


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "ddpo"])
def test_every_loss_runs_with_no_files_and_moves_the_held_out_margin(tmp_path, loss):
    summary = DPOTrainer(smoke(tmp_path, f"dpo.loss={loss}", "checkpoint.every=0", "dpo.epochs=3")).train()
    assert summary["steps"] > 0 and (tmp_path / "final" / "config.json").is_file()
    # the reference is the initial policy: before training every implicit reward is 0
    assert summary["initial/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert summary["rewards/margins"] > summary["initial/rewards/margins"]


def test_ddpo_weighs_the_changed_tokens_of_the_built_in_corrections(tmp_path):
    trainer = DPOTrainer(smoke(tmp_path, "dpo.loss=ddpo", "dpo.gamma=5"))
    dense = [e for e in trainer.train_data if 5.0 in e.chosen_weights]
    assert dense and all(set(e.chosen_weights) | set(e.rejected_weights) <= {1.0, 5.0} for e in trainer.train_data)
    # weights run over the completion tokens and EOS only
    e = trainer.train_data[0]
    assert len(e.chosen_weights) == len(e.chosen_ids) - e.chosen_start
    assert len(e.rejected_weights) == len(e.rejected_ids) - e.rejected_start


def test_lora_reference_is_the_policy_with_adapters_off_and_final_is_plain(tmp_path):
    summary = DPOTrainer(smoke(tmp_path, "lora.r=2", "dpo.lr=1e-2", "checkpoint.every=0")).train()
    assert summary["initial/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    weights = load_file(tmp_path / "final" / "model.safetensors")
    assert not any("lora" in name for name in weights)


# -- exact resume -----------------------------------------------------------------------------------
RESUME_ARGS = ["experiment=smoke", "dpo.epochs=12", "dpo.batch_size=4", "checkpoint.every=2", "checkpoint.keep=3", *QUIET]


def run_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "finegrained.cli", "dpo", *RESUME_ARGS, *args]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(run_command(f"output_dir={straight}"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(run_command(f"output_dir={killed}"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "iter-2" / "state.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "killed too late: the run had finished"
    result = subprocess.run(run_command(f"output_dir={killed}", "resume=true"), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr
    a, b = load_file(killed / "final" / "model.safetensors"), load_file(straight / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    initial = load_file(straight / "initial_policy" / "model.safetensors")
    assert any(not torch.equal(initial[n], b[n]) for n in b)  # training changed the weights: the check can fail


@pytest.mark.slow
def test_two_processes_over_gloo_hold_identical_weights(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["experiment=smoke", "accelerate.cpu=true", "checkpoint.every=2", f"output_dir={tmp_path}", *QUIET]
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "finegrained.cli", "dpo", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes hold identical policy weights" in result.stderr
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert [n for n, _ in checkpoint_dirs(tmp_path)] == [4, 6]


# -- refused settings and data ------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["dpo.loss=hinge", "dpo.beta=0", "dpo.gamma=-1", "dpo.batch_size=0",
                                      "data.without_correction=maybe", "data.eval_fraction=1.0"])  # fmt: skip
def test_bad_settings_are_refused_naming_the_key(override):
    key, _, value = override.partition("=")
    with pytest.raises(InputError) as caught:
        compose_checked("dpo", ["experiment=smoke", override])
    assert [p.field for p in caught.value.problems] == [key]
    assert caught.value.problems[0].message.startswith(f"{value}: must be ")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


SPAN = {"id": "s1", "prompt": "facts: Bora is a town. question: Tell me what kind of place Bora is.",
        "completion": "Bora is a city.", "spans": [{"start": 0, "end": 15, "label": "Wrong-Grounding"}]}  # fmt: skip
PREF = {"id": "p1", "prompt": SPAN["prompt"], "chosen": "Bora is a town.", "rejected": "Bora is a city.", "category": "holistic"}


def test_ddpo_without_corrections_and_wrong_kinds_of_file_are_refused_clearly(tmp_path):
    spans = write_jsonl(tmp_path / "spans.jsonl", [SPAN])
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [PREF])
    with pytest.raises(FinegrainedError, match="dpo.loss=ddpo needs corrections"):
        DPOTrainer(smoke(tmp_path / "a", "dpo.loss=ddpo", f"data.train={prefs}"))
    with pytest.raises(InputError, match="data.train expects preference records, this file holds span records"):
        DPOTrainer(smoke(tmp_path / "b", f"data.train={spans}"))
    with pytest.raises(InputError, match="1 span records carry no correction"):
        DPOTrainer(smoke(tmp_path / "c", f"data.corrections={spans}", "data.without_correction=error"))
    with pytest.raises(InputError, match="no preference records of category 'completeness'"):
        DPOTrainer(smoke(tmp_path / "d", f"data.train={prefs}", "data.category=completeness"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**SPAN, "correction": SPAN["completion"]}])
    with pytest.raises(InputError) as caught:
        DPOTrainer(smoke(tmp_path / "e", f"data.corrections={bad}"))
    assert f"{bad}:1: correction: is the same text as 'completion'" in str(caught.value)


def test_files_give_pairs_preferences_and_corrections_together(tmp_path, capsys):
    corrected = {**SPAN, "id": "s2", "correction": "Bora is a town."}
    spans = write_jsonl(tmp_path / "spans.jsonl", [SPAN, corrected] + [{**corrected, "id": f"s{i}"} for i in range(3, 12)])
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{**PREF, "id": f"p{i}"} for i in range(10)])
    trainer = DPOTrainer(smoke(tmp_path / "run", f"data.train={prefs}", f"data.corrections={spans}", "data.eval_fraction=0"))
    assert len(trainer.train_data) == 10 + 10
    assert "1 of 11 span records of data.corrections carry no correction: skipped" in capsys.readouterr().err
