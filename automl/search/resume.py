"""Continuing a trial where its own folder says it is, not where Ray Tune's snapshot says.

Tune's checkpoint of a trial (what `tune.get_checkpoint()` restores after a retry or `--resume`) is the one the
driver had received when it last saved the experiment. A trial can get further than that: it writes
`trials/<id>/checkpoints/last.ckpt` (atomically, see `trainer.callbacks.AtomicCheckpointIO`) before it reports the
epoch, and a worker can finish an epoch after its driver died. The newest complete checkpoint wins; the epochs it
holds that Tune never saw are reported to Tune from the checkpoint's own history (the metrics the trainer recorded for
them), so they are neither trained again nor missing from the results.

A worker also stops by itself when the driver that started it is gone (checked every second on the driver's node):
no epoch is trained for a search that nobody is running.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    path: Optional[Path]  # the checkpoint to continue from (None: start afresh)
    epoch: Optional[int]  # the last epoch it holds
    unseen: list[dict[str, Any]] = field(default_factory=list)  # reports of epochs Tune has not received


def checkpoint_state(path: Path) -> Optional[dict[str, Any]]:
    """The Lightning checkpoint at `path` (memory-mapped, weights only), or None when it is missing or unreadable."""
    import torch

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a file that cannot be read is no place to resume from
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("epoch"), int) else None


def newest_checkpoint(restored_dir: Optional[Path], trial_dir: Path, metric: str) -> ResumePoint:
    """Pick between Tune's restored checkpoint and the trial folder's `checkpoints/last.ckpt`: the one with the later
    epoch. When the folder's is newer, the reports of the epochs after Tune's are taken from its recorded history
    (only validated epochs, which are the ones a trial reports)."""
    tune_ckpt = restored_dir / "last.ckpt" if restored_dir is not None else None
    tune_state = checkpoint_state(tune_ckpt) if tune_ckpt is not None else None
    own_ckpt = trial_dir / "checkpoints" / "last.ckpt"
    own_state = checkpoint_state(own_ckpt)
    tune_epoch = tune_state["epoch"] if tune_state else None
    if own_state is None or (tune_epoch is not None and own_state["epoch"] <= tune_epoch):
        return ResumePoint(tune_ckpt if tune_state else None, tune_epoch)
    seen = -1 if tune_epoch is None else tune_epoch
    unseen = [_payload(h) for h in _history(own_state)
              if isinstance(h.get("epoch"), (int, float)) and seen < int(h["epoch"]) <= own_state["epoch"]
              and metric in h]
    return ResumePoint(own_ckpt, own_state["epoch"], unseen)


def _history(state: dict[str, Any]) -> list[dict[str, Any]]:
    for key, value in (state.get("callbacks") or {}).items():
        if "RunRecorder" in str(key) and isinstance(value, dict):
            return list(value.get("history") or [])
    return []


def _payload(entry: dict[str, Any]) -> dict[str, Any]:
    """The report the trial sent (or would have sent) for a recorded epoch: same keys as `_fit_and_report`."""
    payload: dict[str, Any] = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float))}
    payload["epoch"] = int(entry["epoch"])
    payload["replayed"] = True
    return payload


# --------------------------------------------------------------------------------------------------------------
# a worker outliving its driver
# --------------------------------------------------------------------------------------------------------------


def driver_identity() -> tuple[int, str]:
    """(pid, hostname) of this process: the driver hands them to its trials."""
    return os.getpid(), socket.gethostname()


def stop_with_driver(driver_pid: int, driver_host: str, interval: float = 1.0) -> Optional[threading.Thread]:
    """In a trial's worker: a daemon thread that ends this process when the driver process is gone. Only on the
    driver's own node (a worker elsewhere relies on Ray noticing the lost driver). Returns the thread, or None."""
    if not driver_pid or driver_host != socket.gethostname():
        return None

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if not _alive(driver_pid):
                log.warning(f"the search's driver (pid {driver_pid}) is gone; this trial stops (automl run --resume "
                            f"continues it from its last checkpoint)")
                os._exit(1)

    thread = threading.Thread(target=watch, name="automl-driver-watch", daemon=True)
    thread.start()
    return thread


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed driver whose parent has not reaped it yet is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
