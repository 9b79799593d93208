"""Reliability (issue #7): no finished work is lost to a crash, a diverging trial, an out-of-memory trial or a tracking
server that goes away, and the search refuses to start where it could not finish (unreachable tracking store,
unwritable or full results disk). docs/reliability.md maps every row of the issue to the test that proves it.

The faults are injected through test hooks (automl/testing.py: environment variables that no spec key or CLI flag
reaches), into real searches of tiny models on synthetic scenes. One search carries three faults in three different
trials, chosen with a seeded random generator (RELIABILITY_SEED to vary it), and a fourth trial without any: every
fault must stay inside its trial.
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, mounted_tmpfs, status_lines, tiny_spec_tree, wait_http, write_yaml

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("RELIABILITY_SEED", "7"))
BATCH = 8  # tiny_spec_tree's train batch size
MLFLOW_HTTP_KEYS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT")


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def search_tree(data: Path, results: Path, *, epochs: int, num_trials: int, max_concurrent: int) -> dict[str, Any]:
    tree = tiny_spec_tree(data, results, epochs=epochs, lr=1e-3)
    tree["automl"] = {"num_trials": num_trials, "max_concurrent": max_concurrent, "scheduler": "none",
                      "cpus_per_trial": 1, "max_failures": 1, "export": "none"}
    return tree


def space_yaml(tmp: Path) -> Path:
    """A range in which every trial trains: any divergence or failure comes from a hook."""
    p = tmp / "space.yaml"
    p.write_text("objective: {metric: val/loss, mode: min}\n"
                 "parameters:\n"
                 "  train.optim.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}\n")
    return p


def trial_order(results: Path) -> list[str]:
    """Trial ids by sequence number (the TRIAL_INDEX of the hooks)."""
    return (results / "trials" / ".order").read_text().split()


def trials_by_start(results: Path) -> list[str]:
    """Trial ids in the order they started (trials that run one at a time)."""
    def started(folder: Path) -> str:
        first = status_lines(folder)[0]
        return time.strftime("%Y%m%d", time.strptime(first["date"], "%m/%d/%Y")) + first["time"]

    return [p.name for p in sorted((p for p in (results / "trials").iterdir() if p.is_dir()), key=started)]


def run_cli(args: list[str], log: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`automl ARGS` in its own process group (so that the Ray processes it starts can all be stopped)."""
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "automl.cli", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"automl {' '.join(args)} did not finish in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        finally:
            _stop_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # our own process group only (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=60)


def child_runs(uri: str) -> tuple[Any, Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("depth_net_mono")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("automl.role") == "search"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


# --------------------------------------------------------------------------------------------------------------
# one search, three faults in three trials (chosen at random, seeded), one trial untouched
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_search(synth_data, tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    results = tmp / "search"
    epochs, num_trials = 2, 4
    per_epoch = math.ceil(len((synth_data / "train.txt").read_text().splitlines()) / BATCH)
    rng = random.Random(SEED)
    kill, oom, nan, clean = rng.sample(range(num_trials), 4)
    plan = {"kill": kill, "oom": oom, "nan": nan, "clean": clean, "kill_epoch": 1, "steps_per_epoch": per_epoch,
            "oom_step": rng.randrange(per_epoch * epochs), "nan_step": rng.randrange(per_epoch * epochs),
            "seed": SEED}
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "AUTOML_TESTING_KILL_WORKER": f"{kill}:{plan['kill_epoch']}",
           "AUTOML_TESTING_OUT_OF_MEMORY": f"{oom}:{plan['oom_step']}",
           "AUTOML_TESTING_INJECT_NONFINITE": f"{nan}:{plan['nan_step']}"}
    spec = write_yaml(tmp / "spec.yaml", search_tree(synth_data, results, epochs=epochs, num_trials=num_trials,
                                                     max_concurrent=2))
    before = set(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"))
    done = run_cli(["run", "-e", str(spec), "--search-space", str(space_yaml(tmp))], tmp / "search.log", env,
                   timeout=600)
    left = (set(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*")) - before) | set(
        results.glob("trials/*/.tune-report-*"))
    assert done.returncode == 0, f"plan {plan}\n{done.stdout[-5000:]}"
    summary = json.loads((results / "summary.json").read_text())
    order = trial_order(results)
    trials = {t["trial_id"]: t for t in summary["trials"]}
    return {"results": results, "summary": summary, "trials": trials, "plan": plan, "log": done.stdout,
            "id": {role: order[plan[role]] for role in ("kill", "oom", "nan", "clean")}, "left_behind": left}


@pytest.mark.slow
def test_every_trial_is_accounted_for_once(faulty_search):
    s, plan = faulty_search["summary"], faulty_search["plan"]
    ids = faulty_search["id"]
    assert s["num_trials"] == 4 and set(faulty_search["trials"]) == set(ids.values()), plan
    assert s["states"] == {"completed": 2, "stopped": 0, "pruned": 1, "error": 1}, (plan, s["states"])
    # the winner is one of the trials that finished, with a finite objective
    assert s["winner"]["trial_id"] in (ids["kill"], ids["clean"]) and math.isfinite(s["winner"]["best"])

    import optuna

    storage = f"sqlite:///{faulty_search['results'] / 'optuna.db'}"
    (study,) = optuna.study.get_all_study_summaries(storage)
    states = [t.state for t in optuna.load_study(study_name=study.study_name, storage=storage).trials]
    assert sorted(st.name for st in states) == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"], states

    client, parent, children = child_runs(f"sqlite:///{faulty_search['results'] / 'mlflow.db'}")
    assert parent.info.status == "FINISHED"
    tagged = sorted(r.data.tags["automl.trial_id"] for r in children)
    assert tagged == sorted(ids.values()), "one MLflow child run per trial, none duplicated by the retry"


@pytest.mark.slow
def test_worker_killed_mid_epoch_is_retried_from_its_last_checkpoint(faulty_search):
    trial_id, plan = faulty_search["id"]["kill"], faulty_search["plan"]
    trial = faulty_search["trials"][trial_id]
    folder = faulty_search["results"] / "trials" / trial_id
    from automl.testing import KILLED_MARKER

    assert (folder / KILLED_MARKER).is_file(), "the hook never killed the worker"
    # mid-epoch: after the first of the epoch's several steps, the checkpoint of the epoch before already reported
    assert plan["steps_per_epoch"] > 1
    assert (folder / KILLED_MARKER).read_text().startswith(f"killed at epoch {plan['kill_epoch']}, batch 0,")
    assert f"retry     {trial_id}" in faulty_search["log"], "Ray did not retry the killed trial"
    assert trial["state"] == "completed" and trial["epochs"] == 2, (plan, trial)

    lines = status_lines(folder)
    starts = [line for line in lines if line["status"] == "STARTED"]
    assert len(starts) == 2 and "last.ckpt" in starts[1]["message"], "the retry did not start from a checkpoint"
    # the retry read Tune's checkpoint where it lies: no copy of it left in the temporary folder
    assert not faulty_search["left_behind"], sorted(map(str, faulty_search["left_behind"]))
    assert any(line["message"] == f"Training resumed at epoch {plan['kill_epoch']}" for line in lines)
    finished = [line["epoch"] for line in lines if line["status"] == "RUNNING" and line.get("epoch", -1) >= 0]
    assert finished == [0, 1], "epoch 0 was trained twice or epoch 1 never finished"
    assert lines[-1]["status"] == "SUCCESS"

    client, _, children = child_runs(f"sqlite:///{faulty_search['results'] / 'mlflow.db'}")
    (run,) = [r for r in children if r.data.tags["automl.trial_id"] == trial_id]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [0, 1]


@pytest.mark.slow
def test_nonfinite_loss_at_a_random_step_is_pruned_at_that_step(faulty_search):
    trial_id, plan = faulty_search["id"]["nan"], faulty_search["plan"]
    trial = faulty_search["trials"][trial_id]
    assert trial["state"] == "pruned" and trial["reason"] == "non_finite_loss", (plan, trial)
    # the epochs finished before the NaN count, with their finite values; the trial can never win
    assert trial["epochs"] == plan["nan_step"] // plan["steps_per_epoch"], (plan, trial)
    assert trial["best"] is None
    assert faulty_search["summary"]["winner"]["trial_id"] != trial_id
    assert trial["history"][-1]["diverged_step"] == plan["nan_step"], (plan, trial["history"][-1])
    last = status_lines(faulty_search["results"] / "trials" / trial_id)[-1]
    assert last["status"] == "FAILURE" and last["reason"] == "non_finite_loss" and last["step"] == plan["nan_step"]
    finite = [h for h in trial["history"] if h.get("epoch") is not None and not h.get("prune_reason")]
    assert len(finite) == trial["epochs"] and all(math.isfinite(h["val/loss"]) for h in finite)


@pytest.mark.slow
def test_out_of_memory_fails_its_trial_with_the_reason_and_no_retry(faulty_search):
    trial_id, plan = faulty_search["id"]["oom"], faulty_search["plan"]
    trial = faulty_search["trials"][trial_id]
    assert trial["state"] == "error", (plan, trial)
    assert trial["epochs"] == plan["oom_step"] // plan["steps_per_epoch"], (plan, trial)
    assert faulty_search["summary"]["winner"]["trial_id"] != trial_id
    assert trial["reason"].startswith("out_of_memory: CUDA out of memory") and "batch_size" in trial["reason"]
    lines = status_lines(faulty_search["results"] / "trials" / trial_id)
    assert [line["status"] for line in lines].count("STARTED") == 1, "a deterministic OOM was retried"
    assert f"retry     {trial_id}" not in faulty_search["log"]
    assert lines[-1]["status"] == "FAILURE" and lines[-1]["reason"] == "OutOfMemoryError"

    _, _, children = child_runs(f"sqlite:///{faulty_search['results'] / 'mlflow.db'}")
    (run,) = [r for r in children if r.data.tags["automl.trial_id"] == trial_id]
    assert run.info.status == "FAILED" and run.data.tags["automl.trial_state"] == "error"
    assert run.data.tags["automl.failure_reason"].startswith("out_of_memory")


@pytest.mark.slow
def test_a_trial_without_faults_is_unaffected(faulty_search):
    trial = faulty_search["trials"][faulty_search["id"]["clean"]]
    assert trial["state"] == "completed" and trial["epochs"] == 2 and math.isfinite(trial["best"])
    lines = status_lines(faulty_search["results"] / "trials" / trial["trial_id"])
    assert [line["status"] for line in lines].count("STARTED") == 1 and lines[-1]["status"] == "SUCCESS"


# --------------------------------------------------------------------------------------------------------------
# the tracking server
# --------------------------------------------------------------------------------------------------------------


def test_unreachable_tracking_server_fails_before_any_trial(tiny_spec_tree_file, monkeypatch, capsys):
    from automl.cli import EXIT_USER_ERROR, main
    from automl.search import cluster

    for key in MLFLOW_HTTP_KEYS:  # restored after the test: the driver sets them for its own process
        monkeypatch.setenv(key, os.environ.get(key, ""))
    monkeypatch.setattr(cluster, "init_ray", _must_not_run("Ray was started"))
    spec, results = tiny_spec_tree_file
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.time()
    rc = main(["run", "-e", str(spec), "--tracking-uri", uri])
    took = time.time() - started
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR
    assert f"MLflow tracking store {uri} is not reachable" in err and "--tracking-uri" in err
    assert took < 60, f"took {took:.0f} s to find the server down (MLflow's default retries take ~4 min)"
    assert not (results / "trials").exists() and not (results / "ray").exists()


@pytest.mark.parametrize("action", ["run", "off"])
def test_an_mlflow_file_store_is_refused_up_front_with_the_sqlite_uri_to_use(tiny_spec_tree_file, tmp_path,
                                                                             monkeypatch, capsys, action):
    """`--tracking-uri mlruns` (a folder, MLflow's file store, which MLflow 3 no longer opens), given relative to the
    user's cwd, stops both actions before anything trains, naming the SQLite URI to pass instead; the same folder
    named in the spec (automl.tracking_uri: file:...) stops a search the same way."""
    from automl.cli import EXIT_USER_ERROR, main
    from automl.search import cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(cluster, "init_ray", _must_not_run("Ray was started"))
    spec, results = tiny_spec_tree_file
    rc = main([action, "-e", "spec.yaml", "--tracking-uri", "mlruns"])
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR, err
    assert "MLflow tracking store mlruns is a folder" in err
    assert f"--tracking-uri sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" in err, err
    assert "Traceback" not in err and not (results / "checkpoints").exists() and not (tmp_path / "mlruns").exists()
    if action == "run":
        rc = main([action, "-e", "spec.yaml", f"automl.tracking_uri=file://{tmp_path / 'mlruns'}"])
        err = capsys.readouterr().err
        assert rc == EXIT_USER_ERROR and "is a folder (MLflow's file store)" in err, err


def test_search_bounds_mlflow_http_retries_but_keeps_the_users_settings():
    from automl.search.tracking import http_retry_settings

    bounded = http_retry_settings({})
    assert int(bounded["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3
    assert int(bounded["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30
    assert http_retry_settings({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"})["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"


@pytest.mark.slow
def test_tracking_server_lost_mid_search_costs_the_logs_not_the_search(synth_data, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = tmp_path / "search"
    spec = write_yaml(tmp_path / "spec.yaml", search_tree(synth_data, results, epochs=2, num_trials=2,
                                                          max_concurrent=1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "search.log"
    search = None
    try:
        wait_http(uri, timeout=120)
        with log.open("w") as fh:
            search = subprocess.Popen(
                [sys.executable, "-m", "automl.cli", "run", "-e", str(spec), "--search-space",
                 str(space_yaml(tmp_path)), "--tracking-uri", uri],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            # the server goes away once the first trial has reported (and logged) its first epoch
            deadline = time.time() + 400
            while not any(p.read_text().strip() for p in results.glob("ray/search/*/result.json")):
                assert search.poll() is None, log.read_text()[-4000:]
                assert time.time() < deadline, "no trial reported before the deadline"
                time.sleep(0.5)
            _stop_group(server)
            search.wait(timeout=600)
        out = log.read_text()
        assert search.returncode == 0, out[-5000:]
    finally:
        if search is not None:
            _stop_group(search)
        _stop_group(server)

    summary = json.loads((results / "summary.json").read_text())
    assert summary["states"]["completed"] == 2, "trials did not keep training without the tracking server"
    assert all(t["epochs"] == 2 for t in summary["trials"])
    tracking = summary["tracking"]
    assert tracking["failed_operations"] >= 2 and tracking["uri"] == uri
    order = trials_by_start(results)
    assert tracking["trials"].get(order[1], 0) >= 1, tracking  # the trial that started after the server was gone
    assert "MLflow operations could not be logged" in out and uri in out

    # what was logged before the server went away is still there
    client, parent, children = child_runs(f"sqlite:///{tmp_path / 'server.db'}")
    first = [r for r in children if r.data.tags["automl.trial_id"] == order[0]]
    assert first and client.get_metric_history(first[0].info.run_id, "val/loss")


# --------------------------------------------------------------------------------------------------------------
# results folder: unwritable, full disk
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_spec_tree_file(synth_data, tmp_path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    tree = search_tree(synth_data, results, epochs=1, num_trials=1, max_concurrent=1)
    return write_yaml(tmp_path / "spec.yaml", tree), results


def _must_not_run(what: str):
    def fail(*_a: Any, **_k: Any) -> None:
        raise AssertionError(f"{what} before the error was reported")

    return fail


def test_unwritable_results_dir_stops_a_search_before_ray_starts(tiny_spec_tree_file, tmp_path, monkeypatch,
                                                                 capsys):
    from automl.cli import EXIT_USER_ERROR, main
    from automl.search import cluster

    monkeypatch.setattr(cluster, "init_ray", _must_not_run("Ray was started"))
    spec, _ = tiny_spec_tree_file
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # (the tests run as root: a file in the way blocks where chmod cannot)
    rc = main(["run", "-e", str(spec), f"results_dir={blocker / 'search'}"])
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR
    assert f"results directory {blocker / 'search'} cannot be created: {blocker} is a file, not a folder" in err
    assert "results_dir=PATH" in err
    rc = main(["run", "-e", str(spec), "--storage-path", str(blocker / "ray")])
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR and f"{blocker} is a file, not a folder" in err
    rc = main(["run", "-e", str(spec), f"results_dir={blocker}"])  # the results folder itself is a file
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR and f"results directory {blocker} is a file, expected a folder" in err


@pytest.mark.parametrize("action", ["run", "off"])
def test_full_disk_is_refused_before_training(tiny_spec_tree_file, monkeypatch, capsys, action):
    import shutil

    from automl.cli import EXIT_USER_ERROR, main
    from automl.search import cluster

    real = shutil.disk_usage

    def nearly_full(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 10 * 2**20, 10 * 2**20)  # 10 MiB free

    monkeypatch.setattr("trainer.records.shutil.disk_usage", nearly_full)
    monkeypatch.setattr(cluster, "init_ray", _must_not_run("Ray was started"))
    spec, results = tiny_spec_tree_file
    rc = main([action, "-e", str(spec)])
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR
    assert f"results directory {results}" in err and "only 10 MiB free" in err, err
    # the estimate counts checkpoints (last, best, the one being written) of this spec's model, per trial
    assert "MiB are needed (" in err and "3 checkpoints of" in err, err
    assert not (results / "checkpoints").exists() and not (results / "trials").exists()


# --------------------------------------------------------------------------------------------------------------
# out of memory outside a search, and the hooks themselves
# --------------------------------------------------------------------------------------------------------------


def test_out_of_memory_in_plain_training_tells_what_to_change(tiny_spec_tree_file, monkeypatch, capsys):
    import torch

    from automl.cli import EXIT_USER_ERROR, main
    from automl.skills.depth_net_mono import DepthNetMono

    def oom(*_a: Any, **_k: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setattr(DepthNetMono, "fit", oom)
    spec, _ = tiny_spec_tree_file
    rc = main(["off", "-e", str(spec)])
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR
    assert "out of memory: CUDA out of memory. Tried to allocate 1.50 GiB" in err
    assert "dataset.train_dataset.batch_size" in err and "Traceback" not in err


def test_fault_hooks_are_read_once_and_checked():
    from automl.testing import FaultHook, read_fault_hooks
    from trainer.errors import UserError

    assert read_fault_hooks({}) == ()
    hooks = read_fault_hooks({"AUTOML_TESTING_KILL_WORKER": "2:1", "AUTOML_TESTING_OUT_OF_MEMORY": "0:3"})
    assert set(hooks) == {FaultHook("kill_worker", 2, 1), FaultHook("out_of_memory", 0, 3)}
    with pytest.raises(UserError, match=r"AUTOML_TESTING_INJECT_NONFINITE='1': expected TRIAL_INDEX:STEP"):
        read_fault_hooks({"AUTOML_TESTING_INJECT_NONFINITE": "1"})
    from automl.skills.lightning_faults import RuntimeErrorAtStep, fault_callbacks
    from automl.testing import EVERY_TRIAL

    every = read_fault_hooks({"AUTOML_TESTING_RUNTIME_ERROR": "*:2"})
    assert every == (FaultHook("runtime_error", EVERY_TRIAL, 2),)
    assert all(isinstance(cb, RuntimeErrorAtStep) for i in (0, 5) for cb in fault_callbacks(every, i, "/nowhere"))
    assert len(fault_callbacks(every, 5, "/nowhere")) == 1
    with pytest.raises(UserError, match=r"TRIAL_INDEX:STEP"):
        read_fault_hooks({"AUTOML_TESTING_RUNTIME_ERROR": "2:*"})


def test_trials_starting_together_get_distinct_sequence_numbers(tmp_path):
    from automl.search.trial import _trial_index

    # two trials read the (empty) registry before either appends: each must still get its own number
    (tmp_path / ".order").write_text("")
    first = _trial_index("a", str(tmp_path))
    (tmp_path / ".order").write_text("a\nb\n")  # b appended meanwhile by another process
    assert first == 0 and _trial_index("b", str(tmp_path)) == 1 and _trial_index("a", str(tmp_path)) == 0


def test_a_trial_that_ended_before_the_snapshot_caught_up_replays_instead_of_training(tmp_path, monkeypatch):
    """A trial restored by --resume as unfinished, whose folder says it ended under the crashed driver, sends Tune
    only the reports its restored checkpoint had not seen (the flagged last report of a pruned trial included)."""
    import ray.tune

    from automl.search.trial import CHECKPOINT_EPOCH_FILE, REPORTS_FILE, _replay_finished

    sent: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", lambda payload, **kw: sent.append(payload))
    assert not _replay_finished(tmp_path / REPORTS_FILE, None)  # still running: train (nothing sent)
    assert sent == []

    reports = [{"epoch": e, "val/loss": 1.0 - e / 10} for e in range(3)]
    (tmp_path / REPORTS_FILE).write_text(json.dumps({"reports": reports}))
    ckpt = tmp_path / "checkpoint_000000"
    ckpt.mkdir()
    (ckpt / CHECKPOINT_EPOCH_FILE).write_text(json.dumps({"epoch": 0}))
    assert _replay_finished(tmp_path / REPORTS_FILE, ckpt)
    assert [(p["epoch"], p["val/loss"], p["replayed"]) for p in sent] == [(1, 0.9, True), (2, 0.8, True)]

    sent.clear()
    pruned = reports[:1] + [{"val/loss": None, "prune_reason": "non_finite_loss"}]
    (tmp_path / REPORTS_FILE).write_text(json.dumps({"reports": pruned}))
    assert _replay_finished(tmp_path / REPORTS_FILE, None)  # no checkpoint restored: Tune saw nothing
    assert [p.get("epoch") for p in sent] == [0, None] and sent[-1]["prune_reason"] == "non_finite_loss"


# --------------------------------------------------------------------------------------------------------------
# security
# --------------------------------------------------------------------------------------------------------------


RAY_SOCKETS = """
import json, os, sys, time
import psutil, ray
from pathlib import Path
from automl.search.cluster import init_ray

init_ray(None)

@ray.remote
def pid():
    return os.getpid()

workers = set(ray.get([pid.remote() for _ in range(2)]))
time.sleep(1.0)  # the runtime-env agent and the object manager are up by now
found = []
for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        for c in proc.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                found.append({"pid": proc.pid, "name": proc.name(), "ip": c.laddr.ip, "port": c.laddr.port})
    except psutil.Error:
        pass
print(json.dumps({"sockets": found, "workers": sorted(workers), "node_ip": ray.util.get_node_ip_address()}))
ray.shutdown()
"""


def _is_loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.timeout(240)
def test_local_ray_listens_on_loopback_only(tmp_path):
    """Start Ray the way `automl run` does (no --address) and list the sockets its processes listen on: the driver,
    the GCS, the raylet, the workers and agents: every one on a loopback address, and no dashboard."""
    pytest.importorskip("psutil")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.run([sys.executable, "-c", RAY_SOCKETS, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    sockets = seen["sockets"]
    names = {s["name"] for s in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the test saw Ray's servers, not an empty list
    assert any(s["pid"] in seen["workers"] for s in sockets), sockets  # and the workers' own servers
    exposed = [s for s in sockets if not _is_loopback(s["ip"])]
    assert not exposed, f"Ray processes listening beyond loopback: {exposed}"
    assert _is_loopback(seen["node_ip"])
    assert not any("dashboard" in n.lower() for n in names), sockets


def test_joining_a_cluster_keeps_rays_own_addresses_and_no_dashboard(monkeypatch, tmp_path):
    import ray

    from automl.search import cluster

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    cluster.init_ray("auto")
    (joined,) = calls
    assert joined["address"] == "auto" and joined["include_dashboard"] is False
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # a cluster keeps its nodes reachable


def test_mlflow_ui_binds_to_loopback_unless_asked(monkeypatch):
    import automl.ui
    from automl.cli import build_parser, main

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(automl.ui, "serve", lambda results_dir, **kw: seen.append(kw) or 0)
    assert main(["ui", "some/results"]) == 0 and seen[-1]["host"] == "127.0.0.1"
    assert main(["ui", "some/results", "--host", "0.0.0.0"]) == 0 and seen[-1]["host"] == "0.0.0.0"
    cmd = automl.ui.server_command(automl.ui.Store("sqlite:///x.db"), Path("r"), "127.0.0.1", 5000)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    # any action that serves something binds to loopback by default
    parser = build_parser()
    subs = next(a.choices for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subs.items():
        for action in sub._actions:
            if "--host" in action.option_strings:
                assert action.default == "127.0.0.1", f"automl {name} --host defaults to {action.default}"


def _python_sources() -> list[Path]:
    return sorted(p for d in ("automl", "trainer") for p in (REPO / d).rglob("*.py"))


def _calls():
    """(where, call node, called name) for every call in the project's own sources."""
    for path in _python_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                yield f"{path.relative_to(REPO)}:{node.lineno}", node, ast.unparse(node.func)


def test_lint_no_shell_true_or_os_system():
    """Lint-style guard: no subprocess call with shell=True, no os.system/os.popen (user strings never reach a
    shell)."""
    found = []
    for where, node, fn in _calls():
        if fn in ("os.system", "os.popen") or any(
                k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords):
            found.append(f"{where}: {ast.unparse(node)[:120]}")
    assert not found, "\n".join(found)


def test_lint_every_torch_load_is_weights_only():
    """Lint-style guard: every torch.load (and Lightning's checkpoint restore) passes weights_only=True, so that a
    checkpoint cannot run code when it is read (behaviour: test_checkpoints.py::
    test_a_pickle_that_would_run_code_is_refused_and_not_run and test_bad_input.py's resume tests)."""
    found = []
    for where, node, fn in _calls():
        restores = any(k.arg == "ckpt_path" for k in node.keywords)
        if fn.endswith("torch.load") or restores:
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append(f"{where}: {ast.unparse(node)[:120]}")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------------------------------------------
# a disk that fills up during a run (a real, small tmpfs: root only, skipped elsewhere)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of 24 MiB (or `request.param` MiB) mounted for the test (needs root / CAP_SYS_ADMIN; skipped where
    mounting is refused)."""
    with mounted_tmpfs(tmp_path / "disk", f"size={getattr(request, 'param', 24)}m") as mnt:
        yield mnt


def fill_disk(mnt: Path, leave: int = 0) -> Path:
    """Write zeros to `mnt` until the disk is full, then give back `leave` bytes; returns the file (delete it to
    free the space)."""
    filler = mnt / "filler.bin"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def fill_when(mnt: Path, status: Path, epoch: int, timeout: float = 300, leave: int = 0) -> Path:
    """Fill the disk (but `leave` bytes) as soon as `status` records the end of epoch `epoch`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = status.read_text() if status.is_file() else ""
        if f'"epoch": {epoch},' in text:
            return fill_disk(mnt, leave)
        time.sleep(0.02)
    raise AssertionError(f"{status} never recorded epoch {epoch}")


def automl(args: list[str], cwd: Path, **kw: Any) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "automl.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("room", [0, 512 * 1024], ids=["any-write", "checkpoint"])
def test_disk_full_during_training_stops_cleanly_with_a_failure_record(synth_data, small_disk, tmp_path, room):
    """`automl off` on a disk that fills after the first epoch: exit status 2 with one message and no traceback,
    every status.json line whole and the last one FAILURE (disk_full), the MLflow run FAILED, and the checkpoint on
    disk complete (the previous one, never a cut file). [checkpoint]: 512 KiB are left, room for the records but not
    for the next checkpoint (about 1.9 MiB), so the checkpoint write is the one that fails."""
    results = small_disk / "results"
    tree = tiny_spec_tree(synth_data, results, epochs=40)
    write_yaml(tmp_path / "spec.yaml", tree)
    proc = automl(["off", "-e", "spec.yaml"], cwd=tmp_path)
    filler = fill_when(small_disk, results / "status.json", 0, leave=room)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "No space left on device" in err and "the run stopped" in err, err[-2000:]
    if room:
        assert ".ckpt" in err, err[-2000:]  # the message names the checkpoint it could not write
    lines = (results / "status.json").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert records[-1]["status"] == "FAILURE" and records[-1]["reason"] == "disk_full", records[-1]
    assert records[-1]["epochs_completed"] >= 1
    filler.unlink()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and run.data.tags.get("failure_reason") == "disk_full"
    import torch

    last = results / "checkpoints" / "last.ckpt"
    if last.exists():
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 0
    assert not list(results.rglob("*.tmp")), "a temporary file was left behind"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("small_disk", [64], indirect=True)
def test_disk_full_during_a_search_stops_it_with_every_record_closed_and_resume_continues(synth_data, small_disk,
                                                                                         tmp_path):
    """`automl run` on a disk that fills after a trial's second epoch: one message, exit status 2, FAILURE in the
    search's status.json, no Optuna trial RUNNING and no MLflow run RUNNING; after freeing the space `--resume`
    finishes the search."""
    import optuna
    from mlflow.tracking import MlflowClient

    results = small_disk / "results"
    tree = search_tree(synth_data, results, epochs=6, num_trials=2, max_concurrent=1)
    write_yaml(tmp_path / "search.yaml", tree)
    proc = automl(["run", "-e", "search.yaml"], cwd=tmp_path)
    deadline = time.time() + 300
    while not list(results.glob("trials/*/status.json")) and time.time() < deadline:
        time.sleep(0.05)
    (trial_status,) = results.glob("trials/*/status.json")
    filler = fill_when(small_disk, trial_status, 1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and "--resume" in errors[0], err[-2000:]
    records = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert records[-1]["status"] == "FAILURE" and records[-1]["reason"] == "disk_full", records[-1]

    filler.unlink()
    storage = f"sqlite:///{results / 'optuna.db'}"
    study = optuna.load_study(study_name=f"search-{results.name}", storage=storage)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]

    proc = automl(["run", "-e", "search.yaml", "--resume"], cwd=tmp_path)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["states"]["completed"] == 2, (summary["states"], summary.get("orphaned_optuna_trials"),
                                                 summary.get("orphaned_trials"), out[-3000:], err[-5000:])


def test_records_on_a_full_disk_are_whole_or_absent(small_disk):
    """On a really full disk: a status line that does not fit leaves the file as it was (no half line); a record
    rewritten atomically keeps its previous content; the disk reserve gives back room for the last line."""
    from trainer.records import StatusFile
    from trainer.records import DiskReserve, read_json_lines, write_json_atomic

    status = StatusFile(small_disk / "status.json", reserve=None)
    status.write("STARTED", "begin")
    summary = small_disk / "summary.json"
    write_json_atomic(summary, {"trials": 1})
    reserve = DiskReserve(small_disk, size=256 * 1024)
    filler = fill_disk(small_disk)
    before = (small_disk / "status.json").read_bytes()
    with pytest.raises(OSError):
        status.write("RUNNING", "x" * 20000)  # several pages: cannot fit
    assert (small_disk / "status.json").read_bytes() == before
    with pytest.raises(OSError):
        write_json_atomic(summary, {"trials": 2, "pad": "y" * 200000})
    assert json.loads(summary.read_text()) == {"trials": 1}
    assert not [p for p in small_disk.iterdir() if p.name.endswith(".tmp")]
    status.reserve = reserve  # with a reserve, the last record fits
    status.write("FAILURE", "disk full", reason="disk_full", pad="z" * 20000)
    assert [r["status"] for r in status.read()] == ["STARTED", "FAILURE"]
    filler.unlink()
    with open(small_disk / "status.json", "a") as fh:  # a line cut by something else (an older writer, a copy)
        fh.write('{"date": "11/30/2026", "time"')
    assert [r["status"] for r in read_json_lines(small_disk / "status.json")] == ["STARTED", "FAILURE"]


def test_the_newest_complete_checkpoint_wins_and_unseen_epochs_are_reported_not_retrained(tmp_path):
    import torch

    from automl.search.resume import newest_checkpoint

    def ckpt(path: Path, epoch: int) -> None:
        history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val/loss": 0.5 / (e + 1)} for e in range(epoch + 1)]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": epoch, "state_dict": {}, "callbacks": {"RunRecorder": {"history": history}}}, path)

    tune_dir = tmp_path / "tune"
    trial = tmp_path / "trial"
    ckpt(tune_dir / "last.ckpt", 0)
    ckpt(trial / "checkpoints" / "last.ckpt", 2)  # written after Tune's snapshot (or after the driver died)
    point = newest_checkpoint(tune_dir, trial, "val/loss")
    assert point.path == trial / "checkpoints" / "last.ckpt" and point.epoch == 2
    assert [p["epoch"] for p in point.unseen] == [1, 2] and point.unseen[0]["val/loss"] == pytest.approx(0.25)
    ckpt(tune_dir / "last.ckpt", 2)  # Tune is up to date: its checkpoint, nothing to report again
    point = newest_checkpoint(tune_dir, trial, "val/loss")
    assert point.path == tune_dir / "last.ckpt" and point.unseen == []
    (trial / "checkpoints" / "last.ckpt").write_bytes(b"cut short")  # unreadable: never a place to resume from
    assert newest_checkpoint(None, trial, "val/loss").path is None


def test_a_continued_mlflow_run_never_gets_the_same_step_twice(tmp_path):
    from mlflow.tracking import MlflowClient

    from trainer.tracking import MlflowRun, TrackingConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowRun(TrackingConfig(uri=uri, experiment_name="x"), tmp_path)
    first.start()
    first.log_metrics({"val/loss": 0.5, "train_loss": 0.7}, step=0)
    again = MlflowRun(TrackingConfig(uri=uri, experiment_name="x", run_id=first.run_id), tmp_path)
    again.start()  # a resumed trial that redoes epoch 0 before its first checkpoint
    again.log_metrics({"val/loss": 0.4, "train_loss": 0.6}, step=0)
    again.log_metrics({"val/loss": 0.3, "train_loss": 0.5}, step=1)
    client = MlflowClient(tracking_uri=uri)
    for key in ("val/loss", "train_loss"):
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [0, 1]


def test_a_worker_stops_when_its_driver_is_gone(tmp_path):
    """A process standing in for a trial's worker watches a stand-in driver; once the driver is killed, the worker
    ends by itself within about a second (instead of finishing an epoch nobody will see)."""
    import socket

    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from automl.search.resume import stop_with_driver; "
                               f"stop_with_driver({driver.pid}, {socket.gethostname()!r}, interval=0.2); "
                               "time.sleep(60); sys.exit(0)"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    assert worker.poll() is None  # the driver lives: the worker goes on
    driver.kill()
    driver.wait()
    started = time.time()
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 1 and time.time() - started < 5
    assert f"driver (pid {driver.pid}) is gone" in err and "--resume" in err


def epochs_trained_twice(results: Path) -> int:
    """Epochs a trial recorded as finished more than once (status.json "Epoch N finished"), over all trials."""
    twice = 0
    for status in results.glob("trials/*/status.json"):
        epochs = [r["epoch"] for r in status_lines(status.parent) if str(r.get("message", "")).startswith("Epoch ")]
        twice += len(epochs) - len(set(epochs))
    return twice


def duplicate_mlflow_steps(results: Path) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    dup = 0
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            dup += len(steps) - len(set(steps))
    return dup


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_driver_killed_right_after_an_epoch_checkpoint_resumes_without_retraining(synth_data, tmp_path):
    """kill -9 of the driver's process group as soon as a trial has recorded its epoch 0 (its checkpoint is on
    disk, Tune's snapshot may not have it yet), then `--resume`: no epoch is trained twice, MLflow holds each step
    once, the workers stopped with their driver, and every Optuna trial is in summary.json."""
    import optuna

    results = tmp_path / "results"
    write_yaml(tmp_path / "search.yaml", search_tree(synth_data, results, epochs=3, num_trials=2, max_concurrent=2))
    proc = automl(["run", "-e", "search.yaml"], cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and not any('"epoch": 0,' in p.read_text()
                                             for p in results.glob("trials/*/status.json")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    workers = [t for t in results.glob("trials/*") if t.is_dir()]
    time.sleep(3.0)

    def record(trial: Path) -> str:  # a trial killed while setting up has a folder but no status.json yet
        return (trial / "status.json").read_text() if (trial / "status.json").is_file() else ""

    marks = {t: record(t) for t in workers}
    time.sleep(2.0)  # a worker that outlived its driver would record an epoch here
    assert all(record(t) == marks[t] for t in workers)

    proc = automl(["run", "-e", "search.yaml", "--resume"], cwd=tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["states"]["completed"] == 2, summary["states"]
    assert epochs_trained_twice(results) == 0
    assert duplicate_mlflow_steps(results) == 0
    study = optuna.load_study(study_name=f"search-{results.name}", storage=f"sqlite:///{results / 'optuna.db'}")
    listed = len(summary["trials"]) + len(summary.get("orphaned_optuna_trials", []))
    assert len(study.trials) == listed, (len(study.trials), listed)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_of_the_driver_stops_gracefully_and_resumes(synth_data, tmp_path, signame):
    """The driver gets SIGTERM (a `kill`, a scheduler) or SIGINT (Ctrl-C) once a trial has recorded an epoch: it
    ends with one line saying how to continue (exit status 130, no traceback), status.json ends STOPPED and no
    summary claims a result; `--resume` then finishes the search without training an epoch twice."""
    results = tmp_path / "results"
    write_yaml(tmp_path / "search.yaml", search_tree(synth_data, results, epochs=4, num_trials=2, max_concurrent=2))
    proc = automl(["run", "-e", "search.yaml"], cwd=tmp_path)
    deadline = time.time() + 400
    while time.time() < deadline and not any('"epoch": 0,' in p.read_text()
                                             for p in results.glob("trials/*/status.json")):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith(("error:", "interrupted"))]
    assert len(said) == 1 and "--resume" in said[0], said
    assert status_lines(results)[-1]["status"] == "STOPPED"
    assert not (results / "summary.json").exists()

    proc = automl(["run", "-e", "search.yaml", "--resume"], cwd=tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((results / "summary.json").read_text())["states"]["completed"] == 2
    assert epochs_trained_twice(results) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_disk_full_while_writing_the_summary_closes_the_records_and_resume_writes_it(synth_data, tmp_path,
                                                                                    monkeypatch, capsys):
    """The last write of a search, summary.json, fails with ENOSPC (injected: the trials have already used the
    disk): one message, exit status 2, FAILURE recorded, MLflow parent run FAILED and no Optuna trial RUNNING; once
    there is room, `--resume` writes the summary without training again."""
    import errno

    import optuna
    from mlflow.tracking import MlflowClient

    from automl.cli import main
    from automl.search import winner

    real = winner.write_json_atomic

    def full_at_summary(path: Any, obj: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj, *args, **kwargs)

    monkeypatch.setattr(winner, "write_json_atomic", full_at_summary)
    results = tmp_path / "results"
    spec = write_yaml(tmp_path / "search.yaml", search_tree(synth_data, results, epochs=2, num_trials=2,
                                                            max_concurrent=2))
    rc = main(["run", "-e", str(spec)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "the disk is full" in said[0] and "summary.json" in said[0], said
    assert status_lines(results)[-1]["status"] == "FAILURE"
    study = optuna.load_study(study_name=f"search-{results.name}", storage=f"sqlite:///{results / 'optuna.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    fits = {p: p.stat().st_mtime for p in results.glob("trials/*/fit.json")}
    assert len(fits) == 2

    monkeypatch.setattr(winner, "write_json_atomic", real)  # room again
    rc = main(["run", "-e", str(spec), "--resume"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert json.loads((results / "summary.json").read_text())["states"]["completed"] == 2
    assert {p: p.stat().st_mtime for p in results.glob("trials/*/fit.json")} == fits  # nothing trained again


@pytest.mark.parametrize("uri", ["sqlite:///results/mlflow.db", "file:///results/mlruns", "results/mlruns"])
def test_a_cluster_refuses_a_local_tracking_store_and_names_a_server_on_the_cluster_address(uri, tmp_path,
                                                                                           monkeypatch):
    import ray.util

    from automl.search import cluster
    from trainer.errors import UserError

    monkeypatch.setattr(cluster, "_alive_nodes", lambda: [{"NodeID": "a"}, {"NodeID": "b"}])
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.1.2.3")
    with pytest.raises(UserError) as err:
        cluster.check_multinode_storage(tmp_path, uri)
    message = str(err.value)
    assert uri in message and "--host 10.1.2.3" in message and "--tracking-uri http://10.1.2.3:5000" in message
    assert "0.0.0.0" not in message  # never every interface
