"""Atomic writes never leave half a file or half a directory behind."""

from __future__ import annotations

import json

import pytest

from finegrained.io import atomic_directory, atomic_write_json, atomic_write_jsonl, read_jsonl


def test_atomic_write_json_and_jsonl_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"k": "ü😀"})
    assert json.loads((tmp_path / "a" / "x.json").read_text(encoding="utf-8")) == {"k": "ü😀"}
    atomic_write_jsonl(tmp_path / "r.jsonl", [{"i": 1}, {"i": 2}])
    assert [r for _, r in read_jsonl(tmp_path / "r.jsonl")] == [{"i": 1}, {"i": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "r.jsonl"]  # no temp files left


def test_atomic_directory_failure_keeps_old_version(tmp_path):
    final = tmp_path / "model"
    with atomic_directory(final) as d:
        (d / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final, overwrite=True) as d:
            (d / "w.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert (final / "w.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_refuses_to_overwrite_unless_asked(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    with pytest.raises(FileExistsError):
        with atomic_directory(final) as d:
            (d / "w.txt").write_text("v2")
    with atomic_directory(final, overwrite=True) as d:
        (d / "w.txt").write_text("v2")
    assert (final / "w.txt").read_text() == "v2"
