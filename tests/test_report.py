"""The search report: one self-contained HTML file (plotly.js and every figure inside, opening without a network)
with interactive learning curves coloured by how each trial ended, curves of every metric, a timeline of the
trials per device, parallel coordinates and importances with their spread, failed trials' reasons on the first
screen, the leaderboard and the winner's predictions on one colour scale; a figure that cannot be drawn becomes a
note, never a failed report."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.browser import (artifacts_dir, chromium, needs_chromium, run_real_search, screenshot, summary_of,
                           wait_for)

PLOTS = ("learning-curves", "all-metrics", "timeline", "wall-time", "parallel-coordinates", "optimization-history",
         "param-importances")
FIGURES = (*PLOTS, "predictions")
T0 = 1_790_000_000.0  # when the fixture's search started


def _history(values: list[float], train: list[float], start: float = 0.0) -> list[dict]:
    """Reports as Ray Tune records them: 10 s per epoch after 5 s of start-up, `start` s into the search."""
    return [{"epoch": i, "val/loss": v, "train_loss": t, "val/d1": 1 - v, "lr": 1e-3, "training_iteration": i + 1,
             "time_total_s": 5.0 + 10 * (i + 1), "reported_at": T0 + start + 5.0 + 10 * (i + 1)}
            for i, (v, t) in enumerate(zip(values, train))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synth_data) -> Path:
    """A results folder as `automl run` leaves it, with a real (tiny) winner checkpoint and an Optuna study of
    four trials: two completed, one stopped by the scheduler, one pruned for a NaN loss."""
    import optuna
    from optuna.distributions import FloatDistribution

    from tests.conftest import tiny_spec_tree
    from trainer.config import build_spec, save_spec
    from trainer.fit import fit
    from trainer.tracking import TrackingConfig

    results = tmp_path_factory.mktemp("search") / "demo"
    trial_dir = results / "trials" / "aaaa0001"
    spec = build_spec(tiny_spec_tree(synth_data, trial_dir, epochs=1), action="train", notice=lambda _m: None)
    fit(spec, tracking=TrackingConfig(enabled=False), progress=False, quiet=True)
    (results / "best").mkdir(parents=True)
    shutil.copy(trial_dir / "checkpoints" / "best.ckpt", results / "best" / "model.ckpt")
    save_spec(spec, results / "best" / "spec.yaml")

    dists = {"train.optim.lr": FloatDistribution(1e-5, 10.0, log=True),
             "train.optim.weight_decay": FloatDistribution(1e-4, 0.1, log=True)}
    trials = [
        ("aaaa0001", "completed", {"train.optim.lr": 1e-3, "train.optim.weight_decay": 0.01},
         _history([0.50, 0.41, 0.38], [0.60, 0.45, 0.40]), None),
        ("aaaa0002", "completed", {"train.optim.lr": 3e-4, "train.optim.weight_decay": 0.002},
         _history([0.55, 0.47, 0.44], [0.65, 0.52, 0.47], start=1.0), None),
        ("aaaa0003", "stopped", {"train.optim.lr": 2e-5, "train.optim.weight_decay": 0.05},
         _history([0.70], [0.80], start=36.0), "scheduler"),
        ("aaaa0004", "pruned", {"train.optim.lr": 8.0, "train.optim.weight_decay": 0.0003},
         [{"val/loss": None, "prune_reason": "non_finite_loss", "diverged_epoch": 0, "diverged_step": 1,
           "training_iteration": 1, "time_total_s": 7.0, "reported_at": T0 + 52.0}], "non_finite_loss"),
    ]
    storage = f"sqlite:///{results / 'optuna.db'}"
    study = optuna.create_study(study_name=f"search-{results.name}", storage=storage, direction="minimize")
    records = []
    for tid, state, params, hist, reason in trials:
        finite = [h["val/loss"] for h in hist if h.get("val/loss") is not None]
        best = min(finite) if finite else None
        ostate = optuna.trial.TrialState.PRUNED if state == "pruned" else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=best, state=ostate))
        records.append({"trial_id": tid, "params": params, "state": state, "best": best,
                        "best_epoch": finite.index(best) if finite else None,
                        "epochs": len(finite), "reason": reason, "results_dir": str(results / "trials" / tid),
                        "history": hist, "baseline": tid == "aaaa0002"})
    summary = {
        "objective": {"metric": "val/loss", "mode": "min"},
        "search_space": {"train.optim.lr": {"type": "float", "low": 1e-5, "high": 10.0, "log": True},
                         "train.optim.weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
        "scheduler": "asha", "num_trials": 4, "resources_per_trial": {"cpu": 1, "gpu": 0},
        "states": {"completed": 2, "stopped": 1, "pruned": 1, "error": 0},
        "winner": {"trial_id": "aaaa0001", "params": trials[0][2], "best": 0.38, "best_epoch": 2,
                   "trial_dir": str(trial_dir), "checkpoint": str(results / "best" / "model.ckpt"),
                   "spec": str(results / "best" / "spec.yaml"),
                   "evaluation": {"split": "val_dataset", "num_images": 8, "metrics": {"d1": 0.5, "abs_rel": 0.3}}},
        "trials": records,
        "mlflow": {"tracking_uri": f"sqlite:///{results / 'mlflow.db'}", "experiment": "depth_net_mono",
                   "parent_run_id": "0" * 32},
        "optuna_storage": storage, "wall_time_s": 95.0,
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    (trial_dir / "fit.json").unlink()  # its real one would say it ran now, not in the fixture's search
    return results


def _copy(results: Path, tmp_path: Path) -> Path:
    out = tmp_path / results.name
    shutil.copytree(results, out, ignore=shutil.ignore_patterns("report"))
    return out


def _summary(results: Path) -> dict:
    return json.loads((results / "summary.json").read_text())


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _figure_section(html: str, key: str) -> str:
    return html.split(f'data-key="{key}"')[1].split("</figure>")[0]


def test_report_is_one_html_file_with_plotly_inline_and_every_figure_inside(finished, tmp_path):
    from automl.report import write_report

    results = _copy(finished, tmp_path)
    report = write_report(results)

    assert report.html == results / "report" / "report.html"
    assert report.notes == {}
    html = report.html.read_text()
    assert html.count("<script") >= len(PLOTS) + 1 and "Plotly.newPlot" in html
    assert re.search(r"<script[^>]*\bsrc=", html) is None and "<link" not in html, "nothing fetched from elsewhere"
    assert len(html.split("</head>")[0]) > 3_000_000, "plotly.js itself is in the file"
    for key in PLOTS:
        assert f'id="plot-{key}"' in _figure_section(html, key), key
    pngs = _embedded_pngs(html)
    assert pngs == [(results / "report" / "predictions.png").read_bytes()]
    assert pngs[0].startswith(b"\x89PNG")
    # three completed trials: the importances come with their caveat
    assert "Only 3 completed trials" in _figure_section(html, "param-importances")


def test_leaderboard_ranks_finite_objectives_first_and_marks_winner_and_baseline(finished):
    from automl.report import leaderboard_html

    html = leaderboard_html(_summary(finished))
    rows = re.findall(r"<tr(?: class=\"(\w+)\")?>(.*?)</tr>", html.split("<tbody>")[1], flags=re.S)
    ids = [re.findall(r"aaaa000\d", body)[0] for _cls, body in rows]
    assert ids == ["aaaa0001", "aaaa0002", "aaaa0003", "aaaa0004"]
    assert rows[0][0] == "winner" and 'class="mark winner-mark"' in rows[0][1]
    assert 'class="mark baseline-mark"' in rows[1][1]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[3][1])
    assert "pruned (non-finite loss)" in cells[2] and cells[3] == "non_finite_loss", "the reason, next to the state"
    assert "stopped by the scheduler" in rows[2][1]


def test_a_failed_trials_reason_is_on_the_first_screen(finished, tmp_path):
    from automl.report import write_report

    results = _copy(finished, tmp_path)
    summary = _summary(results)
    summary["trials"][2].update(state="error", reason="OutOfMemoryError: CUDA out of memory (tried 2.1 GiB)")
    (results / "summary.json").write_text(json.dumps(summary))
    html = write_report(results, predictions=False).html.read_text()
    body = html.split("<body>")[1]
    problems = body.split('id="problems"')[1].split("</section>")[0]
    assert body.index('id="problems"') < body.index('id="winner"') < body.index('id="leaderboard"')
    assert "2 trials did not finish normally" in problems
    assert "aaaa0003" in problems and "CUDA out of memory (tried 2.1 GiB)" in problems
    assert "aaaa0004" in problems and ("the loss became NaN/inf in epoch 1, step 1 with lr=8, weight_decay=0.0003 "
                                       "(non_finite_loss)") in problems
    assert str(finished / "trials" / "aaaa0003") in problems, "where to look"


def test_learning_curves_grey_out_scheduler_stops_mark_nan_pruned_trials_and_the_winner(finished):
    from automl.report_plots import STATE_COLOURS, learning_curves_figure

    fig = learning_curves_figure(_summary(finished))
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    assert lines["aaaa0003"].line.color == STATE_COLOURS["stopped"]
    assert lines["aaaa0001 (winner)"].line.width > lines["aaaa0002 (baseline)"].line.width
    assert lines["aaaa0002 (baseline)"].line.dash == "dot"
    assert list(lines["aaaa0001 (winner)"].y) == [0.50, 0.41, 0.38] and list(lines["aaaa0001 (winner)"].x) == [1, 2, 3]
    assert "epoch %{x}" in lines["aaaa0003"].hovertemplate and "lr = 2e-05" in lines["aaaa0003"].hovertemplate
    crosses = [t for t in fig.data if t.marker.symbol == "x"]
    assert [t.name for t in crosses] == ["aaaa0004 (diverged)"] and crosses[0].marker.color == STATE_COLOURS["pruned"]
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert len(stars) == 1 and list(stars[0].x) == [3] and list(stars[0].y) == [0.38]
    assert fig.layout.xaxis.title.text == "epochs trained" and fig.layout.yaxis.title.text == "val/loss"


def test_every_logged_metric_gets_its_own_chart(finished):
    from automl.report_plots import all_metrics_figure

    fig = all_metrics_figure(_summary(finished))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["val/loss", "train_loss", "val/d1", "lr"]
    assert not any(k in titles for k in ("time_total_s", "reported_at", "training_iteration", "epoch"))


def test_timeline_puts_concurrent_trials_on_different_slots_and_trials_on_their_gpus(finished, tmp_path):
    from automl.report_plots import timeline_figure, trial_times, wall_time_figure

    summary = _summary(finished)
    times = {t["trial_id"]: t for t in trial_times(summary)}
    assert times["aaaa0001"]["start"] == T0 and times["aaaa0001"]["end"] == T0 + 35.0
    fig = timeline_figure(summary)
    lanes = {b.name: b.y[0] for b in fig.data}
    assert lanes["aaaa0001"] != lanes["aaaa0002"], "trials that ran together are on different rows"
    assert lanes["aaaa0003"] == lanes["aaaa0001"], "a trial that starts after one ended reuses its row"
    assert {b.name: b.base[0] for b in fig.data}["aaaa0003"] == 36.0

    # on GPUs: the row is the GPU the trial ran on (its fit.json), a DDP trial on each of its GPUs
    for tid, visible in (("aaaa0001", "0"), ("aaaa0002", "1"), ("aaaa0003", "0,1")):
        d = tmp_path / tid
        d.mkdir()
        (d / "fit.json").write_text(json.dumps({"device": "cuda:0", "visible_devices": visible,
                                                "started_at": T0 + 100, "wall_time_s": 20}))
        next(t for t in summary["trials"] if t["trial_id"] == tid)["results_dir"] = str(d)
    summary["resources_per_trial"]["gpu"] = 1
    rows = sorted((b.name, b.y[0]) for b in timeline_figure(summary).data)
    assert rows[:4] == [("aaaa0001", "GPU 0"), ("aaaa0002", "GPU 1"), ("aaaa0003", "GPU 0"), ("aaaa0003", "GPU 1")]
    setup, training = wall_time_figure(summary).data
    assert "GPU time" in training.customdata[0][2]
    # aaaa0001 ran from T0 (its first report, 15 s in, minus 15 s) to T0 + 120 s, training from T0 + 100 s
    assert (setup.y[0], training.y[0]) == (100.0, 20.0)


def test_parallel_coordinates_span_the_searched_range_on_log_axes_with_short_names(finished):
    from automl.report_plots import parallel_coordinates_figure

    pc = parallel_coordinates_figure(_summary(finished)).data[0]
    assert [d.label for d in pc.dimensions] == ["lr", "weight_decay", "val/loss"]
    lr = pc.dimensions[0]
    assert list(lr.range) == pytest.approx([-5, 1]) and list(lr.values) == pytest.approx([-3, -3.5229, -4.69897],
                                                                                       abs=1e-4)
    assert "1e-05" in lr.ticktext and "10" in lr.ticktext
    assert list(pc.line.color) == [0.38, 0.44, 0.70], "the trials with a finite objective, coloured by it"


def test_importances_carry_their_spread_and_a_note_when_trials_are_few(finished, tmp_path):
    import optuna

    from automl.report import load_study
    from automl.report_plots import importances_figure

    fig, note = importances_figure(load_study(finished, _summary(finished)), "val/loss")
    bar = fig.data[0]
    assert sorted(bar.y) == ["lr", "weight_decay"] and len(bar.error_x.array) == 2
    assert note.startswith("Only 3 completed trials")

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'one.db'}", study_name="one")
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.1}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=1.0))
    with pytest.raises(ValueError, match="at least 2 completed trials"):
        importances_figure(study, "val/loss")


def test_winner_predictions_share_one_colour_scale_for_ground_truth_and_prediction(finished):
    from automl.report import winner_predictions_figure

    fig = winner_predictions_figure(finished, _summary(finished), num_images=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 * 4
    error_clims = set()
    for row in range(3):
        rgb, gt, pred, err = panels[row * 4:(row + 1) * 4]
        assert rgb.images[0].get_array().shape[-1] == 3
        assert gt.images[0].get_clim() == pred.images[0].get_clim()
        assert gt.get_title() == "ground truth" and pred.get_title().startswith("prediction")
        error_clims.add(err.images[0].get_clim())
    assert len(error_clims) == 1, "one error scale for every row"


def test_figures_that_cannot_be_drawn_become_notes_and_the_rest_is_written(finished, tmp_path):
    from automl.report import write_report

    results = _copy(finished, tmp_path)
    (results / "best" / "model.ckpt").unlink()
    (results / "optuna.db").unlink()
    summary = _summary(results)
    summary["optuna_storage"] = f"sqlite:///{tmp_path / 'gone.db'}"
    summary["winner"]["checkpoint"] = str(tmp_path / "gone.ckpt")
    for t in summary["trials"]:
        t["history"] = [{k: v for k, v in h.items() if k not in ("reported_at", "time_total_s")}
                        for h in t["history"]]
    (results / "summary.json").write_text(json.dumps(summary))

    report = write_report(results)
    assert set(report.notes) == {"predictions", "optimization-history", "param-importances", "timeline",
                                 "wall-time"}
    assert "checkpoint is missing" in report.notes["predictions"]
    assert "Optuna study" in report.notes["optimization-history"]
    assert "no trial recorded when it ran" in report.notes["timeline"]
    html = report.html.read_text()
    assert _embedded_pngs(html) == [] and html.count('class="note"') == 5
    assert 'id="plot-learning-curves"' in html and 'id="plot-parallel-coordinates"' in html


def test_cli_report_writes_the_report_and_errors_name_the_folder(finished, tmp_path, capsys):
    from automl.cli import main

    results = _copy(finished, tmp_path)
    assert main(["report", str(results), "--num-images", "2", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file()
    assert f"wrote {tmp_path / 'out' / 'report.html'} ({len(FIGURES)} figures" in capsys.readouterr().out

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"results folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished search" in capsys.readouterr().err


def test_report_after_search_never_raises(tmp_path, capsys):
    from automl.report import report_after_search

    assert report_after_search(tmp_path / "nothing-here") is None
    assert "writing the search report failed" in capsys.readouterr().err


# ---- in a browser ------------------------------------------------------------------------------------------------

PLOTS_DRAWN = """
    if (document.readyState !== 'complete' || typeof Plotly === 'undefined') return null;
    const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
    if (plots.length < arguments[0].length || !plots.every(p => p.querySelector('.main-svg'))) return null;
    return plots.map(p => ({key: p.closest('figure').dataset.key, w: p.getBoundingClientRect().width,
                            h: p.getBoundingClientRect().height, traces: (p.data || []).length}));"""


def _hover_value(driver, key: str) -> str:
    """Move the mouse onto the first data point of figure `key` (as a person would) and return the hover label."""
    from selenium.webdriver.common.action_chains import ActionChains

    point = driver.execute_script(f"""
        const pt = document.querySelector('#plot-{key} .scatterlayer .trace .points path');
        pt.scrollIntoView({{block: 'center'}});
        return pt;""")
    ActionChains(driver).move_to_element(point).perform()
    return wait_for(driver, f"""
        const t = document.querySelector('#plot-{key} .hoverlayer .hovertext');
        return t && t.textContent;""", timeout=20, what=f"the hover label of {key}")


def _check_in_browser(html: Path, shot: str, keys: tuple[str, ...]) -> tuple[list, str, list]:
    with chromium(1400, 1000) as driver:
        driver.get(html.as_uri())
        plots = wait_for(driver, PLOTS_DRAWN, list(keys), what="every Plotly figure drawn")
        first_screen = driver.execute_script("return document.body.innerText.slice(0, 4000)")
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'))")
        hover = _hover_value(driver, "learning-curves")
        screenshot(driver, shot, full_page=True)
    assert sorted(p["key"] for p in plots) == sorted(keys)
    assert all(p["w"] > 300 and p["h"] > 150 and p["traces"] >= 1 for p in plots), plots
    assert fetched == [], "the report loads nothing from elsewhere"
    return plots, hover, [first_screen]


@needs_chromium
def test_report_renders_in_headless_chromium_and_hover_shows_values(finished, tmp_path):
    from automl.report import write_report

    results = _copy(finished, tmp_path)
    report = write_report(results)
    _plots, hover, _ = _check_in_browser(report.html, "report.png", PLOTS)
    assert "epoch 1" in hover and "val/loss = 0.5" in hover, hover
    assert (artifacts_dir() / "report.png").stat().st_size > 50_000


@pytest.mark.slow
@needs_chromium
def test_automl_run_writes_the_report_and_it_renders(tmp_path_factory, synth_data):
    """End to end: a real search (one trial diverges) ends with report/report.html, printed among the paths and
    attached to the MLflow parent run; every figure renders in Chromium and answers the mouse."""
    results, out = run_real_search(tmp_path_factory.getbasetemp() / "real-search", synth_data)
    html = results / "report" / "report.html"
    assert html.is_file()
    assert f"report:        {html}" in out
    summary = summary_of(results)
    assert summary["states"]["pruned"] >= 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    attached = [a.path for a in client.list_artifacts(summary["mlflow"]["parent_run_id"], "report")]
    assert attached == ["report/report.html"]

    _plots, hover, (first_screen,) = _check_in_browser(html, "report-e2e.png", PLOTS)
    assert re.search(r"epoch \d+", hover) and re.search(r"val/loss = \d\.\d+", hover), hover
    pruned = [t["trial_id"] for t in summary["trials"] if t["state"] == "pruned"]
    assert all(t in first_screen for t in pruned) and "did not finish normally" in first_screen
