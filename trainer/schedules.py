"""Learning-rate schedules as one multiplicative factor per optimizer step (applied through LambdaLR).

Every schedule starts with a linear warm-up over `warmup_steps` (really applied: step 0 trains at lr/warmup_steps)
and never goes below `min_lr` (as a fraction of each group's base lr) for the decaying schedules.
TAO's scheduler names are accepted; `LambdaLR` is TAO's name for the original recipe's poly decay.
"""

from __future__ import annotations

import math
from typing import Callable

from omegaconf import DictConfig

POLY = ("LambdaLR", "PolynomialLR")
MULTISTEP = ("MultiStepLR", "MultiStep", "CustomMultiStepLRScheduler")
COSINE = ("CosineAnnealingLR", "OneCycleLR")


def lr_factor_fn(optim: DictConfig, total_steps: int) -> Callable[[int], float]:
    """Factor f(step) such that lr(step) = base_lr * f(step), for `train.optim` and the run's total optimizer steps."""
    name = optim.lr_scheduler
    warmup = int(optim.warmup_steps)
    total = max(int(total_steps), 1)
    floor = float(optim.min_lr) / float(optim.lr) if optim.lr > 0 else 0.0
    floor = min(max(floor, 0.0), 1.0)
    milestones = sorted(int(s) for s in optim.lr_steps)
    decay = float(optim.lr_decay)
    step_size = int(optim.lr_step_size)
    power = float(optim.poly_power)

    def schedule(step: int) -> float:
        if name in POLY:
            return max((1.0 - min(step, total) / total) ** power, floor)
        if name in MULTISTEP:
            return decay ** sum(1 for m in milestones if step >= m)
        if name == "StepLR":
            return decay ** (step // step_size)
        if name in COSINE:
            progress = min(step, total) / total
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "Constant":
            return 1.0
        raise ValueError(f"train.optim.lr_scheduler: unknown schedule {name!r}")

    def factor(step: int) -> float:
        f = schedule(step)
        if warmup > 0 and step < warmup:
            f *= (step + 1) / warmup
        return f

    return factor
