"""``finegrained validate --schema S DATA...``: check annotation files against a schema.

Exit 0 when every file is valid (one ``FILE: OK, N span records`` line per file on stdout); otherwise
exit 2 with every problem on stderr as ``FILE:LINE: field: message`` (at most ``--max-problems`` per
file, then ``FILE: ... and N more problems``), never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..data import cap_problems, inspect_file
from ..errors import EXIT_USER_ERROR, FinegrainedError
from ..schema import load_schema


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finegrained validate",
        description="Check span and preference JSONL files against an annotation schema.",
    )
    parser.add_argument(
        "--schema", required=True, help="schema YAML file, or a shipped schema name (qa_feedback, synthetic_qa)"
    )
    parser.add_argument(
        "--max-problems", type=int, default=20, metavar="N", help="problems listed per file (default: 20)"
    )
    parser.add_argument("data", nargs="+", metavar="DATA", help="JSONL files of span or preference records")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.max_problems < 1:
        print("finegrained validate: --max-problems must be at least 1", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        schema = load_schema(args.schema)
    except FinegrainedError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        print(f"{args.schema}: cannot read schema: {e.strerror or e}", file=sys.stderr)
        return EXIT_USER_ERROR

    n_invalid = 0
    for path in args.data:
        report = inspect_file(path, schema)
        if report.ok:
            n = len(report.records)
            print(f"{path}: OK, {n} {report.kind} record{'s' * (n != 1)}")
            continue
        n_invalid += 1
        for problem in cap_problems(report.problems, args.max_problems, path):
            print(problem, file=sys.stderr)
    if n_invalid:
        n_files = len(args.data)
        print(f"finegrained validate: {n_invalid} of {n_files} file{'s' * (n_files != 1)} invalid", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
