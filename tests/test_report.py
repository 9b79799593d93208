"""The search report: one self-contained HTML file (figures embedded as PNG data) that renders in a browser,
with learning curves coloured by how each trial ended, Optuna's plots, the leaderboard and the winner's
predictions on one colour scale; a figure that cannot be drawn becomes a note, never a failed report."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.browser import chromium, needs_chromium, run_real_search, screenshot, summary_of, wait_for

FIGURES = ("learning-curves", "predictions", "optimization-history", "parallel-coordinates", "param-importances")


def _history(values: list[float], train: list[float]) -> list[dict]:
    return [{"epoch": i, "val/loss": v, "train_loss": t, "training_iteration": i + 1}
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
         _history([0.55, 0.47, 0.44], [0.65, 0.52, 0.47]), None),
        ("aaaa0003", "stopped", {"train.optim.lr": 2e-5, "train.optim.weight_decay": 0.05},
         _history([0.70], [0.80]), "scheduler"),
        ("aaaa0004", "pruned", {"train.optim.lr": 8.0, "train.optim.weight_decay": 0.0003},
         [{"val/loss": None, "prune_reason": "non_finite_loss", "diverged_epoch": 0, "diverged_step": 1,
           "training_iteration": 1}], "non_finite_loss"),
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
        "search_space": {k: {"type": "float"} for k in dists}, "scheduler": "asha", "num_trials": 4,
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
    return results


def _copy(results: Path, tmp_path: Path) -> Path:
    out = tmp_path / results.name
    shutil.copytree(results, out, ignore=shutil.ignore_patterns("report"))
    return out


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_is_one_html_file_with_every_figure_embedded_and_the_pngs_beside_it(finished, tmp_path):
    from automl.report import write_report

    results = _copy(finished, tmp_path)
    report = write_report(results)

    assert report.html == results / "report" / "report.html"
    assert report.notes == {}
    html = report.html.read_text()
    pngs = _embedded_pngs(html)
    assert len(pngs) == len(FIGURES)
    on_disk = {f.key: f.png.read_bytes() for f in report.figures}
    assert set(on_disk) == set(FIGURES)
    assert sorted(pngs) == sorted(on_disk.values()), "the HTML embeds exactly the PNGs written beside it"
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html, \
        "self-contained: nothing fetched from elsewhere"


def test_leaderboard_ranks_finite_objectives_first_and_marks_winner_and_baseline(finished, tmp_path):
    from automl.report import leaderboard_html

    html = leaderboard_html(json.loads((finished / "summary.json").read_text()))
    rows = re.findall(r"<tr(?: class=\"(\w+)\")?>(.*?)</tr>", html.split("<tbody>")[1], flags=re.S)
    ids = [re.findall(r"aaaa000\d", body)[0] for _cls, body in rows]
    assert ids == ["aaaa0001", "aaaa0002", "aaaa0003", "aaaa0004"]
    assert rows[0][0] == "winner" and "winner" in rows[0][1]
    assert "baseline" in rows[1][1]
    assert "pruned (non-finite loss)" in rows[3][1] and "non_finite_loss" in rows[3][1]
    assert "stopped by the scheduler" in rows[2][1]


def test_learning_curves_grey_out_scheduler_stops_and_mark_nan_pruned_trials_red(finished):
    from matplotlib.colors import to_hex

    from automl.report import STATE_COLOURS, learning_curves_figure

    fig = learning_curves_figure(json.loads((finished / "summary.json").read_text()))
    objective = fig.axes[0]
    by_label = {line.get_label(): line for line in objective.get_lines()}
    assert to_hex(by_label["aaaa0003"].get_color()) == STATE_COLOURS["stopped"]
    assert by_label["aaaa0001 (winner)"].get_linewidth() > by_label["aaaa0002"].get_linewidth()
    red = [ln for ln in objective.get_lines() if to_hex(ln.get_color()) == STATE_COLOURS["pruned"]
           and ln.get_marker() == "X"]
    assert red, "the diverged trial is marked in red"
    assert [t.get_text() for t in objective.get_xticklabels()] and objective.get_title().startswith("val/loss")
    assert fig.axes[1].get_title() == "train_loss"


def test_winner_predictions_share_one_colour_scale_for_ground_truth_and_prediction(finished):
    from automl.report import winner_predictions_figure

    summary = json.loads((finished / "summary.json").read_text())
    fig = winner_predictions_figure(finished, summary, num_images=3)
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
    summary = json.loads((results / "summary.json").read_text())
    summary["optuna_storage"] = f"sqlite:///{tmp_path / 'gone.db'}"
    summary["winner"]["checkpoint"] = str(tmp_path / "gone.ckpt")
    (results / "summary.json").write_text(json.dumps(summary))

    report = write_report(results)
    assert set(report.notes) == {"predictions", "optimization-history", "parallel-coordinates",
                                 "param-importances"}
    assert "checkpoint is missing" in report.notes["predictions"]
    assert "Optuna study" in report.notes["optimization-history"]
    html = report.html.read_text()
    assert len(_embedded_pngs(html)) == 1 and html.count('class="note"') == 4


def test_importances_with_one_completed_trial_are_a_note(finished, tmp_path):
    import optuna

    from automl.report import param_importances

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'one.db'}", study_name="one")
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.1}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=1.0))
    with pytest.raises(ValueError, match="at least 2 completed trials"):
        param_importances(study, "val/loss", tmp_path / "x.png")


def test_cli_report_writes_the_report_and_errors_name_the_folder(finished, tmp_path, capsys):
    from automl.cli import main

    results = _copy(finished, tmp_path)
    assert main(["report", str(results), "--num-images", "2", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file()
    assert f"wrote {tmp_path / 'out' / 'report.html'}" in capsys.readouterr().out

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"results folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished search" in capsys.readouterr().err


def test_report_after_search_never_raises(tmp_path, capsys):
    from automl.report import report_after_search

    assert report_after_search(tmp_path / "nothing-here") is None
    assert "writing the search report failed" in capsys.readouterr().err


@needs_chromium
def test_report_renders_in_headless_chromium(finished, tmp_path):
    from automl.report import write_report

    results = _copy(finished, tmp_path)
    report = write_report(results)
    with chromium(1400, 1000) as driver:
        driver.get(report.html.as_uri())
        images = wait_for(driver, """
            const imgs = Array.from(document.images);
            if (document.readyState !== 'complete' || !imgs.length || !imgs.every(i => i.complete)) return null;
            return imgs.map(i => ({key: i.closest('figure').dataset.key, w: i.naturalWidth, h: i.naturalHeight,
                                   shown: i.getBoundingClientRect().width}));""", what="the report's images")
        rows = driver.execute_script("return document.querySelectorAll('#leaderboard tbody tr').length")
        shot = screenshot(driver, "report.png", full_page=True)
    assert sorted(i["key"] for i in images) == sorted(FIGURES)
    assert all(i["w"] > 100 and i["h"] > 100 and i["shown"] > 100 for i in images), images
    assert rows == 4
    assert shot.stat().st_size > 20_000


@pytest.mark.slow
@needs_chromium
def test_automl_run_writes_the_report_and_it_renders(tmp_path_factory, synth_data):
    """End to end: a real search (one trial diverges) ends with report/report.html, printed among the paths and
    attached to the MLflow parent run; every figure renders in Chromium."""
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

    with chromium(1400, 1000) as driver:
        driver.get(html.as_uri())
        images = wait_for(driver, """
            const imgs = Array.from(document.images);
            if (document.readyState !== 'complete' || !imgs.every(i => i.complete)) return null;
            return imgs.map(i => [i.closest('figure').dataset.key, i.naturalWidth]);""", what="images")
        notes = driver.execute_script("return Array.from(document.querySelectorAll('.note')).map(n => n.innerText)")
        screenshot(driver, "report-e2e.png", full_page=True)
    assert notes == []
    assert sorted(k for k, _ in images) == sorted(FIGURES) and all(w > 0 for _, w in images)
