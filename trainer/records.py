"""Records that are never left half-written, and what to do when the disk is full.

Every file the project writes for a user or for `--resume` to read goes through here:

- `write_atomic` (summary.json, search_state.json, sidecars, reports): the bytes go to a temporary file beside the
  target, are fsynced, and replace the target with one `os.replace`, so a reader sees the old file or the new one,
  never a part of either.
- `append_line` (status.json): one line per `write(2)` on a file opened with O_APPEND. A failed or short write is
  undone (the file is truncated back to where it was), so no half line stays behind; `read_json_lines` skips a
  line that does not parse anyway (a record written by an older version, or a copy cut by another tool).
- `DiskReserve`: a small file kept in the results folder while a run writes. When the disk fills, the reserve is
  given back so that the final records (FAILURE in status.json, the end of the MLflow run, the Optuna trial's
  state) can still be written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

from trainer.errors import UserError

log = logging.getLogger(__name__)

# errors that mean "the storage cannot take more": the run stops, with what could be written
STORAGE_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one step: a reader sees the previous content or the new one, never a part.
    The temporary file lives beside `path` (same filesystem) and is removed when anything fails."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; the record gets the mode a plain write would give
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # name the record, not the temporary file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_dir(path.parent)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_json_atomic(path: str | Path, obj: Any, indent: Optional[int] = 2) -> None:
    write_atomic(path, json.dumps(obj, indent=indent, default=str))


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a newline is added) so that it is either all there or not at all: one write on an O_APPEND
    descriptor, fsynced; if the write fails or is short (disk full), the file is cut back to its previous size."""
    raw = (line.rstrip("\n") + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, raw)
            if written != len(raw):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(raw)} bytes)", str(path))
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a line that does not parse (cut by a crash or a full disk) is skipped and
    logged, never trusted."""
    out = []
    for n, line in _lines(Path(path)):
        try:
            rec = json.loads(line)
        except ValueError:
            log.warning("%s:%d: skipping a line that is not complete JSON (%.60s...)", path, n, line)
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, line


def storage_error(exc: BaseException) -> Optional[OSError]:
    """The disk-full / I/O / read-only error behind `exc` (itself, a cause or a context, e.g. the OSError inside an
    Optuna StorageInternalError or a SQLAlchemy OperationalError "database or disk is full"), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        text = str(exc).lower()
        if "database or disk is full" in text or "no space left on device" in text:
            return OSError(errno.ENOSPC, "No space left on device")
        if "disk i/o error" in text:
            return OSError(errno.EIO, "disk I/O error")
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def storage_message(err: OSError, where: str | Path) -> str:
    """One line for a storage error: what happened, where, and what to do."""
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EIO: "an I/O error on the disk", errno.EROFS: "the filesystem is read-only"}.get(
        err.errno or 0, err.strerror or str(err))
    name = f" (writing {err.filename})" if getattr(err, "filename", None) else ""
    return f"{where}: {what}{name}; the run stopped and its records were closed"


def os_error_message(exc: BaseException) -> Optional[str]:
    """One line for an OSError a user can act on (the disk is full, read-only or failing; no permission; a folder
    where a file is expected or the other way round), naming the path; None for anything else."""
    disk = storage_error(exc)
    if disk is not None and disk.errno != errno.EROFS:
        where = f": {disk.filename}" if getattr(disk, "filename", None) else ""
        return (f"{disk.strerror or disk}{where}; the run stopped and recorded FAILURE where it could. Free space "
                f"(or fix the disk) and run again (automl run: add --resume)")
    err = disk or (exc if isinstance(exc, OSError) else None)
    if err is None or err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR):
        return None
    path = err.filename or "a results file"
    if err.errno == errno.EISDIR:
        return f"{path} is a folder; expected a file"
    if err.errno == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder"
    return (f"cannot write {path} ({err.strerror}); choose a writable folder for the results (results_dir=PATH; "
            f"for synth and report: --out PATH)")


class DiskReserve:
    """A file of `size` bytes held in `directory` while a run writes; `release()` deletes it so that the final
    records fit on a full disk. Creating it never fails a run (it is best effort: an already full disk gets none)."""

    NAME = ".disk-reserve"

    def __init__(self, directory: str | Path, size: int = 1 << 20):
        self.path = Path(directory) / self.NAME
        self.size = size
        try:
            if not self.path.is_file() or self.path.stat().st_size < size:
                with open(self.path, "wb") as fh:
                    fh.write(b"\0" * size)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def release(self) -> bool:
        """Delete the reserve; True when there was one to give back."""
        try:
            self.path.unlink()
            return True
        except OSError:
            return False


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(directory), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StatusFile:
    """TAO-style `status.json`: one JSON object per line (STARTED, RUNNING with a `kpi` block, SUCCESS/FAILURE).

    Each line is appended whole or not at all (`append_line`); `read()` skips a line that does not
    parse. When `reserve` is set (a `DiskReserve` in the same folder) and the disk is full, the reserve is given back
    and the line written again, so the last record (FAILURE with the reason) still fits."""

    def __init__(self, path: str | Path, reserve: Optional[DiskReserve] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve = reserve

    def write(self, status: str, message: str, **fields: Any) -> None:
        now = _dt.datetime.now()
        line = {"date": now.strftime("%m/%d/%Y"), "time": now.strftime("%H:%M:%S"), "status": status,
                "verbosity": "INFO" if status != "FAILURE" else "ERROR", "message": message, **fields}
        text = json.dumps(line, default=_json_default)
        try:
            append_line(self.path, text)
        except OSError as exc:
            if storage_error(exc) is None or self.reserve is None or not self.reserve.release():
                raise
            append_line(self.path, text)

    def read(self) -> list[dict[str, Any]]:
        return read_json_lines(self.path)


def _json_default(o: Any) -> Any:
    """JSON for values a record may carry besides plain ones: tensors and arrays (by value), paths (as text)."""
    if hasattr(o, "numel") and hasattr(o, "tolist"):  # a torch tensor, without importing torch here
        return o.item() if o.numel() == 1 else o.tolist()
    if hasattr(o, "tolist"):  # a numpy array or scalar
        return o.tolist()
    return str(o)


def check_writable(directory: Path, min_free_mb: int = 0) -> None:
    """Fail before any training when results cannot be written (a file in the way, permissions, read-only mount,
    full disk). How much room a run needs is `check_free_space`'s job."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"results directory {directory} is a file, expected a folder (or a path that does not exist "
                        f"yet); choose another with results_dir=PATH")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), directory)
        raise UserError(f"results directory {directory} cannot be created: {blocker} is a file, not a folder; "
                        f"choose another with results_dir=PATH") from None
    except OSError as exc:
        raise UserError(f"results directory {directory} is not writable ({exc.strerror or exc}); "
                        f"choose another with results_dir=PATH") from None
    if min_free_mb:
        check_free_space(directory, min_free_mb * 2**20, "a minimum")


def check_free_space(directory: Path, needed: int, how: str) -> None:
    """UserError when the disk of `directory` has less than `needed` bytes free; `how` says how it was counted."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise UserError(f"results directory {directory}: only {free / 2**20:.0f} MiB free on its disk, about "
                        f"{needed / 2**20:.0f} MiB are needed ({how}); free space or choose another results_dir")
