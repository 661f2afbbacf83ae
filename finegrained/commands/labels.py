"""``finegrained labels --schema S --category C SPANS.jsonl --output OUT.jsonl``: the segment labels a
reward model of category C is trained and evaluated on, one JSON line per span record::

    {"id": "dev-0", "segments": [[0, 25], [26, 57]], "labels": [0, null]}

``labels[i]`` is 1 (error), 0 (clean) or null (ignored by the category's ``ignore_overlapping`` rule: in
no loss and no metric), computed by ``finegrained.labels.segment_labels``, the function ``train-rm`` and
``eval-rm`` use, under the schema's segmentation and span-length rules. The output is written atomically;
a summary goes to stdout. Bad input exits 2 with ``FILE:LINE: field: message`` lines.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..errors import FinegrainedError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finegrained labels",
        description="Write the per-segment labels (1 error, 0 clean, null ignored) of one span category.",
    )
    parser.add_argument(
        "--schema", required=True, help="schema YAML file, or a shipped schema name (qa_feedback, synthetic_qa)"
    )
    parser.add_argument("--category", required=True, help="a span category of the schema (e.g. factuality)")
    parser.add_argument("spans", metavar="SPANS", help="span records (JSONL), e.g. from finegrained convert")
    parser.add_argument("--output", required=True, metavar="OUT", help="output JSONL: id, segments, labels")
    return parser


@dataclass
class LabelSummary:
    records: int = 0
    segments: int = 0
    errors: int = 0
    ignored: int = 0
    records_all_ignored: int = 0
    dropped_spans: int = 0

    @property
    def error_fraction(self) -> float:
        """Share of error segments among the segments not ignored (0.0 when there are none)."""
        counted = self.segments - self.ignored
        return self.errors / counted if counted else 0.0

    def lines(self, category: str, granularity: str) -> list[str]:
        return [
            f"category: {category} ({granularity})",
            f"records: {self.records}",
            f"segments: {self.segments}",
            f"error segments: {self.errors}",
            f"error fraction: {self.error_fraction:.4f} (of the {self.segments - self.ignored} segments not ignored)",
            f"ignored segments: {self.ignored} ({self.records_all_ignored} records with every segment ignored)",
            f"dropped short spans: {self.dropped_spans}",
        ]


def span_category(schema, name: str):
    """The span category ``name`` of ``schema``, or a ``FinegrainedError`` naming the span categories."""
    known = ", ".join(c.name for c in schema.span_categories) or "none"
    found = next((c for c in schema.categories if c.name == name), None)
    if found is None:
        raise FinegrainedError(f"--category {name}: schema {schema.name!r} has no such category (span categories: {known})")
    if found.kind != "span":
        raise FinegrainedError(
            f"--category {name}: a {found.kind} category has no segment labels (span categories: {known})"
        )
    return found


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..data import load_span_records
    from ..io import atomic_write_jsonl
    from ..labels import drop_short_spans, segment_labels_batch
    from ..schema import load_schema

    schema = load_schema(args.schema)
    category = span_category(schema, args.category)
    records = load_span_records(args.spans, schema)
    labelled = segment_labels_batch(records, schema, category)
    summary = LabelSummary(records=len(records))
    rows = []
    for record, (segments, labels) in zip(records, labelled):
        n_ignored = sum(1 for y in labels if y is None)
        summary.segments += len(labels)
        summary.errors += sum(1 for y in labels if y == 1)
        summary.ignored += n_ignored
        summary.records_all_ignored += bool(labels) and n_ignored == len(labels)
        summary.dropped_spans += drop_short_spans(record.completion, record.spans, schema)[1]
        rows.append({"id": record.id, "segments": [list(s) for s in segments], "labels": labels})
    try:
        atomic_write_jsonl(args.output, rows)
    except OSError as e:
        raise FinegrainedError(f"{args.output}: cannot write: {e.strerror or e}") from None
    print(f"{args.output}: labels of {len(rows)} records")
    print("\n".join(f"  {line}" for line in summary.lines(category.name, category.granularity)))
    return 0
