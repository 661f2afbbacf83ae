"""``finegrained convert <format> IN OUT_DIR``: import public annotation formats.

Formats:

* ``qa-feedback`` (``train_feedback.json`` / ``dev_feedback.json`` of Wu et al. 2023) ->
  ``OUT_DIR/spans.jsonl``, ``OUT_DIR/preferences.jsonl`` (holistic comparisons, and completeness
  comparisons derived from the corrected answers) and ``OUT_DIR/prompts.jsonl`` (the policy's prompts with
  the gold answers as references), validated against the schema before they are moved into place;
* ``label-studio`` (a Label Studio JSON export of tasks made by ``finegrained sample --format label-studio``)
  -> ``OUT_DIR/spans.jsonl`` and ``OUT_DIR/preferences.jsonl``, offsets converted from UTF-16 units.

A malformed input prints ``FILE: message`` and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_USER_ERROR, FinegrainedError

FORMATS = ("qa-feedback", "label-studio")


def build_parser() -> argparse.ArgumentParser:
    from ..convert.label_studio import OFFSET_READINGS

    parser = argparse.ArgumentParser(
        prog="finegrained convert", description="Import a public annotation format as span and preference JSONL."
    )
    parser.add_argument("format", choices=FORMATS, help="input format")
    parser.add_argument(
        "input", metavar="IN", help="input file (qa-feedback: train_feedback.json or dev_feedback.json; label-studio: the JSON export)"
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory for spans.jsonl and preferences.jsonl")
    parser.add_argument(
        "--schema", default="qa_feedback", help="schema to validate the output with (default: qa_feedback)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--offsets", choices=OFFSET_READINGS, default="auto",
        help="label-studio: how region offsets count characters: code-points (current Label Studio), utf16 "
             "(releases before its emoji fix), auto = the reading each region's text confirms (default)",
    )  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.format == "label-studio":
        return convert_label_studio(args)
    from ..convert import qa_feedback

    try:
        progress = False if args.no_progress else None  # None: a bar only on a terminal
        stats = qa_feedback.convert(args.input, args.out_dir, schema=args.schema, progress=progress)
    except FinegrainedError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USER_ERROR
    for warning in stats.warnings():
        print(f"{args.input}: warning: {warning}", file=sys.stderr)
    labels = ", ".join(f"{label} {n}" for label, n in sorted(stats.labels.items()))
    print(
        f"{args.out_dir}/spans.jsonl: {stats.questions} span records, {stats.spans} error spans ({labels or 'none'})\n"
        f"{args.out_dir}/preferences.jsonl: {stats.preferences} preference records "
        f"(category {qa_feedback.PREFERENCE_CATEGORY}; {stats.ties_dropped} ties dropped)\n"
        f"{args.out_dir}/preferences.jsonl: {stats.completeness_pairs} completeness pairs derived from "
        f"corrected-prediction coverage ({stats.completeness_skipped} examples skipped without required "
        f"information; {stats.completeness_ties_dropped} equal-coverage pairs dropped)\n"
        f"{args.out_dir}/{qa_feedback.PROMPTS_FILE}: {stats.questions} prompts (task=jsonl task.train=...)"
    )
    return 0


def convert_label_studio(args: argparse.Namespace) -> int:
    from ..convert import label_studio
    from ..schema import load_schema

    written = label_studio.convert_export(args.input, args.out_dir, load_schema(args.schema), offsets=args.offsets)
    for name, what in (("spans.jsonl", "span records"), ("preferences.jsonl", "preference records (ties dropped)")):
        n = written[name]
        print(f"{args.out_dir}/{name}: {n} {what}" if n else f"{args.out_dir}/{name}: none in the export, not written")
    return 0
