"""The configuration layer: every command line is checked before any work starts (unknown keys refused,
every resolved value within its range), and each command's --help is its own, true and fast."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from finegrained.config import compose_from_argv
from finegrained.config_checks import (
    compose_checked,
    group_defaults,
    group_options,
    lookup,
    node_paths,
    render_help,
    warn_if_one_class,
)
from finegrained.errors import FinegrainedError, InputError
from finegrained.paths import CONF_DIR
from finegrained.settings import COMMANDS, Bool, Choice, Float, Int, Setting

CONFIGS = sorted(COMMANDS)  # ppo, train_rm, eval_rm, sft, evaluate, demo, bench


def refused(config_name: str, argv: list[str]) -> list:
    with pytest.raises(InputError) as caught:
        compose_checked(config_name, argv)
    return caught.value.problems


# -- bad values: the probes ------------------------------------------------------------------------
PROBES = [
    ("ppo", "ppo.batch_size=0"), ("ppo", "ppo.batch_size=-4"), ("ppo", "ppo.grad_accum=0"),
    ("ppo", "kl.estimator=k9"), ("ppo", "generation.max_new_tokens=0"), ("ppo", "generation.temperature=0"),
    ("ppo", "ppo.iterations=abc"), ("ppo", "ppo.iterations=0"), ("ppo", "ppo.iterations=-3"), ("ppo", "ppo.lr=-1"),
    ("ppo", "ppo.lr=0"), ("ppo", "ppo.epochs=0"), ("ppo", "ppo.minibatch_size=0"), ("ppo", "ppo.iterations=2.5"),
    ("ppo", "generation.top_p=1.5"), ("ppo", "ppo.gamma=2"), ("ppo", "resume=maybe"), ("ppo", "lora.r=-1"),
    ("ppo", "reward.span_mode=harsh"), ("ppo", "reward.categories.printable.weight=heavy"),
    ("train_rm", "train.batch_size=0"), ("train_rm", "train.lr=-1"), ("train_rm", "train.epochs=abc"),
    ("train_rm", "train.epochs=0"), ("train_rm", "data.eval_fraction=1.0"), ("train_rm", "train.class_weighting=some"),
    ("sft", "train.epochs=0"), ("sft", "train.lr=0"), ("sft", "train.batch_size=0"),
    ("eval_rm", "batch_size=0"), ("evaluate", "n_prompts=0"), ("evaluate", "generation.temperature=0"),
    ("evaluate", "split=dev"), ("demo", "seeds=0"), ("demo", "seeds=[]"), ("demo", "label_noise=1.5"),
    ("demo", "span_mode=soft_ish"), ("bench", "bench.iterations=0"), ("bench", "bench.mode=hybrid"),
    ("bench", "bench.batch_size=0"),
]  # fmt: skip


@pytest.mark.parametrize("config_name,override", PROBES, ids=[f"{c}:{o}" for c, o in PROBES])
def test_bad_value_is_refused_naming_key_value_and_range(config_name, override):
    key, _, value = override.partition("=")
    problems = refused(config_name, [override])
    assert [p.field for p in problems] == [key]
    assert problems[0].message.startswith(f"{value}: must be "), problems[0].message


def test_every_bad_key_is_reported_at_once():
    argv = ["ppo.batch_size=0", "ppo.grad_accum=0", "kl.estimator=k9", "ppo.lr=-1", "ppo.iteratons=3", "seed=1"]
    problems = refused("ppo", argv)
    assert {p.field for p in problems} == {"ppo.batch_size", "ppo.grad_accum", "kl.estimator", "ppo.lr", "ppo.iteratons"}
    line = next(str(p) for p in problems if p.field == "ppo.batch_size")
    assert line == "finegrained ppo: ppo.batch_size: 0: must be an integer >= 1"


def test_choices_are_listed_in_the_message():
    (p,) = refused("ppo", ["kl.estimator=k9"])
    assert "k1" in p.message and "k3" in p.message


def test_cross_key_rules():
    (p,) = refused("ppo", ["policy.n_embd=30", "policy.n_head=4"])
    assert p.field == "policy.n_embd" and "multiple of policy.n_head" in p.message
    (p,) = refused("ppo", ["generation.min_new_tokens=10", "generation.max_new_tokens=5"])
    assert p.field == "generation.min_new_tokens"
    (p,) = refused("bench", ["bench.shared_rm=true"])
    assert p.field == "bench.shared_rm" and "fine_grained" in p.message
    compose_checked("bench", ["bench.shared_rm=true", "bench.mode=fine_grained"])


def test_demo_stage_overrides_are_checked_as_their_command_would():
    argv = ['ppo_overrides=["ppo.batch_size=0","ppo.iteratons=2"]', 'rm_overrides=["train.epochs=0"]']
    problems = {p.field: p.message for p in refused("demo", argv)}
    assert problems["ppo_overrides: ppo.batch_size"].startswith("0: must be an integer >= 1")
    assert "did you mean ppo.iterations" in problems["ppo_overrides: ppo.iteratons"]
    assert problems["rm_overrides: train.epochs"].startswith("0: must be")
    compose_checked("demo", ['ppo_overrides=["ppo.batch_size=8","kl.coef=0.1"]'])


# -- unknown keys ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "+", "++"])
def test_unknown_key_is_refused_with_a_suggestion(prefix):
    (p,) = refused("ppo", [f"{prefix}ppo.iteratons=3"])
    assert p.field == "ppo.iteratons"
    assert "did you mean ppo.iterations" in p.message


def test_unknown_group_option_and_foreign_group_are_refused():
    (p,) = refused("ppo", ["reward=fine_graned"])
    assert p.field == "reward" and "did you mean reward=fine_grained" in p.message
    (p,) = refused("demo", ["policy=tiny"])
    assert p.field == "policy" and "not of this one" in p.message
    (p,) = refused("ppo", ["smoke"])
    assert "experiment=smoke" in p.message


def test_removing_a_needed_key_is_refused():
    (p,) = refused("ppo", ["~ppo.lr"])
    assert p.field == "ppo.lr"


def test_open_mappings_take_the_users_own_keys():
    cfg = compose_checked("evaluate", ["policies.sft=a/b", "+policies.ppo=c/d"])
    assert dict(cfg.policies) == {"sft": "a/b", "ppo": "c/d"}
    cfg = compose_checked("ppo", ["reward=holistic", "reward.categories.extra.model=rm/x", "reward.categories.extra.weight=0.5"])
    assert cfg.reward.categories.extra.weight == 0.5
    cfg = compose_checked("ppo", ["reward.categories.printable.judge.pattern=xyz", "task.prompts.n=8"])
    assert cfg.reward.categories.printable.judge.pattern == "xyz" and cfg.task.prompts.n == 8
    (p,) = refused("ppo", ["reward=holistic", "reward.categories.extra.wieght=1"])
    assert "reward.categories.extra.weight" in p.message  # a category's own keys are not free-form


def test_evaluate_takes_a_reward_group_without_plus():
    cfg = compose_checked("evaluate", ["reward=fine_grained", "reward.categories.relevance.model=rm/r"])
    assert cfg.reward.categories.relevance.model == "rm/r"
    assert compose_checked("evaluate", []).reward is None


def test_plus_on_an_existing_key_and_aliases_and_words():
    assert compose_checked("ppo", ["+ppo.lr=0.1"]).ppo.lr == 0.1
    assert compose_checked("eval_rm", ["model=rm/x"]).model_dir == "rm/x"
    quick = compose_checked("demo", ["quick"])
    assert quick.ppo_iterations < compose_checked("demo", []).ppo_iterations
    assert quick.output_dir == "outputs/demo-quick"
    assert compose_checked("demo", ["quick", "output_dir=elsewhere"]).output_dir == "elsewhere"


# -- every shipped config --------------------------------------------------------------------------
def _presets() -> list[tuple[str, str]]:
    return [(name, f"{group}={option}") for name in CONFIGS for group in group_defaults(name) for option in group_options(group)]


@pytest.mark.parametrize("config_name,choice", [(n, None) for n in CONFIGS] + _presets())
def test_every_shipped_config_composes_and_validates(config_name, choice):
    cfg = compose_checked(config_name, [choice] if choice else [])
    assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("config_name,choice", [(n, None) for n in CONFIGS] + _presets())
def test_every_shipped_key_is_described(config_name, choice):
    """A key added to conf/ without a table entry still runs, but its --help line says nothing: add one."""
    settings = COMMANDS[config_name].settings
    cfg = compose_checked(config_name, [choice] if choice else [])
    from finegrained.config_checks import _under_open

    for path, value in node_paths(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, dict) or _under_open(settings, path):
            continue
        assert lookup(settings, path) is not None, f"{config_name}: {path} has no entry in finegrained/settings.py"


def test_every_hydra_config_has_a_table():
    commands = {p.stem for p in CONF_DIR.glob("*.yaml")}
    assert commands == set(COMMANDS)


# -- help ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config_name", CONFIGS)
def test_help_lists_own_groups_and_every_key_with_a_description(config_name, capsys):
    assert compose_from_argv(config_name, ["--help"]) is None
    text = capsys.readouterr().out
    own = set(group_defaults(config_name))
    foreign = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and (p / "..").exists()} - own - {"accelerate"}
    groups_section = text.split("groups (group=option):")[1].split("\n\n")[0] if own else ""
    for group in own:
        assert f"  {group} " in groups_section
    for group in foreign:
        assert f"  {group} " not in groups_section, f"{config_name} --help lists the foreign group {group}"
    settings_section = text.split("settings (key=default  description [allowed]):")[1]
    assert "(not described yet)" not in settings_section
    cli_name = COMMANDS[config_name].cli_name
    assert f"finegrained {cli_name} " in text and f"finegrained {config_name} --cfg" not in text.replace(cli_name, "")


def _examples() -> list[tuple[str, str]]:
    found = []
    for name in CONFIGS:
        for line in render_help(name).splitlines():
            if line.strip().startswith("finegrained "):
                found.append((name, line.strip()))
    return found


@pytest.mark.parametrize("config_name,example", _examples())
def test_help_examples_run_as_written(config_name, example):
    words = shlex.split(example)
    assert words[0] == "finegrained" and words[1] == COMMANDS[config_name].cli_name
    assert compose_from_argv(config_name, words[2:]) is not None


def test_help_follows_the_chosen_group_option():
    rule_based = render_help("ppo")
    fine_grained = render_help("ppo", ["reward=fine_grained"])
    assert "reward.segmentation.min_words" in rule_based and "reward.segmentation" not in fine_grained
    assert "reward.categories.<name>.model" in fine_grained


@pytest.mark.parametrize("flags", [["--cfg"], ["--cfg", "job"], ["--cfg=job"]])
def test_cfg_prints_the_composed_config(flags, capsys):
    assert compose_from_argv("ppo", ["experiment=smoke", *flags, "ppo.iterations=2"]) is None
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.ppo.iterations == 2 and printed.policy.n_embd == 32


def test_cfg_hydra_is_refused_clearly():
    with pytest.raises(FinegrainedError, match="--cfg job"):
        compose_from_argv("ppo", ["--cfg", "hydra"])
    with pytest.raises(FinegrainedError, match="unknown option"):
        compose_from_argv("ppo", ["--verbose"])


# -- the table's own checks ---------------------------------------------------------------------------
def test_setting_checks():
    count = Int("n", low=1)
    assert count.problem(1) is None and count.problem(0) and count.problem(True) and count.problem(2.0) and count.problem("3")
    rate = Float("lr", above=0, nullable=True)
    assert rate.problem(1) is None and rate.problem(1e-5) is None and rate.problem(None) is None
    assert rate.problem(0) and rate.problem(float("nan")) and rate.problem(False)
    assert Float("p", low=0, below=1).problem(1.0) and Float("p", low=0, below=1).problem(0.0) is None
    assert Bool("b").problem("true") and Bool("b").problem(True) is None and Bool("b").problem(None)
    assert Choice(("k1", "k3"), "e").problem("k2") and Choice(("k1", "k3"), "e").problem("k3") is None
    seeds = Setting("s", "seeds")
    assert seeds.problem(3) is None and seeds.problem([0, 7]) is None and seeds.problem([-1]) and seeds.problem(0)


# -- the label check for the reward-model trainer ----------------------------------------------------
def test_warn_if_one_class(capsys):
    assert warn_if_one_class("factuality", 10, 3) is None
    assert capsys.readouterr().err == ""
    for n_segments, n_errors, said in ((10, 0, "no error segment"), (10, 10, "every one of 10"), (0, 0, "no labelled")):
        message = warn_if_one_class("factuality", n_segments, n_errors, "spans.jsonl")
        assert said in message and "spans.jsonl" in message
        assert message in capsys.readouterr().err


# -- through the real entry point -------------------------------------------------------------------
FAST_PATH = """
import contextlib, io, json, sys
from finegrained.cli import main
report = {}
for command in %r:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([command, "--help"])
    report[command] = {"code": code, "help": out.getvalue()}
err = io.StringIO()
with contextlib.redirect_stderr(err):
    report["bad"] = {"code": main(["ppo", "ppo.batch_size=0", "+ppo.iteratons=3"]), "err": err.getvalue()}
report["heavy"] = sorted(m for m in ("torch", "transformers", "accelerate") if m in sys.modules)
print(json.dumps(report))
"""


def test_help_and_config_errors_never_import_torch():
    names = [COMMANDS[n].cli_name for n in CONFIGS]
    done = subprocess.run([sys.executable, "-c", FAST_PATH % (names,)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    for name in names:
        assert report[name]["code"] == 0 and report[name]["help"].startswith(f"usage: finegrained {name}")
    assert report["bad"]["code"] == 2
    assert "ppo.batch_size: 0: must be an integer >= 1" in report["bad"]["err"]
    assert "ppo.iteratons" in report["bad"]["err"]


@pytest.mark.parametrize("argv,key", [
    (["ppo", "ppo.iterations=abc"], "ppo.iterations"),
    (["train-rm", "train.epochs=0", "category=factuality", "data.train=x.jsonl", "output_dir=o"], "train.epochs"),
    (["demo", "+seeds_=3"], "seeds_"),
])  # fmt: skip
def test_console_refuses_bad_settings_with_exit_2_and_no_traceback(argv, key):
    done = subprocess.run([sys.executable, "-m", "finegrained.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f": {key}: " in done.stderr


def test_machine_description_names_the_cpu_and_its_kernels():
    import torch

    from finegrained.config import machine_description

    described = machine_description()
    assert described["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert described["torch_threads"] == torch.get_num_threads() and isinstance(described["cpu"], str)
