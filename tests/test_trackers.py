"""Experiment trackers: log.report_to is checked, and MLflow (a real local store) and W&B (offline) get the
metric names tensorboard gets, at the same steps, and the resolved config."""

from __future__ import annotations

import importlib.util
import json
import struct

import pytest

from finegrained import trackers
from finegrained.config_checks import compose_checked
from finegrained.errors import FinegrainedError, InputError
from finegrained.plots import read_scalars
from finegrained.commands import ppo as ppo_command
from finegrained.rl import trainer as ppo

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def smoke_argv(tmp_path, report_to: str) -> list[str]:
    return ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "ppo.iterations=2", "checkpoint.every=0",
            "ppo.batch_size=4", "ppo.minibatch_size=4", f"log.report_to={report_to}"]  # fmt: skip


def test_report_to_is_a_list_of_known_trackers():
    assert trackers.requested("mlflow") == ["mlflow"]  # log.report_to=mlflow
    assert trackers.requested(["wandb", "tensorboard", "wandb"]) == ["wandb", "tensorboard"]
    assert trackers.requested([]) == []
    with pytest.raises(FinegrainedError, match="unknown tracker 'neptune'"):
        trackers.requested(["tensorboard", "neptune"])
    for command in ("ppo", "sft", "train_rm"):
        with pytest.raises(InputError) as refused:
            compose_checked(command, ["log.report_to=[tensorboard,neptune]"])
        (problem,) = refused.value.problems
        assert problem.field == "log.report_to" and "tensorboard, mlflow, wandb" in problem.message
        assert compose_checked(command, ["log.report_to=[mlflow,wandb]"]).log.report_to == ["mlflow", "wandb"]


@pytest.mark.parametrize("command", ["ppo", "sft", "train_rm"])
def test_a_missing_tracker_is_named_with_its_extra_before_any_work(tmp_path, monkeypatch, command):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = compose_checked(command, [f"output_dir={tmp_path}", "log.report_to=[tensorboard,wandb]"])
    if command == "ppo":
        run = lambda: ppo.build_trainer(cfg)  # noqa: E731
    elif command == "sft":
        from finegrained.sft import train_sft

        run = lambda: train_sft(cfg)  # noqa: E731
    else:
        from finegrained.rewards.train import train_reward_model

        run = lambda: train_reward_model(cfg)  # noqa: E731
    with pytest.raises(FinegrainedError, match=r"wandb, which is not installed: pip install 'finegrained\[wandb\]'"):
        run()
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_flatten_gives_dotted_keys():
    assert trackers.flatten({"ppo": {"lr": 0.1, "gamma": 1.0}, "log": {"report_to": ["mlflow"]}, "seed": 3, "empty": {}}) == {
        "ppo.lr": 0.1, "ppo.gamma": 1.0, "log.report_to": ["mlflow"], "seed": 3, "empty": {}}  # fmt: skip


@pytest.mark.slow  # creating the SQLite store takes MLflow several seconds
@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'finegrained[mlflow]')")
def test_ppo_reports_to_a_local_mlflow_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    argv = [*smoke_argv(tmp_path, "[tensorboard,mlflow]"), "checkpoint.every=2"]
    assert ppo_command.main(argv) == 0
    assert ppo_command.main([*argv, "ppo.iterations=3", "resume=true"]) == 0  # continues the same MLflow run
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("finegrained").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    scalars = read_scalars(tmp_path / "tb")
    assert any(k.startswith("rewards/") and k.endswith("/mean") for k in scalars) and "loss/policy" in scalars
    assert set(run.data.metrics) == set(scalars)  # the same names as tensorboard
    for key in ("kl", "rewards/length/mean", "time/update"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == pytest.approx(scalars[key]) and sorted(history) == [1, 2, 3]  # the same values and steps
    params = run.data.params  # as the run started: a param is written once
    assert params["ppo.iterations"] == "2" and params["resume"] == "False"
    assert params["log.report_to"] == "['tensorboard', 'mlflow']"
    assert params["output_dir"] == str(tmp_path)


def wandb_records(path):
    """The protobuf records of a W&B ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log chunks in 32 KiB blocks (checksum 4, length 2, type 1: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def offline_wandb_run(output_dir) -> tuple[dict[int, dict], dict]:
    """(step -> logged values, config) of the one offline W&B run under ``output_dir/wandb``."""
    (run_file,) = (output_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[int, dict] = {}
    config: dict = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(row.pop("_step"), {}).update({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    assert json.loads((output_dir / trackers.RUN_IDS_FILE).read_text())["wandb"] in run_file.name
    return history, config


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'finegrained[wandb]')")
def test_ppo_reports_to_an_offline_wandb_run(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert ppo_command.main(smoke_argv(tmp_path, "[tensorboard,wandb]")) == 0
    history, config = offline_wandb_run(tmp_path)
    scalars = read_scalars(tmp_path / "tb")
    assert sorted(history) == [1, 2]
    for step, metrics in history.items():
        assert set(metrics) == set(scalars)  # the same names as tensorboard
        assert metrics["kl"] == pytest.approx(scalars["kl"][step])
    assert config["ppo"]["iterations"] == 2 and config["log"]["report_to"] == ["tensorboard", "wandb"]


def span_records(n: int) -> list[dict]:
    """Two-sentence answers; the second sentence is marked Unverifiable in every third record."""
    records = []
    for i in range(n):
        first, second = f"The river runs near house {i}.", f"A small {'zebra' if i % 3 == 0 else 'dog'} sleeps under it."
        spans = [{"start": len(first) + 1, "end": len(first) + 1 + len(second), "label": "Unverifiable"}] if i % 3 == 0 else []
        records.append({"id": f"r{i}", "prompt": "question: what is near the river? context: a house",
                        "completion": f"{first} {second}", "spans": spans})  # fmt: skip
    return records


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'finegrained[wandb]')")
@pytest.mark.parametrize("command", ["sft", "train_rm"])
def test_sft_and_reward_model_training_report_to_wandb(tmp_path, monkeypatch, command):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "out"
    if command == "sft":
        from finegrained.commands import sft

        assert sft.main([f"output_dir={out}", "data.n_train=32", "data.n_eval=8", "train.batch_size=8", "model.n_layer=1",
                         "model.n_embd=16", "model.vocab_size=300", "train.progress=false", "train.log_every=1",
                         "log.report_to=[tensorboard,wandb]"]) == 0  # fmt: skip
    else:
        from finegrained.commands import train_rm

        data = tmp_path / "spans.jsonl"
        data.write_text("".join(json.dumps(record) + "\n" for record in span_records(40)), encoding="utf-8")
        assert train_rm.main(["schema=synthetic_qa", "category=factuality", f"data.train={data}", f"output_dir={out}",
                              "data.eval_fraction=0.25", "train.epochs=1", "train.progress=false",
                              "log.report_to=[tensorboard,wandb]"]) == 0  # fmt: skip
    history, config = offline_wandb_run(out)  # train-rm: inside the model directory, written whole at the end
    scalars = read_scalars(out / "tb")
    assert "train/loss" in scalars and {k for row in history.values() for k in row} == set(scalars)
    assert {step: row["train/loss"] for step, row in history.items() if "train/loss" in row} == pytest.approx(scalars["train/loss"])
    assert config["log"]["report_to"] == ["tensorboard", "wandb"]


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'finegrained[wandb]')")
def test_a_resumed_run_continues_its_tracker_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with trackers.Trackers(["wandb"], tmp_path, "run") as first:
        first.log({"loss": 1.0}, 1)
        run_id = first.backends["wandb"].run_id
    with trackers.Trackers(["wandb"], tmp_path, "run", resume=True) as resumed:
        assert resumed.backends["wandb"].run_id == run_id
    with trackers.Trackers(["wandb"], tmp_path, "run") as fresh:  # not resuming: a run of its own
        assert fresh.backends["wandb"].run_id != run_id
    assert not trackers.Trackers(["wandb"], tmp_path, "run", enabled=False).active  # other processes track nothing
