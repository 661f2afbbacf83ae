"""Small file helpers: atomic writes (temp file, then rename) and JSON Lines.

Every write goes through ``atomic_write_text`` or ``atomic_directory``: a full disk there is a
``DiskFullError`` ("no space left on device while writing PATH", nothing half-written left behind), and
``remove_stale_temporaries`` clears what a killed process left (only our own temporary names).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import FinegrainedError


#: the names ``tempfile.mkstemp`` / ``mkdtemp`` give our temporaries: ``.{final name}.{8 random chars}.tmp``
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
#: where ``atomic_directory`` parks the old version while it swaps in the new one
_OLD = re.compile(r"^\.(?P<name>.+)\.old$")
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(FinegrainedError):
    """No space left on device while writing ``path`` (what was being written is removed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(f"no space left on device while writing {self.path}; nothing of it was kept "
                         "(earlier versions are untouched): free some space and run again")


def is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC / EDQUOT however it arrives: an ``OSError``, or a library error that only says so in
    its message (safetensors' ``SafetensorError ... No space left on device (os error 28)``)."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def destination_of(path: str | Path) -> Path:
    """The path a temporary of ``atomic_directory`` / ``atomic_write_text`` will be renamed to (``path`` itself
    for any other path; a path inside a temporary directory maps to the same place inside its destination)."""
    path = Path(path)
    for i, part in enumerate(path.parts):
        m = _TEMPORARY.match(part)
        if m:
            return Path(*path.parts[:i], m.group("name"), *path.parts[i + 1 :])
    return path


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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(e):
            raise DiskFullError(destination_of(path)) from None
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

    A crash inside the block leaves ``final_dir`` untouched (an older complete version, or nothing); a full
    disk raises ``DiskFullError`` naming ``final_dir``.
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise DiskFullError(destination_of(final_dir)) from None
        raise


def remove_stale_temporaries(parent: str | Path, names: str) -> list[Path]:
    """Clear what a killed ``atomic_directory`` / ``atomic_write_text`` left in ``parent``, for destinations
    whose name fully matches the regex ``names`` (only our own temporary names, only in ``parent``).

    ``.{name}.XXXXXXXX.tmp`` is removed; ``.{name}.old`` (a kill between the two renames of a swap) is put back
    as ``name`` when ``name`` is missing, removed otherwise. Returns the paths removed or restored.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    wanted = re.compile(names)
    cleared = []
    for entry in sorted(parent.iterdir()):
        temporary, old = _TEMPORARY.match(entry.name), _OLD.match(entry.name)
        match = temporary or old
        if not match or not wanted.fullmatch(match.group("name")):
            continue
        final = parent / match.group("name")
        if old and not final.exists():
            os.replace(entry, final)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        cleared.append(entry)
    return cleared


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
