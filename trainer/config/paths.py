"""Path-typed spec values are resolved once, at load time, against the directory the user ran the command from.

Contract: `resolve_paths(tree, base)` rewrites, in place, every relative path value of a plain spec tree into an
absolute one under `base` (default: the current working directory), and returns the dotted keys it changed. A value is
path-typed when its key's leaf name is in `PATH_LEAVES` (any section, any list item), so TAO keys that name a file
are covered wherever they sit. Empty strings and None mean "no path" and stay as they are; URIs (`s3://...`,
`http://...`) stay as they are; `sqlite:///relative.db` tracking URIs get an absolute database path. Absolute paths
are unchanged, so resolving an already resolved spec (a search trial, a DDP rank, another node) changes nothing.
Paths written *inside* annotation files are not spec values: they keep resolving against the annotation file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

# leaf key names whose value is a filesystem path (TAO's names and ours)
PATH_LEAVES: frozenset[str] = frozenset({
    "results_dir", "data_file", "data_root", "pretrained_path", "depth_anything_v2_pretrained_path",
    "edgenext_pretrained_path", "resume_training_checkpoint_path", "pretrained_model_path", "checkpoint",
    "trt_engine", "onnx_file", "timing_cache", "search_space", "storage_path", "cal_cache_file", "cal_image_dir",
    "cal_data_file", "model_path", "images_dir", "frame_cache_dir",
})
# leaf key names whose value is a URI that may hold a relative sqlite path
URI_LEAVES: frozenset[str] = frozenset({"tracking_uri"})
_SQLITE = "sqlite:///"


def absolute(value: str, base: Path) -> str:
    """`value` as an absolute, normalised path under `base` (`~` expanded); URIs are returned unchanged."""
    if "://" in value:
        return value
    path = Path(os.path.expanduser(value))
    return os.path.normpath(path if path.is_absolute() else base / path)


def absolute_uri(value: str, base: Path) -> str:
    """A tracking URI with a relative sqlite database made absolute; other URIs unchanged."""
    if value.startswith(_SQLITE) and not value[len(_SQLITE):].startswith("/"):
        return _SQLITE + absolute(value[len(_SQLITE):], base)
    return value


def resolve_paths(tree: Any, base: Optional[Path] = None, prefix: str = "") -> list[str]:
    """Make every relative path value of `tree` absolute under `base` (default: cwd); return the keys changed."""
    base = Path.cwd() if base is None else base
    changed: list[str] = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            changed += resolve_paths(value, base, dotted + ".")
            continue
        if not isinstance(value, str) or not value.strip():
            continue
        leaf = str(key)
        new = absolute(value, base) if leaf in PATH_LEAVES else \
            absolute_uri(value, base) if leaf in URI_LEAVES else value
        if new != value:
            tree[key] = new
            changed.append(dotted)
    return changed
