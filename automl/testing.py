"""Fault-injection hooks for the test suite. Nothing here runs unless a test sets the hook's environment variable
(see `automl.search.trial.INJECT_ENV`); no spec key or CLI flag reaches it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


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
