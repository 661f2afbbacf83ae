"""``finegrained annotate``: a local web page to collect fine-grained human feedback.

    finegrained annotate --schema S --input completions.jsonl --output annotations.jsonl
                         [--annotator NAME] [--port 8765] [--host 127.0.0.1]
    finegrained annotate --schema S --output annotations.jsonl --export clean.jsonl

The annotator marks error spans (span categories) or picks A / B / tie (preference categories, for pair
items). Every submission is appended to ``--output`` and fsync'd before the page hears "saved"; a restart
resumes at the first unannotated item; re-submitting appends a new record and ``--export`` keeps the latest
per id (see ``finegrained.app.store`` for the file formats).

Safety: the server listens on 127.0.0.1 unless ``--host`` says otherwise (with a warning: there is no
authentication); it serves only its own three assets by a fixed table (no file-system paths from the URL);
it refuses foreign ``Host`` headers (DNS rebinding) and, on POST, a present ``Origin`` other than its own
(an absent one is a non-browser client). Hostile or broken requests get a 4xx JSON answer and one log line,
never a traceback, and the server keeps running: a malformed request line (HTTP/0.9 included) or header
line (no colon, folded), oversized request lines or headers, a repeated ``Host``/``Origin``/
``Content-Length``/``Content-Type``/``Transfer-Encoding`` header, a missing, non-decimal or oversized ``Content-Length`` (no chunked bodies), a
client that stalls (408 after ``request_timeout`` seconds), a body that is not UTF-8, not JSON, not an object,
nested too deeply, or holds ``NaN``/``Infinity``, overlong strings or lone surrogates. A client that hangs up
costs one log line. A submission the disk could not take is answered 507/500, never "saved" (the journal is
rolled back, see ``finegrained.app.store``). The page shows prompts and completions as text only
(``textContent``), under a Content-Security-Policy that allows no inline script. The only file it writes is
``--output``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import FinegrainedError, InputError
from ..schema import AnnotationSchema
from .store import Item, Journal, SubmissionError, load_items

MAX_BODY_BYTES = 1 << 20  # a submission is a list of offsets: 1 MiB is far more than any real one
MAX_REQUEST_LINE_BYTES = 8192
REQUEST_TIMEOUT_S = 60.0  # seconds a client may stall mid-request before its connection is dropped
MAX_JSON_DEPTH = 16  # a real submission nests 3 deep ({"spans": [{...}]})
MAX_STRING_CHARS = 10_000  # ids, labels and choices are short; this bounds what an error message can echo
MAX_MESSAGE_CHARS = 1000  # of an error message sent back
MAX_LOG_CHARS = 300  # of one log line
LINGER_S = 2.0  # how long a closing connection still reads what the client sends (see shutdown_request)
LINGER_MAX_BYTES = 4 * MAX_BODY_BYTES
# Headers that decide how the body is framed or whom the request comes from: two of one are an attack or a bug.
SINGLE_HEADERS = ("Host", "Origin", "Content-Length", "Content-Type", "Transfer-Encoding")
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
# METHOD, an origin-form path, HTTP/1.0 or 1.1: anything else (HTTP/0.9, TLS bytes, garbage) is refused at once.
_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} /[\x21-\x7e]* HTTP/1\.[01]\r?\n")
_DECIMAL = re.compile(r"[0-9]{1,10}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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


def parse_json_body(body: bytes) -> Any:
    """The JSON value of a request body; raises ``ValueError`` with a message for the client.

    Stricter than ``json.loads``: the body must be UTF-8, and ``NaN``/``Infinity`` (which Python accepts, and
    which no JSON file of this project may hold) and numbers that overflow to infinity are refused.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the body is not UTF-8 (byte {e.start + 1})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("malformed JSON: nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, the hooks below, integers over Python's digit limit
        raise ValueError(f"malformed JSON: {e}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is too large")
    return value


def json_shape_problem(value: Any) -> str | None:
    """Why a parsed request body is refused before any field is looked at (too deep, an overlong string, a
    lone surrogate that could not be written as UTF-8), or ``None``. Iterative, so depth cannot hurt it."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(node, dict):
            stack += [(key, depth + 1) for key in node] + [(child, depth + 1) for child in node.values()]
        elif isinstance(node, list):
            stack += [(child, depth + 1) for child in node]
        elif isinstance(node, str):
            if len(node) > MAX_STRING_CHARS:
                return f"a string of {len(node)} characters (at most {MAX_STRING_CHARS})"
            if _LONE_SURROGATE.search(node):
                return "a string with a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def _log_line(text: str) -> None:
    """One line on stderr, whatever the text holds (control characters escaped, length capped)."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    if len(text) > MAX_LOG_CHARS:
        text = text[: MAX_LOG_CHARS - 1] + "…"
    try:
        sys.stderr.write(f"finegrained annotate: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or gone: nothing better to do with a log line
        pass


class AnnotationServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung browser connection must not keep the process alive on Ctrl+C
    request_timeout = REQUEST_TIMEOUT_S  # per connection; tests shorten it

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

    def shutdown_request(self, request: socket.socket) -> None:
        """Half-close, then read and drop what the client still sends for a moment before closing: closing
        with unread bytes (an oversized body, headers past a limit) makes the kernel send a reset, which
        can destroy the error answer still on its way to the client."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + LINGER_S, 0
            while drained < LINGER_MAX_BYTES and (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:  # the client is gone or silent: nothing more to protect
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """What escaped the handler (socketserver would print a traceback): one line."""
        error = sys.exc_info()[1]
        _log_line(f"{client_address[0]}: connection ended by {type(error).__name__}: {error}")


class AnnotationHandler(BaseHTTPRequestHandler):
    server: AnnotationServer
    server_version = "finegrained-annotate"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Errors found before the request's version is known are still answered with a status line and headers.
    default_request_version = "HTTP/1.0"

    # -- plumbing ------------------------------------------------------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler.setup puts it on the socket
        super().setup()

    def handle_one_request(self) -> None:
        """One request. Every failure ends in one log line and, while the client is still there, a JSON
        answer: the base class would print a traceback for a client that hangs up or a handler that fails."""
        self.command, self.path, self.requestline, self._answered = "", "", "", False
        self.request_version = self.default_request_version
        try:
            try:
                self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE_BYTES + 1)
            except TimeoutError:
                self.close_connection = True  # an idle keep-alive connection: nothing to answer
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > MAX_REQUEST_LINE_BYTES:
                return self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line over {MAX_REQUEST_LINE_BYTES} bytes")
            if not self.parse_request():
                return
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                return self.send_error(HTTPStatus.NOT_IMPLEMENTED, "unsupported method")
            method()
            self.wfile.flush()
        except TimeoutError:
            self._fail(HTTPStatus.REQUEST_TIMEOUT, f"the client sent nothing for {self.timeout:g} s")
        except ConnectionError as e:  # BrokenPipeError, ConnectionResetError, ...: the client is gone
            self.close_connection = True
            self.log_error(f"{self._where()}: client closed the connection ({type(e).__name__})")
        except Exception as e:  # a bug: the client gets a 500, the log one line (never a traceback)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", f"{type(e).__name__}: {e}")

    def parse_request(self) -> bool:
        """The base class's parsing behind a strict request line (the base would take an HTTP/0.9 line and
        wait for headers that never come), with well-formed header lines and at most one of each of
        ``SINGLE_HEADERS``."""
        if not _REQUEST_LINE.fullmatch(self.raw_requestline):
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed request line (expected: METHOD /path HTTP/1.1)")
            return False
        if not super().parse_request():
            return False
        # A line without a colon (the parser takes it and the rest for a body) or a folded line (RFC 9112
        # says to refuse it): proxies may read such headers differently, so none is read at all.
        if self.headers.defects or self.headers.get_payload() or any("\n" in v for v in self.headers.values()):
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed header line")
            return False
        for name in SINGLE_HEADERS:
            if len(self.headers.get_all(name) or ()) > 1:
                self.send_error(HTTPStatus.BAD_REQUEST, f"more than one {name} header")
                return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's error answers (headers too large, ...) in this server's JSON form (the base
        sends HTML and puts the client's text in the status line), on a connection that then closes."""
        status = HTTPStatus(code)
        self._error(status, message or status.phrase)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if not self.server.quiet:  # the access log: --verbose only
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        """Always logged, one line: a refused or failed request."""
        _log_line(f"{self.client_address[0]}: {format % args if args else format}")

    def _fail(self, status: HTTPStatus, message: str, detail: str | None = None) -> None:
        """Answer an error found mid-request, if nothing was sent yet and the client is still there."""
        self.close_connection = True
        if self._answered:
            self.log_error(f"{self._where()}: {detail or message} (after the answer began)")
            return
        try:
            self._error(status, message, detail)
        except OSError:  # gone meanwhile; _error already logged the line
            pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self._answered = True
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

    def _error(self, status: HTTPStatus, message: str, detail: str | None = None) -> None:
        """Log one line and answer ``{"error", "status"}``; the connection then closes (an unread body, or a
        client that already did something wrong, makes it unsafe to reuse)."""
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        self.log_error(f"{int(status)} {self._where()}: {detail or message}")
        self.close_connection = True
        self._json(status, {"error": message, "status": int(status)})

    def _host_ok(self) -> bool:
        # DNS rebinding: a web page on evil.example resolving to 127.0.0.1 would send Host: evil.example.
        if not self.server.check_host_header:
            return True
        return self.headers.get("Host", "") in self.server.allowed_hosts

    def _origin_ok(self) -> bool:
        """Same origin only, behind the Host and Content-Type checks (defence in depth). A browser always
        sends Origin on POST; a client without one (curl, scripts) is not a web page acting for someone."""
        origin = self.headers.get("Origin")
        return origin is None or origin.strip().lower() == f"http://{self.headers.get('Host', '')}".lower()

    def _where(self) -> str:
        """``METHOD /path`` of the request being handled, for a log line."""
        return f"{self.command or '-'} {self._path()[:80] or '-'}"

    def _path(self) -> str:
        try:
            return urlsplit(self.path).path
        except ValueError:  # e.g. an unbalanced "[" taken for an IPv6 host
            return self.path

    # -- methods -------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # a GET with a body: the unread body must not be taken for a request
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
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        if not self._origin_ok():
            return self._error(HTTPStatus.FORBIDDEN, "cross-origin request refused")
        match = _ITEM_PATH.match(self._path())
        app = self.server.app
        if not match:
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        index = int(match.group(1))
        if index >= len(app.items):
            return self._error(HTTPStatus.NOT_FOUND, f"no item {index} (there are {len(app.items)})")
        payload = self._read_json_body()
        if payload is None:
            return
        try:
            result = app.submit(index, payload)
        except SubmissionError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except OSError as e:
            # The disk is full or the file vanished: say so, never "saved" (the journal was rolled back).
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            status = HTTPStatus.INSUFFICIENT_STORAGE if full else HTTPStatus.INTERNAL_SERVER_ERROR
            return self._error(status, f"not saved: {e.strerror or e}")
        return self._json(HTTPStatus.OK, result)

    def _read_json_body(self) -> dict[str, Any] | None:
        """The request's JSON object, or ``None`` after answering 4xx (body too big, not JSON, ...)."""
        length = self._content_length()
        if length is None:
            return None
        body = self._read_body(length)
        if body is None:
            return None
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # Cross-site HTML forms cannot send application/json without a CORS preflight, which we never grant.
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
            return None
        try:
            payload = parse_json_body(body)
        except ValueError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
            return None
        if not isinstance(payload, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
            return None
        problem = json_shape_problem(payload)
        if problem is not None:
            self._error(HTTPStatus.BAD_REQUEST, f"refused: {problem}")
            return None
        return payload

    def _content_length(self) -> int | None:
        """The body's length from a single decimal ``Content-Length``, or ``None`` after answering 4xx."""
        length_header = self.headers.get("Content-Length")
        if "Transfer-Encoding" in self.headers:
            # Only Content-Length framing: with both, which one frames the body is what request smuggling plays on.
            status = HTTPStatus.LENGTH_REQUIRED if length_header is None else HTTPStatus.BAD_REQUEST
            self._error(status, "Transfer-Encoding is not supported; send the body with a Content-Length")
            return None
        if length_header is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        if not _DECIMAL.fullmatch(length_header.strip()):  # int() would also take "+5", " 1_0 " and "-1"
            self._error(HTTPStatus.BAD_REQUEST, "bad Content-Length (expected a decimal number of bytes)")
            return None
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            # Refused before reading: the connection closes, since the unread body makes it unusable.
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
            return None
        return length

    def _read_body(self, length: int) -> bytes | None:
        """Exactly ``length`` bytes, within ``request_timeout`` seconds in all (a client trickling a byte at a
        time would otherwise hold its thread forever), or ``None`` after answering 408 / when the client left."""
        deadline = time.monotonic() + self.server.request_timeout
        chunks, remaining = [], length
        while remaining:
            if time.monotonic() > deadline:
                self._error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {self.timeout:g} s")
                return None
            chunk = self.rfile.read1(min(remaining, 1 << 16))  # a stalled socket raises TimeoutError
            if not chunk:
                self.close_connection = True
                self.log_error(f"{self._where()}: client closed the connection before sending its body")
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _method_not_allowed(self) -> None:
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
