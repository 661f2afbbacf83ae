"""The annotation server without a browser: its HTTP API, its safety rules and its journal."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time

import pytest

from finegrained.app import server as server_module
from finegrained.app.server import MAX_BODY_BYTES, build_server, serve_in_thread
from finegrained.commands.annotate import main
from finegrained.app.store import MAX_SPANS_PER_SUBMISSION, export, latest_records
from finegrained.data import validate_file
from finegrained.errors import FinegrainedError, InputError
from finegrained.schema import load_schema

SCHEMA = load_schema("synthetic_qa")
ROWS = [
    {"id": "q1", "prompt": "facts: Bora is a town.", "completion": "🦜 Bora is a town. It has 3 bridges."},
    {"id": "q2", "prompt": "question: what is Kelt?", "completion": "Kelt is a village."},
    {"id": "q3", "prompt": "question: what is Arn?", "completion": "Arn is a river."},
    {"id": "p1", "prompt": "question: what is Bora?", "completion_a": "Bora is a town.", "completion_b": "A city."},
]


def write_items(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def served(tmp_path):
    """A running server on a free port: yields (server, output path); shut down afterwards."""
    items = write_items(tmp_path / "items.jsonl", ROWS)
    output = tmp_path / "annotations.jsonl"
    server = build_server(SCHEMA, items, output, "ann-1", port=0)
    serve_in_thread(server)
    yield server, output
    server.shutdown()
    server.server_close()


def request(server, method, path, body=None, headers=None):
    """(status, parsed JSON or raw bytes) of one request on a fresh connection."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode("utf-8")
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(raw)
    return response.status, raw


def submit(server, index, payload):
    return request(server, "POST", f"/api/items/{index}", payload)


def test_serves_page_and_state(served):
    server, _ = served
    status, page = request(server, "GET", "/")
    assert status == 200 and b'<script src="/app.js"' in page
    for asset in ("/app.js", "/app.css", "/index.html"):
        assert request(server, "GET", asset)[0] == 200
    status, state = request(server, "GET", "/api/state")
    assert status == 200
    assert state["n_items"] == 4 and state["first_unannotated"] == 0 and state["annotator"] == "ann-1"
    assert [c["name"] for c in state["schema"]["categories"]] == ["relevance", "factuality", "completeness", "holistic"]
    status, item = request(server, "GET", "/api/items/3")
    assert item["item"]["kind"] == "pair" and item["annotation"] is None


@pytest.mark.parametrize(
    "path",
    ["/../../../etc/passwd", "/static/../server.py", "/%2e%2e/%2e%2e/etc/passwd", "/app.js/../../store.py",
     "/server.py", "/static/app.js", "//etc/passwd", "/api/items/99", "/api/items/-1", "/api/items/../state"],
)  # fmt: skip
def test_only_its_own_assets_are_served(served, path):
    server, _ = served
    host, port = server.server_address[:2]
    # A raw socket: http.client would normalise nothing either, but this makes the bytes on the wire explicit.
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404"), reply[:80]
    assert b"root:" not in reply and b"import" not in reply


def test_security_headers_and_foreign_host(served):
    server, _ = served
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    csp = response.getheader("Content-Security-Policy")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    conn.close()
    # DNS rebinding: a page on another origin that resolves to 127.0.0.1 sends its own Host header.
    status, body = request(server, "GET", "/api/state", headers={"Host": "evil.example:80"})
    assert status == 403
    status, _ = submit_with_host(server, "evil.example")
    assert status == 403


def submit_with_host(server, host_header):
    return request(server, "POST", "/api/items/1", {"id": "q2", "spans": []}, headers={"Host": host_header})


def test_bad_requests_get_4xx_and_the_server_keeps_running(served):
    server, output = served
    assert request(server, "POST", "/api/items/1", b"{not json")[0] == 400
    assert request(server, "POST", "/api/items/1", b"\xff\xfe")[0] == 400
    assert request(server, "POST", "/api/items/1", [1, 2])[0] == 400  # JSON, but not an object
    assert request(server, "POST", "/api/items/1", b'{"id": "q2", "spans": []}', {"Content-Type": "text/plain"})[0] == 415
    assert request(server, "DELETE", "/api/items/1")[0] == 405
    # oversized: refused from the Content-Length alone, before reading the body. Only the headers are
    # sent: a client still pushing a body the server will never read could see a broken pipe instead.
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.putrequest("POST", "/api/items/1")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "bytes" in json.loads(response.read())["error"]
    conn.close()
    # well-formed JSON with wrong content: 400 with a message naming the problem
    status, body = submit(server, 1, {"id": "q2", "spans": [{"start": 5, "end": 99, "label": "Irrelevant"}]})
    assert status == 400 and "past the end" in body["error"]
    status, body = submit(server, 1, {"id": "q2", "spans": [{"start": 0, "end": 4, "label": "Typo"}]})
    assert status == 400 and "unknown label 'Typo'" in body["error"]
    status, body = submit(server, 1, {"id": "q1", "spans": []})  # stale page: id of another item
    assert status == 400 and "'q2'" in body["error"]
    status, body = submit(server, 3, {"id": "p1", "choices": {"completeness": "A"}})
    assert status == 400 and "holistic" in body["error"]
    status, body = submit(server, 3, {"id": "p1", "choices": {"completeness": "A", "holistic": "C"}})
    assert status == 400 and "one of A, B, tie" in body["error"]
    assert not output.exists()  # nothing invalid was written
    # ... and the server still answers and saves
    assert submit(server, 1, {"id": "q2", "spans": []})[0] == 200
    assert request(server, "GET", "/api/state")[1]["n_annotated"] == 1


def test_submission_is_appended_and_fsynced_before_the_answer(served, monkeypatch):
    server, output = served
    synced = []
    real_fsync = os.fsync

    def spy_fsync(fd):
        # At fsync time the line must already be in the file: the answer comes after both.
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    status, body = submit(server, 0, {"id": "q1", "spans": [{"start": 2, "end": 17, "label": "Wrong-Grounding"}]})
    assert status == 200 and body["next_unannotated"] == 1
    assert synced and synced[0] == output.stat().st_size > 0
    record = json.loads(output.read_text(encoding="utf-8"))
    assert record["completion"][2:17] == "Bora is a town."  # code-point offsets, emoji counted once
    assert record["annotator"] == "ann-1" and record["meta"]["submitted_at"].endswith("Z")
    assert validate_file(output, SCHEMA) == []


def test_resubmission_keeps_history_and_export_takes_the_latest(served, tmp_path):
    server, output = served
    submit(server, 0, {"id": "q1", "spans": [{"start": 2, "end": 17, "label": "Wrong-Grounding"}]})
    submit(server, 0, {"id": "q1", "spans": []})  # changed my mind: no errors
    submit(server, 3, {"id": "p1", "choices": {"completeness": "B", "holistic": "tie"}})
    lines = output.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4  # 2 span submissions + one preference submission of 2 categories
    assert request(server, "GET", "/api/items/0")[1]["annotation"]["spans"] == []

    clean = tmp_path / "clean.jsonl"
    written, n_ties = export(output, clean, SCHEMA)
    assert n_ties == 1
    assert [(p.name, n) for p, n in written] == [("clean.jsonl", 1), ("clean.preferences.jsonl", 1)]
    assert [json.loads(x)["spans"] for x in clean.read_text().splitlines()] == [[]]
    (preference,) = map(json.loads, (tmp_path / "clean.preferences.jsonl").read_text().splitlines())
    assert preference["chosen"] == "A city." and preference["rejected"] == "Bora is a town."
    assert validate_file(clean, SCHEMA) == [] and validate_file(tmp_path / "clean.preferences.jsonl", SCHEMA) == []
    records, _ = latest_records(output, SCHEMA, keep_ties=True)
    assert {r["id"] for r in records} == {"q1", "p1/completeness", "p1/holistic"}


def test_restart_resumes_at_the_first_unannotated_item(tmp_path):
    items = write_items(tmp_path / "items.jsonl", ROWS)
    output = tmp_path / "annotations.jsonl"
    first = build_server(SCHEMA, items, output, "ann-1", port=0)
    serve_in_thread(first)
    submit(first, 0, {"id": "q1", "spans": []})
    submit(first, 2, {"id": "q3", "spans": []})
    submit(first, 3, {"id": "p1", "choices": {"completeness": "A", "holistic": "B"}})
    first.shutdown()
    first.server_close()
    # a crash in the middle of a later write leaves a torn last line: skipped with a warning, then repaired
    with open(output, "ab") as f:
        f.write(b'{"id": "q2", "prompt": "question: wh')
    second = build_server(SCHEMA, items, output, "ann-1", port=0)
    serve_in_thread(second)
    try:
        state = request(second, "GET", "/api/state")[1]
        assert state["annotated"] == [True, False, True, True] and state["first_unannotated"] == 1
        assert any("incomplete last line" in w for w in second.app.journal.warnings)
        assert request(second, "GET", "/api/items/3")[1]["annotation"]["choices"] == {"completeness": "A", "holistic": "B"}
        assert submit(second, 1, {"id": "q2", "spans": []})[0] == 200
        assert request(second, "GET", "/api/state")[1]["first_unannotated"] is None
    finally:
        second.shutdown()
        second.server_close()
    lines = output.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["id"] == "q2"  # written on its own line after the torn one


def test_input_is_validated_like_finegrained_validate(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text(
        '{"id": "a", "prompt": "p", "completion": "text"}\n'
        '{"id": "a", "prompt": "p", "completion": "dup"}\n'
        '{"id": "b", "prompt": "p", "completion": 7}\n'
        "not json\n"
        '{"id": "c", "prompt": "p", "completion_a": "x", "completion_b": "x"}\n'
        '{"id": "d", "prompt": "p", "completion": "t", "spam": 1}\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        build_server(SCHEMA, items, tmp_path / "out.jsonl", "ann", port=0)
    text = str(caught.value)
    assert f"{items}:2: id: duplicate id 'a' (first used on line 1)" in text
    assert f"{items}:3: completion: must be a string, got the integer 7" in text
    assert f"{items}:4: malformed JSON" in text
    assert f"{items}:5: completion_b:" in text
    assert f"{items}:6: spam: unknown field" in text
    assert not (tmp_path / "out.jsonl").exists()


def test_output_rules(tmp_path):
    items = write_items(tmp_path / "items.jsonl", ROWS[:1])
    with pytest.raises(InputError, match="must not be the --input"):
        build_server(SCHEMA, items, items, "ann", port=0)
    with pytest.raises(InputError, match="does not exist"):
        build_server(SCHEMA, items, tmp_path / "missing" / "out.jsonl", "ann", port=0)


def test_cli_errors_and_export(tmp_path, capsys, monkeypatch):
    items = write_items(tmp_path / "items.jsonl", ROWS)
    output = tmp_path / "annotations.jsonl"
    # a busy port is a clear user error, not a traceback
    busy = build_server(SCHEMA, items, output, "ann", port=0)
    try:
        with pytest.raises(FinegrainedError, match="port .* is in use"):
            main(["--schema", "synthetic_qa", "--input", str(items), "--output", str(output),
                  "--port", str(busy.server_address[1])])  # fmt: skip
    finally:
        busy.server_close()
    with pytest.raises(FinegrainedError, match="--input is required"):
        main(["--schema", "synthetic_qa", "--output", str(output)])

    # serving on another host prints a warning; serve_forever is replaced so the test does not block
    monkeypatch.setattr(server_module.AnnotationServer, "serve_forever", lambda self: None)
    assert main(["--schema", "synthetic_qa", "--input", str(items), "--output", str(output), "--port", "0",
                 "--host", "0.0.0.0", "--annotator", "ann-7"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "WARNING: listening on 0.0.0.0" in captured.err
    assert "4 items, 0 annotated (resuming at item 1); annotator 'ann-7'" in captured.out

    output.write_text(json.dumps({"id": "q2", "prompt": "question: what is Kelt?", "completion": "Kelt is a village.",
                                  "spans": [], "annotator": "ann-7", "meta": {}}) + "\n")  # fmt: skip
    assert main(["--schema", "synthetic_qa", "--output", str(output), "--export", str(tmp_path / "clean.jsonl")]) == 0
    assert "wrote 1 record to" in capsys.readouterr().out


# -- hostile and broken clients: 4xx JSON, one log line, never a traceback -------------------------------


@pytest.fixture
def log_lines(monkeypatch):
    """Every line the server logs (still written to stderr, where a traceback would show as well)."""
    lines = []
    real = server_module._log_line

    def record(text):
        lines.append(text)
        real(text)

    monkeypatch.setattr(server_module, "_log_line", record)
    return lines


def raw_exchange(server, data: bytes) -> bytes:
    """Send bytes as they are, then read until the server closes the connection."""
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def json_reply(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), reply[:200]
    assert b"Content-Type: application/json" in head and b"Connection: close" in head, head
    return int(head.split(b" ")[1]), json.loads(body)


def wait_for(condition, seconds=5.0):
    """Poll until ``condition()`` (for what a handler thread does after the client has left)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def post_bytes(body: bytes, *headers: str, content_length=True) -> bytes:
    lines = ["POST /api/items/1 HTTP/1.1", "Host: {host}", "Content-Type: application/json", *headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def with_span(start: str = "0", label: str = '"Irrelevant"', copies: int = 1) -> bytes:
    """A submission for item q2 with ``copies`` of one span, its start and label as JSON text."""
    span = f'{{"start": {start}, "end": 4, "label": {label}}}'
    return post_bytes(('{"id": "q2", "spans": [' + ", ".join([span] * copies) + "]}").encode())


PROBES = {
    # request line
    "HTTP/0.9 request": (b"GET /\r\n\r\n", 400),
    "TLS handshake": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\r\n\r\n", 400),
    "empty request line": (b"\r\n\r\n", 400),
    "lowercase method": (b"get / HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    "HTTP/2 version": (b"GET / HTTP/2.0\r\nHost: {host}\r\n\r\n", 400),
    "absolute-form target": (b"GET http://[::1/ HTTP/1.1\r\nHost: {host}\r\n\r\n", 400),
    "unknown method": (b"BREW / HTTP/1.1\r\nHost: {host}\r\n\r\n", 501),
    "request line over the limit": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: {host}\r\n\r\n", 414),
    # headers
    "header line over the limit": (b"GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    "too many headers": (b"GET / HTTP/1.1\r\nHost: {host}\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", 431),
    "header line without a colon": (b"GET / HTTP/1.1\r\nHost: {host}\r\nno colon here\r\n\r\n", 400),
    "header line with a NUL byte": (b"GET / HTTP/1.1\r\nHost: {host}\r\nX\x00Y: 1\r\n\r\n", 400),
    "folded header line": (b"GET / HTTP/1.1\r\nHost: {host}\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n", 400),
    "two Content-Length headers": (post_bytes(b'{"id": "q2", "spans": []}', "Content-Length: 5"), 400),
    "Content-Length with a sign": (post_bytes(b'{"id": "q2", "spans": []}', "Content-Length: +25", content_length=False), 400),
    "negative Content-Length": (post_bytes(b"", "Content-Length: -1", content_length=False), 400),
    "Content-Length not a number": (post_bytes(b"", "Content-Length: abc", content_length=False), 400),
    "Content-Length with an underscore": (post_bytes(b"", "Content-Length: 2_5", content_length=False), 400),
    "no Content-Length": (post_bytes(b"", content_length=False), 411),
    "chunked without length": (post_bytes(b"19\r\n" + b'{"id": "q2", "spans": []}' + b"\r\n0\r\n\r\n",
                                          "Transfer-Encoding: chunked", content_length=False), 411),  # fmt: skip
    "chunked and a length": (post_bytes(b"0\r\n\r\n", "Transfer-Encoding: chunked"), 400),
    "foreign Origin": (post_bytes(b'{"id": "q2", "spans": []}', "Origin: http://evil.example"), 403),
    "Origin null": (post_bytes(b'{"id": "q2", "spans": []}', "Origin: null"), 403),
    "two Origin headers": (post_bytes(b'{"id": "q2", "spans": []}', "Origin: http://{host}", "Origin: http://{host}"), 400),
    # bodies
    "not UTF-8": (post_bytes(b'{"id": "q2\xff", "spans": []}'), 400),
    "UTF-8 byte-order mark": (post_bytes(b'\xef\xbb\xbf{"id": "q2", "spans": []}'), 400),
    "deeply nested array": (post_bytes(b"[" * 100_000), 400),
    "deeply nested object": (post_bytes(b'{"a": ' * 50_000), 400),
    "nested past the depth limit": (post_bytes(b'{"id": "q2", "spans": [], "x": ' + b"[" * 40 + b"]" * 40 + b"}"), 400),
    "NaN": (with_span(start="NaN"), 400),
    "Infinity": (with_span(start="-Infinity"), 400),
    "a number that overflows": (with_span(start="1e999"), 400),
    "an integer of 5000 digits": (with_span(start="9" * 5000), 400),
    "JSON list": (post_bytes(b"[1, 2]"), 400),
    "JSON string": (post_bytes(b'"q2"'), 400),
    "JSON null": (post_bytes(b"null"), 400),
    "id a number": (post_bytes(b'{"id": 2, "spans": []}'), 400),
    "id a list": (post_bytes(b'{"id": ["q2"], "spans": []}'), 400),
    "spans a string": (post_bytes(b'{"id": "q2", "spans": "none"}'), 400),
    "spans an object": (post_bytes(b'{"id": "q2", "spans": {"start": 0}}'), 400),
    "span start a string": (with_span(start='"0"'), 400),
    "span start a boolean": (with_span(start="true"), 400),
    "span label a number": (with_span(label="7"), 400),
    "overlong label": (with_span(label='"' + "x" * 20_000 + '"'), 400),
    "overlong id": (post_bytes(('{"id": "' + "q" * 20_000 + '", "spans": []}').encode()), 400),
    "too many spans": (with_span(copies=1001), 400),
    "lone surrogate": (post_bytes(b'{"id": "q2", "spans": [], "note": "\\ud800"}'), 400),
    "choices not strings": (post_bytes(b'{"id": "p1", "choices": {"completeness": ["A"], "holistic": {"B": 1}}}').replace(b"/items/1", b"/items/3"), 400),
}  # fmt: skip


@pytest.mark.parametrize("name", PROBES)
def test_hostile_requests_get_one_json_4xx_and_one_log_line(served, log_lines, capsys, name):
    server, output = served
    data, expected = PROBES[name]
    port = server.server_address[1]
    status, body = json_reply(raw_exchange(server, data.replace(b"{host}", f"127.0.0.1:{port}".encode())))
    assert (status, body["status"]) == (expected, expected) and body["error"]
    assert len(body["error"]) <= server_module.MAX_MESSAGE_CHARS  # overlong input is not echoed back whole
    # The server closed the connection after the handler returned: its log line is already written.
    assert len(log_lines) == 1 and f"{expected}" in log_lines[0], log_lines
    assert "Traceback" not in capsys.readouterr().err
    assert request(server, "GET", "/api/state")[0] == 200  # still serving
    assert not output.exists()  # nothing was written


def test_same_origin_and_absent_origin_are_accepted(served):
    server, output = served
    port = server.server_address[1]
    assert request(server, "POST", "/api/items/1", {"id": "q2", "spans": []}, {"Origin": f"http://127.0.0.1:{port}"})[0] == 200
    assert request(server, "POST", "/api/items/2", {"id": "q3", "spans": []})[0] == 200  # curl sends no Origin
    # the probes' own well-formed variant is accepted: their 400s come from what each one breaks
    valid = with_span(copies=MAX_SPANS_PER_SUBMISSION).replace(b"{host}", f"127.0.0.1:{port}".encode())
    status, body = json_reply(raw_exchange(server, valid.replace(b"Content-Type", b"Connection: close\r\nContent-Type")))
    assert status == 200 and body["saved"] and len(body["annotation"]["spans"]) == MAX_SPANS_PER_SUBMISSION
    assert len(output.read_text().splitlines()) == 3


@pytest.mark.parametrize("error", [BrokenPipeError, ConnectionResetError])
def test_a_client_that_hangs_up_costs_one_log_line(served, log_lines, capsys, monkeypatch, error):
    server, _ = served

    def gone():
        raise error(error.__name__)

    monkeypatch.setattr(server.app, "state", gone)  # as if writing the answer found the client gone
    assert raw_exchange(server, b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.server_address[1]) == b""
    assert len(log_lines) == 1 and "client closed the connection" in log_lines[0] and error.__name__ in log_lines[0]
    assert "Traceback" not in capsys.readouterr().err


def test_a_client_that_leaves_mid_body_costs_one_log_line(served, log_lines, capsys):
    server, output = served
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(post_bytes(b"{").replace(b"{host}", b"127.0.0.1:%d" % server.server_address[1])
                  .replace(b"Content-Length: 1", b"Content-Length: 100"))  # fmt: skip
    assert wait_for(lambda: log_lines)
    assert len(log_lines) == 1 and "before sending its body" in log_lines[0]
    assert "Traceback" not in capsys.readouterr().err
    assert not output.exists()


def test_a_bug_in_a_handler_is_a_500_and_one_line(served, log_lines, capsys, monkeypatch):
    server, _ = served
    monkeypatch.setattr(server.app, "state", lambda: 1 / 0)
    status, body = request(server, "GET", "/api/state")
    assert status == 500 and body["error"] == "internal error"  # no details for the client ...
    assert len(log_lines) == 1 and "ZeroDivisionError" in log_lines[0]  # ... one line for the log
    assert "Traceback" not in capsys.readouterr().err


def test_a_slow_client_gets_408(served, log_lines, capsys):
    server, _ = served
    server.request_timeout = 0.3
    host = b"127.0.0.1:%d" % server.server_address[1]
    # stalls in the middle of the headers, then in the middle of the body
    for data in (b"POST /api/items/1 HTTP/1.1\r\nHost: " + host + b"\r\nContent-Ty",
                 post_bytes(b'{"id"').replace(b"{host}", host).replace(b"Content-Length: 5", b"Content-Length: 25")):  # fmt: skip
        with socket.create_connection(server.server_address[:2], timeout=10) as s:
            s.sendall(data)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        status, body = json_reply(reply)
        assert status == 408 and body["status"] == 408
    assert len(log_lines) == 2 and all("408" in line for line in log_lines)
    assert "Traceback" not in capsys.readouterr().err


def test_a_body_trickled_byte_by_byte_is_cut_off(served, log_lines):
    """Each byte arrives before the socket timeout, but the whole body must arrive within it too."""
    server, _ = served
    server.request_timeout = 0.3
    head = post_bytes(b"").replace(b"{host}", b"127.0.0.1:%d" % server.server_address[1])
    head = head.replace(b"Content-Length: 0", b"Content-Length: 1000")
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(head)
        s.setblocking(False)
        reply, deadline = b"", time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            except BlockingIOError:
                try:
                    s.send(b" ")
                except OSError:
                    pass
                time.sleep(0.05)
    status, _ = json_reply(reply)
    assert status == 408


def test_an_idle_connection_is_closed_without_a_word(served, log_lines):
    server, _ = served
    server.request_timeout = 0.2
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        assert s.recv(65536) == b""  # closed by the server, nothing sent
    assert log_lines == []


def test_a_correction_is_saved_in_the_journal_and_the_export(served, tmp_path):
    server, output = served
    corrected = "🦜 Bora is a town. It has 4 bridges."
    start = ROWS[0]["completion"].index("It has 3 bridges")
    spans = [{"start": start, "end": start + len("It has 3 bridges"), "label": "Wrong-Grounding"}]
    status, _ = submit(server, 0, {"id": "q1", "spans": spans, "correction": corrected})
    assert status == 200
    assert request(server, "GET", "/api/items/0")[1]["annotation"]["correction"] == corrected
    # the correction box left as the completion (or null): no correction
    assert submit(server, 1, {"id": "q2", "spans": [], "correction": ROWS[1]["completion"]})[0] == 200
    assert submit(server, 2, {"id": "q3", "spans": [], "correction": None})[0] == 200
    status, body = submit(server, 2, {"id": "q3", "spans": [], "correction": ["not", "text"]})
    assert status == 400 and "'correction' must be the corrected completion" in json.dumps(body)
    status, body = submit(server, 2, {"id": "q3", "spans": [], "correction": "   "})
    assert status == 400 and "correction: must not be empty" in json.dumps(body)
    lines = [json.loads(x) for x in output.read_text(encoding="utf-8").splitlines()]
    assert [("correction" in r) for r in lines] == [True, False, False]
    assert "correction" not in request(server, "GET", "/api/items/1")[1]["annotation"]

    clean = tmp_path / "clean.jsonl"
    export(output, clean, SCHEMA)
    assert validate_file(clean, SCHEMA) == []
    exported = {r["id"]: r for r in map(json.loads, clean.read_text(encoding="utf-8").splitlines())}
    assert exported["q1"]["correction"] == corrected and "correction" not in exported["q2"]


def test_a_saved_correction_survives_a_restart(tmp_path):
    items = write_items(tmp_path / "items.jsonl", ROWS)
    output = tmp_path / "annotations.jsonl"
    server = build_server(SCHEMA, items, output, "ann-1", port=0)
    serve_in_thread(server)
    try:
        submit(server, 1, {"id": "q2", "spans": [], "correction": "Kelt is a town."})
    finally:
        server.shutdown()
        server.server_close()
    server = build_server(SCHEMA, items, output, "ann-1", port=0)
    serve_in_thread(server)
    try:
        assert request(server, "GET", "/api/items/1")[1]["annotation"]["correction"] == "Kelt is a town."
    finally:
        server.shutdown()
        server.server_close()
