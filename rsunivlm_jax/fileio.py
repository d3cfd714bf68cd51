"""Atomic file writes and a JSONL reader that survives a torn last line.

A file that a later step trusts is written to a temporary name in the same directory, flushed
and fsync'ed, then renamed over the target with `os.replace` (atomic on POSIX): a crash leaves
either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` through a temporary file in the same directory and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` of `text` encoded (UTF-8 by default)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **kwargs) -> Path:
    """`obj` as JSON (with a final newline), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any], **kwargs) -> Path:
    """One JSON object per line (UTF-8, ``ensure_ascii=False``), written atomically."""
    kwargs.setdefault("ensure_ascii", False)
    return atomic_write_text(path, "".join(json.dumps(r, **kwargs) + "\n" for r in rows))


def read_jsonl_tolerant(path: str | os.PathLike) -> tuple[list[Any], int]:
    """Rows of a JSONL file written by appending, and how many torn last lines were dropped.

    A process killed mid-append leaves a last line without its newline (or with invalid JSON):
    that line is dropped with a warning. A bad line anywhere else is corruption, not a torn
    append, and raises ValueError naming the file and line.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the final newline
    rows, dropped = [], 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if i == len(lines) - 1:
                log.warning("%s: dropping a torn last line %d (%s)", path, i + 1, e)
                dropped += 1
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from None
    return rows, dropped
