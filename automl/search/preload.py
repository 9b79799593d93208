"""Imported by a local Ray's worker processes when they start (automl.search.warmup.preload_config): imports what a
training run's first step needs (torch, Lightning, timm, the trainer, MLflow's store, the trial function), so that a
task or trial placed on this process later (the probe of `--gpus-per-trial auto`; the first trials, see
warmup.share_worker_environment) starts without paying for it. Only the first AUTOML_PRELOAD_SLOTS processes of a
node do (each claims a slot file under AUTOML_PRELOAD_SLOTS_DIR and holds it while it lives); the others import
nothing. Nothing here touches the GPU: Ray assigns a worker its GPUs when a trial is placed on it.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import time
from pathlib import Path
from typing import Optional

from automl.search.warmup import COUNT_ENV, PRELOAD_SLOTS, SKILL_ENV, SLOTS_ENV

log = logging.getLogger(__name__)

MODULES = ("torch", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "automl.skills", "automl.search.trial")
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
_held: list = []  # the claimed slot files, kept open (and locked) for the life of the process


def claim_slot(folder: Optional[str], slots: int = PRELOAD_SLOTS) -> Optional[int]:
    """The index of a free slot under `folder`, held until this process ends; None when all `slots` are taken.
    Without a folder every process gets slot 0."""
    if not folder:
        return 0
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        fh = open(Path(folder) / f"slot-{i}.lock", "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _held.append(fh)
        return i
    return None


def preload(modules: tuple[str, ...] = MODULES) -> float:
    """Import `modules` and the warm imports of the skill SKILL_ENV names (a failure is logged, not raised: the
    trial imports what it needs itself); seconds taken.

    CUDA must stay uninitialised: Ray chooses a trial's GPU (CUDA_VISIBLE_DEVICES) when it places the trial on this
    process, and CUDA reads that variable once, when it initialises. So while importing, torch answers "is CUDA
    available" from NVML (PYTORCH_NVML_BASED_CUDA_CHECK=1), not by initialising CUDA; the variable is restored after."""
    started = time.time()
    modules = (*modules, *_skill_imports(os.environ.get(SKILL_ENV)))
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", NVML_CHECK)}
    os.environ[NVML_CHECK] = "1"
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a trial on this process imports it again and reports the error
            log.exception("preloading %s failed", name)
    for key, value in saved.items():  # the trial chooses the compile cache (trial.prepare_worker)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return time.time() - started


def _skill_imports(skill_name: Optional[str]) -> tuple[str, ...]:
    """The modules a run of `skill_name` imports before its first step (Skill.warm_imports); () when unknown."""
    if not skill_name:
        return ()
    try:
        from automl.skills import get_skill

        return tuple(get_skill(skill_name).warm_imports())
    except Exception:  # noqa: BLE001 - preloading is an optimisation; the trial reports a real error itself
        log.exception("preloading: no warm imports for skill %s", skill_name)
        return ()


if claim_slot(os.environ.get(SLOTS_ENV), int(os.environ.get(COUNT_ENV) or PRELOAD_SLOTS)) is not None:
    preload()
