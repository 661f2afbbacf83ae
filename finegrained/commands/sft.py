"""``finegrained sft``: supervised fine-tuning (``finegrained.sft.train_sft``), then the eval loss it reached."""

from __future__ import annotations

from pathlib import Path

from ..config import compose_from_argv, log
from ..sft import train_sft


def main(argv: list[str]) -> int:
    cfg = compose_from_argv("sft", argv)
    if cfg is None:
        return 0
    result = train_sft(cfg)
    final = Path(cfg.output_dir) / "final"
    if not result["n_eval_examples"]:
        log(f"[sft] no eval data (set data.eval=<pairs.jsonl> for an eval loss); wrote {final}")
    else:
        log(f"[sft] eval loss per completion token {result['initial_eval_loss']:.3f} -> {result['eval_loss']:.3f}; wrote {final}")
    return 0
