"""`automl run` end to end on CPU: TPE + ASHA over real (tiny) finetunes, NaN pruning recorded in Ray, Optuna and
MLflow, the winner evaluated; a two-node local Ray cluster; a driver killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, search_space_text, status_lines, tiny_spec_tree, wait_http, write_yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def space_file(tmp_path: Path, diverge: bool = True) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(search_space_text(diverge))
    return p


def search_spec(synth_data: Path, results: Path, epochs: int = 2, **extra) -> dict:
    tree = tiny_spec_tree(synth_data, results, epochs=epochs, lr=1e-3,
                          extra={"train": {"clip_grad_norm": 0.0}})
    tree["automl"] = {"num_trials": 4, "max_concurrent": 2, "scheduler": "asha", "grace_period": 1,
                      "cpus_per_trial": 1, "export": "none", **extra}
    return tree


def mlflow_client(results: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("depth_net_mono")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def optuna_trials(results: Path):
    import optuna

    storage = f"sqlite:///{results / 'optuna.db'}"
    (summary,) = optuna.study.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


@pytest.fixture
def ray_shutdown():
    yield
    import ray

    ray.shutdown()


def test_search_prunes_the_diverging_trial_everywhere_and_hands_over_a_winner(synth_data, tmp_path, ray_shutdown):
    from automl.cli import main

    results = tmp_path / "search"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results))
    rc = main(["run", "-e", str(spec), "--search-space", str(space_file(tmp_path))])
    assert rc == 0
    summary = json.loads((results / "summary.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert len(trials) == 4

    diverged = [t for t in trials.values() if t["state"] == "pruned"]
    assert any(t["params"]["train.optim.lr"] >= 1e5 for t in diverged), \
        "the initial point in the diverging region was not pruned"
    for t in diverged:
        assert t["reason"] == "non_finite_loss" and t["best"] is None
        status = status_lines(Path(t["results_dir"]))
        assert status[-1]["status"] == "FAILURE" and status[-1]["reason"] == "non_finite_loss"
        if t["params"]["train.optim.lr"] >= 1e5:  # diverges at once: stopped at the first or second step
            assert status[-1]["step"] <= 1
    others = [t for t in trials.values() if t not in diverged]
    assert others and all(t["state"] in ("completed", "stopped") for t in others)

    # Ray recorded the prune reason in the trial's own results
    for t in diverged:
        result_json = next((results / "ray" / "search").glob(f"*{t['trial_id']}*/result.json"))
        last = json.loads(result_json.read_text().splitlines()[-1])
        assert last["prune_reason"] == "non_finite_loss" and last["val/loss"] is None

    # Optuna: the diverged trials are PRUNED, nothing is left RUNNING, no NaN was told
    import optuna

    states = [t.state for t in optuna_trials(results)]
    assert states.count(optuna.trial.TrialState.PRUNED) >= len(diverged)
    assert optuna.trial.TrialState.RUNNING not in states
    assert all(t.value is None or t.value == t.value for t in optuna_trials(results))

    # MLflow: one parent, one child per trial, the diverged ones tagged, the winner tagged
    client, runs = mlflow_client(results)
    parents = [r for r in runs if r.data.tags.get("automl.role") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["automl.trial_id"] for r in children) == sorted(trials)
    for r in children:
        tid = r.data.tags["automl.trial_id"]
        assert r.data.tags["automl.trial_state"] == trials[tid]["state"]
        if trials[tid]["state"] == "pruned":
            assert r.data.tags["automl.prune_reason"] == "non_finite_loss"
        else:
            assert client.get_metric_history(r.info.run_id, "val/loss"), "no val/loss curve to compare"
    winner = summary["winner"]
    assert any(r.data.tags.get("automl.winner") == "true" and r.data.tags["automl.trial_id"] == winner["trial_id"]
               for r in children)

    # the winner: best finite objective, with a checkpoint and an evaluation
    finite = [t["best"] for t in others if t["best"] is not None]
    assert winner["best"] == pytest.approx(min(finite))
    assert Path(winner["checkpoint"]).is_file() and (results / "best" / "spec.yaml").is_file()
    metrics = json.loads((results / "best" / "evaluate" / "metrics.json").read_text())
    assert metrics["num_images"] > 0 and 0 <= metrics["metrics"]["d1"] <= 1
    assert summary["baseline"] is not None and summary["baseline"]["params"]["train.optim.lr"] == pytest.approx(1e-3)


def test_search_on_a_two_node_ray_cluster(synth_data, tmp_path, ray_shutdown):
    """Two Ray nodes on this machine (ray.cluster_utils.Cluster): trials run on both; a SQLite MLflow store is
    refused on a cluster with a message; with a tracking server on 127.0.0.1 the search completes."""
    import ray
    from ray.cluster_utils import Cluster

    from automl.search.driver import SearchOptions, run_search
    from automl.skills import get_skill
    from trainer.config import build_spec
    from trainer.errors import UserError

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    server = None
    try:
        cluster.wait_for_nodes()
        skill = get_skill("depth_net_mono")
        results = tmp_path / "cluster"
        spec = build_spec(search_spec(synth_data, results, epochs=1, num_trials=2), action="train",
                          notice=lambda _m: None)
        opts = SearchOptions.from_spec(spec, address=cluster.address, search_space=str(space_file(tmp_path, False)))
        with pytest.raises(UserError) as exc:
            run_search(skill, spec, opts)
        assert "2 nodes" in str(exc.value) and "mlflow server" in str(exc.value)
        # a data file only one node has is refused before any trial: here it is on no node at all
        from automl.search.cluster import check_multinode_storage

        storage = tmp_path / "shared"
        storage.mkdir()
        with pytest.raises(UserError) as exc:
            check_multinode_storage(storage, "http://127.0.0.1:1", {"dataset.x.data_file": "/nowhere/train.txt"})
        assert "dataset.x.data_file: /nowhere/train.txt (missing on" in str(exc.value)
        assert skill.input_paths(spec)["dataset.train_dataset.data_sources.0.data_file"] == str(synth_data / "train.txt")

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        wait_http(uri, timeout=90)
        opts.tracking_uri = uri
        results2 = tmp_path / "cluster2"
        spec2 = build_spec(search_spec(synth_data, results2, epochs=1, num_trials=2), action="train",
                           notice=lambda _m: None)
        summary = run_search(skill, spec2, opts)
        assert summary["states"]["completed"] == 2
        nodes = {t["history"][-1].get("node_id") for t in summary["trials"]}
        assert len(nodes) == 2, f"trials did not spread over both nodes: {nodes}"
        from mlflow.tracking import MlflowClient

        runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("depth_net_mono")
                                              .experiment_id])
        assert len(runs) == 3  # one parent, two children
    finally:
        ray.shutdown()
        cluster.shutdown()
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def _run_and_kill_when(cmd: list[str], env: dict, log_path: Path, ready, what: str) -> None:
    """Start the search and SIGKILL its driver and the Ray processes it started (they share its process group: Ray
    does not setsid them) as soon as `ready()` holds."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 400
            while time.time() < deadline:
                if ready():
                    break
                assert proc.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.3)
            else:
                pytest.fail(f"the search did not get to the point of the kill ({what}) before the deadline")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def test_driver_killed_mid_search_resumes_without_losing_or_duplicating(synth_data, tmp_path):
    """Two driver crashes, then a resume that completes the search.

    Ray Tune's experiment snapshot (what --resume restores) lags behind the truth. Here it is written only when a
    trial reports a checkpoint (TUNE_GLOBAL_CHECKPOINT_S makes the periodic one rare), so the first kill, just after
    the first trial finished and the second one started, leaves a snapshot in which the first trial still runs and
    the second does not exist. The second kill is the ordinary case: the third trial (held by a test hook in the
    middle of epoch 1) has its epoch-0 checkpoint in the snapshot and must continue from it."""
    from automl.search.tracking import STATE_TAG
    from automl.testing import HELD_MARKER, HOLD_TRIAL_ENV

    results = tmp_path / "resume"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, epochs=3, max_concurrent=1,
                                                          scheduler="none"))
    cmd = [sys.executable, "-m", "automl.cli", "run", "-e", str(spec), "--search-space",
           str(space_file(tmp_path, False))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "3600", HOLD_TRIAL_ENV: "2:1"}

    def folders(name: str) -> set[str]:
        return {p.relative_to(results / "trials").parts[0] for p in results.glob(f"trials/*/{name}")}

    # 1: the first trial has finished, the second has started but not reported: a stale snapshot
    state: dict = {}

    def first_done_second_started() -> bool:
        done, started = folders("fit.json"), folders("status.json")
        if len(done) == 1 and len(started - done) == 1:
            (state["first"],), (state["second"],) = done, started - done
            return True
        return False

    _run_and_kill_when(cmd, env, tmp_path / "first.log", first_done_second_started, "first trial done")
    first_fit = results / "trials" / state["first"] / "fit.json"
    first_mtime = first_fit.stat().st_mtime

    # 2: resumed; killed while the third trial is held in epoch 1, its epoch-0 report (and snapshot) written
    def third_held() -> bool:
        held = folders(HELD_MARKER)
        if held:
            (state["third"],) = held
            state.setdefault("held_at", time.time())
        return "held_at" in state and time.time() - state["held_at"] > 3

    _run_and_kill_when(cmd + ["--resume"], env, tmp_path / "second.log", third_held, "third trial held")
    # the console shows the replayed trial as the run that finished it had (3 epochs), not as a stopped one
    assert f"completed {state['first']}  best val/loss=" in (tmp_path / "second.log").read_text()

    # 3: resumed to the end
    last = subprocess.run(cmd + ["--resume"], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=900)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["num_trials"] == 4 and summary["states"]["completed"] == 4
    by_id = {t["trial_id"]: t for t in summary["trials"]}
    # the finished trial was neither trained again nor counted twice: the resumed search replayed its results
    assert first_fit.stat().st_mtime == first_mtime
    assert by_id[state["first"]]["epochs"] == 3 and by_id[state["first"]]["best"] is not None
    # the trial the stale snapshot never knew is reported, its folder kept; its point ran again as a new trial
    orphans = {o["trial_id"] for o in summary["orphaned_trials"]}
    assert orphans == {state["second"]}
    assert (results / "trials" / state["second"] / "spec.yaml").is_file()
    # the held trial continued from its epoch-0 checkpoint
    assert by_id[state["third"]]["epochs"] == 3
    assert "Training resumed at epoch 1" in (results / "trials" / state["third"] / "status.json").read_text()

    import optuna

    assert optuna.trial.TrialState.RUNNING not in [t.state for t in optuna_trials(results)]
    client, runs = mlflow_client(results)
    parents = [r for r in runs if r.data.tags.get("automl.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    live = [r for r in children if r.data.tags["automl.trial_id"] in by_id]
    ids = [r.data.tags["automl.trial_id"] for r in live]
    assert sorted(ids) == sorted(by_id), f"duplicate or missing MLflow child runs: {ids}"
    for r in children:
        if r.data.tags["automl.trial_id"] not in by_id:
            assert r.data.tags[STATE_TAG] == "orphaned" and r.info.status == "KILLED", r.data.tags
    # no trial started over: every epoch of every curve was logged once
    for r in live:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/loss")]
        assert sorted(steps) == list(range(3)), (r.data.tags["automl.trial_id"], steps)


def _cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(params=["gloo-cpu", pytest.param("nccl-2gpu", marks=pytest.mark.gpu)])
def ddp_trial(request, monkeypatch) -> dict:
    """How a DDP trial of two ranks is made: on CPUs through the test hook (gloo); on a machine with 2 GPUs through
    `gpus_per_trial: 2` as a user would (NCCL, one GPU per rank). Returns the spec's automl settings for it."""
    if request.param == "nccl-2gpu":
        if _cuda_gpus() < 2:
            pytest.skip(reason="needs 2 CUDA GPUs (on a GPU machine: pytest -m gpu)")
        return {"gpus_per_trial": 2}
    monkeypatch.setenv("AUTOML_TESTING_DDP_CPU_WORKERS", "2")
    return {"gpus_per_trial": 0}


def _status_time(folder: Path, status: str) -> float:
    """When the last `status` line of the folder's status.json was written (epoch seconds)."""
    from datetime import datetime

    last = [x for x in status_lines(folder) if x["status"] == status][-1]
    return datetime.strptime(f"{last['date']} {last['time']}", "%m/%d/%Y %H:%M:%S").timestamp()


def _fit_results(summary: dict) -> list[dict]:
    return [json.loads((Path(t["results_dir"]) / "fit.json").read_text()) for t in summary["trials"]
            if (Path(t["results_dir"]) / "fit.json").is_file()]


def test_trials_spread_over_several_workers_train_with_ddp_and_are_pruned_on_nan(synth_data, tmp_path, ddp_trial,
                                                                                  ray_shutdown):
    """`--gpus-per-trial 2` runs each trial as DDP over two processes (the trial is rank 0, a child process rank 1);
    on CPUs the test hook takes the same path with gloo. Each worker sees half of every epoch's batches, the trial
    reports to Tune like any other, and a trial whose first point diverges is pruned (every rank agrees, nobody
    hangs in a collective), and a trial the scheduler stops takes its ranks with it."""
    import math

    import torch

    from automl.cli import main
    from trainer.data.annotations import read_annotation_file

    results = tmp_path / "search"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, num_trials=4, max_concurrent=1,
                                                          cpus_per_trial=2, reduction_factor=2, **ddp_trial))
    # after the spec's own point: one that diverges (pruned), one that learns too slowly for ASHA's first rung
    # (stopped: its ranks must go, or the fourth trial could never start)
    space = space_file(tmp_path)
    space.write_text(space.read_text() + "  - {train.optim.lr: 1.0e-4}\n")
    rc = main(["run", "-e", str(spec), "--search-space", str(space)])
    assert rc == 0
    summary = json.loads((results / "summary.json").read_text())
    assert summary["ddp_workers_per_trial"] == 2
    by_lr = {t["params"]["train.optim.lr"]: t for t in summary["trials"]}
    assert len(by_lr) == 4
    diverged, slow, trained = by_lr[1e6], by_lr[1e-4], by_lr[1e-3]
    assert diverged["state"] == "pruned" and diverged["reason"] == "non_finite_loss"
    assert slow["state"] == "stopped" and slow["epochs"] == 1
    assert trained["state"] == "completed" and trained["best"] is not None and trained["epochs"] == 2
    assert summary["states"]["error"] == 0, "a trial could not run (resources of a stopped trial not released?)"

    # the data really was split over the two ranks: each optimizer step saw one rank's share of the epoch
    n_train = len(read_annotation_file(synth_data / "train.txt"))
    assert n_train >= 16
    steps_per_epoch = math.ceil(n_train / 2) // 8  # batches of 8, the last partial one dropped (training)
    ckpt = torch.load(Path(trained["results_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert ckpt["global_step"] == 2 * steps_per_epoch
    assert Path(summary["winner"]["checkpoint"]).is_file()
    # each finished trial really trained on two ranks, on GPUs when it asked for them
    for fit in _fit_results(summary):
        assert fit["world_size"] == 2, fit
        assert fit["device"].startswith("cuda" if ddp_trial["gpus_per_trial"] else "cpu"), fit
    # no rank outlives its trial
    leftover = subprocess.run(["pgrep", "-f", "automl.search.trial"], capture_output=True, text=True).stdout.split()
    assert not leftover, f"child ranks still running: {leftover}"


def test_a_ddp_rank_that_dies_ends_its_trial_attempt_and_the_retry_resumes(synth_data, tmp_path, monkeypatch,
                                                                         ddp_trial, ray_shutdown, capsys):
    """A child rank killed mid-epoch ends the trial's attempt (on GPUs through rank 0's watchdog, since NCCL may wait
    for its timeout; over gloo rank 0's collective also fails by itself), Ray retries the trial, and the retry
    resumes from its last checkpoint."""
    from automl.cli import main
    from automl.testing import KILLED_MARKER

    monkeypatch.setenv("AUTOML_TESTING_KILL_WORKER", "0:1")
    results = tmp_path / "search"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, num_trials=1, max_concurrent=1,
                                                          cpus_per_trial=2, scheduler="none", max_failures=1,
                                                          **ddp_trial))
    started = time.time()
    rc = main(["run", "-e", str(spec), "--search-space", str(space_file(tmp_path, diverge=False))])
    assert rc == 0
    assert time.time() - started < 600, "rank 0 waited for the dead rank instead of ending the attempt"
    (trial,) = json.loads((results / "summary.json").read_text())["trials"]
    folder = results / "trials" / trial["trial_id"]
    assert (folder / KILLED_MARKER).is_file(), "the hook never killed the child rank"
    assert trial["state"] == "completed" and trial["epochs"] == 2, trial
    starts = [s for s in status_lines(folder) if s["status"] == "STARTED"]
    assert len(starts) == 2 and "last.ckpt" in starts[1]["message"], "the retry did not resume from its checkpoint"
    # the ranks leave as soon as the trial ends (an open NCCL communicator once held a child rank for a minute)
    trained = _status_time(folder, "SUCCESS")
    finished = _status_time(results, "SUCCESS")
    assert finished - trained < 30, f"the search ended {finished - trained:.0f} s after its only trial"
    assert f"retry     {trial['trial_id']}" in capsys.readouterr().out, "Ray did not retry the trial"


@pytest.mark.gpu
def test_fractional_gpus_pack_several_trials_on_each_gpu(synth_data, tmp_path, ray_shutdown):
    """`--gpus-per-trial 0.5`: two trials share each GPU, so a machine of G GPUs trains 2G trials at once, each on a
    GPU Ray assigned (CUDA_VISIBLE_DEVICES), and every GPU gets its share."""
    from automl.cli import main

    gpus = _cuda_gpus()
    if gpus < 1:
        pytest.skip(reason="needs a CUDA GPU (on a GPU machine: pytest -m gpu)")
    results = tmp_path / "search"
    n = 2 * gpus
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, epochs=3, num_trials=n,
                                                          scheduler="none", max_concurrent=None))
    rc = main(["run", "-e", str(spec), "--search-space", str(space_file(tmp_path, diverge=False)),
               "--gpus-per-trial", "0.5"])
    assert rc == 0
    summary = json.loads((results / "summary.json").read_text())
    assert f"{n} at a time" in status_lines(results)[0]["message"]
    assert [t["state"] for t in summary["trials"]] == ["completed"] * n, summary["trials"]
    fits = _fit_results(summary)
    assert len(fits) == n
    assert all(f["device"].startswith("cuda") and f["world_size"] == 1 for f in fits), fits
    # Ray gave each GPU to two trials
    per_gpu: dict = {}
    for f in fits:
        per_gpu[f["visible_devices"]] = per_gpu.get(f["visible_devices"], 0) + 1
    assert sorted(per_gpu.values()) == [2] * gpus, per_gpu
    # and they trained at the same time: every trial started before any finished
    assert max(f["started_at"] for f in fits) < min(f["started_at"] + f["wall_time_s"] for f in fits), fits

