"""`convert`: build annotation files from a folder tree with TAO depth_net's semantics, plus checks TAO lacks.

TAO semantics: walk `data_root` recursively; an image is a file whose path contains every substring of
`image_dir_pattern` and ends with `image_extension` (a suffix such as `jpg`, `.png` or KITTI's `_10.png`; TAO's
defaults `jpg` / `png`, no dot needed); its depth file is derived by replacing every `image_dir_pattern[i]` with
`depth_dir_pattern[i]` and the `image_extension` ending with `depth_extension`. `split_ratio` 0 or 1 writes one
`test.txt`; otherwise `int(split_ratio * n)` shuffled pairs (truncated, as TAO counts) go to `train.txt`, the rest
to `val.txt`.

Added checks and choices (TAO has none of them):
- the split keeps scenes whole (`split_by: folder`, the default): the frames of one folder below `data_root` (a
  scene or sequence folder: NYU's `basement_0001a/`, `automl synth`'s `scene_000/`) all go to train or all to val,
  so validation never sees a room it trained on; whole folders are shuffled and the cut falls where the train
  count comes nearest to `int(split_ratio * n)`. When every image lies in one folder (KITTI's `image_2/`) there
  is no scene to keep apart and pairs are shuffled one by one, as TAO does; `split_by: pair` always does that;
- the shuffle is seeded (`seed`), so a split can be reproduced;
- a file whose path contains the depth patterns is never taken as an image;
- patterns are matched and replaced in the path below `data_root`, so a `data_root` that happens to contain a
  pattern does not change the result; only the extension at the end of a path is swapped (TAO replaces it
  anywhere in the path);
- every derived depth path is checked: missing ones are reported (count and up to 5 examples) and are an error,
  unless `allow_missing_depth: true`, which drops those images and says how many;
- an empty `depth_extension` keeps the image's extension;
- image patterns beyond the depth patterns only select images (TAO would fail on the missing pair);
- with no `depth_dir_pattern`, image-only lines are written (inference lists);
- paths containing whitespace (which the annotation format cannot hold) are an error.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from trainer.config.loader import build_config, load_config
from trainer.data.annotations import write_annotation_file
from trainer.errors import DataError, SpecProblem

logger = logging.getLogger(__name__)  # (`log` is convert's parameter: where its report lines go)

_MAX_EXAMPLES = 5


@dataclass
class ConvertConfig:
    """The convert spec (TAO key names). Paths are used as given (relative to the working directory)."""

    data_root: str = ""
    results_dir: str = ""
    image_dir_pattern: List[str] = field(default_factory=list)
    depth_dir_pattern: List[str] = field(default_factory=list)
    image_extension: str = "jpg"  # TAO's default; a suffix: jpg, .png, _10.png
    depth_extension: str = "png"  # TAO's default
    split_ratio: float = 0.0  # 0 or 1: test.txt only; otherwise the train fraction, truncated (the rest is val)
    seed: int = 0  # (ours) shuffle seed for the train/val split
    split_by: str = "folder"  # (ours) folder: a scene folder's frames stay in one split; pair: TAO's per-pair shuffle
    allow_missing_depth: bool = False  # (ours) drop images whose derived depth file is missing
    # TAO stereo keys: accepted, unused
    right_dir_pattern: List[str] = field(default_factory=list)
    nocc_dir_pattern: List[str] = field(default_factory=list)
    nocc_extension: str = ""
    nocc_mask_dir_name: str = ""


SPLIT_BY = ("folder", "pair")
UNUSED_CONVERT_KEYS = ("right_dir_pattern", "nocc_dir_pattern", "nocc_extension", "nocc_mask_dir_name")


@dataclass(frozen=True)
class ConvertResult:
    """Files written (by split name: train/val or test), sample counts, and images dropped for missing depth."""

    files: dict[str, Path]
    counts: dict[str, int]
    dropped_missing_depth: int = 0

    def summary(self) -> str:
        """What was written, for people."""
        lines = [f"convert: {sum(self.counts.values())} samples"]
        lines += [f"  {name}: {path} ({self.counts[name]} samples)" for name, path in self.files.items()]
        if self.dropped_missing_depth:
            lines.append(f"  dropped (no depth file): {self.dropped_missing_depth}")
        return "\n".join(lines)


def _validate(cfg: DictConfig, origin_of: Callable[[str], Optional[str]]) -> list[SpecProblem]:
    P: list[SpecProblem] = []

    def bad(key: str, msg: str) -> None:
        P.append(SpecProblem(key, msg, origin_of(key)))

    if not cfg.data_root:
        bad("data_root", "empty; expected the folder whose sub-folders hold the images and depth files")
    elif not Path(cfg.data_root).is_dir():
        bad("data_root", f"folder not found: {cfg.data_root}")
    if not cfg.results_dir:
        bad("results_dir", "empty; expected the folder where train.txt/val.txt (or test.txt) are written")
    if not cfg.image_dir_pattern or any(not str(p) for p in cfg.image_dir_pattern):
        bad("image_dir_pattern", f"found {list(cfg.image_dir_pattern)}; expected a list of non-empty substrings "
                                 f"that image paths contain, e.g. [rgb_]")
    if any(not str(p) for p in cfg.depth_dir_pattern):
        bad("depth_dir_pattern", f"found {list(cfg.depth_dir_pattern)}; expected non-empty substrings, e.g. "
                                 f"[sync_depth_]")
    if cfg.depth_dir_pattern and cfg.depth_extension and not cfg.image_extension:
        bad("depth_extension", f"found {cfg.depth_extension!r} with an empty image_extension; expected "
                               f"image_extension too (depth_extension replaces it in the derived path)")
    if cfg.image_dir_pattern and cfg.depth_dir_pattern and \
            list(cfg.image_dir_pattern)[:len(cfg.depth_dir_pattern)] == list(cfg.depth_dir_pattern) and \
            (cfg.image_extension or "") == (cfg.depth_extension or ""):
        bad("depth_dir_pattern", f"found the same patterns as image_dir_pattern ({list(cfg.depth_dir_pattern)}) "
                                 f"and the same extension: every depth path would be the image itself")
    if len(cfg.depth_dir_pattern) > len(cfg.image_dir_pattern):
        bad("depth_dir_pattern", f"found {len(cfg.depth_dir_pattern)} patterns for {len(cfg.image_dir_pattern)} "
                                 f"image_dir_pattern entries; expected at most one depth pattern per image pattern "
                                 f"(depth_dir_pattern[i] replaces image_dir_pattern[i])")
    if cfg.split_by not in SPLIT_BY:
        bad("split_by", f"found {cfg.split_by!r}; expected one of {', '.join(SPLIT_BY)} (folder: the frames of one "
                        f"folder below data_root stay in one split; pair: every pair shuffled on its own, as TAO)")
    if not 0.0 <= cfg.split_ratio <= 1.0:
        bad("split_ratio", f"found {cfg.split_ratio}; expected 0 or 1 (test.txt only) or a train fraction in "
                           f"(0, 1), e.g. 0.8")
    return P


def build_convert_config(raw: Optional[Mapping] = None, overrides: Sequence[str] = (), *,
                         source: Optional[str] = None) -> DictConfig:
    """Validate a convert spec given as a mapping (plus dotted overrides); all problems in one SpecError."""
    return build_config(ConvertConfig, raw, overrides, source=source, validate=_validate)


def load_convert_spec(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read and validate a convert spec YAML file (plus `key=value` overrides)."""
    return load_config(ConvertConfig, path, overrides, validate=_validate)


def _as_config(cfg: ConvertConfig | DictConfig | Mapping) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    if isinstance(cfg, ConvertConfig):
        return build_convert_config(OmegaConf.to_container(OmegaConf.structured(cfg)))  # type: ignore[arg-type]
    return build_convert_config(cfg)


def _ext(value: Optional[str]) -> str:
    """An extension as a path ending: `png` -> `.png` (TAO's spelling, matched as `endswith`); `.png` and suffixes
    such as KITTI's `_10.png` stay as given."""
    value = value or ""
    return "." + value if value[:1].isalnum() else value


def derive_depth_path(image: str, image_patterns: Sequence[str], depth_patterns: Sequence[str]) -> str:
    """TAO's derivation: every `image_patterns[i]` replaced by `depth_patterns[i]` (pairs beyond the shorter list:
    the image pattern only selects)."""
    for old, new in zip(image_patterns, depth_patterns):
        image = image.replace(old, new)
    return image


def _swap_suffix(text: str, old: str, new: str) -> str:
    return text[: len(text) - len(old)] + new if old and text.endswith(old) else text


def convert(cfg: ConvertConfig | DictConfig | Mapping, *, log: Optional[Callable[[str], None]] = None) -> ConvertResult:
    """Walk `data_root`, pair images with depth files, write the annotation files; return what was written."""
    log = log or logger.info  # the report lines: logged (the CLI shows them), or to the caller's function
    c = _as_config(cfg)
    for key in UNUSED_CONVERT_KEYS:
        if c[key]:
            logger.warning(f"notice: '{key}' is a TAO stereo key that depth_net_mono convert does not use; ignored")
    root = Path(c.data_root).resolve()
    img_pats = [str(p) for p in c.image_dir_pattern]
    dep_pats = [str(p) for p in c.depth_dir_pattern]
    img_ext, dep_ext = _ext(c.image_extension), _ext(c.depth_extension)

    files = sorted(p for p in root.rglob("*") if p.is_file())
    rels = [p.relative_to(root).as_posix() for p in files]
    matching = [r for r in rels if all(s in r for s in img_pats) and (not img_ext or r.endswith(img_ext))]
    # a depth file can match the image patterns (e.g. [training] -> [training]); the depth-only patterns tell
    depth_only = [d for d, i in zip(dep_pats, img_pats) if d not in i]
    depth_like = [r for r in matching if depth_only and all(d in r for d in depth_only)]
    taken_as_depth = set(depth_like)
    images = [r for r in matching if r not in taken_as_depth]
    if not images:
        raise DataError(_no_images_message(root, img_pats, img_ext, len(files), rels, depth_like, dep_pats))

    pairs: list[tuple[Path, Optional[Path]]] = []
    missing: list[tuple[str, str]] = []
    for r in images:
        if not dep_pats:
            pairs.append((root / r, None))
            continue
        d = derive_depth_path(r, img_pats, dep_pats)
        if dep_ext:  # no depth_extension: depth files share the image's extension
            d = _swap_suffix(d, img_ext, dep_ext)
        if (root / d).is_file():
            pairs.append((root / r, root / d))
        else:
            missing.append((r, d))
    if missing:
        examples = "\n".join(f"  {root / r} -> {root / d} (not found)" for r, d in missing[:_MAX_EXAMPLES])
        more = f"\n  ... and {len(missing) - _MAX_EXAMPLES} more" if len(missing) > _MAX_EXAMPLES else ""
        swaps = ", ".join(f"{i!r} -> {d!r}" for i, d in zip(img_pats, dep_pats))
        head = (f"convert: {len(missing)} of {len(images)} images have no depth file at the derived path "
                f"(image_dir_pattern -> depth_dir_pattern: {swaps}; "
                f"image_extension {img_ext!r} -> depth_extension {dep_ext!r}):\n{examples}{more}")
        if not pairs:
            raise DataError(head + "\nno image has a depth file: check depth_dir_pattern and depth_extension")
        if not c.allow_missing_depth:
            raise DataError(head + "\nexpected every image to have its depth file; set allow_missing_depth: true "
                                   "to drop these images")
        log(head + f"\nallow_missing_depth: {len(missing)} images dropped")

    spaced = [str(p) for pair in pairs for p in pair if p is not None and any(ch.isspace() for ch in str(p))]
    if spaced:
        raise DataError(f"convert: {len(spaced)} paths contain whitespace, which annotation files (whitespace-"
                        f"separated columns) cannot hold; rename them. Examples: "
                        + ", ".join(repr(p) for p in spaced[:_MAX_EXAMPLES]))
    results = Path(c.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    ratio = float(c.split_ratio)
    if ratio in (0.0, 1.0):
        splits = {"test": pairs}
    else:
        groups = split_groups(pairs, root, str(c.split_by))
        splits = split_train_val(groups, ratio, int(c.seed))
        if len(groups) < len(pairs):
            log(f"convert: split by folder: {len(groups)} folders, "
                f"{_count_groups(groups, splits['train'])} in train, {_count_groups(groups, splits['val'])} in val "
                f"(no folder in both)")
    written: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for name, rows in splits.items():
        if not rows:
            log(f"convert: {name} split is empty ({len(pairs)} sample(s) in all); {name}.txt not written")
            continue
        path = results / f"{name}.txt"
        counts[name] = write_annotation_file(path, rows, relative=False)
        written[name] = path
    kind = "image depth" if dep_pats else "image only"
    log("convert: wrote " + ", ".join(f"{p} ({counts[k]} samples)" for k, p in written.items())
        + f" [{kind}; {len(pairs)} pairs from {root}]")
    return ConvertResult(written, counts, len(missing) if c.allow_missing_depth else 0)


Pair = tuple[Path, Optional[Path]]


def split_groups(pairs: Sequence[Pair], root: Path, split_by: str) -> list[list[Pair]]:
    """The units a split moves whole, in the order of `pairs` (sorted paths): with `split_by` 'folder', the pairs
    whose image lies in one folder below `root` (one scene or sequence), unless every image shares one folder;
    otherwise (or with 'pair') one unit per pair."""
    if split_by == "folder":
        by_folder: dict[Path, list[Pair]] = {}
        for pair in pairs:
            by_folder.setdefault(pair[0].parent.relative_to(root), []).append(pair)
        if len(by_folder) > 1:
            return list(by_folder.values())
    return [[pair] for pair in pairs]


def split_train_val(groups: Sequence[Sequence[Pair]], ratio: float, seed: int) -> dict[str, list[Pair]]:
    """Shuffle the groups (seeded) and cut where the train count comes nearest to TAO's `int(ratio * n)` (the
    earlier cut on a tie), leaving both splits at least one group when that count lies strictly between 0 and n.
    One pair per group gives TAO's split exactly: the first `int(ratio * n)` shuffled pairs."""
    shuffled = list(groups)
    random.Random(seed).shuffle(shuffled)
    target = int(ratio * sum(len(g) for g in groups))  # TAO's count: truncated
    cumulative = [0]
    for g in shuffled:
        cumulative.append(cumulative[-1] + len(g))
    n = cumulative[-1]
    cuts = range(1, len(shuffled)) if 0 < target < n and len(shuffled) > 1 else range(len(cumulative))
    cut = min(cuts, key=lambda k: abs(cumulative[k] - target))
    train = sorted(p for g in shuffled[:cut] for p in g)
    val = sorted(p for g in shuffled[cut:] for p in g)
    return {"train": train, "val": val}


def _count_groups(groups: Sequence[Sequence[Pair]], rows: Sequence[Pair]) -> int:
    """How many of `groups` have their pairs in `rows`."""
    taken = set(rows)
    return sum(1 for g in groups if g[0] in taken)


def _no_images_message(root: Path, pats: list[str], ext: str, n_files: int, rels: list[str],
                       depth_like: list[str], dep_pats: list[str]) -> str:
    msg = (f"convert: no image found under {root}: expected files whose path (below data_root) contains "
           f"{' and '.join(repr(p) for p in pats)}" + (f" and ends with {ext!r}" if ext else "")
           + f"; found {n_files} files")
    if depth_like:
        msg += (f", of which {len(depth_like)} match but also contain the depth pattern {dep_pats[0]!r} and were "
                f"taken as depth files")
    if rels:
        msg += ". Examples: " + ", ".join(rels[:_MAX_EXAMPLES])
    if ext and any(r.lower().endswith(ext.lower()) for r in rels) and not any(r.endswith(ext) for r in rels):
        msg += f". Note: extensions are case-sensitive ({ext!r})"
    return msg
