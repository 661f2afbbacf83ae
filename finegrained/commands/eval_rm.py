"""``finegrained eval-rm model=<dir> data=<jsonl>``: score a reward model on another annotated file.

Writes the same ``metrics.json`` that training writes (``rewards.evaluate.evaluate_model_dir``), by
default to ``<model>/eval/<data file stem>/metrics.json``, with how many records of the file the model
was trained on, and prints the metrics as a table.
"""

from __future__ import annotations

from pathlib import Path

from ..config import compose_from_argv, log
from ..errors import FinegrainedError

USAGE = """usage: finegrained eval-rm model=<reward model dir> data=<jsonl> [output_dir=<dir>] [batch_size=N]

Scores the reward model on an annotated file of its category (span JSONL for span models, preference
JSONL for preference models) and writes metrics.json (default: <model>/eval/<data stem>/). A joint model
(train-rm categories=[...]) is scored on every one of its categories the file holds, as <category>/<metric>."""


def main(argv: list[str]) -> int:
    from ..io import atomic_write_json
    from ..rewards.evaluate import evaluate_model_dir, format_metrics_table, warn_about_overlap
    from ..rewards.inference import METRICS_FILE, read_metadata

    # ``model`` is also the name of a config group (conf/model/), which Hydra would try to select, so the
    # documented ``model=<dir>`` is read as the plain key ``model_dir``.
    argv = [f"model_dir={a[len('model='):]}" if a.startswith("model=") else a for a in argv]
    cfg = compose_from_argv("eval_rm", argv, usage=USAGE)
    if cfg is None:
        return 0
    if not cfg.get("model_dir") or not cfg.get("data"):
        raise FinegrainedError("finegrained eval-rm: give model=<reward model dir> and data=<jsonl>")
    model_dir = Path(cfg.model_dir)
    data = Path(cfg.data)
    metrics = evaluate_model_dir(model_dir, data, cfg.get("schema"), int(cfg.batch_size), cfg.get("device"))
    overlap = warn_about_overlap(read_metadata(model_dir), data)
    metrics = {**metrics, "data": str(data), "records_in_training_data": overlap}
    output_dir = Path(cfg.output_dir) if cfg.get("output_dir") else model_dir / "eval" / data.stem
    atomic_write_json(output_dir / METRICS_FILE, metrics)
    print(format_metrics_table({k: v for k, v in metrics.items() if k not in ("data", "records_in_training_data")},
                               f"eval-rm: {data.name}"))  # fmt: skip
    if overlap:
        print(f"warning: {overlap} of these records are in the model's training data")
    log(f"wrote {output_dir / METRICS_FILE}")
    return 0
