"""Nested spec mappings as dotted keys."""

from __future__ import annotations

from typing import Any, Collection, Mapping


def flatten(tree: Mapping, prefix: str = "", *, whole: Collection[str] = ()) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}. Lists of scalars are values, lists of mappings are indexed ("a.0.b"). With
    `whole`, a mapping that is empty or sits under a key named in `whole` is one value (a key of its own) instead of
    being descended into (TAO's schema dump: `backend_kwargs: {}` is a key users set)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and not (whole and (not v or k in whole)):
            out.update(flatten(v, path + ".", whole=whole))
        elif isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{path}.{i}.", whole=whole))
        else:
            out[path] = v
    return out
