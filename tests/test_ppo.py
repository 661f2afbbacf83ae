"""The PPO learner end to end: outputs, learning a planted rule, exact resume after SIGKILL, two
processes over gloo, the NaN guard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from finegrained.config import compose
from finegrained.errors import FinegrainedError
from finegrained.plots import read_scalars
from finegrained.rl import trainer as ppo
from finegrained.rl.checkpoint import checkpoint_dirs


def smoke(tmp_path: Path, *overrides: str):
    return compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", *overrides])


def test_smoke_run_leaves_checkpoints_final_and_tensorboard(tmp_path):
    assert ppo.main(["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false"]) == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter-4", "iter-6"]  # keep 2
    assert {"policy.safetensors", "value.safetensors", "optimizer.pt", "rng.pt", "state.json"} <= {
        p.name for p in (tmp_path / "checkpoints" / "iter-6").iterdir()
    }
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    AutoTokenizer.from_pretrained(tmp_path / "final")
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert (tmp_path / "config.yaml").is_file()
    scalars = read_scalars(tmp_path)
    for tag in ("reward/total", "kl", "entropy", "loss/policy", "loss/value", "clip_fraction",
                "explained_variance", "response_length", "kl_coef",
                "rewards/printable/mean", "rewards/no_filler/error_fraction", "oracle/total_error_rate",
                *[f"time/{p}" for p in ppo.PHASES]):  # fmt: skip
        assert sorted(scalars[tag]) == [1, 2, 3, 4, 5, 6], tag
    # a second run into the same directory is refused unless resumed or overwritten
    with pytest.raises(FinegrainedError, match="resume=true"):
        ppo.main(["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false"])


@pytest.mark.slow
def test_planted_segment_rule_is_learned(tmp_path):
    cfg = smoke(tmp_path, "ppo.iterations=8", "ppo.batch_size=32", "ppo.minibatch_size=16", "checkpoint.every=0")
    trainer = ppo.build_trainer(cfg)
    rewards = [trainer.run_iteration()["rewards/printable/mean"] for _ in range(8)]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > first + 0.08, rewards


def final_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "final" / "model.safetensors")


RESUME_ARGS = ["experiment=smoke", "ppo.iterations=10", "ppo.batch_size=8", "checkpoint.every=2", "checkpoint.keep=3", "log.progress=false"]


def run_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "finegrained.cli", "ppo", *RESUME_ARGS, *args]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> Path:
    straight = tmp_path_factory.mktemp("straight")
    subprocess.run(run_command(f"output_dir={straight}"), env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    return straight


KILL_POINTS = {
    # initial_policy/ written (atomically: it appears whole), no checkpoint yet: the resumed run starts over
    # from the saved policy, and must draw the same random numbers as the run that built it
    "before_first_checkpoint": lambda out: (out / "initial_policy").is_dir(),
    "after_a_checkpoint": lambda out: (out / "checkpoints" / "iter-2" / "state.json").is_file(),
}


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, uninterrupted_run, kill_point):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(run_command(f"output_dir={killed}"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not KILL_POINTS[kill_point](killed):
        assert proc.poll() is None and time.time() < deadline, f"run ended before the kill point {kill_point}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    if kill_point == "before_first_checkpoint":
        assert checkpoint_dirs(killed) == [], "killed too late: a checkpoint was already written"
    subprocess.run(run_command(f"output_dir={killed}", "resume=true"), env=env, check=True, capture_output=True)
    a, b = final_weights(killed), final_weights(uninterrupted_run)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["lora.r=2"]], ids=["full", "lora"])
def test_two_processes_over_gloo_hold_identical_weights(tmp_path, options):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "finegrained.cli", "ppo", "experiment=smoke", "accelerate.cpu=true",
         "ppo.iterations=1", "checkpoint.every=0", f"output_dir={tmp_path}", "log.progress=false", *options],  # fmt: skip
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes hold identical policy weights" in result.stderr
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_nan_reward_stops_with_iteration_and_phase_and_keeps_checkpoints(tmp_path):
    cfg = smoke(tmp_path, "checkpoint.every=1", "ppo.iterations=5", "ppo.batch_size=4")
    with open_dict(cfg):
        cfg.reward.categories["broken"] = {
            "kind": "preference", "granularity": "sequence",
            "judge": {"_target_": "finegrained.rewards.rule_based.nan_after", "calls": 2},
        }  # fmt: skip
    trainer = ppo.build_trainer(cfg)
    with pytest.raises(FinegrainedError, match=r"iteration 3, phase score: category 'broken'"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter-1", "iter-2"]
    assert not (tmp_path / "final").exists()
