"""Nested-dict <-> flat `"a/b/c"` path helpers for parameter trees (no JAX import)."""
from __future__ import annotations

from typing import Any, Mapping


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": x}}` -> `{"a/b": x}` (only dicts are descended into)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + str(key)] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """`{"a/b": x}` -> `{"a": {"b": x}}`."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree
