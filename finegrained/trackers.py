"""Experiment trackers: tensorboard (the default), MLflow and Weights & Biases behind one small interface.

``log.report_to`` (ppo, sft, train-rm) lists them; each gets the same scalar names (``rewards/<category>/mean``,
``loss/policy``, ``kl``, ``time/<phase>``, ``train/loss``...) at the same steps, and the resolved config.
Only the main process tracks (``enabled``); every process checks that the trackers asked for are installed.

- ``tensorboard``: events under ``<log_dir>/tb`` (the config as the text ``config``);
- ``mlflow``: ``MLFLOW_TRACKING_URI`` when set, else a local SQLite store ``<log_dir>/mlflow.db`` with
  artifacts under ``<log_dir>/mlartifacts``, no server (MLflow 3 refuses a bare ``./mlruns`` file store
  unless told otherwise); experiment ``MLFLOW_EXPERIMENT_NAME`` or ``finegrained``; the config as params
  with dotted keys (``ppo.lr``), sample completions as text artifacts;
- ``wandb``: mode ``WANDB_MODE`` or ``offline``, runs under ``<log_dir>/wandb/``, project ``WANDB_PROJECT``
  or ``finegrained``; the config as the run's config.

A resumed run (``resume=True``) continues the tracker runs whose ids ``<log_dir>/tracker_runs.json`` keeps.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import FinegrainedError

TRACKERS = ("tensorboard", "mlflow", "wandb")
DEFAULT = ("tensorboard",)
RUN_IDS_FILE = "tracker_runs.json"


def requested(report_to: str | Iterable[str] | None) -> list[str]:
    """``log.report_to`` as a list of known tracker names, in order, each once (a bare name is a list of one)."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else [str(n) for n in report_to]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise FinegrainedError(f"log.report_to: unknown tracker {unknown[0]!r} (expected any of {', '.join(TRACKERS)})")
    return list(dict.fromkeys(names))


def report_to_of(cfg) -> list[str]:
    """The trackers a command's config asks for (``log.report_to``; tensorboard when the key is absent)."""
    log_cfg = cfg.get("log") if hasattr(cfg, "get") else None
    return requested(log_cfg.get("report_to", DEFAULT) if log_cfg is not None else DEFAULT)


def check_installed(report_to: Iterable[str]) -> None:
    """A tracker asked for and not installed is a user error naming the extra that installs it."""
    for name in report_to:
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise FinegrainedError(f"log.report_to includes {name}, which is not installed: "
                                   f"pip install 'finegrained[{name}]' (or drop it from log.report_to)")


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"ppo": {"lr": 1e-3}} -> {"ppo.lr": 1e-3}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class _TensorBoard:
    def __init__(self, log_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir / "tb"), purge_step=purge_step)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def log_text(self, key: str, text: str, step: int) -> None:
        self.writer.add_text(key, text, step)

    def log_config(self, config: Mapping) -> None:
        import yaml

        # four spaces: tensorboard renders text as markdown, and an indented block keeps the YAML as it is
        self.writer.add_text("config", "\n".join("    " + line for line in yaml.safe_dump(dict(config), sort_keys=False).splitlines()))

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


# MLflow allows these characters in metric and param names; anything else becomes "_"
_MLFLOW_UNSAFE = re.compile(r"[^\w\-. :/]")
_MLFLOW_PARAM_LENGTH = 6000  # the longest param value MLflow 2 and 3 store


class _MLflow:
    def __init__(self, log_dir: Path, run_name: str, run_id: str | None):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        local = not uri
        if local:
            log_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "finegrained"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = (log_dir / "mlartifacts").resolve().as_uri() if local else None
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        if run_id is not None and self._exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.run_id = run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_UNSAFE.sub("_", k), float(v), now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_text(self, key: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{_MLFLOW_UNSAFE.sub('_', key)}/step-{step}.md")

    def log_config(self, config: Mapping) -> None:
        from mlflow.entities import Param

        # a param is written once: a resumed run keeps the values it started with (resume=false among them)
        existing = self.client.get_run(self.run_id).data.params
        params = [Param(_MLFLOW_UNSAFE.sub("_", k), str(v)[:_MLFLOW_PARAM_LENGTH]) for k, v in flatten(config).items()]
        params = [p for p in params if p.key not in existing]
        for i in range(0, len(params), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def flush(self) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class _WandB:
    def __init__(self, log_dir: Path, run_name: str, run_id: str | None):
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "finegrained", name=run_name, dir=str(log_dir),
            mode=os.environ.get("WANDB_MODE") or "offline", id=run_id, resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", silent=True),  # our own log lines stay on stderr, untouched
        )  # fmt: skip
        self.run_id = self.run.id

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_text(self, key: str, text: str, step: int) -> None:
        self.run.log({key: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def log_config(self, config: Mapping) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def flush(self) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Trackers:
    """Every tracker of ``report_to``, writing under ``log_dir``; on a process with ``enabled=False`` (not the
    main one) it checks that they are installed and then does nothing.

    ``purge_step``: tensorboard drops events from this step on (a resumed run rewrites them); ``resume``:
    continue the MLflow / W&B runs recorded in ``log_dir/tracker_runs.json`` instead of starting new ones.
    """

    def __init__(self, report_to, log_dir: str | Path, run_name: str, *, enabled: bool = True,
                 purge_step: int | None = None, resume: bool = False):  # fmt: skip
        self.names = requested(report_to)
        check_installed(self.names)
        self.log_dir = Path(log_dir)
        self.backends: dict[str, Any] = {}
        if not enabled:
            return
        saved = self._saved_run_ids() if resume else {}
        try:
            for name in self.names:
                if name == "tensorboard":
                    self.backends[name] = _TensorBoard(self.log_dir, purge_step)
                elif name == "mlflow":
                    self.backends[name] = _MLflow(self.log_dir, run_name, saved.get(name))
                else:
                    self.backends[name] = _WandB(self.log_dir, run_name, saved.get(name))
        except Exception:
            self.close(failed=True)
            raise
        run_ids = {n: b.run_id for n, b in self.backends.items() if hasattr(b, "run_id")}
        if run_ids:
            from .io import atomic_write_json

            atomic_write_json(self.log_dir / RUN_IDS_FILE, run_ids)

    @property
    def active(self) -> bool:
        """Whether anything is tracked here (False on processes other than the main one, or with report_to=[])."""
        return bool(self.backends)

    @classmethod
    def disabled(cls) -> Trackers:
        return cls([], ".", "", enabled=False)

    def _saved_run_ids(self) -> dict[str, str]:
        import json

        try:
            saved = json.loads((self.log_dir / RUN_IDS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in saved.items() if isinstance(v, str)} if isinstance(saved, dict) else {}

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for backend in self.backends.values():
            backend.log(scalars, step)

    def log_text(self, key: str, text: str, step: int) -> None:
        for backend in self.backends.values():
            backend.log_text(key, text, step)

    def log_config(self, config: Mapping) -> None:
        for backend in self.backends.values():
            backend.log_config(config)

    def flush(self) -> None:
        for backend in self.backends.values():
            backend.flush()

    def close(self, failed: bool = False) -> None:
        """Finish every tracker's run (``failed``: marked as failed where the tracker has such a state)."""
        backends, self.backends = self.backends, {}
        for backend in backends.values():
            backend.close(failed)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
