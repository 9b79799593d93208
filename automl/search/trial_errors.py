"""Trial errors in the terminal: one message per distinct error, its traceback in the trial's own folder.

Ray Tune logs every failed attempt of every trial with its whole traceback (the TuneController's
`TUNE_PRINT_ALL_TRIAL_ERRORS`, on by default) and ends with `Trials did not complete: [...]`, so a search whose
trials all fail for one cause fills the terminal with copies of one traceback. `quiet_ray_trial_errors` turns
those off before the Tuner is built; `TrialErrors` gives the trial table, for each failed attempt, where its
traceback is (`trials/<id>/error.txt`, a copy of Ray's error file, every attempt) and whether its error was
already shown.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from automl.skills.shared import first_line

log = logging.getLogger(__name__)

PRINT_ALL_ERRORS_ENV = "TUNE_PRINT_ALL_TRIAL_ERRORS"  # read by Ray Tune's TuneController when it is built
ERROR_FILE = "error.txt"
_INCOMPLETE = "Trials did not complete"  # ray.tune.tune's closing ERROR line; our table and summary say it


class _DropIncompleteTrials(logging.Filter):
    """Drops ray.tune.tune's `Trials did not complete: [...]` record (the leaderboard lists every trial's state)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_INCOMPLETE)


def quiet_ray_trial_errors() -> None:
    """Keep Ray Tune's per-attempt tracebacks and its closing list of incomplete trials out of the terminal.

    Call before the Tuner is built. A user who exports TUNE_PRINT_ALL_TRIAL_ERRORS=1 keeps Ray's tracebacks."""
    os.environ.setdefault(PRINT_ALL_ERRORS_ENV, "0")
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _DropIncompleteTrials) for f in tune_log.filters):
        tune_log.addFilter(_DropIncompleteTrials())


def describe_error(exc: BaseException) -> str:
    """`Type: first line of the message` of the error a trial raised, unwrapped from Ray's task error; a worker that
    died (Ray's actor error) is said so."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, RayActorError):
        return f"worker process died ({first_line(exc)[:200]})"
    return f"{type(exc).__name__}: {first_line(exc)[:300]}"


@dataclass(frozen=True)
class TrialFailure:
    """One failed attempt of a trial: what it raised, where its traceback is, and the trial that first showed this
    error (None when this attempt is the first: the message is new)."""

    trial_id: str
    message: str
    traceback_file: Optional[Path]
    attempt: int
    first_seen_in: Optional[str]


class TrialErrors:
    """Failed attempts seen during one search, keyed by their message, so that each distinct error is shown once.

    `trials_dir`: the search's `trials/` folder; each failed attempt's traceback is copied to
    `trials_dir/<trial_id>/error.txt` (Ray's own error file accumulates every attempt)."""

    def __init__(self, trials_dir: Optional[Path]):
        self.trials_dir = Path(trials_dir) if trials_dir is not None else None
        self.first_seen: dict[str, str] = {}  # message -> trial id that showed it first

    def record(self, trial: Any) -> TrialFailure:
        """Describe the newest failed attempt of a Ray Tune trial (after Ray handled it: its error files exist)."""
        message = _trial_error_message(trial)
        new = message not in self.first_seen
        first = self.first_seen.setdefault(message, trial.trial_id)
        return TrialFailure(trial_id=trial.trial_id, message=message, traceback_file=self._keep_traceback(trial),
                            attempt=int(getattr(trial, "num_failures", 0) or 0), first_seen_in=None if new else first)

    def _keep_traceback(self, trial: Any) -> Optional[Path]:
        """Copy Ray's error file of `trial` into the trial's own folder; return the copy (or Ray's file when there
        is no trials folder or the copy fails, or None when Ray wrote none)."""
        source = getattr(trial, "error_file", None)
        if not source or not Path(source).is_file():
            return None
        if self.trials_dir is None:
            return Path(source)
        target = self.trials_dir / trial.trial_id / ERROR_FILE
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        except OSError as exc:
            log.warning("could not copy %s to %s: %s", source, target, exc)
            return Path(source)
        return target


def _trial_error_message(trial: Any) -> str:
    """The error of the trial's newest failed attempt: from Ray's pickled error when it can be read, else from the
    last line of its error file, else 'unknown error'."""
    pickled = getattr(trial, "pickled_error_file", None)
    if pickled and Path(pickled).is_file():
        try:
            import ray.cloudpickle as cloudpickle

            with open(pickled, "rb") as f:
                return describe_error(cloudpickle.load(f))
        except Exception as exc:  # noqa: BLE001 - an unreadable pickle falls back to the text file
            log.debug("could not read %s: %s", pickled, exc)
    text_file = getattr(trial, "error_file", None)
    if text_file and Path(text_file).is_file():
        lines = [line.strip() for line in Path(text_file).read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "unknown error (Ray wrote no error file)"
