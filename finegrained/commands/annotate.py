"""``finegrained annotate``: serve the annotation page (``finegrained.app.server``), or export its journal."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from ..app.server import DEFAULT_PORT, LOOPBACK_HOSTS, build_server
from ..app.store import export
from ..errors import FinegrainedError
from ..schema import load_schema


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finegrained annotate",
        description="Serve a local web page to annotate error spans and preferences.",
    )
    parser.add_argument("--schema", required=True, help="schema YAML, or a shipped schema name (qa_feedback, ...)")
    parser.add_argument("--input", type=Path, help="JSONL of items: {id, prompt, completion} or "
                        "{id, prompt, completion_a, completion_b}")  # fmt: skip
    parser.add_argument("--output", type=Path, required=True, help="annotation JSONL, appended to (created if absent)")
    parser.add_argument("--annotator", default=None, help="annotator id written into every record (default: user name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--export", type=Path, metavar="FILE",
                        help="instead of serving: write the latest annotation per id from --output to FILE and exit")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    schema = load_schema(args.schema)
    if args.export is not None:
        written, n_ties = export(args.output, args.export, schema)
        for path, n in written:
            print(f"wrote {n} record{'s' * (n != 1)} to {path}")
        if n_ties:
            print(f"left out {n_ties} tie{'s' * (n_ties != 1)} (a tie names no preferred output)")
        return 0
    if args.input is None:
        raise FinegrainedError("finegrained annotate: --input is required (unless --export is given)")
    if not 0 <= args.port <= 65535:
        raise FinegrainedError(f"finegrained annotate: --port must be between 0 and 65535, got {args.port}")
    annotator = args.annotator or _default_annotator()
    server = build_server(schema, args.input, args.output, annotator, args.host, args.port, quiet=not args.verbose)
    app = server.app
    for warning in app.journal.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.host not in LOOPBACK_HOSTS:
        print(f"WARNING: listening on {args.host}: anyone who can reach this machine on port "
              f"{server.server_address[1]} can read the items and submit annotations (there is no "
              "authentication). Use only on a network you trust.", file=sys.stderr)  # fmt: skip
    state = app.state()
    first = state["first_unannotated"]
    where = f"resuming at item {first + 1}" if first is not None else "every item is annotated"
    print(f"{state['n_items']} items, {state['n_annotated']} annotated ({where}); annotator {annotator!r}")
    print(f"saving to {args.output}")
    print(f"open {server.url} in a browser; Ctrl+C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"stopped; {app.state()['n_annotated']} of {len(app.items)} items annotated in {args.output}")
    return 0


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (some containers)
        return "anonymous"
