"""Tune stoppers that end a whole search: an epoch budget, and every trial failing with the same lasting error."""

from __future__ import annotations

from ray.tune import Stopper

from automl.search.guards import FAIL_KEY


class EpochBudget(Stopper):
    """Tune stopper: end the whole search once its trials have trained `budget` epochs in total (every reported
    epoch counts, including those of trials the scheduler stopped later and of trials that diverged)."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.spent: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.spent[trial_id] = max(self.spent.get(trial_id, 0), int(result.get("training_iteration", 0)))
        return False

    def stop_all(self) -> bool:
        return sum(self.spent.values()) >= self.budget


SEARCH_STOPPED = "search stopped: every trial before it failed with the same error"


class SameFailureStopper(Stopper):
    """Tune stopper: end the whole search when the first `min_failures` trials to end have all failed with the same
    error that no retry fixes (a bad data file, spec or checkpoint, a full disk) and none produced a result: every
    further trial would fail the same way."""

    def __init__(self, min_failures: int):
        self.min_failures = max(int(min_failures), 1)
        self.failures: dict[str, str] = {}
        self.succeeded = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(FAIL_KEY):
            self.failures[trial_id] = str(result[FAIL_KEY])
        elif result.get("epoch") is not None:
            self.succeeded = True
        return False

    def stop_all(self) -> bool:
        return (not self.succeeded and len(self.failures) >= self.min_failures
                and len(set(self.failures.values())) == 1)
