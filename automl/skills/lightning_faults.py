"""The test suite's fault hooks (automl/testing.py) as Lightning callbacks, for skills whose trainer runs on
Lightning: NaN weights, a simulated out-of-memory error, a killed or held worker at a given step or epoch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch

from automl.testing import (EVERY_TRIAL, HELD_MARKER, HOLD_SECONDS, KILLED_MARKER, SIMULATED_OOM_MESSAGE,
                            SIMULATED_RUNTIME_ERROR, FaultHook)


def fault_callbacks(hooks: Sequence[FaultHook], trial_index: int, trial_dir: str | Path) -> list[pl.Callback]:
    """The Lightning callbacks of the hooks aimed at trial number `trial_index`."""
    out: list[pl.Callback] = []
    for h in hooks:
        if h.trial_index not in (trial_index, EVERY_TRIAL):
            continue
        if h.kind == "nonfinite":
            out.append(PoisonWeightsAtStep(h.at))
        elif h.kind == "out_of_memory":
            out.append(OutOfMemoryAtStep(h.at))
        elif h.kind == "runtime_error":
            out.append(RuntimeErrorAtStep(h.at))
        elif h.kind == "kill_worker" and not (Path(trial_dir) / KILLED_MARKER).exists():
            out.append(KillWorkerInEpoch(h.at, Path(trial_dir) / KILLED_MARKER))
        elif h.kind == "hold" and not (Path(trial_dir) / HELD_MARKER).exists():
            out.append(HoldInEpoch(h.at, Path(trial_dir) / HELD_MARKER))
    return out


class PoisonWeightsAtStep(pl.Callback):
    """Before optimizer step `step`, write NaN into one weight: the next forward pass gives a NaN loss, exactly as a
    diverging run does, and the trainer's guard must stop the run at that step."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                first = next(p for p in pl_module.parameters() if p.requires_grad)
                first.view(-1)[0] = float("nan")


class OutOfMemoryAtStep(pl.Callback):
    """Before optimizer step `step`, raise `torch.OutOfMemoryError` (what CUDA raises when a batch does not fit)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise torch.OutOfMemoryError(SIMULATED_OOM_MESSAGE)


class RuntimeErrorAtStep(pl.Callback):
    """Before optimizer step `step`, raise a RuntimeError: an error no check foresaw (a model bug), which the trial
    does not classify, so Ray records it with its traceback and retries the trial."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(SIMULATED_RUNTIME_ERROR)


class KillWorkerInEpoch(pl.Callback):
    """After the first optimizer step of epoch `epoch`, SIGKILL this process (the trial's Ray worker): a crash in
    the middle of an epoch, after the previous epoch's checkpoint was reported. `marker` is written first, so that
    the retried trial is not killed again."""

    what = "killed"

    def __init__(self, epoch: int, marker: Path):
        self.epoch = int(epoch)
        self.marker = Path(marker)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx) -> None:
        if trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"{self.what} at epoch {self.epoch}, batch {batch_idx}, "
                                   f"step {trainer.global_step}\n")
            self.act()

    def act(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class HoldInEpoch(KillWorkerInEpoch):
    """At the point where KillWorkerInEpoch kills, stop making progress instead (for HOLD_SECONDS): the process
    stays alive until the test kills the search around it."""

    what = "held"

    def act(self) -> None:
        import time

        time.sleep(HOLD_SECONDS)
