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
    assert ppo.main(smoke_argv(tmp_path, "[tensorboard,mlflow]")) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("finegrained").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    scalars = read_scalars(tmp_path / "tb")
    assert any(k.startswith("rewards/") and k.endswith("/mean") for k in scalars) and "loss/policy" in scalars
    assert set(run.data.metrics) == set(scalars)  # the same names as tensorboard
    for key in ("kl", "rewards/length/mean", "time/update"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == pytest.approx(scalars[key])  # the same values at the same steps (1, 2)
    params = run.data.params
    assert params["ppo.iterations"] == "2" and params["log.report_to"] == "['tensorboard', 'mlflow']"
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


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'finegrained[wandb]')")
def test_ppo_reports_to_an_offline_wandb_run(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert ppo.main(smoke_argv(tmp_path, "[tensorboard,wandb]")) == 0
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert json.loads((tmp_path / trackers.RUN_IDS_FILE).read_text())["wandb"] in run_file.name
    history: dict[int, dict] = {}
    config: dict = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row.pop("_step")] = row
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    scalars = read_scalars(tmp_path / "tb")
    assert sorted(history) == [1, 2]
    for step, row in history.items():
        metrics = {k: v for k, v in row.items() if not k.startswith("_")}
        assert set(metrics) == set(scalars)  # the same names as tensorboard
        assert metrics["kl"] == pytest.approx(scalars["kl"][step])
    assert config["ppo"]["iterations"] == 2 and config["log"]["report_to"] == ["tensorboard", "wandb"]
