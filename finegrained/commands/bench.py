"""``finegrained bench``: the phase-level PPO benchmark (``finegrained.bench.run_bench``), summed up in two lines."""

from __future__ import annotations

from pathlib import Path

from ..bench import run_bench
from ..config import compose_from_argv, log


def main(argv: list[str]) -> int:
    cfg = compose_from_argv("bench", argv)
    if cfg is None:
        return 0
    r = run_bench(cfg)
    phases = ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
    bare = r["bare_seconds"]
    overhead = f"bare {bare:.3f}, overhead x{r['overhead_factor']:.2f}" if bare else "bare not measured"
    print(f"seconds/iteration {r['seconds_per_iteration']:.3f} ({overhead}); {r['tokens_per_second']:.0f} tokens/s; "
          f"peak RSS {r['peak_rss_mb']:.0f} MB; weights and optimizer state {r['model_state_mb']['total']:.0f} MB")  # fmt: skip
    print(f"phases (s/iteration): {phases}; outside phases {r['unphased_seconds']:.3f}")
    if r["bare_phases"]:
        print("bare (s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["bare_phases"].items()))
    log(f"[bench] wrote {Path(cfg.output_dir) / 'bench.json'}")
    return 0
