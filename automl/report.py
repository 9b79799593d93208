"""The report of a finished search: one self-contained HTML file a person can look at, interactive and offline.

`write_report(RESULTS_DIR)` reads what `automl run` left there (summary.json, the trials' folders, the Optuna
study in optuna.db, the winner's checkpoint and spec in best/) and writes RESULTS_DIR/report/:

    report.html        plotly.js and every figure inside (no network needed: it can be mailed or attached alone)
    predictions.png    the winner on validation images: RGB | ground truth | prediction | |error| (also embedded)

The first screen holds the tiles, the trials that failed or were pruned with their reasons, and the winner. Then
the leaderboard (baseline and winner marked) and the interactive figures (automl.report_plots, Plotly): learning
curves of the objective, curves of every logged metric, the trial timeline per device, wall time per trial, and
the Optuna study's history, parallel coordinates and importances (with their spread, and a note when the trials
are few). A figure that cannot be drawn (too few trials, a missing checkpoint, data that moved) becomes a note
saying why; the rest is still written. `automl run` calls `report_after_search` at its end.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from automl.report_plots import STATE_COLOURS, STATE_TEXT
from automl.search.states import ENDED
from automl.skills.shared import UserError, first_line

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_FILE = "report.html"
DPI = 100


@dataclass
class Figure:
    """One section of the report: an interactive Plotly figure (`plot`, an HTML fragment) or a PNG, or a `note`
    saying why it could not be drawn; `remark`: a caveat shown above a figure that was drawn."""

    key: str
    title: str
    caption: str
    png: Optional[Path] = None
    note: Optional[str] = None
    plot: Optional[str] = None
    remark: Optional[str] = None

    @property
    def drawn(self) -> bool:
        return self.png is not None or self.plot is not None


@dataclass
class Report:
    html: Path
    figures: list[Figure] = field(default_factory=list)

    @property
    def notes(self) -> dict[str, str]:
        return {f.key: f.note for f in self.figures if f.note}


# --------------------------------------------------------------------------------------------------------------
# reading a results folder
# --------------------------------------------------------------------------------------------------------------


def load_summary(results_dir: str | Path) -> dict[str, Any]:
    results = Path(results_dir)
    path = results / "summary.json"
    if not results.is_dir():
        raise UserError(f"results folder not found: {results}")
    if not path.is_file():
        hint = (" (it holds a search that has not finished: the report is written when `automl run` ends; "
                "continue it with `automl run ... --resume`)" if (results / "search_state.json").is_file()
                else " (expected the results_dir of `automl run`)")
        raise UserError(f"{path} not found: no finished search in {results}{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def load_study(results: Path, summary: Mapping[str, Any]) -> Any:
    """The search's Optuna study: RESULTS_DIR/optuna.db (the path recorded in summary.json if the folder has not
    moved), study `search-<results folder name>`, or the only study in that file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = results / "optuna.db"
    storage = f"sqlite:///{db.resolve()}" if db.is_file() else summary.get("optuna_storage")
    if not storage or (storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file()):
        raise FileNotFoundError(f"no Optuna study: {db} not found")
    names = optuna.study.get_all_study_names(storage)
    name = f"search-{results.resolve().name}"
    if name not in names:
        if len(names) != 1:
            raise LookupError(f"{storage} has no study {name!r} (found {names})")
        name = names[0]
    return optuna.load_study(study_name=name, storage=storage)


# --------------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path, dpi: int = DPI, palette: bool = False) -> Path:
    """`palette`: store with 256 colours (images of photos stay small enough to embed several)."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    if palette:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path


def _short(name: str) -> str:
    return name.split(".")[-1]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    return str(v)


def winner_predictions(results: Path, summary: Mapping[str, Any], out: Path, num_images: int = 4) -> Path:
    return _save(winner_predictions_figure(results, summary, num_images), out, dpi=80, palette=True)


def winner_predictions_figure(results: Path, summary: Mapping[str, Any], num_images: int = 4) -> Any:
    """RGB | ground truth | prediction | |error| of the winner on `num_images` validation images; ground truth and
    prediction share one colour scale per row (metres; relative models are aligned by scale and shift first)."""
    import numpy as np
    from matplotlib.figure import Figure as MplFigure

    from automl.skills import DEFAULT_SKILL, get_skill

    winner = summary.get("winner") or {}
    if not winner:
        raise ValueError("the search has no winner (no trial finished with a finite objective)")
    ckpt = results / "best" / "model.ckpt"
    if not ckpt.is_file():
        ckpt = Path(winner.get("checkpoint") or ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"the winner's checkpoint is missing: {results / 'best' / 'model.ckpt'}")
    spec_path = results / "best" / "spec.yaml"
    if not spec_path.is_file():
        spec_path = Path(winner.get("trial_dir", "")) / "spec.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(f"the winner's spec is missing: {results / 'best' / 'spec.yaml'}")
    samples = get_skill(summary.get("skill") or DEFAULT_SKILL).predict_samples(spec_path, ckpt, num_images)
    relative = samples.relative
    rows = [(s.name, s.rgb, s.gt, s.pred, s.valid, s.scores) for s in samples.items]

    errors = np.concatenate([np.abs(p - g)[v] for _, _, g, p, v, _ in rows if v.any()] or [np.zeros(1)])
    err_max = float(np.percentile(errors, 98)) or 1e-6
    unit = "m" if not relative else "m (aligned)"
    fig = MplFigure(figsize=(13.0, 2.8 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 4, squeeze=False)
    import matplotlib

    depth_cmap = matplotlib.colormaps["Spectral"].with_extremes(bad="black")  # near red, far blue, as inference
    err_cmap = matplotlib.colormaps["magma"].with_extremes(bad="#404040")
    for r, (name, rgb, gt, pred, valid, scores) in enumerate(rows):
        g_valid = gt[valid] if valid.any() else pred.ravel()
        lo, hi = (float(np.percentile(g_valid, 1)), float(np.percentile(g_valid, 99)))
        if hi <= lo:
            hi = lo + 1e-6
        ax = axes[r]
        ax[0].imshow(rgb)
        ax[0].set_title(name, fontsize=9)
        ax[1].imshow(np.ma.masked_where(~valid, gt), cmap=depth_cmap, vmin=lo, vmax=hi)
        ax[1].set_title("ground truth", fontsize=9)
        im = ax[2].imshow(pred, cmap=depth_cmap, vmin=lo, vmax=hi)
        ax[2].set_title("prediction" + (f"  (abs_rel {scores['abs_rel']:.3f}, d1 {scores['d1']:.2f})"
                                        if scores else ""), fontsize=9)
        fig.colorbar(im, ax=ax[2], fraction=0.046, pad=0.02, label=f"depth [{unit}]")
        em = ax[3].imshow(np.ma.masked_where(~valid, np.abs(pred - gt)), cmap=err_cmap, vmin=0, vmax=err_max)
        ax[3].set_title("|prediction - ground truth|", fontsize=9)
        fig.colorbar(em, ax=ax[3], fraction=0.046, pad=0.02, label=f"[{unit}]")
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    return fig


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0; color: #1d1d1f;
       background: #f6f7f9; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; }
.sub { color: #5f6368; margin: 0 0 16px; }
nav a { margin-right: 12px; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: white; border: 1px solid #e1e4e8; border-radius: 8px; padding: 12px 16px; min-width: 150px; }
.card .k { color: #5f6368; font-size: 12px; } .card .v { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; background: white; font-size: 13px; }
th, td { border-bottom: 1px solid #e1e4e8; padding: 5px 10px; text-align: right; white-space: nowrap; }
th { background: #f0f2f5; position: sticky; top: 0; } td.l, th.l { text-align: left; }
td.wrap { white-space: normal; max-width: 420px; }
tr.winner td { background: #fff7d6; font-weight: 600; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: white; font-size: 12px; }
.mark { display: inline-block; padding: 0 6px; margin-left: 6px; border-radius: 4px; font-size: 11px;
        border: 1px solid #888; color: #333; background: #eef0f3; font-weight: normal; }
.tablewrap { overflow-x: auto; border: 1px solid #e1e4e8; border-radius: 8px; }
figure { background: white; border: 1px solid #e1e4e8; border-radius: 8px; margin: 0 0 16px; padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #5f6368; font-size: 13px; margin-top: 8px; }
.note { background: #fff4e5; border-left: 4px solid #f0a030; padding: 10px 14px; margin: 0 0 8px; }
.problems { background: #fdecea; border-left: 4px solid #d62728; padding: 10px 14px; margin: 16px 0 0;
            border-radius: 4px; }
.problems h2 { margin: 0 0 6px; font-size: 16px; } .problems table { background: transparent; }
.problems td { white-space: normal; vertical-align: top; }
code { background: #eef0f3; padding: 1px 5px; border-radius: 4px; font-size: 12px; }
ul.files { font-size: 13px; }
"""

PLOT_ORDER = ["learning-curves", "predictions", "all-metrics", "timeline", "wall-time", "optimization-history",
              "parallel-coordinates", "param-importances"]


def _e(v: Any) -> str:
    return html.escape(str(v))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(path.stem)}" data-file="{_e(path.name)}">'


def _figure_html(f: Figure) -> str:
    if f.plot is not None:
        body = f.plot
    elif f.png is not None:
        body = _img(f.png)
    else:
        body = f'<p class="note">{_e(f.note)}</p>'
    remark = f'<p class="note remark">{_e(f.remark)}</p>' if f.remark else ""
    cls = "figure" if f.drawn else "figure missing"
    return (f'<h2 id="{f.key}">{_e(f.title)}</h2>\n<figure class="{cls}" data-key="{f.key}">{remark}{body}'
            f"<figcaption>{f.caption}</figcaption></figure>")


def _ordered(trials: Sequence[Mapping[str, Any]], mode: str) -> list[Mapping[str, Any]]:
    sign = 1 if mode == "min" else -1
    return sorted(trials, key=lambda t: (t.get("best") is None, sign * (t.get("best") or 0.0)))


def leaderboard_html(summary: Mapping[str, Any]) -> str:
    """The trials ranked by their best objective; the winner's row highlighted, winner and baseline marked beside
    the trial id, and why a trial ended (when not completed) right after its state."""
    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    names = list(summary.get("search_space") or {})
    winner = (summary.get("winner") or {}).get("trial_id")
    head = ["#", "trial", "state", "why it ended", "epochs", f"{metric} (best)", "best epoch"] + \
        [_short(n) for n in names]
    left = {1, 2, 3}
    out = ['<div class="tablewrap"><table id="leaderboard"><thead><tr>']
    out += [f'<th class="{"l" if i in left else ""}" title="{_e(names[i - 7]) if 7 <= i < 7 + len(names) else ""}">'
            f"{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for rank, t in enumerate(_ordered(summary.get("trials") or [], mode), 1):
        state = t.get("state", "?")
        marks = []
        if t.get("trial_id") == winner:
            marks.append('<span class="mark winner-mark">winner</span>')
        if t.get("baseline"):
            marks.append('<span class="mark baseline-mark" title="the spec\'s own values">baseline</span>')
        why = "" if state == "completed" else str(t.get("reason") or "")
        colour = STATE_COLOURS.get(state, "#ff7f0e")
        cells = [str(rank), _e(t.get("trial_id")) + "".join(marks),
                 f'<span class="badge" style="background:{colour}">{_e(STATE_TEXT.get(state, state))}</span>',
                 _e(why), _e(t.get("epochs")), _e(_fmt(t.get("best"), 5)),
                 _e(int(t["best_epoch"]) + 1 if t.get("best_epoch") is not None else "-")]
        cells += [_e(_fmt((t.get("params") or {}).get(n))) for n in names]
        cls = ' class="winner"' if t.get("trial_id") == winner else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="{"l" if i in left else ""}{" wrap" if i == 3 else ""}">{c}</td>'
            for i, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def problems_html(summary: Mapping[str, Any]) -> str:
    """The trials that failed, diverged or were orphaned, each with its reason and folder, for the first screen."""
    from automl.report_plots import problems

    rows = problems(summary)
    if not rows:
        return ""
    body = "".join(
        f'<tr><td class="l"><b>{_e(r["trial_id"])}</b></td><td class="l">{_e(STATE_TEXT.get(r["state"], r["state"]))}'
        f'</td><td class="l">{_e(r["reason"])}</td><td class="l"><code>{_e(r.get("results_dir") or "")}</code></td>'
        f"</tr>" for r in rows)
    return (f'<section class="problems" id="problems"><h2>{len(rows)} trial{"s" if len(rows) > 1 else ""} did not '
            f'finish normally</h2><table><tbody>{body}</tbody></table></section>')


def _cards(summary: Mapping[str, Any]) -> str:
    metric = summary["objective"]["metric"]
    w = summary.get("winner") or {}
    states = summary.get("states") or {}
    items = [("trials", summary.get("num_trials", len(summary.get("trials") or []))),
             (f"best {metric}", _fmt(w.get("best"), 5)), ("winner", w.get("trial_id", "none"))]
    items += [(s, states.get(s, 0)) for s in ENDED]
    items.append(("wall time", f"{float(summary.get('wall_time_s') or 0) / 60:.1f} min"))
    if summary.get("gpu_hours"):
        items.append(("GPU time", f"{float(summary['gpu_hours']):.2f} GPU-h"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in items) + \
        "</div>"


def _winner_html(summary: Mapping[str, Any]) -> str:
    w = summary.get("winner") or {}
    if not w:
        return '<p class="note">No winner: no trial finished with a finite objective.</p>'
    rows = "".join(f'<tr><td class="l">{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>' for k, v in
                   (w.get("params") or {}).items())
    parts = [f'<div class="cards"><div><table><thead><tr><th class="l">parameter</th><th>value</th></tr></thead>'
             f"<tbody>{rows}</tbody></table></div>"]
    ev = w.get("evaluation") or {}
    if ev.get("metrics"):
        mrows = "".join(f'<tr><td class="l">{_e(k)}</td><td>{_fmt(v)}</td></tr>' for k, v in ev["metrics"].items())
        parts.append(f'<div><table><thead><tr><th class="l">metric ({_e(ev.get("split", ""))}, '
                     f'{_e(ev.get("num_images", "?"))} images)</th><th>value</th></tr></thead>'
                     f"<tbody>{mrows}</tbody></table></div>")
    parts.append("</div>")
    files = [("checkpoint", w.get("checkpoint")), ("spec", w.get("spec"))]
    export = w.get("export") or {}
    files += [("ONNX", export.get("onnx_file")), ("TensorRT engine", export.get("engine"))]
    lis = "".join(f"<li>{_e(k)}: <code>{_e(v)}</code></li>" for k, v in files if v)
    if export.get("engine_skipped"):
        lis += f"<li>TensorRT engine skipped: {_e(export['engine_skipped'])}</li>"
    if w.get("evaluation_error"):
        lis += f"<li>evaluation failed: {_e(w['evaluation_error'])}</li>"
    return "\n".join(parts) + f'<ul class="files">{lis}</ul>'


def render_html(results: Path, summary: Mapping[str, Any], figures: Sequence[Figure]) -> str:
    """The page: plotly.js inline in <head> (when a figure needs it), the first screen (tiles, problems, winner),
    the leaderboard and the figures in PLOT_ORDER."""
    from automl.report_plots import plotly_js

    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    ml = summary.get("mlflow") or {}
    by_key = {f.key: f for f in figures}
    shown = [by_key[k] for k in PLOT_ORDER if k in by_key]
    title = f"Search report: {results.name}"
    nav = " ".join(f'<a href="#{f.key}">{_e(f.title)}</a>' for f in shown)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">{_e(results)} &middot; objective <b>{_e(metric)}</b> ({_e(mode)}) &middot; scheduler '
            f'{_e(summary.get("scheduler", "?"))} &middot; written {_e(time.strftime("%Y-%m-%d %H:%M"))}</p>',
            _cards(summary), problems_html(summary),
            '<h2 id="winner">Winner</h2>', _winner_html(summary),
            f'<nav><a href="#leaderboard-title">Leaderboard</a> {nav}</nav>',
            '<h2 id="leaderboard-title">Leaderboard</h2>', leaderboard_html(summary)]
    body += [_figure_html(f) for f in shown]
    body.append('<h2 id="more">More</h2><ul class="files">'
                f"<li>every trial side by side in MLflow: <code>automl ui {_e(results)}</code>"
                f" (parent run {_e(ml.get('parent_run_id', '?'))}, experiment {_e(ml.get('experiment', '?'))})</li>"
                f"<li>the Optuna study: <code>optuna-dashboard {_e(summary.get('optuna_storage', ''))}</code></li>"
                f"<li>all numbers: <code>{_e(results / 'summary.json')}</code></li></ul>")
    script = f'<script type="text/javascript">{plotly_js()}</script>' if any(f.plot for f in shown) else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style>{script}</head>\n<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


# --------------------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    return first_line(exc)


def _interactive(summary: Mapping[str, Any], results: Path) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """(key, title, caption, builder) of the Plotly figures drawn from summary.json and the trials' folders."""
    from automl import report_plots as rp

    metric = summary["objective"]["metric"]
    return [
        ("learning-curves", "Learning curves",
         f"{_e(metric)} after each epoch of every trial; hover a point for the trial's values, click a legend entry "
         "to hide a trial (double-click: only that one). Grey: stopped early by the scheduler; dashed: failed; "
         "dotted: the baseline (the spec's own values); red X: the loss became NaN/inf in that epoch; bold with a "
         "star: the winner and its best epoch.", lambda: rp.learning_curves_figure(summary)),
        ("all-metrics", "Every logged metric",
         "train_loss, each validation metric and the learning rate after each epoch, one chart each; the legend "
         "hides a trial in all of them.", lambda: rp.all_metrics_figure(summary)),
        ("timeline", "When each trial ran",
         "One bar per trial from its start to its end, on the GPU it ran on (a row per concurrent slot on a "
         "machine without GPUs). Gaps are time the search left a device idle.", lambda: rp.timeline_figure(summary)),
        ("wall-time", "Time per trial",
         "Wall time of each trial: grey the start-up before its training began (a Ray worker, imports, data), "
         "coloured the training; its GPU time in the hover where trials had GPUs.",
         lambda: rp.wall_time_figure(summary)),
        ("parallel-coordinates", "Parameters against the objective",
         f"Each line is a trial with a finite {_e(metric)}, across its searched parameters, coloured by the "
         "objective (yellow: best). Drag along an axis to keep only the trials in that range; drag an axis title "
         "to reorder.", lambda: rp.parallel_coordinates_figure(summary)),
    ]


def _optuna_figures(metric: str) -> list[tuple[str, str, str, Callable[[Any], Any]]]:
    from automl import report_plots as rp

    return [
        ("optimization-history", "Optimisation history",
         f"{_e(metric)} of each completed trial in the order they were asked for, and the best so far (Optuna). "
         "Pruned trials have no value and are left out here.", lambda s: rp.optimization_history_figure(s, metric)),
        ("param-importances", "Parameter importances",
         "How much of the objective's variation each parameter explains (fANOVA over completed trials). The "
         "whiskers span the 10th to 90th percentile over bootstrap resamples of the trials.",
         lambda s: rp.importances_figure(s, metric)),
    ]


def write_report(results_dir: str | Path, *, num_images: int = 4, out_dir: Optional[str | Path] = None,
                 predictions: bool = True) -> Report:
    """Write RESULTS_DIR/report/report.html (self-contained, interactive) and predictions.png; return what was
    written."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        try:
            matplotlib.use("Agg")
        except Exception:  # noqa: BLE001 - a figure backend already in use elsewhere; savefig still works
            pass
    results = Path(results_dir).resolve()
    summary = load_summary(results)
    out = Path(out_dir).resolve() if out_dir else results / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    metric = summary["objective"]["metric"]
    figures: list[Figure] = []

    def plot(key: str, title: str, caption: str, build: Callable[[], Any]) -> None:
        from automl.report_plots import figure_div

        try:
            built = build()
            fig, remark = built if isinstance(built, tuple) else (built, None)
            figures.append(Figure(key, title, caption, plot=figure_div(fig, key), remark=remark))
        except Exception as exc:  # noqa: BLE001 - one figure must not cost the others
            figures.append(Figure(key, title, caption, note=f"Not drawn: {_reason(exc)}"))

    for key, title, caption, build in _interactive(summary, results):
        plot(key, title, caption, build)
    if predictions:
        png = out / "predictions.png"
        caption = ("RGB | ground truth | prediction | absolute error. Ground truth and prediction share one colour "
                   "scale per row (near red, far blue; black: no ground truth); the error map has its own scale, "
                   "the same for every row.")
        try:
            figures.append(Figure("predictions", "The winner on validation images", caption,
                                  png=winner_predictions(results, summary, png, num_images)))
        except Exception as exc:  # noqa: BLE001
            png.unlink(missing_ok=True)
            figures.append(Figure("predictions", "The winner on validation images", caption,
                                  note=f"Not drawn: {_reason(exc)}"))
    try:
        study = load_study(results, summary)
    except Exception as exc:  # noqa: BLE001
        study, study_error = None, f"Not drawn: the Optuna study could not be read ({exc})"
    else:
        study_error = ""
    for key, title, caption, draw in _optuna_figures(metric):
        if study is None:
            figures.append(Figure(key, title, caption, note=study_error))
        else:
            plot(key, title, caption, lambda draw=draw: draw(study))

    html_path = out / REPORT_FILE
    html_path.write_text(render_html(results, summary, figures), encoding="utf-8")
    return Report(html=html_path, figures=figures)


def report_after_search(results_dir: str | Path, summary: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """`automl run`'s last step: write the report and attach it to the search's MLflow parent run. Never raises
    (a report must not cost the search); returns the HTML path or None."""
    try:
        report = write_report(results_dir)
    except Exception as exc:  # noqa: BLE001
        log.warning(f"warning: writing the search report failed ({type(exc).__name__}: {exc}); the search's results "
                    f"are intact; retry with: automl report {results_dir}")
        return None
    ml = (summary or {}).get("mlflow") or {}
    if ml.get("tracking_uri") and ml.get("parent_run_id"):
        try:
            import contextlib

            from mlflow.tracking import MlflowClient

            with contextlib.redirect_stdout(io.StringIO()):
                MlflowClient(tracking_uri=ml["tracking_uri"]).log_artifact(ml["parent_run_id"], str(report.html),
                                                                           artifact_path=REPORT_DIR)
        except Exception as exc:  # noqa: BLE001
            log.warning(f"warning: could not attach the report to the MLflow parent run: {exc}")
    for key, note in report.notes.items():
        log.info(f"report: {key}: {note}")
    if not (summary or {}).get("winner"):  # the search ends in an error; say where to look
        log.info(f"report: {report.html}")
    return report.html
