"""Fault-injection hooks for the test suite.

Nothing here runs unless a test sets one of the environment variables below before `automl run`; no spec key or CLI
flag reaches them. The search driver reads them once (`read_fault_hooks`) and hands them to every trial in its
`TrialContext`; each trial then asks its skill for the callbacks of the hooks aimed at it (`Skill.fault_callbacks`;
depth_net_mono's are Lightning callbacks in automl/skills/lightning_faults.py).

Every value is "TRIAL_INDEX:WHEN", TRIAL_INDEX being the trial's sequence number (order of first start, stable
across retries and resumes) or `*` for every trial:

    AUTOML_TESTING_INJECT_NONFINITE="1:5"   NaN written into a weight before optimizer step 5 of trial 1: the next
                                            loss is NaN, as in a diverging run (the guard must prune at step 5)
    AUTOML_TESTING_KILL_WORKER="0:1"        SIGKILL of trial 0's worker process in the middle of epoch 1 (after
                                            the first optimizer step of that epoch; the checkpoint of epoch 0 has
                                            been reported); first attempt only, so that the retry can finish
    AUTOML_TESTING_OUT_OF_MEMORY="2:3"      torch.OutOfMemoryError at optimizer step 3 of trial 2, as a GPU that
                                            cannot hold the batch raises it
    AUTOML_TESTING_RUNTIME_ERROR="*:2"      RuntimeError (as a model bug raises it, not a UserError: Ray records it
                                            and retries the trial) at optimizer step 2 of every trial
    AUTOML_TESTING_HOLD_TRIAL="2:1"         trial 2 stops making progress in the middle of epoch 1 (same point
                                            as the kill; first attempt only) and writes `.testing-held` in its
                                            folder: a test can kill the driver while a trial is known to be
                                            mid-epoch, with the previous epoch's checkpoint reported

One more hook is not aimed at a trial:

    AUTOML_TESTING_DDP_CPU_WORKERS="2"      every trial is a DDP run over 2 CPU processes (gloo): the
                                            path that `--gpus-per-trial 2` takes on GPUs, testable without them
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

NONFINITE_ENV = "AUTOML_TESTING_INJECT_NONFINITE"
KILL_WORKER_ENV = "AUTOML_TESTING_KILL_WORKER"
OUT_OF_MEMORY_ENV = "AUTOML_TESTING_OUT_OF_MEMORY"
RUNTIME_ERROR_ENV = "AUTOML_TESTING_RUNTIME_ERROR"
HOLD_TRIAL_ENV = "AUTOML_TESTING_HOLD_TRIAL"
DDP_CPU_WORKERS_ENV = "AUTOML_TESTING_DDP_CPU_WORKERS"

# hook kind -> (environment variable, what WHEN counts)
HOOKS = {
    "nonfinite": (NONFINITE_ENV, "step"),
    "kill_worker": (KILL_WORKER_ENV, "epoch"),
    "out_of_memory": (OUT_OF_MEMORY_ENV, "step"),
    "runtime_error": (RUNTIME_ERROR_ENV, "step"),
    "hold": (HOLD_TRIAL_ENV, "epoch"),
}

KILLED_MARKER = ".testing-worker-killed"  # in the trial's results folder: the kill happened once already
HELD_MARKER = ".testing-held"  # in the trial's results folder: the trial is (or was once) held
HOLD_SECONDS = 600.0
SIMULATED_OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB (simulated by the test hook "
                         f"{OUT_OF_MEMORY_ENV})")
SIMULATED_RUNTIME_ERROR = f"shape mismatch in the decoder (simulated by the test hook {RUNTIME_ERROR_ENV})"
EVERY_TRIAL = -1  # TRIAL_INDEX `*`


@dataclass(frozen=True)
class FaultHook:
    kind: str  # nonfinite | kill_worker | out_of_memory | runtime_error | hold
    trial_index: int  # EVERY_TRIAL for `*`
    at: int  # optimizer step (nonfinite, out_of_memory) or epoch (kill_worker)


def read_fault_hooks(environ: Optional[Mapping[str, str]] = None) -> tuple[FaultHook, ...]:
    """The hooks set in `environ` (default: the process environment); a malformed value is an error naming it."""
    from automl.skills.shared import UserError

    environ = os.environ if environ is None else environ
    hooks = []
    for kind, (var, unit) in HOOKS.items():
        raw = environ.get(var)
        if not raw:
            continue
        parts = raw.split(":")
        try:
            index, at = (EVERY_TRIAL if p == "*" and i == 0 else int(p) for i, p in enumerate(parts))
            if (index < 0 and index != EVERY_TRIAL) or at < 0:
                raise ValueError
        except ValueError:
            raise UserError(f"{var}={raw!r}: expected TRIAL_INDEX:{unit.upper()} with two integers >= 0 (or * for "
                            f"every trial), e.g. 1:3 (a test hook; unset it for real searches)") from None
        hooks.append(FaultHook(kind, index, at))
    return tuple(hooks)


def testing_ddp_cpu_workers(environ: Optional[Mapping[str, str]] = None) -> int:
    """Workers per trial set by AUTOML_TESTING_DDP_CPU_WORKERS (0 when unset); a bad value is an error naming it."""
    from automl.skills.shared import UserError

    raw = (os.environ if environ is None else environ).get(DDP_CPU_WORKERS_ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 2:
        raise UserError(f"{DDP_CPU_WORKERS_ENV}: expected a whole number >= 2, found {raw!r}")
    return int(raw)
