"""Nothing broken is saved as good, and every directory a command reads is checked on load.

One test per class of failure (plus a few probes beyond the first examples):
2. diverged models: nothing non-finite is written; non-finite losses, judgements and weights stop the run
   with a message naming the step or iteration, and what it says about checkpoints is true;
3. broken directories: every damage to a policy, reward-model, joint or value-trunk directory is a
   FinegrainedError naming the directory and what is wrong (CLI: exit 2, no traceback);
6. resume skips damaged checkpoints for the newest one that loads; temporaries of killed writes are cleared;
7. a full disk is "no space left on device while writing DIR", keeping earlier versions, leaving no temporary.
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_reward_models import write_jsonl, zebra_span_records

from finegrained import cli
from finegrained.config import compose
from finegrained.errors import FinegrainedError
from finegrained.rl.generation import load_policy
from finegrained.io import DiskFullError, atomic_directory, atomic_write_json, remove_stale_temporaries
from finegrained.model_dirs import (
    NonFiniteWeightsError,
    check_causal,
    load_value_trunk,
    save_pretrained_dir,
)
from finegrained.models.tiny import tiny_causal_lm, tiny_encoder_config, train_tokenizer
from finegrained.commands import train_rm
from finegrained.rewards.inference import load_judge
from finegrained.rewards.scorer import CategoryScorer, RewardScorer
from finegrained.rewards.training import main_process_output
from finegrained.rewards.directory import init_joint_reward_model_dir, init_reward_model_dir, save_reward_model
from finegrained.rl import checkpoint as ckpt
from finegrained.rl import learner
from finegrained.rl import trainer as ppo
from finegrained.schema import SegmentationConfig, load_schema

TEXTS = [f"the {a} {b} sees a {c} near the river." for a in ("small", "large", "green") for b in ("cat", "dog", "bird")
         for c in ("stone", "house", "zebra", "tree")] * 3  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=260, min_frequency=1)


@pytest.fixture(scope="module")
def schema():
    return load_schema("synthetic_qa")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tokenizer, schema):
    """Valid directories of every kind, copied by the tests before they damage them."""
    root = tmp_path_factory.mktemp("pristine")
    small = {"n_layer": 1, "hidden": 16, "n_head": 2, "max_length": 64}
    init_reward_model_dir(schema.category("factuality"), root / "span_rm", tokenizer, **small)
    init_reward_model_dir(schema.category("completeness"), root / "preference_rm", tokenizer, **small)
    init_joint_reward_model_dir([schema.category("relevance"), schema.category("completeness")], root / "joint_rm",
                                tokenizer, **small)  # fmt: skip
    policy = tiny_causal_lm(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=0)
    save_pretrained_dir(root / "policy", policy, tokenizer)
    return root


def copy_of(pristine: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(pristine / name, target)
    return target


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".old"))


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 without a traceback. Returns stderr."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------------------------------
# 2. Nothing non-finite is saved; divergence stops the run clearly


def test_non_finite_models_and_checkpoints_are_never_written(tmp_path, pristine, schema):
    judge = load_judge(pristine / "span_rm", device="cpu")
    with torch.no_grad():
        next(judge.model.parameters()).view(-1)[3] = float("nan")
    final = tmp_path / "rm"
    with pytest.raises(NonFiniteWeightsError) as info:
        with atomic_directory(final) as tmp:
            save_reward_model(tmp, judge.model, judge.tokenizer, judge.metadata, None)
    assert str(final) in str(info.value) and repr(next(judge.model.named_parameters())[0]) in str(info.value)
    assert not final.exists() and temporaries(tmp_path) == []

    # a checkpoint: policy weights, or the optimizer's state
    policy, value = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam([*policy.parameters(), *value.parameters()])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    policy(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.state[policy.bias]["exp_avg"][0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"checkpoints/iter-1: not written: the optimizer state"):
        ckpt.save_checkpoint(tmp_path, 1, policy, value, optimizer, scheduler, {"data_position": 0, "kl_controller": {}}, keep=2)
    with torch.no_grad():
        policy.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"iter-1: not written: the policy .* 'weight'"):
        ckpt.save_checkpoint(tmp_path, 1, policy, value, optimizer, scheduler, {"data_position": 0, "kl_controller": {}}, keep=2)
    assert ckpt.checkpoint_dirs(tmp_path, complete_only=False) == [] and temporaries(tmp_path / "checkpoints") == []

    # metadata that load_judge would refuse is not written either (a NaN normalisation)
    pref = load_judge(pristine / "preference_rm", device="cpu")
    with pytest.raises(FinegrainedError, match="normalisation"):
        with atomic_directory(tmp_path / "pref") as tmp:
            save_reward_model(tmp, pref.model, pref.tokenizer, {**pref.metadata, "normalisation": {"mean": math.nan, "std": 1.0}}, None)
    assert not (tmp_path / "pref").exists()


def test_train_rm_whose_loss_diverges_stops_naming_the_step(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", zebra_span_records(12, seed=1))
    out = tmp_path / "rm"
    err = cli_error(capsys, "train-rm", "schema=synthetic_qa", "category=factuality", f"data.train={data}",
                    f"output_dir={out}", "train.epochs=2", "train.batch_size=4", "train.lr=1e6", "train.progress=false",
                    "model.n_layer=1", "model.hidden=16", "model.n_head=2")  # fmt: skip
    assert "the training loss is nan at step" in err
    assert not out.exists() and temporaries(tmp_path) == []


@pytest.mark.parametrize("mode", ["hard", "soft", "penalty", "preference"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_judge_returning_nan_or_inf_is_an_error_in_every_mode(mode, bad):
    def span_judge(prompts, completions, segments):
        return [[0.1] * (len(s) - 1) + [bad] for s in segments]

    def sequence_judge(prompts, completions):
        return [0.0, bad][: len(completions)]

    if mode == "preference":
        category = CategoryScorer("c", "preference", "sequence", 1.0, "hard", sequence_judge, SegmentationConfig())
    else:
        category = CategoryScorer("c", "span", "sentence", 1.0, mode, span_judge, SegmentationConfig())
    scorer = RewardScorer([category])
    with pytest.raises(FinegrainedError, match=r"category 'c': its judge returned a non-finite"):
        scorer(["q", "q"], ["One. Two.", "Three. Four."])


def smoke(tmp_path: Path, *overrides: str):
    return compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "ppo.batch_size=4",
                           "ppo.minibatch_size=4", "generation.max_new_tokens=8", *overrides])  # fmt: skip


def test_ppo_divergence_stops_naming_the_iteration_and_tells_the_truth_about_checkpoints(tmp_path, monkeypatch):
    # a learning rate that ruins the weights: stopped in iteration 1, before any checkpoint could hold them
    trainer = ppo.build_trainer(smoke(tmp_path / "lr", "ppo.lr=1e6", "ppo.iterations=3", "checkpoint.every=1"))
    with pytest.raises(FinegrainedError, match=r"iteration 1, phase update: .*no checkpoint was written yet") as info:
        trainer.train()
    assert "last good checkpoint" not in str(info.value)
    for _, directory in ckpt.checkpoint_dirs(tmp_path / "lr", complete_only=False):
        ckpt.read_checkpoint(directory, trainer.policy, trainer.value, trainer.optimizer)  # nothing broken was kept

    # weights that make sampling fail: a clear stop naming the iteration, not torch.multinomial's traceback
    trainer = ppo.build_trainer(smoke(tmp_path / "sampling", "ppo.iterations=3", "checkpoint.every=1"))
    trainer.run_iteration()
    trainer.save_checkpoint()

    def broken_sampling(*args, **kwargs):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr(learner, "sample_responses", broken_sampling)  # the learner every trainer shares
    with pytest.raises(FinegrainedError, match=r"iteration 2, phase generate: sampling failed") as info:
        trainer.run_iteration()
    assert "iter-1, holds these weights" in str(info.value)

    # a NaN weight after an update (the loss itself stayed finite)
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    first = next(policy.parameters())
    kept = first.detach().clone()

    def poisoned_update(*args, **kwargs):
        with torch.no_grad():
            first.view(-1)[0] = float("nan")
        trainer._check_weights_after_update()

    monkeypatch.undo()
    monkeypatch.setattr(trainer, "update", poisoned_update)
    with pytest.raises(FinegrainedError, match=r"iteration 2, phase update: .*policy has NaN.*last good checkpoint, .*iter-1"):
        trainer.run_iteration()
    monkeypatch.undo()
    with torch.no_grad():
        first.copy_(kept)

    # finite but huge weights whose logits overflow: caught after the update (before a checkpoint holds them),
    # and, if they reach sampling, torch.multinomial's failure becomes the same clear stop
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.mul_(1e20)
    ids = torch.tensor([trainer.tokenizer("question: where?", add_special_tokens=False).input_ids])
    with pytest.raises(FinegrainedError, match=r"iteration 2, phase update: after the update the policy gives NaN or infinite logits"):
        trainer._check_weights_after_update(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(ids.shape[1])[None])
    with pytest.raises(FinegrainedError, match=r"iteration 2, phase generate: sampling failed"):
        trainer.run_iteration()


# ----------------------------------------------------------------------------------------------------
# 3. Every directory a command reads is checked on load


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def _edit_json(path: Path, **changes) -> None:
    _write_json(path, {**json.loads(path.read_text()), **changes})


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _nan_weights(directory: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _other_tokenizer(directory: Path) -> None:
    """A larger tokenizer of another corpus in place of the directory's own."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    corpus = [" ".join(f"w{i}x{j}" for j in range(40)) for i in range(40)]
    train_tokenizer(corpus, vocab_size=900, min_frequency=1).save_pretrained(directory)


REWARD_MODEL_DAMAGE = {
    "no tokenizer": (lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")], "no tokenizer files"),
    "another model's tokenizer": (_other_tokenizer, "tokens but the model's embedding"),
    "unknown kind": (lambda d: _edit_json(d / "finegrained.json", kind="judge"), "kind: unknown kind 'judge'"),
    "empty metadata": (lambda d: _write_json(d / "finegrained.json", {}), "kind: unknown kind None"),
    "list metadata": (lambda d: _write_json(d / "finegrained.json", [1, 2]), "must be a JSON object"),
    "garbage metadata": (lambda d: (d / "finegrained.json").write_bytes(b"\x00{not json"), "unreadable metadata"),
    "wrong types": (lambda d: _edit_json(d / "finegrained.json", max_length="64", uses_context="yes"), "max_length: must be"),
    "granularity": (lambda d: _edit_json(d / "finegrained.json", granularity="paragraph"), "unknown granularity"),
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors is not a readable safetensors"),
    "empty weights": (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors is not a readable"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 300), "model.safetensors is not a readable"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "no config": (lambda d: (d / "config.json").unlink(), "no config.json"),
    "more layers than weights": (lambda d: _edit_json(d / "config.json", num_hidden_layers=2), "weights missing"),
    "other shapes": (lambda d: _edit_json(d / "config.json", intermediate_size=32), "do not"),
    "NaN weights": (_nan_weights, "NaN or infinite"),
    "garbage config": (lambda d: (d / "config.json").write_text("{nope"), "config.json"),
    "config of no model type": (lambda d: _write_json(d / "config.json", {}), "config.json"),
    "garbage tokenizer": (lambda d: (d / "tokenizer.json").write_text("[1, 2"), "tokenizer"),
    "kind of the other head": (lambda d: _edit_json(d / "finegrained.json", kind="preference", granularity="sequence",
                                                    normalisation={"mean": 0, "std": 1}), "not a preference reward model"),
    "not a directory": (lambda d: (shutil.rmtree(d), d.write_text("x")), "not a directory"),
    "missing": (lambda d: shutil.rmtree(d), "no such directory"),
}


@pytest.mark.parametrize("damage", list(REWARD_MODEL_DAMAGE), ids=list(REWARD_MODEL_DAMAGE))
def test_every_damaged_reward_model_directory_is_refused_naming_it(tmp_path, pristine, damage):
    directory = copy_of(pristine, tmp_path, "span_rm")
    spoil, expected = REWARD_MODEL_DAMAGE[damage]
    spoil(directory)
    with pytest.raises(FinegrainedError) as info:
        load_judge(directory, device="cpu")
    assert str(directory) in str(info.value) and re.search(expected, str(info.value)), str(info.value)


JOINT_DAMAGE = {
    "no heads": (lambda d: (d / "heads.safetensors").unlink(), "no heads.safetensors"),
    "garbage heads": (lambda d: (d / "heads.safetensors").write_bytes(b"\x10" * 64), "heads.safetensors is not a readable"),
    "a category without a head": (lambda d: _edit_json(d / "finegrained.json", categories={
        **json.loads((d / "finegrained.json").read_text())["categories"],
        "factuality": {"kind": "span", "granularity": "sentence"}}), "heads.safetensors does not match"),
    "no categories": (lambda d: _edit_json(d / "finegrained.json", categories={}), "categories: a joint reward model needs"),
    "a category of unknown kind": (lambda d: _edit_json(d / "finegrained.json", categories={"relevance": {"kind": "x"}}),
                                   "categories.relevance.kind"),
    "truncated backbone": (lambda d: _truncate(d / "model.safetensors", 0.9), "model.safetensors is not a readable"),
}


@pytest.mark.parametrize("damage", list(JOINT_DAMAGE), ids=list(JOINT_DAMAGE))
def test_every_damaged_joint_reward_model_is_refused_naming_it(tmp_path, pristine, damage):
    directory = copy_of(pristine, tmp_path, "joint_rm")
    spoil, expected = JOINT_DAMAGE[damage]
    spoil(directory)
    with pytest.raises(FinegrainedError) as info:
        load_judge(directory, device="cpu")
    assert str(directory) in str(info.value) and re.search(expected, str(info.value)), str(info.value)


POLICY_DAMAGE = {
    "no tokenizer": (lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")], "no tokenizer files"),
    "another model's tokenizer": (_other_tokenizer, "tokens but the model's embedding"),
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "not a readable safetensors"),
    "more layers than weights": (lambda d: _edit_json(d / "config.json", n_layer=2), "weights missing"),
    "NaN weights": (_nan_weights, "NaN or infinite"),
    "an encoder's architecture": (lambda d: _edit_json(d / "config.json", architectures=["BertForTokenClassification"]),
                                  "not a causal LM"),
    "missing": (lambda d: shutil.rmtree(d), "no such directory"),
}


@pytest.mark.parametrize("damage", list(POLICY_DAMAGE), ids=list(POLICY_DAMAGE))
def test_every_damaged_policy_directory_is_refused_naming_it(tmp_path, pristine, damage):
    directory = copy_of(pristine, tmp_path, "policy")
    spoil, expected = POLICY_DAMAGE[damage]
    spoil(directory)
    with pytest.raises(FinegrainedError) as info:
        load_policy(str(directory))
    assert str(directory) in str(info.value) and re.search(expected, str(info.value)), str(info.value)


def test_commands_refuse_the_wrong_kind_of_directory(tmp_path, pristine, capsys):
    load_policy(str(pristine / "policy"))  # the pristine one loads
    # a reward model is not a policy: evaluate, and a policy is not a reward model: eval-rm
    err = cli_error(capsys, "evaluate", f"policies.a={pristine / 'span_rm'}", f"output_dir={tmp_path / 'eval'}", "n_prompts=2")
    assert f"{pristine / 'span_rm'}: cannot use it as a policy (policies.a): not a causal LM" in err
    data = write_jsonl(tmp_path / "spans.jsonl", zebra_span_records(2, seed=0))
    err = cli_error(capsys, "eval-rm", f"model={pristine / 'policy'}", f"data={data}")
    assert str(pristine / "policy") in err and "finegrained.json" in err
    # PPO with a reward model whose weights are damaged, and a policy directory that does not exist
    damaged = copy_of(pristine, tmp_path, "span_rm")
    _truncate(damaged / "model.safetensors")
    err = cli_error(capsys, "ppo", "experiment=smoke", "reward=fine_grained", f"reward.categories.factuality.model={damaged}",
                    "reward.categories.relevance.model=null", "reward.categories.completeness.model=null",
                    f"output_dir={tmp_path / 'ppo'}", "log.progress=false")  # fmt: skip
    assert f"{damaged}: cannot use it as a reward model" in err
    err = cli_error(capsys, "ppo", "experiment=smoke", f"policy.name_or_path={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'p2'}")
    assert f"{tmp_path / 'nowhere'}: no such directory" in err and "huggingface.co" not in err
    err = cli_error(capsys, "train-rm", "schema=synthetic_qa", "category=factuality", f"data.train={data}", "model=pretrained",
                    f"model.name_or_path={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'rm'}")  # fmt: skip
    assert f"{tmp_path / 'nowhere'}: no such directory" in err and "huggingface.co" not in err


def test_value_init_from_must_be_causal_and_share_the_policys_vocabulary(tmp_path, pristine, tokenizer):
    from transformers import BertModel, GPT2Model

    trunk = load_value_trunk(pristine / "policy", tokenizer)  # the policy's own directory is fine
    assert isinstance(trunk, GPT2Model)
    encoder = tmp_path / "encoder"
    save_pretrained_dir(encoder, BertModel(tiny_encoder_config(tokenizer, 1, n_layer=1, hidden=16, n_head=2)), tokenizer)
    with pytest.raises(FinegrainedError, match="not causal: a bidirectional encoder"):
        load_value_trunk(encoder, tokenizer)
    # the causality check itself, independent of the model's name: a bidirectional encoder fails it
    with pytest.raises(FinegrainedError, match="depend on later tokens"):
        check_causal(BertModel(tiny_encoder_config(tokenizer, 1, n_layer=1, hidden=16, n_head=2)), encoder, "x", len(tokenizer))
    other = tmp_path / "other_vocabulary"
    other_tokenizer = train_tokenizer(["completely different words for another vocabulary"] * 20, vocab_size=len(tokenizer), min_frequency=1)
    save_pretrained_dir(other, tiny_causal_lm(other_tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=64), other_tokenizer)
    with pytest.raises(FinegrainedError, match="vocabulary differs from the policy's"):
        load_value_trunk(other, tokenizer)
    bare = copy_of(pristine, tmp_path, "policy")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(FinegrainedError, match="no tokenizer files"):
        load_value_trunk(bare, tokenizer)


# ----------------------------------------------------------------------------------------------------
# 6. Resume falls back past damaged checkpoints; temporaries of killed writes are cleared


def tiny_run():
    torch.manual_seed(0)
    policy, value = torch.nn.Linear(4, 3), torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam([*policy.parameters(), *value.parameters()], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return policy, value, optimizer, scheduler


def train_and_save(output: Path, iteration: int, policy, value, optimizer, scheduler) -> None:
    (policy(torch.ones(2, 4)).sum() + value(torch.ones(2, 4)).sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    ckpt.save_checkpoint(output, iteration, policy, value, optimizer, scheduler,
                         {"data_position": 4 * iteration, "kl_controller": {"value": 0.1}}, keep=5)  # fmt: skip


def _shape_mismatch(d: Path) -> None:
    from safetensors.torch import save_model

    save_model(torch.nn.Linear(5, 3), str(d / "policy.safetensors"))


CHECKPOINT_DAMAGE = {
    "truncated policy": lambda d: _truncate(d / "policy.safetensors"),
    "empty value": lambda d: (d / "value.safetensors").write_bytes(b""),
    "garbage optimizer": lambda d: (d / "optimizer.pt").write_bytes(b"not a torch file"),
    "no rng": lambda d: (d / "rng.pt").unlink(),
    "state not json": lambda d: (d / "state.json").write_text("{"),
    "state of another iteration": lambda d: _edit_json(d / "state.json", iteration=7),
    "state without a data position": lambda d: _write_json(d / "state.json", {"iteration": 2}),
    "no state": lambda d: (d / "state.json").unlink(),
    "another model's shapes": _shape_mismatch,
    "rng of another structure": lambda d: torch.save({"python": 1}, d / "rng.pt"),
    "optimizer of another model": lambda d: torch.save(_other_optimizer_state(), d / "optimizer.pt"),
}


def _other_optimizer_state() -> dict:
    """Adam state of a model with as many parameters as ``tiny_run``'s, of other shapes."""
    policy, value = torch.nn.Linear(5, 3), torch.nn.Linear(5, 1)
    optimizer = torch.optim.Adam([*policy.parameters(), *value.parameters()])
    (policy(torch.ones(1, 5)).sum() + value(torch.ones(1, 5)).sum()).backward()
    optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE), ids=list(CHECKPOINT_DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint_for_the_newest_that_loads(tmp_path, damage):
    policy, value, optimizer, scheduler = tiny_run()
    train_and_save(tmp_path, 1, policy, value, optimizer, scheduler)
    at_iteration_1 = {k: v.clone() for k, v in policy.state_dict().items()}
    train_and_save(tmp_path, 2, policy, value, optimizer, scheduler)
    CHECKPOINT_DAMAGE[damage](tmp_path / "checkpoints" / "iter-2")
    fresh = tiny_run()
    messages: list[str] = []
    state, directory = ckpt.load_latest_checkpoint(tmp_path, *fresh, messages.append)
    assert directory.name == "iter-1" and state["iteration"] == 1 and state["data_position"] == 4
    for name, tensor in fresh[0].state_dict().items():
        torch.testing.assert_close(tensor, at_iteration_1[name], rtol=0, atol=0)
    assert len(messages) == 1 and "skipped checkpoint" in messages[0] and "iter-2" in messages[0]
    # with every checkpoint damaged, the error lists why each was refused
    CHECKPOINT_DAMAGE[damage](tmp_path / "checkpoints" / "iter-1")
    with pytest.raises(FinegrainedError, match=r"no checkpoint can be resumed from:\n.*iter-2.*\n.*iter-1"):
        ckpt.load_latest_checkpoint(tmp_path, *tiny_run(), messages.append)


def test_temporaries_of_killed_writes_are_cleared_and_nothing_else(tmp_path):
    root = tmp_path / "checkpoints"
    ours = [root / ".iter-3.abcd_123.tmp", root / ".iter-12.k2j4h5g6.tmp"]
    theirs = [root / ".iter-3.tmp", root / ".notes.abcdefgh.tmp", root / "iter-3.abcdefgh.tmp", root / ".iter-3.abcdefgh.tmp.keep"]
    for path in ours + theirs:
        path.mkdir(parents=True)
        (path / "file").write_text("x")
    (root / ".iter-2.old").mkdir()  # killed between the two renames of a swap: the old version comes back
    (root / ".iter-2.old" / "state.json").write_text("{}")
    cleared = remove_stale_temporaries(root, ckpt.CHECKPOINT_NAMES)
    assert sorted(cleared) == sorted([*ours, root / ".iter-2.old"])
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)
    assert (root / "iter-2" / "state.json").is_file()


def test_ppo_and_train_rm_clear_their_temporaries_and_ppo_resumes_past_a_damaged_checkpoint(tmp_path, capsys):
    out = tmp_path / "ppo"
    trainer = ppo.build_trainer(smoke(out, "ppo.iterations=2", "checkpoint.every=1", "checkpoint.keep=3"))
    trainer.train()
    _truncate(out / "checkpoints" / "iter-2" / "policy.safetensors")
    left = [out / "checkpoints" / ".iter-3.abcdefgh.tmp", out / ".final.zyxwvuts.tmp"]
    for path in left:
        path.mkdir()
    capsys.readouterr()
    resumed = ppo.build_trainer(smoke(out, "ppo.iterations=2", "checkpoint.every=1", "resume=true"))
    err = capsys.readouterr().err
    assert resumed.iteration == 1 and resumed.data_position == 4
    assert f"skipped checkpoint {out / 'checkpoints' / 'iter-2'}" in err and "policy.safetensors is not a readable" in err
    assert not any(p.exists() for p in left)

    rm_out = tmp_path / "rm"
    left = tmp_path / ".rm.q1w2e3r4.tmp"
    left.mkdir()
    other = tmp_path / ".rm2.q1w2e3r4.tmp"
    other.mkdir()
    with main_process_output(SimpleNamespace(is_main_process=True), rm_out) as (tmp, _):
        (tmp / "finegrained.json").write_text("{}")
    assert not left.exists() and other.exists() and (rm_out / "finegrained.json").is_file()


# ----------------------------------------------------------------------------------------------------
# 7. A full disk: a clear message, the earlier version kept, no temporary left


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def safetensors_disk_full(*args, **kwargs):
    raise Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')


def test_disk_full_during_a_ppo_checkpoint_keeps_the_earlier_one(tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "ppo"
    trainer = ppo.build_trainer(smoke(out, "ppo.iterations=3", "checkpoint.every=1"))
    trainer.run_iteration()
    trainer.save_checkpoint()
    trainer.run_iteration()
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(DiskFullError, match=rf"no space left on device while writing {out / 'checkpoints' / 'iter-2'}"):
        trainer.save_checkpoint()
    assert [d.name for _, d in ckpt.checkpoint_dirs(out, complete_only=False)] == ["iter-1"]
    assert temporaries(out / "checkpoints") == []
    monkeypatch.undo()
    ckpt.read_checkpoint(out / "checkpoints" / "iter-1", trainer.policy, trainer.value, trainer.optimizer)


@pytest.mark.parametrize("failure", [disk_full, safetensors_disk_full], ids=["OSError", "SafetensorError"])
def test_disk_full_during_train_rm_exits_with_a_clear_message(tmp_path, monkeypatch, capsys, failure):
    import transformers.modeling_utils

    data = write_jsonl(tmp_path / "train.jsonl", zebra_span_records(8, seed=1))
    out = tmp_path / "rm"
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", failure)
    err = cli_error(capsys, "train-rm", "schema=synthetic_qa", "category=factuality", f"data.train={data}",
                    f"output_dir={out}", "train.epochs=1", "train.progress=false", "model.n_layer=1", "model.hidden=16",
                    "model.n_head=2")  # fmt: skip
    assert f"no space left on device while writing {out}" in err
    assert not out.exists() and temporaries(tmp_path) == []


def test_disk_full_writing_a_file_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(DiskFullError, match=rf"while writing {tmp_path / 'metrics.json'}"):
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
