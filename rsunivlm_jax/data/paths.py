"""Paths taken from data (records, manifests, native annotations) confined to their declared root.

Every relative path read from a data file goes through `resolve_inside(root, rel, ...)`: absolute
paths, drive letters, ``..`` components and NUL bytes are refused, and the joined path is resolved
(symlinks followed) and must still lie inside the resolved root. Paths a converter writes go through
the same check against its output directory. Names derived from data that become one file-name
component (class names as mask file names) go through `file_component`.

Errors are `DataError` (a `ValueError`) naming the file, the record (index or id) and the field.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SEP_RE = re.compile(r"[\\/]+")
_UNSAFE_COMPONENT_RE = re.compile(r"(?:[^\w.-]|\.{2,})+")


class DataError(ValueError):
    """Bad input data, named by file, record (index or id) and field; `reason` is a short key."""

    def __init__(self, detail: str, *, file: Any = None, record: Any = None, field: str | None = None,
                 reason: str = "bad_data"):
        self.detail, self.file, self.record, self.field, self.reason = detail, file, record, field, reason
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__((": ".join(where) + ": " if where else "") + detail)


def check_relative(rel: Any, *, what: str = "path", **where) -> str:
    """`rel` if it is a non-empty relative path string without ``..`` components; else DataError."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise DataError(f"{what} {rel!r} is empty or not a string", reason="bad_path", **where)
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or _DRIVE_RE.match(rel):
        raise DataError(f"{what} {rel!r} is absolute", reason="path_outside_root", **where)
    if ".." in _SEP_RE.split(rel):
        raise DataError(f"{what} {rel!r} contains '..'", reason="path_outside_root", **where)
    return rel


def resolve_inside(root: str | os.PathLike, rel: Any, *, what: str = "path", **where) -> Path:
    """``root / rel`` resolved (symlinks followed), refused unless it lies inside the resolved root.

    `where`: ``file=``, ``record=``, ``field=`` for the error message.
    """
    check_relative(rel, what=what, **where)
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise DataError(f"{what} {rel!r} resolves outside {base} (through a symlink)",
                        reason="path_outside_root", **where)
    return full


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when `path` (resolved, symlinks followed) lies inside the resolved `root`."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def child_inside(root: str | os.PathLike, path: str | os.PathLike, *, what: str = "path", **where) -> Path:
    """A path found by listing `root` (e.g. a file in a dataset folder), refused when it is a
    symlink leading outside the resolved `root`; returns the resolved path."""
    base = Path(root).resolve()
    full = Path(path).resolve()
    if not full.is_relative_to(base):
        raise DataError(f"{what} {str(path)!r} resolves outside {base} (through a symlink)",
                        reason="path_outside_root", **where)
    return full


def file_component(name: Any, *, what: str = "name", **where) -> str:
    """One safe file-name component derived from a data value (e.g. a class name used in a mask
    file name): runs of characters other than letters, digits, ``_``, ``.`` and ``-`` (and runs of
    two or more dots) become one ``_``; leading / trailing dots and ``_`` are dropped. DataError
    when nothing usable is left."""
    if not isinstance(name, str):
        raise DataError(f"{what} {name!r} is not a string", reason="bad_path", **where)
    out = re.sub("_+", "_", _UNSAFE_COMPONENT_RE.sub("_", name)).strip("._")
    if not out:
        raise DataError(f"{what} {name!r} gives no usable file name", reason="bad_path", **where)
    return out
