"""A search's start-up: Ray starts while the driver checks the inputs, and the first worker processes of a private
local Ray import the trainer stack (torch, Lightning, timm, the trainer) before a task asks for them.

Contract:
- `overlap_checks_with_ray(checks, init_ray)`: the pre-flight check runs in a background thread while Ray starts in
  the calling thread; a failed check shuts Ray down and raises (see the function).
- `preload_config()`: the `_system_config` that makes a local Ray's worker processes (Ray starts one per CPU before
  any task asks for one) import `PRELOAD_MODULE` when they start, so that the probe of `--gpus-per-trial auto`
  (a plain Ray task) and the first trials (Tune's actors, see `share_worker_environment`) find the trainer imported;
  {} when `AUTOML_PRELOAD_WORKERS=0`. That module imports the stack in at most `preload_slots()` processes per node
  (the first to claim a slot file): as many as trials can start at once there, so a node with many CPUs does not
  hold dozens of idle copies of torch.
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
PRELOAD_SLOTS = 2  # at least this many processes per node import the stack (at most one per CPU)
TRIALS_PER_GPU = 4  # preloaded processes per GPU (see preload_slots)
SLOTS_ENV = "AUTOML_PRELOAD_SLOTS_DIR"  # where the slot files live (set by the driver, inherited by Ray's workers)
COUNT_ENV = "AUTOML_PRELOAD_SLOTS"  # how many (the driver's choice, inherited by Ray's workers)
SKILL_ENV = "AUTOML_PRELOAD_SKILL"  # whose trainer stack (Skill.warm_imports) the workers import
IDLE_KEEP_MS = 600_000  # how long the local Ray keeps an idle worker process it has no CPU for (see preload_config)


def preload_slots(cpus: int, gpus: int = 0) -> int:
    """Processes of a node that preload: one per trial that can start there at once (TRIALS_PER_GPU per GPU, the
    packing `--gpus-per-trial auto` usually chooses) plus one for its probe, at least PRELOAD_SLOTS, at most one
    per CPU. Each costs about 0.65 GiB of memory (torch, Lightning, timm, MLflow)."""
    return max(1, min(cpus, max(PRELOAD_SLOTS, TRIALS_PER_GPU * gpus + 1)))


def visible_gpus() -> int:
    """GPUs this node shows its processes, found without touching CUDA (a process that initialised CUDA before Ray
    chose its GPU would keep seeing them all): CUDA_VISIBLE_DEVICES when set, else the NVIDIA driver's
    /proc/driver/nvidia/gpus entries; 0 without that driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    folder = Path("/proc/driver/nvidia/gpus")
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def share_worker_environment() -> bool:
    """Let Tune's trial actors start on the local Ray's preloaded worker processes; returns whether it did.

    Ray Tune gives every trial actor the runtime environment {"env_vars": {"PL_DISABLE_FORK": "1"}}
    (ray-project/ray#28197, `ray.tune.execution.class_cache.DEFAULT_ENV_VARS`), and Ray starts a new worker process
    for an actor whose runtime environment differs from the job's, so a cold trial paid torch/Lightning/timm imports
    (13.6 s on the H200 machine) even with preloaded processes idle. Here that variable goes into this process's
    environment instead, which the local Ray's processes inherit, and Tune's per-actor default is emptied, so an
    actor lands on an idle preloaded process (checked with Ray 2.60: tests/test_search_startup.py). Nothing changes
    when Tune's default holds anything else, and variables Tune propagates from the driver's environment (AWS keys,
    Ray Train's settings) still give the actors their own environment."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return False
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if not isinstance(defaults, dict) or set(defaults) - {"PL_DISABLE_FORK"}:
        return False
    os.environ.update(defaults)
    defaults.clear()
    return True


def preload_enabled() -> bool:
    """Whether Ray's worker processes import the trainer stack when they start (AUTOML_PRELOAD_WORKERS, default 1)."""
    return os.environ.get(PRELOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def preload_config(slots_dir: str, skill_name: str, local: bool = True) -> dict[str, Any]:
    """`_system_config` for a local `ray.init`: preload the skill's trainer stack in the first `preload_slots()`
    workers, and let trial actors use them (`share_worker_environment`). Sets SLOTS_ENV (to `slots_dir`), SKILL_ENV
    and COUNT_ENV in this process, whose environment the local Ray's processes inherit. {} for a cluster
    (`local=False`: its workers were started by `ray start`) and when AUTOML_PRELOAD_WORKERS=0."""
    if not local or not preload_enabled():
        return {}
    os.environ[SLOTS_ENV] = slots_dir  # this search's, not one an earlier search of this process left
    os.environ[SKILL_ENV] = skill_name
    os.environ[COUNT_ENV] = str(preload_slots(os.cpu_count() or 1, visible_gpus()))
    if not share_worker_environment():
        log.debug("Ray Tune's trial actors keep their own runtime environment: they start in new processes")
    # Ray kills idle workers beyond those the free CPUs could use once they have idled IDLE_KEEP_MS (1 s by
    # default): the moment Tune's placement groups reserve the CPUs for the first trials, the preloaded workers
    # were killed and the trials started in fresh processes (seen on 2 cores: 1 search in 4)
    return {"preload_python_modules": [PRELOAD_MODULE], "idle_worker_killing_time_threshold_ms": IDLE_KEEP_MS}


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
