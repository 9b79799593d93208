"""A search's start-up: Ray starts while the driver checks the inputs, and the first worker processes of a private
local Ray import the trainer stack (torch, Lightning, timm, the trainer) before a task asks for them.

Contract:
- `overlap_checks_with_ray(checks, init_ray)`: the pre-flight check runs in a background thread while Ray starts in
  the calling thread; a failed check shuts Ray down and raises (see the function).
- `preload_config()`: the `_system_config` that makes a local Ray's worker processes (Ray starts one per CPU before
  any task asks for one) import `PRELOAD_MODULE` when they start, so that the probe of `--gpus-per-trial auto`
  (a plain Ray task) finds the trainer imported; {} when
  `AUTOML_PRELOAD_WORKERS=0`. That module imports the stack in at most `preload_slots(CPUs)` processes per node
  (the first to claim a slot file), so a node with many CPUs does not hold dozens of idle copies of torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)

PRELOAD_ENV = "AUTOML_PRELOAD_WORKERS"  # "0": worker processes import nothing before their first trial
PRELOAD_MODULE = "automl.search.preload"
PRELOAD_SLOTS = 2  # at most this many processes per node import the stack
SLOTS_ENV = "AUTOML_PRELOAD_SLOTS_DIR"  # where the slot files live (set by the driver, inherited by Ray's workers)
COUNT_ENV = "AUTOML_PRELOAD_SLOTS"  # how many (the driver's choice, inherited by Ray's workers)
SKILL_ENV = "AUTOML_PRELOAD_SKILL"  # whose trainer stack (Skill.warm_imports) the workers import


def preload_slots(cpus: int) -> int:
    """Processes of a node that preload: PRELOAD_SLOTS (at most one per CPU). Ray starts one worker per CPU before
    the search asks for any and runs plain tasks on them, such as the probe of `--gpus-per-trial auto`; Ray Tune's
    trial actors are not placed on them (Tune gives its actors a runtime environment, `PL_DISABLE_FORK`, and Ray starts
    new worker processes for that environment: seen with Ray 2.60), so more preloaded processes would only cost
    memory and CPU while the search starts."""
    return max(1, min(PRELOAD_SLOTS, cpus))


def preload_enabled() -> bool:
    """Whether Ray's worker processes import the trainer stack when they start (AUTOML_PRELOAD_WORKERS, default 1)."""
    return os.environ.get(PRELOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def preload_config(slots_dir: str, skill_name: str) -> dict[str, Any]:
    """`_system_config` for a local `ray.init`: preload the skill's trainer stack in the first PRELOAD_SLOTS workers.
    Sets SLOTS_ENV (to `slots_dir`) and SKILL_ENV in this process, whose environment the local Ray's processes
    inherit."""
    if not preload_enabled():
        return {}
    os.environ.setdefault(SLOTS_ENV, slots_dir)
    os.environ.setdefault(SKILL_ENV, skill_name)
    os.environ.setdefault(COUNT_ENV, str(preload_slots(os.cpu_count() or 1)))
    return {"preload_python_modules": [PRELOAD_MODULE]}


class Background:
    """`fn()` running in a daemon thread; `result()` waits for it and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]):
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.seconds: Optional[float] = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="search-checks", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        started = time.time()
        try:
            self.value = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by result()
            self.error = exc
        self.seconds = time.time() - started

    def result(self) -> Any:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def overlap_checks_with_ray(checks: Callable[[], Sequence[str]], init_ray: Callable[[], None]) -> list[str]:
    """Run `checks` (the pre-flight check) in a background thread while `init_ray` starts Ray in this one, and
    return the checks' lines. Ray starts in the calling thread because Linux ends Ray's processes with the thread
    that started them. A failed check shuts Ray down again and raises the check's error; when Ray fails to start,
    a failed check's error is raised first (it names the user's input), else Ray's. The last line says how long
    each took."""
    checks_run = Background(lambda: list(checks()))
    started = time.time()
    try:
        init_ray()
    except BaseException:
        checks_run.result()
        raise
    ray_s = time.time() - started
    try:
        lines = checks_run.result()
    except BaseException:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        raise
    return [*lines, f"Ray started in {ray_s:.1f} s beside these checks ({checks_run.seconds or 0.0:.1f} s)"]


FRAME_CACHE_KEY = "dataset.frame_cache_dir"


def with_frame_cache(skill: Any, spec: Any, folder: Path) -> Any:
    """`spec` with its decoded-frame cache in `folder` (the search's, shared by its trials and filled by the
    driver's pre-flight check), when the skill's spec has that key and the spec names no folder of its own."""
    from omegaconf import OmegaConf

    if not skill.known_key(FRAME_CACHE_KEY) or OmegaConf.select(spec, FRAME_CACHE_KEY):
        return spec
    return skill.with_overrides(spec, {FRAME_CACHE_KEY: str(folder)})
