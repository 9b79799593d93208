"""Annotation files: the TAO depth_net list format, one sample per line.

```
# comment lines and blank lines are allowed
images/0001.jpg depth/0001.png     <image> <depth>   (training, evaluation)
images/0002.jpg                    <image>           (inference)
```

Columns are separated by whitespace, so a path cannot contain spaces (the TAO format has no quoting).
Relative paths are resolved against the folder of the annotation file, so a dataset folder with its lists can be
moved as a whole. Every problem is reported with `file:line`, what was found and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from trainer.errors import DataError

_MAX_LISTED = 5  # missing files listed by name in one error; the rest are counted


@dataclass(frozen=True)
class Sample:
    """One annotation line: an image, its ground truth (None for image-only lines) and where it was read."""

    image: Path
    depth: Optional[Path]
    line: int  # 1-based line number in `source`
    source: Path  # the annotation file

    @property
    def where(self) -> str:
        """`annotations.txt:12`, for messages."""
        return f"{self.source}:{self.line}"


def _resolve(token: str, base: Path) -> Path:
    p = Path(token).expanduser()
    return p if p.is_absolute() else base / p


def read_annotation_file(path: str | Path, require_depth: bool = False, *, check_files: bool = True) -> list[Sample]:
    """Read an annotation file into samples.

    `require_depth`: every line must have a depth column (training/evaluation lists); otherwise the depth column
    is optional (inference). `check_files`: raise `DataError` when an image or depth file does not exist (listing
    up to 5 with their line numbers and the total count); pass False to let the caller decide (e.g. skip them).
    """
    src = Path(path)
    if not src.is_file():
        what = "a folder" if src.is_dir() else "nothing"
        raise DataError(f"annotation file not found: {src} (found {what} at that path; expected a text file with "
                        f"one '<image> <depth>' or '<image>' per line)")
    try:
        text = src.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{src}: not a text annotation file (byte {exc.start} is not UTF-8); expected one "
                        f"'<image> <depth>' or '<image>' per line") from None
    base = src.resolve().parent
    samples: list[Sample] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split()
        if len(cols) > 2:
            raise DataError(
                f"{src}:{number}: found {len(cols)} columns ({_clip(line)!r}); expected '<image> <depth>' or "
                f"'<image>'. Columns are separated by whitespace, so paths containing spaces are not supported by "
                f"this (TAO) format: rename or symlink such files")
        if require_depth and len(cols) < 2:
            raise DataError(f"{src}:{number}: found only an image path ({_clip(line)!r}); expected "
                            f"'<image> <depth>': this split needs ground-truth depth on every line")
        image = _resolve(cols[0], base)
        depth = _resolve(cols[1], base) if len(cols) == 2 else None
        samples.append(Sample(image=image, depth=depth, line=number, source=src))
    if not samples:
        raise DataError(f"{src}: no samples (found only blank or comment lines); expected one '<image> <depth>' "
                        f"or '<image>' per line")
    if check_files:
        missing = missing_files(samples)
        if missing:
            raise DataError(describe_missing(src, missing))
    return samples


def missing_files(samples: Iterable[Sample]) -> list[tuple[Sample, str, Path]]:
    """(sample, "image"|"depth", path) for every referenced file that does not exist."""
    out: list[tuple[Sample, str, Path]] = []
    for s in samples:
        if not s.image.is_file():
            out.append((s, "image", s.image))
        if s.depth is not None and not s.depth.is_file():
            out.append((s, "depth", s.depth))
    return out


def describe_missing(source: Path, missing: Sequence[tuple[Sample, str, Path]]) -> str:
    """A message listing up to 5 missing files with their annotation lines, and how many in all."""
    n = len(missing)
    lines = [f"{source}: {n} referenced file{'s' if n != 1 else ''} not found (expected existing files; relative "
             f"paths are resolved against {source.resolve().parent}):"]
    for s, kind, p in missing[:_MAX_LISTED]:
        lines.append(f"  {source}:{s.line}: {kind} file not found: {p}")
    if n > _MAX_LISTED:
        lines.append(f"  ... and {n - _MAX_LISTED} more")
    return "\n".join(lines)


def write_annotation_file(path: str | Path, rows: Iterable[tuple[Path, Optional[Path]]], *,
                          relative: bool = False) -> int:
    """Write `(image, depth|None)` rows; return the number of lines written.

    `relative`: write paths relative to the annotation file's folder (portable dataset folders); otherwise absolute.
    Paths containing whitespace cannot be represented in this format and raise `DataError`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.resolve().parent
    lines: list[str] = []
    for image, depth in rows:
        cols = []
        for p in (image, depth) if depth is not None else (image,):
            p = Path(p).resolve()
            text = p.relative_to(base).as_posix() if relative and p.is_relative_to(base) else str(p)
            if any(c.isspace() for c in text):
                raise DataError(f"cannot write {out}: path {text!r} contains whitespace, which the annotation "
                                f"format (whitespace-separated columns) cannot represent; rename the file")
            cols.append(text)
        lines.append(" ".join(cols))
    out.write_text("".join(f"{line}\n" for line in lines))
    return len(lines)


def _clip(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
