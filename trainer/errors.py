"""Errors a user can act on. Every message names the file / line / key, what was found and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


class UserError(Exception):
    """A problem with something the user gave (spec, data, checkpoint, argument). The CLI prints it without a
    traceback and exits with status 2."""


@dataclass(frozen=True)
class SpecProblem:
    path: str  # dotted key path, e.g. "train.optim.lr"
    message: str  # what is wrong and what is expected
    origin: Optional[str] = None  # "spec.yaml" or "command-line override"

    def __str__(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.path}{where}: {self.message}"


class SpecError(UserError):
    """All problems found in one spec, reported together."""

    def __init__(self, problems: Iterable[SpecProblem], source: Optional[str] = None):
        self.problems = list(problems)
        self.source = source
        head = f"invalid spec {source}" if source else "invalid spec"
        n = len(self.problems)
        lines = [f"{head}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class DataError(UserError):
    """A bad annotation line, image or depth file."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the model asked for."""


class TrainingError(Exception):
    """Training stopped for a reason that is not a bug in the user's input."""


class NonFiniteLossError(TrainingError):
    """The loss (or gradient norm) became NaN/inf: the run stops at that step and is never reported as a success."""

    reason = "non_finite_loss"

    def __init__(self, *, step: int, epoch: int, what: str, value: float, samples: list[str]):
        self.step = step
        self.epoch = epoch
        self.what = what
        self.value = value
        self.samples = list(samples)
        shown = ", ".join(self.samples[:8]) + (" ..." if len(self.samples) > 8 else "")
        super().__init__(
            f"{what} became {value} at optimizer step {step} (epoch {epoch}); training stopped. "
            f"Samples in that batch: {shown or 'unknown'}. Typical causes: learning rate too high, depth in the "
            f"wrong units (e.g. millimetres read as metres), or a depth range (min_depth/max_depth) that leaves "
            f"no valid pixel."
        )


OUT_OF_MEMORY_FIX = ("lower dataset.train_dataset.batch_size (with train.accumulate_grad_batches to keep the "
                     "effective batch) or augmentation.crop_size, set train.activation_checkpoint=true, use "
                     "train.precision=bf16, or give each trial more of a GPU (automl.gpus_per_trial)")


def out_of_memory_message(exc: BaseException) -> str:
    """One line for an out-of-memory error: what ran out (the first line of torch's message) and how to fix it."""
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    return f"{first}; {OUT_OF_MEMORY_FIX}"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when the message is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
