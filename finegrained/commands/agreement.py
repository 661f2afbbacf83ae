"""``finegrained agreement``: the command line of ``finegrained.agreement`` (its docstring says what it measures).

    finegrained agreement --schema S ANNOTATIONS.jsonl... [--json report.json] [--merge merged.jsonl]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import agreement
from ..io import atomic_write_json, atomic_write_jsonl
from ..schema import load_schema

MAX_PRINTED = 20  # ties and non-unanimous decisions printed after --merge; --json holds all of them


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finegrained agreement", description=agreement.__doc__.split("\n\n")[0])
    parser.add_argument("--schema", required=True, help="schema YAML, or a shipped schema name")
    parser.add_argument("files", nargs="+", type=Path, help="annotation JSONL files (one per annotator, or mixed)")
    parser.add_argument("--json", type=Path, help="write the figures, ties and disagreements as JSON")
    parser.add_argument("--merge", type=Path, metavar="OUT",
                        help="write majority-vote span records to OUT (and preferences to OUT.preferences.jsonl "
                             "when there are both)")  # fmt: skip
    args = parser.parse_args(argv)
    result = agreement.report(args.files, load_schema(args.schema))
    print(agreement.format_table(result.categories))
    print(f"{len(result.ties)} ties, {len(result.disagreements)} majority decisions that were not unanimous")
    if args.json:
        atomic_write_json(args.json, agreement.json_report(result))
    if args.merge:
        for path, rows in agreement.merge_targets(result, args.merge):
            atomic_write_jsonl(path, rows)
            print(f"wrote {len(rows)} majority-vote records to {path}")
        print_unsettled(result)
    return 0


def print_unsettled(result: agreement.AgreementReport) -> None:
    for line in result.ties[:MAX_PRINTED]:
        print(f"  tie: {line}")
    for line in result.disagreements[:MAX_PRINTED]:
        print(f"  not unanimous: {line}")
    hidden = max(0, len(result.ties) - MAX_PRINTED) + max(0, len(result.disagreements) - MAX_PRINTED)
    if hidden:
        print(f"  ... and {hidden} more (all of them in --json)")
