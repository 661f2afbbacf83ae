"""PNG plots of PPO runs, read back from their tensorboard event files.

``plot_training_curves({"fine_grained": [run_dir, ...], "holistic": [...]}, out_dir)`` draws, per
scalar family, one line per method (mean over its runs, shaded min..max), iteration on the x axis:
- ``oracle_error_rate.png``: the task oracle's error rate per category on each iteration's rollouts
  (tags ``oracle/<category>/error_rate`` and ``oracle/total_error_rate``), the fair comparison;
- ``training_reward.png``: the learner's own total reward and KL (each method on its own reward scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from every event file under ``run_dir`` (later files win on equal steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return scalars


def _curves(runs: list[Path], tag: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps present in every run, and the (n_runs, n_steps) values there."""
    per_run = [read_scalars(r).get(tag, {}) for r in runs]
    if not per_run or not all(per_run):
        return None
    steps = sorted(set.intersection(*(set(d) for d in per_run)))
    if not steps:
        return None
    return np.array(steps), np.array([[d[s] for s in steps] for d in per_run])


def _panel(ax, runs_by_method: dict[str, list[Path]], tag: str, title: str) -> bool:
    drawn = False
    for method, runs in runs_by_method.items():
        curve = _curves(runs, tag)
        if curve is None:
            continue
        steps, values = curve
        line = ax.plot(steps, values.mean(0), label=method.replace("_", "-"))[0]
        if len(values) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        drawn = True
    ax.set_title(title)
    ax.set_xlabel("PPO iteration")
    if drawn:
        ax.legend()
    return drawn


def plot_training_curves(runs_by_method: dict[str, list[Path]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figures = {
        "oracle_error_rate.png": [
            ("oracle/relevance/error_rate", "relevance error rate (oracle)"),
            ("oracle/factuality/error_rate", "factuality error rate (oracle)"),
            ("oracle/completeness/error_rate", "completeness error rate (oracle)"),
            ("oracle/total_error_rate", "total error rate (oracle)"),
        ],
        "training_reward.png": [("reward/total", "total reward (own reward models)"), ("kl", "KL to reference")],
    }
    for name, panels in figures.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        drawn = [_panel(ax, runs_by_method, tag, title) for ax, (tag, title) in zip(axes[0], panels)]
        if any(drawn):
            fig.tight_layout()
            path = Path(out_dir) / name
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
    return written
