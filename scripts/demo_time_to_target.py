"""Wall time each RL run of a demo took to reach holistic PPO's error rate, from the runs' tensorboard logs.

    python scripts/demo_time_to_target.py outputs/demo        # after `finegrained demo seeds=3 algorithms=[ppo,grpo]`

The target is holistic PPO's oracle total error rate on its training batches over its last 3 iterations
(mean over seeds). For every run method (ppo/<method>-seed<s>, grpo/<method>-seed<s>) the error curve is the
seed-mean of ``oracle/total_error_rate`` smoothed over 3 iterations; the time is the seed-mean cumulative
``time/*`` (the phases of each iteration: generate, score, update, ...) up to the first iteration at or below
the target. Prints a Markdown table; "not reached" where the curve never gets there.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from finegrained.plots import read_scalars

SMOOTH = 3


def curves(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(error rate per iteration, cumulative phase seconds per iteration) of one run, iterations 1..N."""
    scalars = read_scalars(run_dir)
    errors = scalars["oracle/total_error_rate"]
    steps = sorted(errors)
    seconds = np.zeros(len(steps))
    for tag, values in scalars.items():
        if tag.startswith("time/"):
            seconds += np.array([values.get(s, 0.0) for s in steps])
    return np.array([errors[s] for s in steps]), np.cumsum(seconds)


def main(out: Path) -> None:
    runs: dict[str, list[Path]] = defaultdict(list)
    for algorithm in ("ppo", "grpo"):
        for run in sorted((out / algorithm).glob("*-seed*")):
            runs[f"{algorithm}:{run.name.rsplit('-seed', 1)[0]}"].append(run)
    if "ppo:holistic" not in runs:
        raise SystemExit(f"{out}: no ppo/holistic-seed* runs")
    per_method = {}
    for method, dirs in runs.items():
        pairs = [curves(d) for d in dirs]
        n = min(len(e) for e, _ in pairs)
        errors = np.mean([e[:n] for e, _ in pairs], axis=0)
        seconds = np.mean([s[:n] for _, s in pairs], axis=0)
        smoothed = np.convolve(errors, np.ones(SMOOTH) / SMOOTH, mode="valid")  # smoothed[i]: iterations i+1..i+SMOOTH
        per_method[method] = (errors, seconds, smoothed, len(dirs))
    target = float(per_method["ppo:holistic"][0][-SMOOTH:].mean())
    print(f"target: holistic PPO's training error rate over its last {SMOOTH} iterations = {target:.3f}\n")
    print("| run | seeds | iterations | final error (last 3) | reached at iteration | wall s to reach | wall s in all |")
    print("|---|---|---|---|---|---|---|")
    for method, (errors, seconds, smoothed, n_seeds) in per_method.items():
        hits = np.nonzero(smoothed <= target)[0]
        if len(hits):
            iteration = int(hits[0]) + SMOOTH
            reached, at = str(iteration), f"{seconds[iteration - 1]:.1f}"
        else:
            reached, at = "not reached", "-"
        print(f"| {method} | {n_seeds} | {len(errors)} | {errors[-SMOOTH:].mean():.3f} | {reached} | {at} | {seconds[-1]:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo"))
