"""The PPO learner end to end: outputs, learning a planted rule, exact resume after SIGKILL, two
processes over gloo, the NaN guard."""

from __future__ import annotations

import json
import math
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
from finegrained.commands import ppo as ppo_command
from finegrained.rl import trainer as ppo
from finegrained.rl.checkpoint import checkpoint_dirs


def smoke(tmp_path: Path, *overrides: str):
    return compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", *overrides])


def test_smoke_run_leaves_checkpoints_final_and_tensorboard(tmp_path):
    assert ppo_command.main(["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false"]) == 0
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
        ppo_command.main(["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false"])


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
# the critic-free learners: 2 prompts x 4 samples, the same 8 episodes per iteration
RESUME_COMMANDS = {"ppo": [], "grpo": ["ppo.batch_size=2"], "rloo": ["ppo.batch_size=2"]}


def run_command(*args: str, command: str = "ppo") -> list[str]:
    return [sys.executable, "-m", "finegrained.cli", command, *RESUME_ARGS, *RESUME_COMMANDS[command], *args]


@pytest.fixture(scope="module")
def uninterrupted_runs(tmp_path_factory):
    """command -> the directory of its uninterrupted run (run once per command, on first use)."""
    runs: dict[str, Path] = {}

    def run(command: str) -> Path:
        if command not in runs:
            runs[command] = tmp_path_factory.mktemp(f"straight-{command}")
            subprocess.run(run_command(f"output_dir={runs[command]}", command=command),
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)  # fmt: skip
        return runs[command]

    return run


KILL_POINTS = {
    # initial_policy/ written (atomically: it appears whole), no checkpoint yet: the resumed run starts over
    # from the saved policy, and must draw the same random numbers as the run that built it
    "before_first_checkpoint": lambda out: (out / "initial_policy").is_dir(),
    "after_a_checkpoint": lambda out: (out / "checkpoints" / "iter-2" / "state.json").is_file(),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RESUME_COMMANDS))
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, uninterrupted_runs, kill_point, command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(run_command(f"output_dir={killed}", command=command), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not KILL_POINTS[kill_point](killed):
        assert proc.poll() is None and time.time() < deadline, f"run ended before the kill point {kill_point}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    if kill_point == "before_first_checkpoint":
        assert checkpoint_dirs(killed) == [], "killed too late: a checkpoint was already written"
    subprocess.run(run_command(f"output_dir={killed}", "resume=true", command=command), env=env, check=True, capture_output=True)
    if command != "ppo":
        assert not any(p.name == "value.safetensors" for p in (killed / "checkpoints").rglob("*"))
    a, b = final_weights(killed), final_weights(uninterrupted_runs(command))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def plain_moments(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def check_statistics_are_global(out: Path, cfg, whitening: bool = True) -> None:
    """Every rank's KL coefficient and whitening statistics equal one process's on the whole batch."""
    coef = cfg.kl.coef
    episodes = cfg.ppo.batch_size * cfg.ppo.samples_per_prompt
    for iteration in (1, 2):
        ranks = [json.loads((out / "rl_stats" / f"iter-{iteration}-rank-{r}.json").read_text()) for r in (0, 1)]
        all_kls = ranks[0]["sequence_kl"] + ranks[1]["sequence_kl"]
        assert len(all_kls) == episodes
        global_kl = sum(all_kls) / len(all_kls)
        error = min(max(global_kl / cfg.kl.target - 1.0, -0.2), 0.2)
        coef *= 1.0 + error * episodes / cfg.kl.horizon
        for rank in ranks:
            assert math.isclose(rank["kl"], global_kl, rel_tol=1e-5, abs_tol=1e-9), (iteration, rank["rank"])
            assert math.isclose(rank["kl_coef"], coef, rel_tol=1e-9), (iteration, rank["rank"])
        for name in ("rewards", "advantages") if whitening else ():
            mean, var = plain_moments(ranks[0][name]["values"] + ranks[1][name]["values"])
            for rank in ranks:
                assert math.isclose(rank[name]["mean"], mean, rel_tol=1e-4, abs_tol=1e-6), (iteration, name)
                assert math.isclose(rank[name]["var"], var, rel_tol=1e-4), (iteration, name)
    # the checks can fail: the ranks' own responses would give other statistics
    if whitening:
        local_mean = plain_moments(ranks[0]["rewards"]["values"])[0]
        assert not math.isclose(local_mean, ranks[0]["rewards"]["mean"], rel_tol=1e-3)
    local_kl = sum(ranks[0]["sequence_kl"]) / len(ranks[0]["sequence_kl"])
    assert not math.isclose(local_kl, ranks[0]["kl"], rel_tol=1e-3)
    # each prompt's G samples are consecutive on one rank, and no prompt is on both
    G = cfg.ppo.samples_per_prompt
    for rank in ranks:
        groups = [rank["prompts"][i : i + G] for i in range(0, len(rank["prompts"]), G)]
        assert all(len(set(group)) == 1 for group in groups)
    assert not set(ranks[0]["prompts"]) & set(ranks[1]["prompts"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "command,options",
    [("ppo", []), ("ppo", ["lora.r=2"]), ("grpo", ["ppo.batch_size=4", "ppo.samples_per_prompt=4", "kl.mode=reward"])],
    ids=["full", "lora", "grpo"],
)
def test_two_processes_over_gloo_hold_identical_weights_and_share_statistics(tmp_path, command, options):
    """GRPO too: a prompt's samples stay on one rank, so its group statistics need no reduction."""
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["experiment=smoke", "accelerate.cpu=true", "ppo.iterations=2", "checkpoint.every=0", f"output_dir={tmp_path}",
            "log.progress=false", "kl.adaptive=true", "ppo.whiten_rewards=true", *options]  # fmt: skip
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "finegrained.cli", command, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", ppo.DUMP_STATS_ENV: "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes hold identical policy weights" in result.stderr
    assert (tmp_path / "final" / "model.safetensors").is_file()
    check_statistics_are_global(tmp_path, compose(command, args), whitening=command == "ppo")


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
