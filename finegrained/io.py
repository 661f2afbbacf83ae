"""Small file helpers: atomic writes (temp file, then rename) and JSON Lines."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line; raises ``json.JSONDecodeError``."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                yield line_number, json.loads(line)


@contextlib.contextmanager
def atomic_directory(final_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final_dir`` in one rename.

    A crash inside the block leaves ``final_dir`` untouched (an older complete version, or nothing).
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        yield tmp
        if final_dir.exists():
            if not overwrite:
                raise FileExistsError(f"{final_dir} already exists")
            old = final_dir.with_name(f".{final_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_string_records(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """JSONL objects whose ``required`` fields are strings (prompt/completion pairs, prompts to sample).
    Every problem is reported as ``FILE:LINE: field: message`` in one ``InputError``."""
    from .errors import InputError, Problem

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    records, problems = [], []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(Problem(str(path), line_number, f"not valid JSON: {e.msg}"))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(str(path), line_number, "each line must be a JSON object"))
                continue
            bad = [key for key in required if not isinstance(obj.get(key), str)]
            problems += [Problem(str(path), line_number, "must be a string", field=key) for key in bad]
            if not bad:
                records.append({**obj, "_line": line_number})
    if not records and not problems:
        problems.append(Problem(str(path), None, f"empty file: no records with {', '.join(required)}"))
    if problems:
        raise InputError(problems[:50])
    return records
