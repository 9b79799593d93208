"""A user's first hour: relative paths mean the folder the user ran the command from (for every trial, which Ray runs
in its own folder), and a problem no retry can fix stops the search at once with the real cause.

These tests run the installed `automl` command in a folder that is not the repository, with the relative paths a
user writes, as the README and docs tell a user to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import search_space_text, tiny_spec_tree, write_yaml

AUTOML = str(Path(sys.executable).with_name("automl"))


def _project(synth_data: Path, root: Path) -> Path:
    """A user's project folder: the data copied under ./data (annotation files keep their relative image paths)."""
    shutil.copytree(synth_data, root / "data")
    return root


def _relative_spec(root: Path, *, epochs: int = 1, **automl) -> Path:
    """spec.yaml in `root` whose every path is relative to `root`."""
    tree = tiny_spec_tree(Path("data"), Path("results/search"), epochs=epochs)
    tree["automl"] = {"num_trials": 2, "max_concurrent": 2, "scheduler": "none", "cpus_per_trial": 1,
                      "export": "none", **automl}
    return write_yaml(root / "spec.yaml", tree)


def _automl(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([AUTOML, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_relative_spec_paths_are_resolved_once_against_the_cwd(synth_data, tmp_path, monkeypatch):
    from trainer.config import build_spec, with_overrides

    monkeypatch.chdir(tmp_path)
    tree = tiny_spec_tree(Path("data"), Path("results/x"))
    tree["automl"] = {"search_space": "spaces/mine.yaml", "tracking_uri": "sqlite:///db/mlflow.db",
                      "storage_path": "s3://bucket/ray"}
    tree["evaluate"] = {"checkpoint": "~/models/best.ckpt", "trt_engine": ""}
    spec = build_spec(tree, action="train", check_files=False, notice=lambda _m: None)
    assert spec.results_dir == str(tmp_path / "results/x")
    assert spec.dataset.train_dataset.data_sources[0].data_file == str(tmp_path / "data/train.txt")
    assert spec.automl.search_space == str(tmp_path / "spaces/mine.yaml")
    assert spec.automl.tracking_uri == f"sqlite:///{tmp_path}/db/mlflow.db"
    assert spec.automl.storage_path == "s3://bucket/ray"  # a URI is not a local path
    assert spec.evaluate.checkpoint == str(Path.home() / "models/best.ckpt")
    assert spec.evaluate.trt_engine is None  # empty means "no path" (TAO)
    # a trial loads the resolved spec again from its own folder: nothing moves
    monkeypatch.chdir(tmp_path / "..")
    again = with_overrides(spec, {"train.optim.lr": 1e-4})
    assert again.dataset.train_dataset.data_sources[0].data_file == str(tmp_path / "data/train.txt")
    assert again.results_dir == str(tmp_path / "results/x")


@pytest.mark.slow
def test_a_search_and_a_plain_run_with_relative_paths_from_the_users_folder(synth_data, tmp_path):
    root = _project(synth_data, tmp_path / "my project")
    _relative_spec(root)
    (root / "space.yaml").write_text(search_space_text(diverge=False))
    run = _automl(["run", "-e", "spec.yaml", "--search-space", "space.yaml"], root)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((root / "results/search/summary.json").read_text())
    assert summary["winner"] and {t["state"] for t in summary["trials"]} == {"completed"}
    for t in summary["trials"]:  # the summary shows where things are, absolutely
        assert Path(t["results_dir"]).is_absolute() and Path(t["results_dir"], "checkpoints/last.ckpt").is_file()
    assert summary["mlflow"]["tracking_uri"] == f"sqlite:///{root / 'results/search/mlflow.db'}"
    assert (root / "results/search/report/report.html").is_file()
    trial_spec = yaml.safe_load((root / "results/search/best/spec.yaml").read_text())
    assert trial_spec["dataset"]["train_dataset"]["data_sources"][0]["data_file"] == str(root / "data/train.txt")

    off = _automl(["off", "-e", "spec.yaml", "results_dir=results/plain"], root)
    assert off.returncode == 0, off.stderr[-3000:]
    fit = json.loads((root / "results/plain/fit.json").read_text())
    assert fit["epochs_completed"] == 1 and Path(fit["best_checkpoint"]).is_file()


def test_a_missing_data_file_stops_the_search_in_seconds_naming_it(synth_data, tmp_path):
    root = _project(synth_data, tmp_path / "proj")
    _relative_spec(root)
    (root / "data/train.txt").unlink()
    started = time.time()
    run = _automl(["run", "-e", "spec.yaml"], root, timeout=120)
    assert run.returncode == 2
    assert f"file not found: {root / 'data/train.txt'}" in run.stderr
    assert "Traceback" not in run.stderr and time.time() - started < 60
    assert not (root / "results/search/trials").exists()  # no trial was started


def test_an_empty_annotation_file_stops_the_search_before_any_trial(synth_data, tmp_path):
    root = _project(synth_data, tmp_path / "proj")
    _relative_spec(root)
    (root / "data/val.txt").write_text("")
    run = _automl(["run", "-e", "spec.yaml"], root, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "val.txt" in run.stderr and "Traceback" not in run.stderr
    assert "learning-rate" not in run.stderr
    assert not (root / "results/search/trials").exists()


@pytest.mark.slow
def test_trials_failing_with_one_lasting_error_are_not_retried_and_stop_the_search(synth_data, tmp_path):
    """An error a retry cannot fix (here a checkpoint the search space points at that does not exist) ends each trial
    at once, and when every trial so far failed with it, the search stops and says it, without a learning-rate hint."""
    root = _project(synth_data, tmp_path / "proj")
    _relative_spec(root, num_trials=6, max_failures=2)
    (root / "space.yaml").write_text("objective: {metric: val/loss, mode: min}\nparameters:\n"
                                     "  train.pretrained_model_path: {type: categorical, choices: [nowhere.pth]}\n")
    run = _automl(["run", "-e", "spec.yaml", "--search-space", "space.yaml"], root)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "every trial failed with the same error" in run.stderr and "nowhere.pth" in run.stderr
    assert "learning-rate" not in run.stderr and "Traceback" not in run.stderr
    summary = json.loads((root / "results/search/summary.json").read_text())
    assert summary["num_trials"] < 6  # stopped early
    failed = [t for t in summary["trials"] if t["state"] == "error"]
    assert len(failed) >= 2 and all(t["reason"].startswith("bad_checkpoint") for t in failed)
    others = [t for t in summary["trials"] if t not in failed]  # started as the search stopped: not a result
    assert all(t["epochs"] == 0 and t["reason"].startswith("search stopped") for t in others)
    for t in failed:  # the trial's own record says why
        last = json.loads((Path(t["results_dir"]) / "status.json").read_text().splitlines()[-1])
        assert last["status"] == "FAILURE" and "nowhere.pth" in last["message"]
    ray_errors = list((root / "results/search/ray").rglob("error.txt"))
    assert not ray_errors, "a lasting error went through Ray's retry path"


@pytest.mark.slow
def test_trials_raising_one_runtime_error_show_it_once_and_no_ray_traceback(synth_data, tmp_path):
    """An error no check foresaw (a RuntimeError from the model) goes through Ray's retry path: every attempt of
    every trial fails with it. The terminal shows one line per failed attempt, the error's text once, each trial's
    traceback file by name, and none of Ray's tracebacks."""
    from automl.testing import RUNTIME_ERROR_ENV, SIMULATED_RUNTIME_ERROR

    root = _project(synth_data, tmp_path / "proj")
    _relative_spec(root, num_trials=2, max_concurrent=2, max_failures=1)
    (root / "space.yaml").write_text(search_space_text(diverge=False))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), RUNTIME_ERROR_ENV: "*:1"}
    env.pop("TUNE_PRINT_ALL_TRIAL_ERRORS", None)
    run = subprocess.run([AUTOML, "run", "-e", "spec.yaml", "--search-space", "space.yaml"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 2, run.stderr[-3000:]
    terminal = run.stdout + run.stderr
    assert terminal.count("Traceback") == 0 and 'File "' not in terminal, run.stderr[-3000:]
    assert "Trials did not complete" not in terminal
    failed = [line for line in run.stdout.splitlines() if line.startswith(("[search] retry", "[search] error"))]
    assert len(failed) == 4, run.stdout  # 2 trials x (1 try + 1 retry): one line each
    assert run.stdout.count(SIMULATED_RUNTIME_ERROR) == 1, run.stdout  # the error's text once ...
    assert sum("same error" in line for line in failed) == 3  # ... then named as seen
    summary = json.loads((root / "results/search/summary.json").read_text())
    assert {t["reason"] for t in summary["trials"]} == {f"RuntimeError: {SIMULATED_RUNTIME_ERROR}"}
    for t in summary["trials"]:  # each trial's traceback (both attempts) is in its own folder, named on its lines
        log = Path(t["results_dir"]) / "error.txt"
        assert sum(f"traceback: {log})" in line for line in failed) == 2
        text = log.read_text()
        assert text.count("Failure #") == 2 and 'File "' in text and SIMULATED_RUNTIME_ERROR in text
    assert f"RuntimeError: {SIMULATED_RUNTIME_ERROR}" in run.stderr  # the closing message names it


def test_the_failure_message_names_the_shared_error_and_hints_at_the_lr_only_when_trials_diverged(tmp_path):
    from automl.search.stoppers import SEARCH_STOPPED
    from automl.search.winner import TrialRecord, failure_message

    def rec(state, reason):
        return TrialRecord(trial_id=state, params={}, state=state, best=None, best_epoch=None, epochs=0,
                           reason=reason)

    same = failure_message([rec("error", "bad_data: x.png: unreadable")] * 3, "val/loss", tmp_path / "s.json")
    assert "every trial failed with the same error: bad_data" in same and "x.png" in same
    assert "learning-rate" not in same and "search stopped" not in same  # all three ran: nothing was cut short
    cut = failure_message([rec("error", "bad_data: x.png: unreadable")] * 2 + [rec("stopped", SEARCH_STOPPED)],
                          "val/loss", tmp_path / "s.json")
    assert "every trial failed with the same error, so the search stopped: bad_data" in cut
    diverged = failure_message([rec("pruned", "non_finite_loss"), rec("error", "out_of_memory: ...")],
                               "val/loss", tmp_path / "s.json")
    assert "learning-rate" in diverged and "out_of_memory" in diverged
    assert "'pruned': 1" in diverged and "TrialState" not in diverged  # plain names, as in summary.json


def test_a_trial_error_with_an_empty_message_is_described_not_raised():
    from automl.search.trial import deterministic_failure
    from trainer.errors import CheckpointError, DataError, first_line

    assert first_line(RuntimeError("")) == "RuntimeError"
    assert deterministic_failure(DataError("")) == "bad_data: DataError"
    assert deterministic_failure(CheckpointError("\n  x.pth: not found\n")) == "bad_checkpoint: x.pth: not found"
    assert deterministic_failure(OSError(28, "No space left on device", "/r/last.ckpt")).startswith("storage_error")
    assert deterministic_failure(ConnectionResetError(104, "reset")) is None  # may pass on a retry
