"""Reward-model evaluation: the metrics of a judge on annotated data, during training and after.

``evaluate_model_dir(model_dir, data)`` scores a trained directory on another annotated file and returns
the metrics that training writes to ``metrics.json`` (span models: segment accuracy, error
precision/recall/F1 and the two trivial baselines; preference models: pairwise accuracy; joint models:
``<category>/<metric>``); ``warn_about_overlap`` logs when that file holds training records. The
command line ``finegrained eval-rm`` (``commands.eval_rm``) writes them and prints them as a table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..config import log
from ..errors import FinegrainedError
from .directory import SCHEMA_COPY, file_sha256
from .inference import JOINT_KIND, RewardModelJudge, load_judge, read_metadata
from .preference_model import PreferencePair, load_preference_pairs, pairwise_metrics
from .span_model import LABEL_CLEAN, LABEL_ERROR, SpanExample, load_span_examples, span_examples_from_records, span_metrics


def evaluate_span_judge(judge: RewardModelJudge, examples: Sequence[SpanExample], threshold: float = 0.5) -> dict:
    """Segment-level metrics of a span judge on labelled examples (every segment counts except the ignored
    ones, label ``None``: see ``span_metrics_of``)."""
    if not examples:
        return {**span_metrics([], []), "n_ignored": 0}
    p_error = judge.score_segments(
        [e.prompt for e in examples], [e.completion for e in examples], [e.segments for e in examples]
    )
    return span_metrics_of(examples, p_error, threshold)


def span_metrics_of(examples: Sequence[SpanExample], p_error: Sequence[Sequence[float]], threshold: float = 0.5) -> dict:
    """Segment-level metrics of per-segment error probabilities against the examples' labels.

    Ignored segments (label ``None``) are in no metric (``n_segments``, ``error_fraction`` and the
    baselines included); ``n_ignored`` counts them.
    """
    labels, predictions, n_ignored = [], [], 0
    for e, ps in zip(examples, p_error, strict=True):
        for y, p in zip(e.labels, ps, strict=True):
            if y is None:
                n_ignored += 1
                continue
            labels.append(y)
            predictions.append(LABEL_ERROR if p > threshold else LABEL_CLEAN)
    return {**span_metrics(labels, predictions), "n_ignored": n_ignored}


def evaluate_joint_span_judge(judge, examples_by_category: dict[str, Sequence[SpanExample]]) -> dict[str, dict]:
    """Metrics of every span category of a joint judge from one scoring pass over the records.

    ``examples_by_category``: category -> its labelled examples of the same records in the same order
    (``span_examples_from_records`` once per category).
    """
    first = next(iter(examples_by_category.values()), [])
    if not first:
        return {name: {**span_metrics([], []), "n_ignored": 0} for name in examples_by_category}
    segments = {judge.categories[name]["granularity"]: [e.segments for e in examples]
                for name, examples in examples_by_category.items()}  # fmt: skip
    scored = judge.score([e.prompt for e in first], [e.completion for e in first], segments)
    return {name: span_metrics_of(examples, scored[name]) for name, examples in examples_by_category.items()}


def evaluate_preference_judge(judge: RewardModelJudge, pairs: Sequence[PreferencePair]) -> dict:
    """Pairwise accuracy of a sequence judge: chosen and rejected are scored in one batched call."""
    if not pairs:
        return pairwise_metrics([], [])
    prompts = [p.prompt for p in pairs]
    scores = judge.score_sequences(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    n = len(pairs)
    return pairwise_metrics(scores[:n], scores[n:])


def format_metrics_table(metrics: dict, title: str = "metrics") -> str:
    """A two-column plain-text table, one metric a row."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, float):
            text = "nan" if math.isnan(value) else f"{value:.4f}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max([len(k) for k, _ in rows] + [len(title)])
    value_width = max([len(v) for _, v in rows] + [5])
    line = f"+-{'-' * width}-+-{'-' * value_width}-+"
    out = [line, f"| {title:<{width}} | {'':>{value_width}} |", line]
    out += [f"| {k:<{width}} | {v:>{value_width}} |" for k, v in rows]
    out.append(line)
    return "\n".join(out)


def load_schema_for_model(model_dir: Path, schema_override: str | None):
    """The schema a reward model was trained with: its saved copy, or ``schema=`` when given."""
    from ..schema import load_schema

    if schema_override:
        return load_schema(schema_override)
    copy = model_dir / SCHEMA_COPY
    if copy.is_file():
        return load_schema(copy)
    raise FinegrainedError(f"{model_dir}: no saved {SCHEMA_COPY}; pass schema=<path or name>")


def evaluate_model_dir(model_dir: str | Path, data: str | Path, schema: str | None = None, batch_size: int = 32,
                       device=None) -> dict:
    """Metrics of the reward model in ``model_dir`` on the annotated file ``data``."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    annotation_schema = load_schema_for_model(model_dir, schema)
    if metadata.get("kind") == JOINT_KIND:
        return evaluate_joint_model_dir(model_dir, metadata, data, annotation_schema, batch_size, device)
    try:
        category = annotation_schema.category(metadata["category"])
    except KeyError as e:
        raise FinegrainedError(str(e.args[0])) from None
    if not Path(data).is_file():
        raise FinegrainedError(f"{data}: no such data file")
    judge = load_judge(model_dir, device=device, batch_size=batch_size)
    if judge.kind == "span":
        examples = load_span_examples(
            data, annotation_schema, category, judge.segmentation, int(metadata.get("min_overlap_words", 1))
        )
        return evaluate_span_judge(judge, examples)
    return evaluate_preference_judge(judge, load_preference_pairs(data, annotation_schema, category))


def evaluate_joint_model_dir(model_dir: Path, metadata: dict, data: str | Path, annotation_schema, batch_size: int,
                             device=None) -> dict:
    """Metrics of every category of a joint reward model that ``data`` holds, as ``<category>/<metric>``.

    A span file scores every span category; a preference file every preference category it has records of.
    """
    from ..data import cap_problems, inspect_file
    from ..errors import InputError

    if not Path(data).is_file():
        raise FinegrainedError(f"{data}: no such data file")
    report = inspect_file(data, annotation_schema)
    if report.problems:
        raise InputError(cap_problems(report.problems, 20, report.path))
    kind = report.kind
    judge = load_judge(model_dir, device=device, batch_size=batch_size)
    if kind == "preference":
        present = {r.category for r in report.records}
        names = [n for n, c in judge.categories.items() if c["kind"] == "preference" and n in present]
    else:
        names = [n for n, c in judge.categories.items() if c["kind"] == "span"]
    if not names:
        raise FinegrainedError(f"{data}: holds no records of the categories of {model_dir} ({', '.join(judge.categories)})")
    if kind == "preference":
        found = {name: evaluate_preference_judge(judge.view(name), load_preference_pairs(data, annotation_schema, annotation_schema.category(name)))
                 for name in names}  # fmt: skip
    else:
        min_overlap = int(metadata.get("min_overlap_words", 1))
        found = evaluate_joint_span_judge(judge, {
            name: span_examples_from_records(report.records, annotation_schema.category(name), judge.segmentation,
                                             min_overlap, schema=annotation_schema)
            for name in names
        })  # fmt: skip
    return {f"{name}/{k}": v for name in names for k, v in found[name].items()}


def record_text_key(obj) -> str | None:
    """A hash of what a reward model reads of an annotated record: prompt and completion (span records) or
    prompt and the two outputs in either order (preference records); None for anything else."""
    import hashlib
    import json

    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        return None
    if isinstance(obj.get("completion"), str):
        parts = ["span", obj["prompt"], obj["completion"]]
    elif isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
        parts = ["pair", obj["prompt"], *sorted((obj["chosen"], obj["rejected"]))]
    else:
        return None
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def file_text_keys(path: str | Path) -> list[str]:
    """``record_text_key`` of every record of a JSONL file (records it cannot read are skipped)."""
    import json

    keys = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                key = record_text_key(json.loads(line)) if line.strip() else None
            except json.JSONDecodeError:
                key = None
            if key is not None:
                keys.append(key)
    return keys


TRAINING_DATA_KEYS = ("train", "preferences")  # finegrained.json data entries the model was trained on


def training_overlap(metadata: dict, data: str | Path) -> tuple[int, int, list[str]]:
    """``(overlapping, records, notes)``: how many records of ``data`` the model was trained on, judged by
    prompt and output text against the training files named in ``finegrained.json`` (a file whose hash
    changed since training is not trusted), and notes on what could not be checked."""
    keys = file_text_keys(data)
    data_sha = file_sha256(data)
    seen: set[str] = set()
    notes = []
    for role in TRAINING_DATA_KEYS:
        entry = (metadata.get("data") or {}).get(role)
        if not isinstance(entry, dict) or not entry.get("path"):
            continue
        path, recorded = Path(entry["path"]), entry.get("sha256")
        if recorded and recorded == data_sha:
            return len(keys), len(keys), []  # the very file the model was trained on
        if not path.is_file():
            notes.append(f"cannot check overlap with the training file {path}: it is no longer there")
        elif recorded and file_sha256(path) != recorded:
            notes.append(f"cannot check overlap with the training file {path}: it changed since training")
        else:
            seen.update(file_text_keys(path))
    return sum(k in seen for k in keys), len(keys), notes


def warn_about_overlap(metadata: dict, data: Path) -> int:
    """Log a warning when ``data`` holds records the model was trained on; returns how many."""
    overlap, total, notes = training_overlap(metadata, data)
    if overlap:
        log(f"warning: {overlap} of {total} records of {data} are in the model's training data: these metrics "
            f"overstate how well it does on new text")  # fmt: skip
    for note in notes:
        log(f"note: {note}")
    return overlap
