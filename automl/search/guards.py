"""Keeping non-finite results away from the searcher and the scheduler.

A trial whose loss goes NaN/inf sends one last report flagged `prune_reason` with the objective set to None (the
key must be present for Tune's metric check; the value must never be a number that pretends to be a result).
These small subclasses make sure that report is never ranked: the scheduler stops the trial without recording it,
and Optuna records the trial as PRUNED (the trap in Ray's OptunaSearch: telling Optuna COMPLETE with NaN raises,
Ray only logs it, and the Optuna trial stays RUNNING forever).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

PRUNE_KEY = "prune_reason"
# A trial that failed for a reason a retry would repeat (out of memory) ends with one report flagged `fail_reason`,
# objective None: recorded as an error (Optuna FAIL) without Ray retrying it.
FAIL_KEY = "fail_reason"
# a `fail_reason` that starts with this: the trial's disk is full (or failing); the whole search stops
DISK_FULL_PREFIX = "storage_error"


class SearchStorageError(OSError):
    """Raised in the driver when a trial reports that it could not write: stops the search (see automl.search.stop)."""


def is_pruned_result(result: Optional[dict]) -> bool:
    return bool(result) and bool(result.get(PRUNE_KEY))


def is_failed_result(result: Optional[dict]) -> bool:
    return bool(result) and bool(result.get(FAIL_KEY))


def is_flagged_result(result: Optional[dict]) -> bool:
    """A pruned or failed trial's last report: never ranked by the searcher or a scheduler."""
    return is_pruned_result(result) or is_failed_result(result)


def is_finite_number(x: Any) -> bool:
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


class GuardedOptunaSearch(OptunaSearch):
    """OptunaSearch that records flagged (diverged) trials as PRUNED, never reports a non-finite value, and tells
    Optuna each finished trial's best value (Ray's tells the last one, as TAO does).

    Resume after a driver crash: Tune restores this searcher from its last snapshot, which can be older than the
    Optuna study (a trial told COMPLETE after the snapshot). The study in its database is the truth: a trial it holds
    as finished is never reported to or told again."""

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id not in self._completed_trials and _finished_in_study(ot_trial):
                self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if is_flagged_result(result) or not is_finite_number(value) or trial_id in self._completed_trials:
            return
        best = getattr(self, "_best_values", None)
        if best is None:
            best = self._best_values = {}
        prev = best.get(trial_id)
        better = prev is None or (value < prev if self._mode == "min" else value > prev)
        if better:
            best[trial_id] = float(value)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        if _finished_in_study(ot_trial):  # told before the crash the restored snapshot predates
            self._completed_trials.add(trial_id)
            return
        from optuna.trial import TrialState

        if is_pruned_result(result):
            ot_trial.set_user_attr(PRUNE_KEY, str(result.get(PRUNE_KEY)))
            _tell_study(self._ot_study, ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if is_failed_result(result):
            ot_trial.set_user_attr(FAIL_KEY, str(result.get(FAIL_KEY)))
            _tell_study(self._ot_study, ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        best = (getattr(self, "_best_values", None) or {}).get(trial_id)
        # the result that made the scheduler stop the trial reaches the searcher only here
        last = (result or {}).get(self.metric)
        if is_finite_number(last) and (best is None or (last < best if self._mode == "min" else last > best)):
            best = float(last)
        if error or best is None:
            # an error, or stopped before its first validation: no finite objective to tell
            _tell_study(self._ot_study, ot_trial, state=TrialState.FAIL if error else TrialState.PRUNED)
        else:
            _tell_study(self._ot_study, ot_trial, best, state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)


def _finished_in_study(ot_trial: Any) -> bool:
    """Whether the study's storage already holds `ot_trial` as finished (COMPLETE, PRUNED or FAIL)."""
    try:
        return bool(ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished())
    except Exception:  # noqa: BLE001 - unknown to the storage: let `tell` decide
        return False


def _tell_study(study: Any, ot_trial: Any, *args: Any, **kwargs: Any) -> None:
    """Optuna's `tell`. Its grid sampler calls `Study.stop()` after the grid's last point, which Optuna allows only
    inside `optimize()`; the result is stored before that call, and Tune's sample count ends the search anyway."""
    try:
        study.tell(ot_trial, *args, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


class _StopFlaggedResults:
    """Mixin for Tune schedulers: a flagged (diverged or failed) result stops the trial without entering the
    statistics."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if is_flagged_result(result):
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if is_flagged_result(result) or not is_finite_number((result or {}).get(self._metric)):
            self.on_trial_remove(tune_controller, trial)  # type: ignore[attr-defined]
            return
        super().on_trial_complete(tune_controller, trial, result)  # type: ignore[misc]


class GuardedASHA(_StopFlaggedResults, ASHAScheduler):
    pass


class GuardedHyperBand(_StopFlaggedResults, HyperBandScheduler):
    pass


class GuardedMedianStopping(_StopFlaggedResults, MedianStoppingRule):
    pass


class GuardedFIFO(_StopFlaggedResults, FIFOScheduler):
    pass


def build_scheduler(name: str, *, metric: str, mode: str, max_t: int, grace_period: int,
                    reduction_factor: int) -> TrialScheduler:
    """asha (default; rungs on validation epochs) | hyperband (TAO-like: R = num_epochs, eta = reduction_factor)
    | median | none."""
    grace = max(1, min(grace_period, max_t))
    if name == "asha":
        # stop_last_trials=False: a trial that reaches max_t ends by itself (its trainer finishes cleanly)
        return GuardedASHA(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                           grace_period=grace, reduction_factor=reduction_factor, stop_last_trials=False)
    if name == "hyperband":
        return GuardedHyperBand(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                                reduction_factor=reduction_factor)
    if name == "median":
        return GuardedMedianStopping(time_attr="training_iteration", metric=metric, mode=mode,
                                     grace_period=grace, min_samples_required=3)
    return GuardedFIFO()
