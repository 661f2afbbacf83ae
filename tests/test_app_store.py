"""The annotation journal never loses an acknowledged line: failed appends are undone, torn lines are skipped."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os

import pytest

from finegrained.app.server import build_server, serve_in_thread
from finegrained.app.store import Journal, export, latest_records, load_items
from finegrained.data import validate_file
from finegrained.errors import InputError
from finegrained.schema import load_schema

SCHEMA = load_schema("synthetic_qa")
ROWS = [
    {"id": "q1", "prompt": "question: what is Bora?", "completion": "Bora is a town. It has 3 bridges."},
    {"id": "q2", "prompt": "question: what is Kelt?", "completion": "Kelt — a village."},
    {"id": "q3", "prompt": "question: what is Arn?", "completion": "Arn is a river."},
    {"id": "p1", "prompt": "question: what is Bora?", "completion_a": "Bora is a town.", "completion_b": "A city."},
]
NO_ERRORS = {"q1": {"id": "q1", "spans": []}, "q2": {"id": "q2", "spans": []}, "q3": {"id": "q3", "spans": []}}


@pytest.fixture
def items(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def journal(output, items_path, annotator="ann-1"):
    return Journal(output, SCHEMA, load_items(items_path, SCHEMA), annotator)


def post(server, index, payload):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("POST", f"/api/items/{index}", body=json.dumps(payload), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


def record_writes_fail(monkeypatch, behaviour):
    """Make ``os.write`` of journal lines (and only those: sockets and logs write otherwise) misbehave."""
    real_write = os.write

    def write(fd, data):
        if bytes(data[:8]).lstrip(b"\n").startswith(b'{"id"'):
            return behaviour(real_write, fd, bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def half_then_enospc(real_write, fd, data):
    real_write(fd, data[: len(data) // 2])  # the disk took part of the line, then filled up
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_loses_nothing_acknowledged_and_the_server_restarts(tmp_path, items, monkeypatch):
    output = tmp_path / "annotations.jsonl"
    server = build_server(SCHEMA, items, output, "ann-1", port=0)
    serve_in_thread(server)
    try:
        assert post(server, 0, NO_ERRORS["q1"])[0] == 200
        before = output.read_bytes()
        with monkeypatch.context() as patch:
            record_writes_fail(patch, half_then_enospc)
            status, body = post(server, 1, NO_ERRORS["q2"])
        assert status == 507 and "saved" not in body and "No space left" in body["error"]
        assert output.read_bytes() == before  # exactly as it was: no fragment left for the next line to join
        assert not server.app.journal.is_annotated("q2")
        assert post(server, 2, NO_ERRORS["q3"])[0] == 200  # the disk has room again
    finally:
        server.shutdown()
        server.server_close()
    restarted = build_server(SCHEMA, items, output, "ann-1", port=0)
    try:
        assert restarted.app.journal.annotated_flags() == [True, False, True, False]
        assert restarted.app.journal.warnings == []
    finally:
        restarted.server_close()
    assert validate_file(output, SCHEMA) == []


@pytest.mark.parametrize("failure", ["short write", "fsync fails"])
def test_other_failed_appends_are_undone(tmp_path, items, monkeypatch, failure):
    output = tmp_path / "annotations.jsonl"
    ledger = journal(output, items)
    ledger.submit("q1", NO_ERRORS["q1"])
    before = output.read_bytes()
    if failure == "short write":
        record_writes_fail(monkeypatch, lambda real_write, fd, data: real_write(fd, data[:10]))
    else:
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        ledger.submit("q2", NO_ERRORS["q2"])
    monkeypatch.undo()
    assert output.read_bytes() == before and not ledger.is_annotated("q2")
    ledger.submit("q3", NO_ERRORS["q3"])
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["q1", "q3"]


def test_a_failed_first_append_leaves_no_file(tmp_path, items, monkeypatch):
    output = tmp_path / "annotations.jsonl"
    ledger = journal(output, items)
    record_writes_fail(monkeypatch, half_then_enospc)
    with pytest.raises(OSError):
        ledger.submit("q1", NO_ERRORS["q1"])
    assert not output.exists()


def test_when_the_undo_fails_too_the_next_line_starts_fresh(tmp_path, items, monkeypatch):
    output = tmp_path / "annotations.jsonl"
    ledger = journal(output, items)
    ledger.submit("q1", NO_ERRORS["q1"])
    with monkeypatch.context() as patch:
        record_writes_fail(patch, half_then_enospc)
        patch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        with pytest.raises(OSError):
            ledger.submit("q2", NO_ERRORS["q2"])
    ledger.submit("q3", NO_ERRORS["q3"])  # must not be glued to the fragment of q2
    lines = output.read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b"" and not lines[1].endswith(b"}")
    reloaded = journal(output, items)
    assert reloaded.annotated_flags() == [True, False, True, False]
    (warning,) = reloaded.warnings
    assert warning.startswith(f"{output}:2: ignoring a broken line")


def write_journal(output, items_path, ids):
    ledger = journal(output, items_path)
    for item_id in ids:
        ledger.submit(item_id, NO_ERRORS[item_id])
    return output.read_bytes().splitlines(keepends=True)


def test_torn_lines_anywhere_are_skipped_with_their_line_number(tmp_path, items, caplog):
    output = tmp_path / "annotations.jsonl"
    q1, q2, q3 = write_journal(output, items, ["q1", "q2", "q3"])
    # A crash tore q2 in the middle of a UTF-8 character, a later session closed that line and appended q3,
    # and a last crash left the first bytes of a line.
    cut = q2.index("—".encode()) + 1
    output.write_bytes(q1 + q2[:cut] + b"\n" + q3 + q2[:7])
    reloaded = journal(output, items)
    assert reloaded.annotated_flags() == [True, False, True, False]
    assert [w.split(" of ")[0] for w in reloaded.warnings] == [
        f"{output}:2: ignoring a broken line",
        f"{output}:4: ignoring an incomplete last line",
    ]
    with caplog.at_level(logging.WARNING, logger="finegrained.app.store"):
        records, _ = latest_records(output, SCHEMA)
    assert [r["id"] for r in records] == ["q1", "q3"]
    assert f"{output}:2:" in caplog.text and f"{output}:4:" in caplog.text
    written, _ = export(output, tmp_path / "clean.jsonl", SCHEMA)
    assert written[0][1] == 2


def test_a_record_glued_to_a_torn_fragment_is_recovered(tmp_path, items):
    """What earlier versions wrote after a failed append: the next acknowledged line joined the fragment."""
    output = tmp_path / "annotations.jsonl"
    q1, q2, q3 = write_journal(output, items, ["q1", "q2", "q3"])
    output.write_bytes(q1 + q2[: len(q2) // 2] + q3)
    reloaded = journal(output, items)
    assert reloaded.annotated_flags() == [True, False, True, False]
    (warning,) = reloaded.warnings
    assert warning.startswith(f"{output}:2: ignoring a broken line of {len(q2) // 2} bytes")
    assert "keeping the whole record after it" in warning


def test_a_line_that_is_no_journal_line_is_still_an_error(tmp_path, items):
    output = tmp_path / "annotations.jsonl"
    (q1,) = write_journal(output, items, ["q1"])
    output.write_bytes(q1 + b"this is not an annotation journal\n")
    with pytest.raises(InputError, match=f"{output}:2: malformed JSON"):
        journal(output, items)
