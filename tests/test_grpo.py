"""The critic-free learners (finegrained grpo, rloo) end to end, and several samples per prompt for PPO:
outputs without a value model, the KL modes, option paths, grouping of the batch, refused settings."""

from __future__ import annotations

import math

import pytest
import torch

from finegrained.cli import main as cli_main
from finegrained.commands import grpo as grpo_command
from finegrained.commands import rloo as rloo_command
from finegrained.config import compose
from finegrained.errors import FinegrainedError
from finegrained.plots import read_scalars
from finegrained.rl import advantages as A
from finegrained.rl import trainer as rl
from finegrained.rl.critic_free import reward_positions
from finegrained.rl.learner import PhaseTimer

SMALL = ["experiment=smoke", "log.progress=false", "ppo.batch_size=2", "ppo.minibatch_size=4", "generation.max_new_tokens=8"]


def small(command: str, tmp_path, *overrides: str):
    return compose(command, [*SMALL, f"output_dir={tmp_path}", "checkpoint.every=0", *overrides])


@pytest.mark.parametrize("command,main", [("grpo", grpo_command.main), ("rloo", rloo_command.main)])
def test_smoke_run_leaves_checkpoints_without_a_value_model_and_logs_group_statistics(tmp_path, command, main):
    assert main([*SMALL, f"output_dir={tmp_path}", "ppo.iterations=3", "checkpoint.every=1", "checkpoint.keep=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter-2", "iter-3"]
    files = {p.name for p in (tmp_path / "checkpoints" / "iter-3").iterdir()}
    assert {"policy.safetensors", "optimizer.pt", "rng.pt", "state.json"} <= files and "value.safetensors" not in files
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert f"finegrained {command}" in (tmp_path / "final" / "README.md").read_text()
    scalars = read_scalars(tmp_path)
    for tag in ("reward/total", "kl", "loss/policy", "loss/kl", "entropy", "clip_fraction", "frac_zero_std",
                "advantages/mean", "advantages/std", "rewards/printable/mean", "rewards/no_filler/error_fraction",
                "rewards/length/frac_zero_std", "oracle/total_error_rate"):  # fmt: skip
        assert sorted(scalars[tag]) == [1, 2, 3], tag
    assert all(0.0 <= v <= 1.0 for v in scalars["frac_zero_std"].values())
    assert "loss/value" not in scalars and "explained_variance" not in scalars


def test_the_batch_is_prompts_times_samples_with_each_group_consecutive(tmp_path):
    trainer = rl.build_trainer(small("grpo", tmp_path, "ppo.batch_size=3", "ppo.samples_per_prompt=4"), "grpo")
    prompts = trainer.next_prompts()
    assert len(prompts) == 12 and trainer.data_position == 3
    groups = [prompts[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3


def rollout_and_positions(trainer):
    prompts = trainer.next_prompts()
    traj, info, _, breakdown = trainer.rollout(prompts, PhaseTimer())
    return traj, info["decoded"], breakdown


def test_estimate_is_the_pure_function_plus_the_kl_mode(tmp_path):
    trainer = rl.build_trainer(small("grpo", tmp_path, "kl.coef=0.5"), "grpo")
    trainer.run_iteration()  # the policy moves away from the reference: a non-zero KL
    traj, decoded, breakdown = rollout_and_positions(trainer)
    mask = traj.response_mask
    positions = reward_positions(breakdown, decoded, mask)
    weights = torch.tensor([c.weight for c in trainer.scorer.categories])
    expected, _, _ = A.critic_free_advantages(traj.category_rewards, positions, mask, weights, 4, "grpo", eps=1e-4)
    results = {}
    for mode in ("loss", "reward", "none"):
        trainer.cfg.kl.mode = mode
        results[mode], returns, kl, stats = trainer.estimate(traj, decoded, breakdown, PhaseTimer())
        assert returns is None and set(stats) >= {"frac_zero_std", "advantages/mean"}
    torch.testing.assert_close(results["loss"], expected)
    torch.testing.assert_close(results["none"], expected)
    penalty = A.reward_to_go(-0.5 * kl, mask)
    assert penalty.abs().max() > 0
    torch.testing.assert_close(results["reward"], expected + penalty)
    # the positions hold every segment's end, rewards of 0 included, and only real tokens
    assert not positions[~mask].any()
    for k, category in enumerate(breakdown.categories.values()):
        counts = positions[..., k].sum(-1)
        assert all(int(counts[b]) <= max(1, len(category.segments[b])) for b in range(len(decoded)))


@pytest.mark.parametrize("mode", ["loss", "none"])
def test_kl_loss_term_only_in_loss_mode(tmp_path, mode):
    trainer = rl.build_trainer(small("grpo", tmp_path, f"kl.mode={mode}", "ppo.epochs=2"), "grpo")
    stats = [trainer.run_iteration() for _ in range(2)]
    if mode == "none":
        assert all(s["loss/kl"] == 0.0 for s in stats)
    else:
        assert stats[-1]["loss/kl"] > 0  # k3 against the reference once the policy has moved
    assert all(math.isfinite(s["loss/policy"]) for s in stats)


@pytest.mark.parametrize("command", ["grpo", "rloo"])
def test_option_paths_run(tmp_path, command):
    options = ["advantage.order=sum", "advantage.scale_std=false", "loss.aggregation=token_sum", "kl.mode=reward",
               "ppo.samples_per_prompt=3", "ppo.grad_accum=2", "ppo.minibatch_size=2", "lora.r=2"]  # fmt: skip
    trainer = rl.build_trainer(small(command, tmp_path, *options), command)
    stats = trainer.run_iteration()
    assert trainer.value is None and math.isfinite(stats["loss/policy"]) and math.isfinite(stats["advantages/std"])


def test_ppo_with_several_samples_per_prompt_runs(tmp_path):
    cfg = small("ppo", tmp_path, "ppo.samples_per_prompt=3", "ppo.iterations=2")
    trainer = rl.build_trainer(cfg)
    stats = [trainer.run_iteration() for _ in range(2)]
    assert trainer.data_position == 4 and all(math.isfinite(s["explained_variance"]) for s in stats)


@pytest.mark.parametrize(
    "command,override,message",
    [("grpo", "ppo.samples_per_prompt=1", "must be at least 2"), ("rloo", "ppo.samples_per_prompt=1", "must be at least 2"),
     ("ppo", "ppo.samples_per_prompt=0", "must be an integer >= 1"), ("grpo", "ppo.samples_per_prompt=2.5", "must be an integer"),
     ("grpo", "loss.aggregation=mean", "one of token_mean"), ("rloo", "advantage.order=gdpo", "one of per_category"),
     ("grpo", "kl.mode=off", "one of loss, reward, none"), ("ppo", "kl.mode=loss", "unknown setting")],
)  # fmt: skip
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, capsys, command, override, message):
    assert cli_main([command, "experiment=smoke", f"output_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert override.partition("=")[0] in err and message in err and "Traceback" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_python_callers_are_refused_a_group_of_one(tmp_path):
    cfg = compose("grpo", [*SMALL, f"output_dir={tmp_path}", "ppo.samples_per_prompt=1"])
    with pytest.raises(FinegrainedError, match="samples_per_prompt must be at least 2"):
        rl.build_trainer(cfg, "grpo")
