"""A node-wide cache of decoded frames, shared by every process that trains on the same annotation file.

Contract: `FrameCache.open_or_build(folder, key, count, read, sizes, ...)` returns a read-only cache of `count`
frames, each the `(rgb uint8 [H, W, 3], target float32 [h, w], valid bool [h, w])` that `read(i)` returns, or None
when the frames would not fit (`max_bytes`, or the folder's free space). The first process to ask builds the file
(decoding with a few threads) under an exclusive lock and renames it into place, so a reader never sees a partial
file; the others wait for the lock and memory-map what it wrote. A frame that `read` could not produce (it raised
`DataError`) is not cached: `get(i)` returns None for it and the caller reads the files as before, so bad-sample
handling does not change. A file that is unreadable, truncated or written for another key is logged, removed and
built again. `get(i)` returns fresh writable copies: a cached frame gives exactly the arrays `read(i)` gave, and
augmentation on top of it draws the same random numbers as before.

File layout (`frames-<key>.bin`): 8 bytes magic, 8 bytes header length (little-endian), a JSON header (`key`,
`count`, `data_bytes`, `entries`: `[offset, h, w]` or null per frame), padding to 64 bytes, then per cached frame
rgb, target and valid at 64-byte aligned offsets.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import mmap
import os
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from trainer.errors import DataError

log = logging.getLogger(__name__)

MAGIC = b"DAFRAME1"
ALIGN = 64
BUILD_CHUNK = 64  # frames decoded at a time while building
Frame = tuple[np.ndarray, np.ndarray, np.ndarray]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def frame_bytes(h: int, w: int) -> int:
    """Bytes one h x w frame takes in the file (each array 64-byte aligned)."""
    return _aligned(h * w * 3) + _aligned(h * w * 4) + _aligned(h * w)


class FrameCache:
    """Read-only view of one cache file; the memory map is opened lazily in each process (after a fork or a
    pickle), so DataLoader workers share the page cache instead of copying the frames."""

    def __init__(self, path: Path, entries: Sequence[Optional[Sequence[int]]], data_start: int):
        self.path = Path(path)
        self.entries = [tuple(e) if e is not None else None for e in entries]
        self.data_start = int(data_start)
        self._map: Optional[mmap.mmap] = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_map"] = None
        return state

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def cached(self) -> int:
        """How many frames the file holds."""
        return sum(e is not None for e in self.entries)

    def _buffer(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def get(self, i: int) -> Optional[Frame]:
        """Copies of frame `i` (rgb, target, valid), or None when it is not cached."""
        entry = self.entries[i]
        if entry is None:
            return None
        offset, h, w = entry
        buf, at = self._buffer(), self.data_start + offset
        rgb = np.frombuffer(buf, np.uint8, h * w * 3, at).reshape(h, w, 3).copy()
        at += _aligned(h * w * 3)
        target = np.frombuffer(buf, np.float32, h * w, at).reshape(h, w).copy()
        at += _aligned(h * w * 4)
        valid = np.frombuffer(buf, np.bool_, h * w, at).reshape(h, w).copy()
        return rgb, target, valid

    # -- opening and building ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, key: str, count: int) -> "FrameCache":
        """The cache in `path`; ValueError (saying what is wrong) when it is not a complete file for `key`."""
        with open(path, "rb") as fh:
            head = fh.read(16)
            if len(head) != 16 or head[:8] != MAGIC:
                raise ValueError(f"{path}: found {head[:8]!r} at the start, expected the magic {MAGIC!r}")
            (n,) = struct.unpack("<Q", head[8:])
            try:
                header = json.loads(fh.read(n))
            except ValueError as exc:
                raise ValueError(f"{path}: unreadable header ({exc})") from None
        if header.get("key") != key or header.get("count") != count:
            raise ValueError(f"{path}: found key {header.get('key')!r} with {header.get('count')} frames, expected "
                             f"{key!r} with {count}")
        start = _aligned(16 + n)
        size, expected = path.stat().st_size, start + int(header["data_bytes"])
        if size != expected:
            raise ValueError(f"{path}: found {size} bytes, expected {expected} (truncated?)")
        return cls(path, header["entries"], start)

    @classmethod
    def open_or_build(cls, folder: Path, key: str, count: int, read: Callable[[int], Frame],
                      sizes: Callable[[int], tuple[int, int]], *, max_bytes: int,
                      threads: int = 4) -> Optional["FrameCache"]:
        """The cache of `count` frames for `key` in `folder`, built from `read(i)` by the first caller; None when
        the frames (sized by `sizes(i)` = (h, w) from the file headers) would take more than `max_bytes` or more
        than the folder's free space, or when the folder cannot be written."""
        path = Path(folder) / f"frames-{key}.bin"
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per file; the others wait, then read
                try:
                    return cls.open(path, key, count)
                except FileNotFoundError:
                    pass
                except ValueError as exc:
                    log.warning("frame cache %s is not usable (%s); building it again", path, exc)
                    path.unlink(missing_ok=True)
                need = sum(frame_bytes(*sizes(i)) for i in range(count))
                free = shutil.disk_usage(folder).free
                if need > min(max_bytes, free):
                    log.info("frame cache: %d frames need %.2f GiB, more than the limit (%.2f GiB) or the free space "
                             "in %s (%.2f GiB); reading the files instead", count, need / 2**30,
                             max_bytes / 2**30, folder, free / 2**30)
                    return None
                return cls._build(path, key, count, read, threads)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EPERM, errno.ENOENT):
                raise
            log.warning("frame cache in %s not used: %s", folder, exc)
            return None

    @classmethod
    def _build(cls, path: Path, key: str, count: int, read: Callable[[int], Frame], threads: int) -> "FrameCache":
        """Decode every frame (`threads` at a time), write them to a temporary file and rename it to `path`."""

        def one(i: int) -> Optional[Frame]:
            try:
                return read(i)
            except DataError:
                return None  # not cached: read from the files (and handled as a bad sample) when used

        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh, ThreadPoolExecutor(max(1, threads)) as pool, \
                    tempfile.TemporaryFile(dir=path.parent) as data:
                entries: list = []
                offset = 0
                for start in range(0, count, BUILD_CHUNK):  # bounded memory: a chunk of decoded frames at a time
                    for frame in pool.map(one, range(start, min(start + BUILD_CHUNK, count))):
                        if frame is None:
                            entries.append(None)
                            continue
                        offset = _write_frame(data, frame, entries, offset)
                header = json.dumps({"key": key, "count": count, "data_bytes": offset, "entries": entries}).encode()
                fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
                fh.write(b"\0" * (_aligned(16 + len(header)) - 16 - len(header)))
                data.seek(0)
                shutil.copyfileobj(data, fh, 16 << 20)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        cache = cls.open(path, key, count)
        log.info("frame cache: %d of %d frames written to %s (%.1f MiB)", cache.cached, count, path,
                 path.stat().st_size / 2**20)
        return cache


def _write_frame(fh, frame: Frame, entries: list, offset: int) -> int:
    """Append one frame's arrays (64-byte aligned) to `fh` at `offset`; record its entry; return the next offset."""
    rgb, target, valid = frame
    h, w = target.shape
    if rgb.shape != (h, w, 3) or valid.shape != (h, w):
        raise DataError(f"frame cache: found rgb {rgb.shape}, target {target.shape}, valid {valid.shape}; expected "
                        f"[H, W, 3], [H, W], [H, W] of one size")
    entries.append([offset, h, w])
    for arr, dtype in ((rgb, np.uint8), (target, np.float32), (valid, np.bool_)):
        raw = np.ascontiguousarray(arr, dtype=dtype).tobytes()
        fh.write(raw + b"\0" * (_aligned(len(raw)) - len(raw)))
        offset += _aligned(len(raw))
    return offset
