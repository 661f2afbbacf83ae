"""``finegrained demo``: the built-in task end to end (``finegrained.demo.run_demo``), then the oracle's table."""

from __future__ import annotations

from pathlib import Path

from ..config import compose_from_argv, log
from ..demo import run_demo
from ..evaluate import format_table

USAGE = """usage: finegrained demo [quick] [seeds=N] [output_dir=DIR] [key=value ...]

Runs SFT, simulated annotation, reward-model training, fine-grained and holistic PPO, and an oracle
evaluation on the built-in task; writes output_dir/results.json, PNG plots and tensorboard logs."""


def main(argv: list[str]) -> int:
    argv = ["scale=quick" if a == "quick" else a for a in argv]
    if "scale=quick" in argv and not any(a.startswith("output_dir=") for a in argv):
        argv.append("output_dir=outputs/demo-quick")
    cfg = compose_from_argv("demo", argv, usage=USAGE)
    if cfg is None:
        return 0
    results = run_demo(cfg)
    print(format_table(results["policies"]))
    print()
    print(results["verdict"])
    if cfg.get("note"):
        print(cfg.note)
    out = Path(cfg.output_dir)
    log(f"[demo] wrote {out / 'results.json'} and {', '.join(results['plots'])} in {results['seconds']:.0f} s")
    return 0
