"""The live trial table printed during a search.

On a terminal it is redrawn in place (at most every 2 s); when stdout is a file or a pipe it writes one line per
trial start/end and a one-line summary at most every 60 s, so a log stays readable. A failed attempt of a trial
(retried or given up) is one line in both cases: the error itself the first time it is seen, "same error as TRIAL"
after that, and the file holding its traceback (automl.search.trial_errors).
"""

from __future__ import annotations

import errno
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from automl.search.guards import DISK_FULL_PREFIX, FAIL_KEY, PRUNE_KEY, SearchStorageError, is_finite_number
from automl.search.states import TrialState
from automl.search.trial_errors import TrialErrors, TrialFailure


class TrialTable(Callback):
    """Ray Tune callback that shows the search's trials; `trials_dir` (the search's trials/ folder) receives each
    failed trial's traceback as `<trial_id>/error.txt`."""

    def __init__(self, space: Any, num_epochs: int, trials_dir: Optional[Path] = None):
        self.space = space
        self.num_epochs = num_epochs
        self.errors = TrialErrors(trials_dir)
        self.rows: dict[str, dict[str, Any]] = {}
        self._last_draw = 0.0
        self._drawn_lines = 0
        self._last_summary = time.time()

    @property
    def stream(self) -> Any:
        return sys.stdout  # looked up at each write: Ray pickles callbacks with the experiment state

    # ---- Tune hooks ---------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["state"] = TrialState.RUNNING
        if "epoch" not in row:  # a trial restored by --resume: what it reported under the previous driver
            self._seed_from_restored(trial, row)
        self._event(f"start  {trial.trial_id}  {self._params(trial)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial)
        if result.get(PRUNE_KEY):
            row["state"] = TrialState.PRUNED
            row["reason"] = result.get(PRUNE_KEY)
            return
        if result.get(FAIL_KEY):
            row["state"] = TrialState.ERROR
            row["reason"] = result.get(FAIL_KEY)
            if str(result[FAIL_KEY]).startswith(DISK_FULL_PREFIX):  # no trial can write: stop the search
                raise SearchStorageError(errno.ENOSPC, f"trial {trial.trial_id} could not write "
                                                       f"({result[FAIL_KEY]})")
            return
        row["epoch"] = int(result.get("epoch", -1)) + 1
        value = result.get(self.space.metric)
        if is_finite_number(value):
            best = row.get("best")
            if best is None or (value < best if self.space.mode == "min" else value > best):
                row["best"] = float(value)
        self._maybe_draw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        if row.get("state") not in (TrialState.PRUNED, TrialState.ERROR):
            row["state"] = TrialState.COMPLETED if row.get("epoch", 0) >= self.num_epochs else TrialState.STOPPED
        extra = f" ({row.get('reason')})" if row.get("reason") else ""
        self._event(f"{row['state']:<9} {trial.trial_id}  best {self.space.metric}={_fmt(row.get('best'))}  "
                    f"epochs={row.get('epoch', 0)}{extra}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["state"] = TrialState.ERROR
        failure = self._errors().record(trial)
        row["reason"] = failure.message
        said, log = _failure_words(failure)
        self._failure_line(f"[search] error     {trial.trial_id}  {said} (traceback: {log}); "
                           f"gave up after {failure.attempt} attempt(s)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        failure = self._errors().record(trial)
        limit = getattr(trial, "max_failures", -1)
        of = f" of {limit + 1}" if isinstance(limit, int) and limit >= 0 else ""
        start = "its last checkpoint" if _has_checkpoint(trial) else "the start"
        said, log = _failure_words(failure)
        self._failure_line(f"[search] retry     {trial.trial_id}  {said} (traceback: {log}); "
                           f"retrying from {start} (attempt {failure.attempt + 1}{of})")

    def _errors(self) -> TrialErrors:
        """The search's TrialErrors (a table pickled by an older version, restored by --resume, gets one)."""
        if not hasattr(self, "errors"):
            self.errors = TrialErrors(None)
        return self.errors

    @property
    def unfinished(self) -> list[str]:
        """Trials started or waiting that have not ended (after an interrupted search: what --resume continues)."""
        return [tid for tid, row in self.rows.items() if row["state"] in (TrialState.RUNNING, TrialState.PENDING)]

    def _seed_from_restored(self, trial: Any, row: dict[str, Any]) -> None:
        last = getattr(trial, "last_result", None) or {}
        if isinstance(last.get("epoch"), (int, float)):
            row["epoch"] = int(last["epoch"]) + 1
        seen = (getattr(trial, "metric_analysis", None) or {}).get(self.space.metric) or {}
        best = seen.get(self.space.mode)
        if is_finite_number(best):
            row["best"] = float(best)

    # ---- drawing ------------------------------------------------------------------------------------------------
    def _row(self, trial: Any) -> dict[str, Any]:
        return self.rows.setdefault(trial.trial_id, {"state": TrialState.PENDING, "params": dict(trial.config or {})})

    def _params(self, trial: Any) -> str:
        cfg = trial.config or {}
        return "  ".join(f"{k.split('.')[-1]}={_fmt(cfg[k])}" for k in self.space.names if k in cfg)

    def _tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _failure_line(self, line: str) -> None:
        """One line for a failed attempt, shown on a terminal too (above the table, which is redrawn below it)."""
        if self._tty():
            if self._drawn_lines:
                self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
                self._drawn_lines = 0
            self.stream.write(line + "\n")
            self._draw(force=True)
        else:
            print(line, file=self.stream, flush=True)

    def _event(self, line: str) -> None:
        if self._tty():
            self._draw(force=True)
        else:
            print(f"[search] {line}", file=self.stream, flush=True)

    def _maybe_draw(self) -> None:
        if self._tty():
            self._draw()
        elif time.time() - self._last_summary > 60:
            self._last_summary = time.time()
            counts: dict[str, int] = {}
            for r in self.rows.values():
                counts[str(r["state"])] = counts.get(str(r["state"]), 0) + 1  # plain names, as in summary.json
            best = [r["best"] for r in self.rows.values() if r.get("best") is not None]
            top = (min(best) if self.space.mode == "min" else max(best)) if best else None
            shown = "  ".join(f"{state}={n}" for state, n in counts.items())
            print(f"[search] {shown}  best {self.space.metric}={_fmt(top)}", file=self.stream, flush=True)

    def _draw(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_draw < 2.0:
            return
        self._last_draw = now
        names = self.space.names
        lines = [f"{'trial':<14}{'state':<10}{'epoch':>6}  {'best ' + self.space.metric:>16}  "
                 + "  ".join(f"{n.split('.')[-1][:12]:>12}" for n in names)]
        for tid, r in self.rows.items():
            lines.append(f"{tid[:13]:<14}{r['state']:<10}{r.get('epoch', 0):>6}  {_fmt(r.get('best')):>16}  "
                         + "  ".join(f"{_fmt(r['params'].get(n)):>12}" for n in names))
        if self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn_lines = len(lines)


def _failure_words(failure: TrialFailure) -> tuple[str, str]:
    """What a failed attempt's line says of its error (the text when first seen, else which trial showed it first)
    and of its traceback file."""
    if failure.first_seen_in is None:
        said = failure.message
    elif failure.first_seen_in == failure.trial_id:
        said = "same error again"
    else:
        said = f"same error as {failure.first_seen_in}"
    return said, str(failure.traceback_file) if failure.traceback_file else "none written"


def _has_checkpoint(trial: Any) -> bool:
    """Whether Ray Tune holds a checkpoint of `trial` to continue from."""
    try:
        return trial.checkpoint is not None
    except Exception:  # noqa: BLE001 - a trial object of another Ray version: say "the start"
        return False


def _fmt(v: Optional[Any]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)
