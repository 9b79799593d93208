"""`automl ui RESULTS_DIR`: finds the search's MLflow store, serves the MLflow UI on 127.0.0.1 and prints the URL of
the search's parent run; in a browser the parent run shows its trials as children, and the compare view of the
trials plots val/loss."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import (chromium, needs_chromium, run_real_search, screenshot, summary_of, wait_for,
                           wait_until)

REPO = Path(__file__).resolve().parents[1]


def _store_with_a_search(results: Path, trials: int = 3) -> tuple[str, list[str]]:
    """A SQLite store laid out as a search leaves it: one parent run, child runs with val/loss per epoch."""
    from automl.search.tracking import ParentRun
    from trainer.tracking import MlflowRun, TrackingConfig, default_tracking_uri

    uri = default_tracking_uri(results)
    parent = ParentRun(uri, "depth_net_mono", run_name=f"search-{results.name}")
    parent.start()
    children = []
    for i in range(trials):
        run = MlflowRun(TrackingConfig(uri=uri, run_name=f"trial{i}", parent_run_id=parent.run_id,
                                       tags={"automl.trial_id": f"trial{i}"}), results_dir=results)
        run.start()
        for epoch in range(3):
            run.log_metrics({"val/loss": 1.0 / (epoch + 2 + i)}, step=epoch)
        run.end()
        children.append(run.run_id)
    parent.end()
    (results / "summary.json").write_text(json.dumps(
        {"mlflow": {"tracking_uri": uri, "experiment": "depth_net_mono", "parent_run_id": parent.run_id},
         "objective": {"metric": "val/loss", "mode": "min"}}))
    return parent.run_id, children


def _start_ui(results: Path, *extra: str, ready: bool = True) -> tuple[subprocess.Popen, dict[str, str]]:
    """`automl ui RESULTS_DIR --port 0` in its own session; returns the process and the URLs it printed (with
    `printed_s`: seconds until the URLs were printed, and `ready_s`: until it said the server answers)."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "automl.cli", "ui", str(results), "--port", "0", *extra],
                            cwd=results, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    urls: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.time() + 180
    while time.time() < deadline and not ("ready_s" in urls or ("printed_s" in urls and not ready)):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.match(r"(search \(parent run\)|run|experiment|compare the \d+ trials|val/loss of the \d+ trials): "
                     r"(http\S+)", line.strip())
        if m:
            urls[m.group(1).split(" ")[0]] = m.group(2)
        if line.startswith("(store "):
            urls["printed_s"] = f"{time.time() - started:.1f}"
        if line.startswith("ready: "):
            urls["ready_s"] = f"{time.time() - started:.1f}"
    if "compare" not in urls or "printed_s" not in urls:
        _stop_ui(proc)
        raise AssertionError("automl ui printed no URLs:\n" + "".join(lines))
    return proc, urls


def _stop_ui(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _port_of(url: str) -> int:
    return int(re.match(r"http://127\.0\.0\.1:(\d+)/", url).group(1))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- finding the store --------------------------------------------------------------------------------------


def test_store_is_found_from_summary_state_fit_or_a_bare_database(tmp_path):
    from automl.ui import resolve_store

    a = tmp_path / "a"
    a.mkdir()
    (a / "summary.json").write_text(json.dumps({"mlflow": {"tracking_uri": "http://h:5000", "experiment": "e",
                                                           "parent_run_id": "p"}}))
    assert (resolve_store(a).tracking_uri, resolve_store(a).experiment_name, resolve_store(a).run_id) == \
        ("http://h:5000", "e", "p")
    b = tmp_path / "b"
    b.mkdir()
    (b / "search_state.json").write_text(json.dumps({"tracking_uri": "sqlite:///x.db", "parent_run_id": "q",
                                                     "options": {"experiment_name": "f"}}))
    assert (resolve_store(b).run_id, resolve_store(b).experiment_name) == ("q", "f")
    c = tmp_path / "c"
    c.mkdir()
    (c / "fit.json").write_text(json.dumps({"tracking_uri": "sqlite:///y.db", "mlflow_run_id": "r"}))
    assert resolve_store(c).run_id == "r"
    d = tmp_path / "d"
    d.mkdir()
    (d / "mlflow.db").write_bytes(b"")
    assert resolve_store(d).tracking_uri == f"sqlite:///{(d / 'mlflow.db').resolve()}"


def test_errors_name_the_folder_and_the_port(tmp_path, capsys):
    from automl.cli import main

    assert main(["ui", str(tmp_path / "missing")]) == 2
    assert f"results folder not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["ui", str(tmp_path)]) == 2
    assert f"no MLflow store found in {tmp_path}" in capsys.readouterr().err

    _store_with_a_search(tmp_path, trials=1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", str(tmp_path), "--port", str(port)]) == 2
    assert f"--port {port}: the port is in use on 127.0.0.1" in capsys.readouterr().err


def test_links_are_the_mlflow_ui_routes():
    from automl.ui import Links

    links = Links("http://127.0.0.1:5000", "3", "p1", ["c1", "c2"])
    assert links.run == "http://127.0.0.1:5000/#/experiments/3/runs/p1?workflowType=machine_learning"
    assert links.compare == ("http://127.0.0.1:5000/#/compare-runs?runs=%5B%22c1%22%2C%22c2%22%5D"
                             "&experiments=%5B%223%22%5D&workflowType=machine_learning")
    assert links.metric("val/loss").startswith("http://127.0.0.1:5000/#/metric?runs=%5B%22c1%22%2C%22c2%22%5D"
                                               "&metric=%22val%2Floss%22")
    assert "&x_axis=step&" in links.metric("val/loss"), "the objective against the epoch, not the time"
    assert links.experiment.endswith("/#/experiments/3/runs?workflowType=machine_learning"), \
        "MLflow's model-training view, not its GenAI view"
    assert Links("http://h", "3", None).compare is None


def test_links_read_from_the_database_file_match_mlflows_own(tmp_path):
    from automl.ui import find_links, links_from_sqlite, resolve_store

    parent, children = _store_with_a_search(tmp_path)
    fast = links_from_sqlite(tmp_path / "mlflow.db", resolve_store(tmp_path), "http://b")
    slow = find_links(resolve_store(tmp_path), "http://b")
    assert (fast.experiment_id, fast.run_id, fast.child_run_ids) == (slow.experiment_id, parent, children)


def test_ui_prints_its_urls_at_once_and_ctrl_c_stops_it_and_the_server_quickly(tmp_path):
    """The URLs come before the server answers (MLflow takes tens of seconds to start on a busy machine); Ctrl-C
    in a terminal (SIGINT to the whole foreground process group) leaves nothing listening within seconds."""
    _store_with_a_search(tmp_path)
    proc, urls = _start_ui(tmp_path)
    port = _port_of(urls["search"])
    assert float(urls["printed_s"]) < 15, urls
    assert float(urls["printed_s"]) <= float(urls["ready_s"])
    assert _listening(port)
    stopped_at = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=15)
    assert wait_until(lambda: not _listening(port), 15, "the server to stop")
    took = time.time() - stopped_at
    assert took < 8, f"automl ui and its server took {took:.1f} s to stop on Ctrl-C"
    assert proc.returncode == 0
    print(f"URLs printed after {urls['printed_s']} s, server ready after {urls['ready_s']} s, Ctrl-C stopped "
          f"everything in {took:.1f} s")


def test_ui_serves_the_store_on_loopback_prints_the_parent_run_and_stops_cleanly(tmp_path):
    parent, children = _store_with_a_search(tmp_path)
    proc, urls = _start_ui(tmp_path)
    try:
        exp = re.search(r"#/experiments/(\d+)/runs/", urls["search"]).group(1)
        assert urls["search"].endswith(f"/#/experiments/{exp}/runs/{parent}?workflowType=machine_learning")
        port = _port_of(urls["search"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.read().decode().strip() == "OK"
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={children[0]}"
        with urllib.request.urlopen(api, timeout=10) as r:
            assert json.load(r)["run"]["data"]["tags"]  # the UI's API reads the search's store
    finally:
        proc.send_signal(signal.SIGTERM)  # what Ctrl-C / a service manager does to automl ui alone
        proc.wait(timeout=30)
    assert wait_until(lambda: not _listening(port), 30, "the server to stop"), "the MLflow server outlived automl ui"
    assert not (tmp_path / "mlruns").exists() and not (REPO / "mlartifacts").exists()


# ---- end to end in a browser ---------------------------------------------------------------------------------


@pytest.mark.slow
@needs_chromium
def test_mlflow_ui_shows_the_search_and_compares_its_trials_val_loss(tmp_path_factory, synth_data):
    results, _ = run_real_search(tmp_path_factory.getbasetemp() / "real-search", synth_data)
    summary = summary_of(results)
    trial_ids = sorted(t["trial_id"] for t in summary["trials"])
    scored = sorted(t["trial_id"] for t in summary["trials"] if t["best"] is not None)
    assert len(scored) >= 2 and len(scored) < len(trial_ids), "expected trained and diverged trials"
    parent = summary["mlflow"]["parent_run_id"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    child_runs = {r.info.run_id: r.data.tags["automl.trial_id"] for r in client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")}
    assert sorted(child_runs.values()) == trial_ids
    # a trial with a result FINISHED, a failed one FAILED, a diverged one KILLED (MLflow's statuses)
    run_status = {"completed": "FINISHED", "stopped": "FINISHED", "error": "FAILED", "pruned": "KILLED"}
    states = {t["trial_id"]: t["state"] for t in summary["trials"]}
    for run_id, trial_id in child_runs.items():
        run = client.get_run(run_id)
        params = run.data.params
        assert {"train.optim.lr", "train.optim.weight_decay", "objective.metric", "model.encoder"} <= set(params)
        assert len(params) <= 20, f"a handful of params, not the whole spec: {sorted(params)}"
        assert run.data.tags["trial_state"] == states[trial_id] == run.data.tags["automl.trial_state"]
        assert run.info.status == run_status[states[trial_id]]
        assert "spec.yaml" in [a.path for a in client.list_artifacts(run_id)]

    proc, urls = _start_ui(results)
    started = time.time()
    try:
        assert urls["search"].endswith(f"/runs/{parent}?workflowType=machine_learning")
        base = urls["search"].split("/#/")[0]
        exp = re.search(r"#/experiments/(\d+)/", urls["search"]).group(1)
        with chromium(1600, 1000) as driver:
            # the parent run's own page
            driver.get(urls["search"])
            wait_for(driver, "return document.body.innerText.includes(arguments[0])", f"search-{results.name}",
                     what="the parent run's page")
            wait_for(driver, "return document.body.innerText.includes('best/val/loss')", what="its metrics")
            screenshot(driver, "mlflow-parent-run.png")

            # the experiment's runs: the parent, expanded, lists every trial as a child
            driver.get(urls["experiment"])
            wait_for(driver, "return document.querySelector(`[row-id='${arguments[0]}']`)", parent,
                     what="the parent run's row")
            wait_for(driver, """
                const row = document.querySelector(`[row-id='${arguments[0]}']`);
                const expand = row && row.querySelector("button[data-component-id*='runnamecellrenderer']");
                if (expand && !document.querySelector(`[row-id='${arguments[1]}']`)) expand.click();
                return !!document.querySelector(`[row-id='${arguments[1]}']`);""", parent, next(iter(child_runs)),
                     what="the children under the expanded parent")
            shown = wait_for(driver, """
                const ids = arguments[0].filter(id => document.querySelector(`[row-id='${id}']`));
                return ids.length === arguments[0].length ? ids : null;""", list(child_runs),
                             what="every trial's row")
            names = driver.execute_script("return document.body.innerText")
            screenshot(driver, "mlflow-runs.png")
            assert sorted(shown) == sorted(child_runs)
            assert all(t in names for t in trial_ids)

            # the compare view of the trials, and its val/loss chart of every trial with a finite objective
            driver.get(urls["compare"])
            wait_for(driver, "return document.body.innerText.includes(arguments[0])",
                     f"Comparing {len(trial_ids)} Runs", what="the compare view")
            axes = wait_for(driver, """
                const labels = Array.from(document.querySelectorAll('.js-plotly-plot .axis-title'));
                return labels.length ? labels.map(l => l.textContent) : null;""",
                            what="the compare view's parallel coordinates plot")
            sidebar = driver.execute_script("return document.body.innerText")
            assert {"train.optim.lr", "train.optim.weight_decay"} <= set(axes), axes  # what was searched
            assert "Model registry" in sidebar and "Evaluation runs" not in sidebar, "model-training view, not GenAI"
            screenshot(driver, "mlflow-compare.png")
            href = wait_for(driver, """
                const a = Array.from(document.querySelectorAll('a')).find(a => a.innerText.trim() === 'val/loss');
                return a && a.getAttribute('href');""", what="the val/loss row of the compare view")
            driver.get(f"{base}/{href}" if href.startswith("#") else href)
            legend = wait_for(driver, """
                const traces = document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length;
                const names = arguments[1].filter(t => document.body.innerText.includes(t + ' (val/loss)'));
                return traces >= arguments[0] && names.length === arguments[1].length ? names : null;""",
                              len(scored), scored, what="the val/loss chart with one curve per scored trial")
            title = driver.execute_script("return document.body.innerText")
            screenshot(driver, "mlflow-compare-val-loss.png")
            driver.get(urls["val/loss"])  # the link automl ui prints: the objective against the epoch
            x_title = wait_for(driver, """
                const t = document.querySelector('.js-plotly-plot .xtitle');
                return t && t.textContent;""", what="the printed val/loss link's chart")
            assert x_title == "Step", x_title
        assert sorted(legend) == scored
        assert f"Comparing {len(scored)} Runs" in title  # the runs that have val/loss
    finally:
        _stop_ui(proc)
    print(f"MLflow UI checks took {time.time() - started:.0f} s")


# ---- what a run holds for MLflow's compare view --------------------------------------------------------------


def test_short_aliases_are_unique_tails_of_the_dotted_names():
    from automl.search.tracking import searched_tag, short_names, trial_params

    assert short_names(["train.optim.lr", "train.optim.weight_decay", "model.lr", "seed"]) == \
        {"train.optim.lr": "optim.lr", "train.optim.weight_decay": "weight_decay"}
    assert trial_params({"train.optim.lr": 0.001}, "val/d1", "max") == \
        {"train.optim.lr": 0.001, "objective.metric": "val/d1", "objective.mode": "max"}
    assert searched_tag({"train.optim.lr": 0.00123456, "model.encoder": "vits"}) == \
        {"searched": "lr=0.001235, encoder=vits"}


def test_a_trial_run_logs_its_searched_values_as_params_and_its_spec_as_an_artifact(tiny_spec, tmp_path):
    """What MLflow's compare view works on: the searched values (dotted names) and the objective as params, a
    handful of fixed spec keys beside them (not the whole spec: that is the artifact spec.yaml), val/loss per epoch
    at step=epoch, and an experiment that the UI opens as model training."""
    from mlflow.tracking import MlflowClient

    from automl.search.tracking import trial_params
    from trainer.fit import fit
    from trainer.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TrackingConfig, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    searched = {"train.optim.lr": 0.002, "train.optim.weight_decay": 0.01}
    result = fit(tiny_spec(epochs=2, lr=0.002, results_dir=tmp_path / "trial"), progress=False, quiet=True,
                 tracking=TrackingConfig(uri=uri, params=trial_params(searched, "val/loss", "min")))
    client = MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    params = run.data.params
    assert {k: params[k] for k in ("train.optim.lr", "train.optim.weight_decay", "objective.metric",
                                   "objective.mode")} \
        == {"train.optim.lr": "0.002", "train.optim.weight_decay": "0.01", "objective.metric": "val/loss",
            "objective.mode": "min"}
    assert params["model.encoder"] == "custom" and params["model.model_type"] == "MetricDepthAnything"
    assert params["dataset.train_dataset.batch_size"] == "8" and params["train.num_epochs"] == "2"
    assert params["dataset.train_dataset.names"] == "NYUDV2 (train.txt)" and "train.precision" in params
    assert len(params) <= 20, sorted(params)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["spec.yaml"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [0, 1]
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
