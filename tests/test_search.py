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

from tests.conftest import free_port, tiny_spec_tree, wait_http, write_yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def space_file(tmp_path: Path, diverge: bool = True) -> Path:
    """With `diverge`, lr spans a diverging region and the first proposed point sits in it, so one trial really
    diverges; without, every lr trains."""
    high = "1.0e+6" if diverge else "3.0e-3"
    text = f"""
objective: {{metric: val/loss, mode: min}}
parameters:
  train.optim.lr: {{type: float, low: 1.0e-4, high: {high}, log: true}}
  train.optim.weight_decay: {{type: float, low: 1.0e-4, high: 0.1, log: true}}
"""
    if diverge:
        text += "initial_points:\n  - {train.optim.lr: 1.0e+6}\n"
    p = tmp_path / "space.yaml"
    p.write_text(text)
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
        status = [json.loads(l) for l in (Path(t["results_dir"]) / "status.json").read_text().splitlines()]
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


def test_driver_killed_mid_search_resumes_without_losing_or_duplicating(synth_data, tmp_path):
    results = tmp_path / "resume"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, epochs=3, max_concurrent=1,
                                                          scheduler="none"))
    cmd = [sys.executable, "-m", "automl.cli", "run", "-e", str(spec), "--search-space",
           str(space_file(tmp_path, False))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # wait until one trial has finished and the next one has checkpointed at least one epoch
        deadline = time.time() + 400
        while time.time() < deadline:
            done = list(results.glob("trials/*/fit.json"))
            ckpts = [p for p in results.glob("trials/*/checkpoints/last.ckpt")
                     if not (p.parent.parent / "fit.json").exists()]
            if done and ckpts:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the search did not get far enough before the deadline")
    finally:
        # the driver and the Ray processes it started: they share its process group (Ray does not setsid them)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finished_before = {p.parent.name: p.stat().st_mtime for p in results.glob("trials/*/fit.json")}
    assert finished_before

    second = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["num_trials"] == 4 and summary["states"]["completed"] == 4
    for trial_id, mtime in finished_before.items():  # finished trials were not run again
        assert (results / "trials" / trial_id / "fit.json").stat().st_mtime == mtime

    import optuna

    assert optuna.trial.TrialState.RUNNING not in [t.state for t in optuna_trials(results)]
    client, runs = mlflow_client(results)
    parents = [r for r in runs if r.data.tags.get("automl.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    ids = [r.data.tags["automl.trial_id"] for r in children]
    assert len(ids) == len(set(ids)) == 4, f"duplicate or missing MLflow child runs: {ids}"


def test_trials_spread_over_several_workers_train_with_ddp_and_are_pruned_on_nan(synth_data, tmp_path,
                                                                                  monkeypatch, ray_shutdown):
    """`--gpus-per-trial 2` runs each trial as DDP over two processes (the trial is rank 0, a child process rank 1);
    on CPUs the test hook takes the same path with gloo. Each worker sees half of every epoch's batches, the trial reports to Tune like any other, and a
    trial whose first point diverges is pruned (every rank agrees, nobody hangs in a collective), and a trial the
    scheduler stops takes its ranks with it."""
    import math

    import torch

    from automl.cli import main
    from trainer.data.annotations import read_annotation_file

    monkeypatch.setenv("AUTOML_TESTING_DDP_CPU_WORKERS", "2")
    results = tmp_path / "search"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, num_trials=4, max_concurrent=1,
                                                          cpus_per_trial=2, reduction_factor=2))
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
    # no rank outlives its trial
    leftover = subprocess.run(["pgrep", "-f", "automl.search.trial"], capture_output=True, text=True).stdout.split()
    assert not leftover, f"child ranks still running: {leftover}"


def test_a_ddp_rank_that_dies_ends_its_trial_attempt_and_the_retry_resumes(synth_data, tmp_path, monkeypatch,
                                                                         ray_shutdown, capsys):
    """A child rank killed mid-epoch ends the trial's attempt (on GPUs through rank 0's watchdog, since NCCL may wait
    for its timeout; over gloo, as here, rank 0's collective also fails by itself), Ray retries the trial, and the
    retry resumes from its last checkpoint."""
    from automl.cli import main
    from automl.testing import KILLED_MARKER

    monkeypatch.setenv("AUTOML_TESTING_DDP_CPU_WORKERS", "2")
    monkeypatch.setenv("AUTOML_TESTING_KILL_WORKER", "0:1")
    results = tmp_path / "search"
    spec = write_yaml(tmp_path / "spec.yaml", search_spec(synth_data, results, num_trials=1, max_concurrent=1,
                                                          cpus_per_trial=2, scheduler="none", max_failures=1))
    started = time.time()
    rc = main(["run", "-e", str(spec), "--search-space", str(space_file(tmp_path, diverge=False))])
    assert rc == 0
    assert time.time() - started < 600, "rank 0 waited for the dead rank instead of ending the attempt"
    (trial,) = json.loads((results / "summary.json").read_text())["trials"]
    folder = results / "trials" / trial["trial_id"]
    assert (folder / KILLED_MARKER).is_file(), "the hook never killed the child rank"
    assert trial["state"] == "completed" and trial["epochs"] == 2, trial
    starts = [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]
    starts = [s for s in starts if s["status"] == "STARTED"]
    assert len(starts) == 2 and "last.ckpt" in starts[1]["message"], "the retry did not resume from its checkpoint"
    assert f"retry     {trial['trial_id']}" in capsys.readouterr().out, "Ray did not retry the trial"
