"""``finegrained evaluate``: compare policies on held-out prompts (``finegrained.evaluate``), print the table."""

from __future__ import annotations

from pathlib import Path

from ..config import compose_from_argv, log
from ..evaluate import format_table, policy_overrides, run_evaluation, table_notes

USAGE = """usage: finegrained evaluate policies.NAME=DIR [policies.NAME2=DIR2 ...] [reference=NAME] [key=value ...]

Generates from each policy on held-out prompts and writes output_dir/eval.json."""


def main(argv: list[str]) -> int:
    cfg = compose_from_argv("evaluate", policy_overrides(argv), usage=USAGE)
    if cfg is None:
        return 0
    report = run_evaluation(cfg)
    print(format_table(report["policies"]))
    for note in table_notes(report):
        print(f"note: {note}")
    log(f"[evaluate] wrote {Path(cfg.output_dir) / 'eval.json'}")
    return 0
