"""`finegrained demo quick`: every stage of the embedded default runs and leaves its outputs."""

from __future__ import annotations

import json

import pytest

from finegrained import demo
from finegrained.commands import demo as demo_command
from finegrained.plots import read_scalars


# Smaller than `demo quick` itself, so that the test stays fast, and with its own SFT stage (quick starts
# from the shipped policy): every stage still runs and leaves its outputs.
TINY = [
    "sft_policy=null",
    'sft_overrides=["data.n_train=1000","data.n_eval=50","train.epochs=3","train.lr=3e-3"]',
    "n_annotation_prompts=64",
    'rm_overrides=["train.epochs=2"]',
    "ppo_iterations=3",
    'ppo_overrides=["ppo.batch_size=16","ppo.minibatch_size=8","ppo.epochs=1","checkpoint.every=0"]',
    "n_eval_prompts=24",
]


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path, capsys):
    assert demo_command.main(["quick", f"output_dir={tmp_path}", *TINY]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0]
    assert {"torch", "transformers", "tokenizers"} <= set(results["versions"])
    assert results["machine"]["cpu_capability"] and results["machine"]["torch_threads"] >= 1  # floats depend on the CPU
    assert results["episodes"] == 3 * 16
    assert set(results["policies"]) == {"sft", "holistic", "fine_grained"}
    for policy in results["policies"].values():
        assert set(policy["error_rate"]) == {"relevance", "factuality", "completeness"}
        assert len(policy["per_seed_total_error_rate"]) == 1
        for key in ("total_error_rate", "kl", "mean_length", "rouge_l"):
            assert isinstance(policy[key], float)
    assert results["policies"]["sft"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "oracle_error_rate.png").stat().st_size > 1000
    for category in ("relevance", "factuality", "completeness", "holistic"):
        metadata = json.loads((tmp_path / "rm" / category / "finegrained.json").read_text())
        assert metadata["category"] == category
    scalars = read_scalars(tmp_path / "ppo" / "fine_grained-seed0")
    assert {"rewards/relevance/mean", "rewards/factuality/mean", "rewards/completeness/mean", "oracle/total_error_rate"} <= set(scalars)
    assert "fine-grained PPO has a lower oracle total error rate than holistic PPO on" in capsys.readouterr().out
    # a second call finds every stage complete and only re-aggregates
    assert demo_command.main(["quick", f"output_dir={tmp_path}", *TINY]) == 0
    # shared_rm=true on the finished demo adds a reward model on one backbone and a PPO run judged by it,
    # and re-evaluates; the earlier policies' figures do not move (each policy samples with the same seed)
    capsys.readouterr()
    assert demo_command.main(["quick", f"output_dir={tmp_path}", "shared_rm=true", *TINY]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert set(again["policies"]) == {"sft", "holistic", "fine_grained", "fine_grained_shared"}
    for name in ("sft", "holistic", "fine_grained"):
        assert again["policies"][name]["total_error_rate"] == results["policies"][name]["total_error_rate"]
    metadata = json.loads((tmp_path / "rm" / "joint" / "finegrained.json").read_text())
    assert metadata["kind"] == "joint" and list(metadata["categories"]) == ["relevance", "factuality", "completeness"]
    run_config = (tmp_path / "ppo" / "fine_grained_shared-seed0" / "config.yaml").read_text()
    assert run_config.count(str(tmp_path / "rm" / "joint")) == 3
    assert "with the shared-backbone reward model" in capsys.readouterr().out
    # and a plain call afterwards reports its own three policies again
    assert demo_command.main(["quick", f"output_dir={tmp_path}", *TINY]) == 0
    assert set(json.loads((tmp_path / "results.json").read_text())["policies"]) == {"sft", "holistic", "fine_grained"}


def test_quick_starts_from_the_shipped_sft_policy(tmp_path):
    from finegrained.rl.generation import generate, load_policy
    from finegrained.paths import SHIPPED_SFT_DIR
    from finegrained.tasks import synthetic_qa

    cfg = demo_quick_config()
    assert cfg.sft_policy == "shipped"
    assert demo.stage_sft(cfg, tmp_path) == SHIPPED_SFT_DIR and not (tmp_path / "sft").exists()
    model, tokenizer = load_policy(str(SHIPPED_SFT_DIR))  # checked like any policy directory
    records = synthetic_qa.prompts("eval", n=16, seed=3)
    answers = [g.completion for g in generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=64)]
    rates = synthetic_qa.oracle_error_rates([r["prompt"] for r in records], answers)
    assert rates["total_error_rate"] < 0.3  # a policy that copies facts (an untrained one errs on most answers)


def demo_quick_config():
    from finegrained.config import compose

    return compose("demo", ["scale=quick"])


def test_grpo_option_adds_critic_free_runs_on_the_same_episodes(tmp_path):
    from pathlib import Path

    from finegrained.config import compose
    from finegrained.errors import FinegrainedError

    assert demo.methods(compose("demo", [])) == demo.METHODS  # the default: the table as it was
    cfg = compose("demo", ["algorithms=[ppo,grpo]"])
    assert demo.methods(cfg) == (*demo.METHODS, "grpo_fine_grained", "grpo_holistic")
    rm_dirs = {c: tmp_path / c for c in ("relevance", "factuality", "completeness", "holistic")}
    for method in demo.METHODS:
        ppo_run = demo.ppo_overrides(cfg, method, rm_dirs, Path("sft"))
        ppo_cfg, grpo_cfg = compose("ppo", ppo_run), compose("grpo", demo.grpo_overrides(cfg, ppo_run))
        assert grpo_cfg.ppo.batch_size * grpo_cfg.ppo.samples_per_prompt == ppo_cfg.ppo.batch_size * 1
        assert grpo_cfg.ppo.iterations == ppo_cfg.ppo.iterations and grpo_cfg.reward == ppo_cfg.reward
    assert demo.run_dir(tmp_path, "grpo_holistic", 3) == tmp_path / "grpo" / "holistic-seed3"
    assert demo.run_dir(tmp_path, "holistic", 3) == tmp_path / "ppo" / "holistic-seed3"
    with pytest.raises(FinegrainedError, match="must include ppo"):
        demo.methods(compose("demo", ["algorithms=[grpo]"]))
@pytest.mark.slow
def test_offline_algorithms_train_from_the_same_annotations_and_sft_policy(tmp_path):
    from omegaconf import OmegaConf

    from finegrained.config_checks import compose_checked
    from finegrained.evaluate import format_table

    cfg = compose_checked("demo", ["quick", f"output_dir={tmp_path}", "n_annotation_prompts=40", "n_eval_prompts=8",
                                   "algorithms=[ppo,dpo_holistic,dpo_completeness_corrections,ddpo]",
                                   'dpo_overrides=["dpo.epochs=1","dpo.batch_size=8","log.progress=false"]'])  # fmt: skip
    policy_dir = demo.stage_sft(cfg, tmp_path)
    files = demo.stage_annotate(cfg, tmp_path, policy_dir)
    finals = {}
    for algorithm in demo.DPO_ALGORITHMS:
        finals[algorithm], seconds = demo.stage_dpo(cfg, tmp_path, 0, algorithm, files, policy_dir)
        assert (finals[algorithm] / "model.safetensors").is_file() and seconds > 0
        run = OmegaConf.load(finals[algorithm].parent / "config.yaml")
        assert run.policy.name_or_path == str(policy_dir)
        expected = {"dpo_holistic": ("sigmoid", [files["holistic_train"]], None),
                    "dpo_completeness_corrections": ("sigmoid", [files["completeness_train"]], [files["spans_train"]]),
                    "ddpo": ("ddpo", None, [files["spans_train"]])}[algorithm]  # fmt: skip
        as_list = lambda v: None if v is None else [str(x) for x in v]  # noqa: E731
        assert (run.dpo.loss, as_list(run.data.train), as_list(run.data.corrections)) == (
            expected[0], as_list(expected[1]), as_list(expected[2]))
    # done runs are not trained again
    started = (finals["ddpo"] / "model.safetensors").stat().st_mtime
    demo.stage_dpo(cfg, tmp_path, 0, "ddpo", files, policy_dir)
    assert (finals["ddpo"] / "model.safetensors").stat().st_mtime == started
    report = demo.stage_evaluate(cfg, tmp_path, 0, {"sft": policy_dir, **finals})
    assert set(report["policies"]) == {"sft", *demo.DPO_ALGORITHMS}
    for name in demo.DPO_ALGORITHMS:
        report["policies"][name]["train_seconds"] = 1.0
    table = format_table(report["policies"])
    assert "train_s" in table.splitlines()[0] and "err:completeness" in table
    assert "train_s" not in format_table({"sft": report["policies"]["sft"]})  # the default table is unchanged
