"""Stopping a search that cannot go on (the disk is full, an I/O error, a read-only filesystem) with every record in
a final state: the driver's status.json ends with FAILURE and the reason, every Optuna trial still RUNNING is told
FAIL, every MLflow run of the search still RUNNING ends FAILED, and the user gets one message saying how to continue
(`automl run --resume` after freeing space). A small reserve file, held in the results folder while the search runs,
is given back first so that these last writes fit on a full disk.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
from pathlib import Path
from typing import Any, Iterator, Optional

from automl.skills.shared import DiskReserve, UserError, storage_error, storage_message

log = logging.getLogger(__name__)

STOP_REASON_KEY = "automl.stop_reason"


class SearchStopped(UserError):
    """The search stopped on a storage error; its records are closed and `--resume` continues it."""


def reserve_for(results: Path) -> Optional[DiskReserve]:
    """A DiskReserve in `results` when the folder exists or can be made (else None: the search's own checks will
    say why it cannot write there)."""
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return DiskReserve(results)


def stop_on_storage_error(exc: BaseException, results: Path, reserve: Optional[DiskReserve]) -> SearchStopped:
    """Close the search's records after `exc` (a storage error) and return the error to raise instead of it."""
    disk = storage_error(exc)
    assert disk is not None
    if reserve is not None:
        reserve.release()
    _shutdown_ray()
    reason = "disk_full" if disk.errno in (28, 122) else "storage_error"  # ENOSPC, EDQUOT
    message = storage_message(disk, results)
    closed = {"optuna_trials": _fail_running_optuna_trials(results, reason),
              "mlflow_runs": _fail_running_mlflow_runs(results, reason, message)}
    _status_failure(results, message, reason, closed)
    return SearchStopped(f"{message} ({closed['optuna_trials']} Optuna trials told FAIL, {closed['mlflow_runs']} "
                         f"MLflow runs ended FAILED). Free space and continue with: automl run ... --resume")


class StopSignals:
    """What `stop_signals` saw: `interrupted` once the block has ended."""

    interrupted = False


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Around `tuner.fit()`: SIGTERM (a `kill`, a job scheduler's stop) is handled like Ctrl-C, which Ray Tune
    catches to stop the trials and save the experiment, so `--resume` continues from there. Tune hands the SIGINT
    handler it replaced back only when the signal came, which tells an interrupted search from a finished one
    (`StopSignals.interrupted`); a second Ctrl-C then raises KeyboardInterrupt at once."""
    seen = StopSignals()

    def on_int(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    def on_term(_signum: int, _frame: Any) -> None:
        seen.interrupted = True
        os.kill(os.getpid(), signal.SIGINT)

    try:
        previous = signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        yield seen
        return
    try:
        yield seen
    finally:
        seen.interrupted = seen.interrupted or signal.getsignal(signal.SIGINT) is on_int
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def search_interrupted(results: Path, status: Any, unfinished: list[str]) -> KeyboardInterrupt:
    """Record that the search was stopped from outside (SIGINT/SIGTERM) and return the interrupt to raise: one line
    saying how to continue. Nothing is marked final: the Optuna trials, the MLflow runs and Tune's state are kept
    for `--resume`."""
    which = f" with {len(unfinished)} trial(s) unfinished ({', '.join(unfinished)})" if unfinished else ""
    message = (f"the search was stopped{which}; its state is saved in {results}; continue with: automl run ... "
               f"--resume")
    try:
        status.write("STOPPED", message, reason="interrupted", unfinished=unfinished, resumable=True)
    except OSError as exc:
        log.warning("could not record the stop in %s: %s", results / "status.json", exc)
    _shutdown_ray()
    return KeyboardInterrupt(message)


def _shutdown_ray() -> None:
    """Stop the trials first, so that nothing writes while the records are closed."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the records matter more
        log.warning("could not shut Ray down cleanly", exc_info=True)


def _fail_running_optuna_trials(results: Path, reason: str) -> int:
    db = results / "optuna.db"
    if not db.is_file():
        return 0
    try:
        import optuna

        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        n = 0
        for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                storage.set_trial_user_attr(t._trial_id, STOP_REASON_KEY, reason)
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                n += 1
        return n
    except Exception as exc:  # noqa: BLE001
        log.warning("could not close the Optuna trials in %s: %s", db, exc)
        return 0


def _fail_running_mlflow_runs(results: Path, reason: str, message: str) -> int:
    """End every RUNNING run of the search's MLflow store FAILED (the parent and its trials)."""
    import json

    try:
        state = json.loads((results / "search_state.json").read_text())
    except (OSError, ValueError):
        return 0
    uri, parent = state.get("tracking_uri"), state.get("parent_run_id")
    if not uri or not parent:
        return 0
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp_id = client.get_run(parent).info.experiment_id
        runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        targets = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        if client.get_run(parent).info.status == "RUNNING":
            targets.append(parent)
        for run_id in targets:
            client.set_tag(run_id, STOP_REASON_KEY, reason)
            client.set_tag(run_id, "failure_message", message[:4000])
            with contextlib.redirect_stdout(io.StringIO()):
                client.set_terminated(run_id, status="FAILED")
        return len(targets)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not close the MLflow runs in %s: %s", uri, exc)
        return 0


def _status_failure(results: Path, message: str, reason: str, closed: dict[str, Any]) -> None:
    from automl.skills.shared import StatusFile

    try:
        StatusFile(results / "status.json").write("FAILURE", message, reason=reason, resumable=True, **closed)
    except OSError as exc:
        log.warning("could not write FAILURE to %s: %s", results / "status.json", exc)
