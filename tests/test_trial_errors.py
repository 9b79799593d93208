"""Trial errors in the terminal: Ray's error unwrapped to the trial's own, each distinct error shown once, the
traceback copied into the trial's folder, and Ray's per-attempt tracebacks turned off."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import ray.cloudpickle as cloudpickle
from ray.exceptions import RayTaskError

from automl.search.trial_errors import TrialErrors, describe_error, quiet_ray_trial_errors


def ray_error(exc: Exception) -> Exception:
    """The error Ray Tune hands over for a trial that raised `exc` (a RayTaskError that is also exc's type)."""
    text = f"Traceback (most recent call last):\n  File \"model.py\", line 1, in forward\n{type(exc).__name__}: {exc}"
    return RayTaskError("train", text, exc).as_instanceof_cause()


def failed_trial(folder: Path, trial_id: str, exc: Exception, attempt: int = 1) -> SimpleNamespace:
    """What Ray leaves for a failed attempt: error.txt (every attempt's text) and error.pkl (the newest error)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "error.txt", "a") as f:
        f.write(f"Failure # {attempt}\n{ray_error(exc)}\n")
    with open(folder / "error.pkl", "wb") as f:
        cloudpickle.dump(ray_error(exc), f)
    return SimpleNamespace(trial_id=trial_id, error_file=str(folder / "error.txt"),
                           pickled_error_file=str(folder / "error.pkl"), num_failures=attempt)


def test_describe_error_unwraps_rays_task_error():
    assert describe_error(ray_error(RuntimeError("bad shape\nmore"))) == "RuntimeError: bad shape"
    assert describe_error(ValueError("")) == "ValueError: ValueError"


def test_each_distinct_error_is_new_once_and_tracebacks_land_in_the_trials_folder(tmp_path):
    errors = TrialErrors(tmp_path / "trials")
    a1 = errors.record(failed_trial(tmp_path / "ray/a", "a", RuntimeError("boom")))
    b1 = errors.record(failed_trial(tmp_path / "ray/b", "b", RuntimeError("boom")))
    a2 = errors.record(failed_trial(tmp_path / "ray/a", "a", RuntimeError("boom"), attempt=2))
    c1 = errors.record(failed_trial(tmp_path / "ray/c", "c", KeyError("lr")))
    assert (a1.message, a1.first_seen_in) == ("RuntimeError: boom", None)
    assert (b1.first_seen_in, a2.first_seen_in, a2.attempt) == ("a", "a", 2)
    assert (c1.message, c1.first_seen_in) == ("KeyError: 'lr'", None)
    assert a2.traceback_file == tmp_path / "trials/a/error.txt"
    assert a2.traceback_file.read_text().count("Failure #") == 2


def test_without_a_pickle_the_last_line_of_rays_error_file_is_the_message(tmp_path):
    trial = failed_trial(tmp_path / "ray/a", "a", RuntimeError("boom"))
    Path(trial.pickled_error_file).unlink()
    failure = TrialErrors(None).record(trial)
    assert failure.message == "RuntimeError: boom" and failure.traceback_file == Path(trial.error_file)


def test_quiet_ray_trial_errors_turns_off_tunes_tracebacks_and_closing_list(monkeypatch, caplog):
    monkeypatch.delenv("TUNE_PRINT_ALL_TRIAL_ERRORS", raising=False)
    quiet_ray_trial_errors()
    quiet_ray_trial_errors()  # idempotent
    import os

    assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
    tune_log = logging.getLogger("ray.tune.tune")
    assert sum(type(f).__name__ == "_DropIncompleteTrials" for f in tune_log.filters) == 1
    with caplog.at_level(logging.ERROR, logger="ray.tune.tune"):
        tune_log.error("Trials did not complete: %s", ["t1"])
        tune_log.error("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_a_user_can_keep_rays_tracebacks(monkeypatch):
    import os

    monkeypatch.setenv("TUNE_PRINT_ALL_TRIAL_ERRORS", "1")
    quiet_ray_trial_errors()
    assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "1"


def test_the_trial_table_prints_one_line_per_failed_attempt_with_the_error_once(tmp_path, capsys):
    from automl.search.progress import TrialTable

    space = SimpleNamespace(names=["train.optim.lr"], metric="val/loss", mode="min")
    table = TrialTable(space, num_epochs=2, trials_dir=tmp_path / "trials")
    trials = []
    for tid in ("a", "b"):
        t = failed_trial(tmp_path / "ray" / tid, tid, RuntimeError("boom"))
        t.config, t.max_failures, t.checkpoint = {"train.optim.lr": 1e-3}, 1, None
        trials.append(t)
    table.on_trial_recover(0, trials, trials[0])
    table.on_trial_recover(0, trials, trials[1])
    again = failed_trial(tmp_path / "ray/a", "a", RuntimeError("boom"), attempt=2)
    again.config, again.max_failures, again.checkpoint = {"train.optim.lr": 1e-3}, 1, None
    table.on_trial_error(0, trials, again)
    lines = capsys.readouterr().out.splitlines()
    log_a, log_b = tmp_path / "trials/a/error.txt", tmp_path / "trials/b/error.txt"
    assert lines == [
        f"[search] retry     a  RuntimeError: boom (traceback: {log_a}); retrying from the start (attempt 2 of 2)",
        f"[search] retry     b  same error as a (traceback: {log_b}); retrying from the start (attempt 2 of 2)",
        f"[search] error     a  same error again (traceback: {log_a}); gave up after 2 attempt(s)",
    ]
    assert table.rows["a"]["state"] == "error" and table.rows["a"]["reason"] == "RuntimeError: boom"


def test_the_trial_tables_periodic_line_counts_states_by_their_plain_names(tmp_path, capsys):
    from automl.search.progress import TrialTable
    from automl.search.states import TrialState

    space = SimpleNamespace(names=["train.optim.lr"], metric="val/loss", mode="min")
    table = TrialTable(space, num_epochs=3)
    table.rows = {"a": {"state": TrialState.RUNNING, "best": 0.4}, "b": {"state": TrialState.RUNNING, "best": 0.3},
                  "c": {"state": TrialState.STOPPED, "best": 0.5}}
    table._last_summary = 0.0  # a minute has passed
    table._maybe_draw()
    assert capsys.readouterr().out == "[search] running=2  stopped=1  best val/loss=0.3\n"
