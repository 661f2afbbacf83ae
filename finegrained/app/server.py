"""``finegrained annotate``: a local web page to collect fine-grained human feedback.

    finegrained annotate --schema S --input completions.jsonl --output annotations.jsonl
                         [--annotator NAME] [--port 8765] [--host 127.0.0.1]
    finegrained annotate --schema S --output annotations.jsonl --export clean.jsonl

The annotator marks error spans (span categories) or picks A / B / tie (preference categories, for pair
items). Every submission is appended to ``--output`` and fsync'd before the page hears "saved"; a restart
resumes at the first unannotated item; re-submitting appends a new record and ``--export`` keeps the latest
per id (see ``finegrained.app.store`` for the file formats).

Safety: the server listens on 127.0.0.1 unless ``--host`` says otherwise (with a warning: there is no
authentication); it serves only its own three assets by a fixed table (no file-system paths from the URL),
refuses request bodies over ``MAX_BODY_BYTES`` (413), malformed JSON (400) and foreign ``Host`` headers
(DNS rebinding) and keeps running; the page shows prompts and completions as text only (``textContent``),
under a Content-Security-Policy that allows no inline script. The only file it writes is ``--output``.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import re
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import FinegrainedError, InputError
from ..schema import AnnotationSchema, load_schema
from .store import Item, Journal, SubmissionError, export, load_items

MAX_BODY_BYTES = 1 << 20  # a submission is a list of offsets: 1 MiB is far more than any real one
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8765

# URL path -> (file in finegrained/app/static, content type). Nothing else is ever read from disk.
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ITEM_PATH = re.compile(r"^/api/items/(\d{1,9})$")


def _read_static_assets() -> dict[str, tuple[bytes, str]]:
    package = resources.files("finegrained.app") / "static"
    return {url: ((package / name).read_bytes(), ctype) for url, (name, ctype) in STATIC_FILES.items()}


class AnnotationApp:
    """What the HTTP handler needs: schema, items, the journal, and the JSON views of them."""

    def __init__(self, schema: AnnotationSchema, items: list[Item], journal: Journal):
        self.schema = schema
        self.items = items
        self.journal = journal
        self.assets = _read_static_assets()

    def state(self) -> dict[str, Any]:
        flags = self.journal.annotated_flags()
        first = self.journal.first_unannotated()
        return {
            "schema": {
                "name": self.schema.name,
                "description": self.schema.description,
                "categories": [
                    {"name": c.name, "kind": c.kind, "granularity": c.granularity,
                     "error_types": list(c.error_types), "description": c.description}  # fmt: skip
                    for c in self.schema.categories
                ],
            },
            "annotator": self.journal.annotator,
            "n_items": len(self.items),
            "annotated": flags,
            "n_annotated": sum(flags),
            "first_unannotated": first,
        }

    def item(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        out = item.to_json()
        out["suggested_spans"] = list(item.suggested_spans)
        return {"item": out, "annotation": self.journal.annotation_of(item.id)}

    def submit(self, index: int, payload: dict[str, Any]) -> dict[str, Any]:
        item = self.items[index]
        if payload.get("id") != item.id:
            # A page showing a stale item list must not write its answer under another item's id.
            raise SubmissionError(f"item {index} is {item.id!r}, but the submission is for {payload.get('id')!r}")
        stored = self.journal.submit(item.id, payload)
        flags = self.journal.annotated_flags()
        return {
            "saved": True,
            "annotation": stored,
            "n_annotated": sum(flags),
            "next_unannotated": self.journal.first_unannotated(index + 1 if index + 1 < len(self.items) else 0),
        }


class AnnotationServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung browser connection must not keep the process alive on Ctrl+C

    def __init__(self, address: tuple[str, int], app: AnnotationApp, quiet: bool = True):
        self.app = app
        self.quiet = quiet
        super().__init__(address, AnnotationHandler)
        host, port = self.server_address[:2]
        self.check_host_header = host in ("127.0.0.1", "::1")
        self.allowed_hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{port}/"


class AnnotationHandler(BaseHTTPRequestHandler):
    server: AnnotationServer
    server_version = "finegrained-annotate"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stall mid-request before its thread gives up

    # -- plumbing ------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message, "status": int(status)})

    def _host_ok(self) -> bool:
        # DNS rebinding: a web page on evil.example resolving to 127.0.0.1 would send Host: evil.example.
        if not self.server.check_host_header:
            return True
        return self.headers.get("Host", "") in self.server.allowed_hosts

    def _path(self) -> str:
        return urlsplit(self.path).path

    # -- methods -------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        path = self._path()
        app = self.server.app
        if path in app.assets:
            body, content_type = app.assets[path]
            return self._send(HTTPStatus.OK, body, content_type)
        if path == "/api/state":
            return self._json(HTTPStatus.OK, app.state())
        match = _ITEM_PATH.match(path)
        if match:
            index = int(match.group(1))
            if index >= len(app.items):
                return self._error(HTTPStatus.NOT_FOUND, f"no item {index} (there are {len(app.items)})")
            return self._json(HTTPStatus.OK, app.item(index))
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            self.close_connection = True
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        payload = self._read_json_body()
        if payload is None:
            return
        match = _ITEM_PATH.match(self._path())
        app = self.server.app
        if not match:
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        index = int(match.group(1))
        if index >= len(app.items):
            return self._error(HTTPStatus.NOT_FOUND, f"no item {index} (there are {len(app.items)})")
        try:
            result = app.submit(index, payload)
        except SubmissionError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except OSError as e:
            # The disk is full or the file vanished: say so, do not pretend it was saved.
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save: {e.strerror or e}")
        return self._json(HTTPStatus.OK, result)

    def _read_json_body(self) -> dict[str, Any] | None:
        """The request's JSON object, or ``None`` after answering 4xx (body too big, not JSON, ...)."""
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length_header is None:
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            return None
        if length > MAX_BODY_BYTES:
            # Refuse before reading: the unread body makes the connection unusable, so close it.
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
            return None
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # Cross-site HTML forms cannot send application/json without a CORS preflight, which we never grant.
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
            return None
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._error(HTTPStatus.BAD_REQUEST, f"malformed JSON: {e}")
            return None
        if not isinstance(payload, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
            return None
        return payload

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed


def build_server(
    schema: AnnotationSchema,
    input_path: str | Path,
    output_path: str | Path,
    annotator: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    quiet: bool = True,
) -> AnnotationServer:
    """Validate the inputs, replay the journal, and bind the server (not yet serving; ``port=0``: any free port)."""
    input_path, output_path = Path(input_path), Path(output_path)
    items = load_items(input_path, schema)
    check_output_path(input_path, output_path)
    journal = Journal(output_path, schema, items, annotator)
    app = AnnotationApp(schema, items, journal)
    try:
        return AnnotationServer((host, port), app, quiet=quiet)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise FinegrainedError(f"finegrained annotate: port {port} is in use; pick another with --port "
                                   "(--port 0 takes any free port)") from None  # fmt: skip
        raise FinegrainedError(f"finegrained annotate: cannot listen on {host}:{port}: {e.strerror or e}") from None


def check_output_path(input_path: Path, output_path: Path) -> None:
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise InputError("--output must not be the --input file (the input is never modified)", file=output_path)
    if output_path.is_dir():
        raise InputError("is a directory; --output must be a JSONL file", file=output_path)
    if not output_path.parent.is_dir():
        raise InputError(f"directory {output_path.parent} does not exist", file=output_path)
    if not os.access(output_path.parent if not output_path.exists() else output_path, os.W_OK):
        raise InputError("not writable", file=output_path)


def serve_in_thread(server: AnnotationServer, poll_interval: float = 0.05) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread (tests, notebooks); stop with ``server.shutdown()``
    (which waits up to ``poll_interval`` seconds)."""
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), name="finegrained-annotate",
                              daemon=True)  # fmt: skip
    thread.start()
    return thread


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


if __name__ == "__main__":  # python -m finegrained.app.server ... (same as `finegrained annotate ...`)
    try:
        sys.exit(main(sys.argv[1:]))
    except FinegrainedError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
