"""How a trial ended: one vocabulary for summary.json, the terminal table, the report and MLflow's tags and run
statuses. `TrialState` is a `StrEnum`, so its members are the plain strings those files hold ("completed", ...)."""

from __future__ import annotations

from enum import StrEnum


class TrialState(StrEnum):
    PENDING = "pending"  # proposed, not started (terminal table only)
    RUNNING = "running"  # started, not ended (terminal table; a report written while the search runs)
    COMPLETED = "completed"  # trained every epoch
    STOPPED = "stopped"  # ended early by the scheduler (or by the search's own stop), with a result so far
    PRUNED = "pruned"  # its loss became NaN/inf: stopped at that step, never ranked
    ERROR = "error"  # failed (a lasting error, or one Ray's retries did not get past)
    ORPHANED = "orphaned"  # started after the last snapshot of a driver that died; its point ran again

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status of a trial that ended so: a result (FINISHED), a failure, or cut off (KILLED)."""
        return {TrialState.COMPLETED: "FINISHED", TrialState.STOPPED: "FINISHED", TrialState.ERROR: "FAILED",
                TrialState.PRUNED: "KILLED", TrialState.ORPHANED: "KILLED"}.get(self, "RUNNING")

    @property
    def has_result(self) -> bool:
        """Whether the trial's best objective value may be ranked (the winner is one of these)."""
        return self in (TrialState.COMPLETED, TrialState.STOPPED)


ENDED = (TrialState.COMPLETED, TrialState.STOPPED, TrialState.PRUNED, TrialState.ERROR)  # counted in summary.json
