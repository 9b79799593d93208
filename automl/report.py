"""The report of a finished search: one self-contained HTML file a person can look at, plus its figures as PNGs.

`write_report(RESULTS_DIR)` reads what `automl run` left there (summary.json, the Optuna study in optuna.db, the
winner's checkpoint and spec in best/) and writes RESULTS_DIR/report/:

    report.html                 every figure embedded (base64), so the file can be mailed or attached alone
    learning_curves.png         the objective (and train_loss) per epoch of every trial; scheduler-stopped
                                trials grey, trials pruned for a non-finite loss red, the winner bold
    optimization_history.png    Optuna: objective per trial and the best so far
    parallel_coordinates.png    Optuna: parameters against the objective
    param_importances.png       Optuna: fANOVA importances (needs >= 2 completed trials that differ)
    predictions.png             the winner on validation images: RGB | ground truth | prediction | |error|

A figure that cannot be drawn (too few trials, a missing checkpoint, data that moved) becomes a note in the
report saying why; the rest is still written. `automl run` calls `report_after_search` at its end.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from trainer.errors import UserError

REPORT_DIR = "report"
REPORT_FILE = "report.html"
DPI = 100

STATE_COLOURS = {"completed": "#1f77b4", "stopped": "#9e9e9e", "pruned": "#d62728", "error": "#000000",
                 "running": "#ff7f0e"}
STATE_TEXT = {"completed": "completed", "stopped": "stopped by the scheduler", "pruned": "pruned (non-finite loss)",
              "error": "error", "running": "unfinished"}


@dataclass
class Figure:
    """One section of the report: a PNG, or a note saying why it could not be drawn."""

    key: str
    title: str
    caption: str
    png: Optional[Path] = None
    note: Optional[str] = None


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


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


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


def learning_curves(summary: Mapping[str, Any], out: Path) -> Path:
    return _save(learning_curves_figure(summary), out)


def learning_curves_figure(summary: Mapping[str, Any]) -> Any:
    """Objective and train_loss per epoch of every trial, coloured by how the trial ended."""
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    metric = summary["objective"]["metric"]
    trials = summary.get("trials") or []
    winner = (summary.get("winner") or {}).get("trial_id")
    has_train = any(h.get("train_loss") is not None for t in trials for h in t.get("history") or [])
    panels = [(metric, f"{metric} (objective)")] + ([("train_loss", "train_loss")] if has_train else [])
    fig = MplFigure(figsize=(5.6 * len(panels) + 2.2, 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e"]
    completed_ids = [t["trial_id"] for t in trials if t.get("state") == "completed"]
    label_ids = len(trials) <= 12
    for ax, (key, title) in zip(axes, panels):
        top = blended_transform_factory(ax.transData, ax.transAxes)
        for t in trials:
            state = t.get("state", "running")
            hist = [h for h in t.get("history") or [] if isinstance(h.get("epoch"), (int, float))]
            pts = [(int(h["epoch"]) + 1, float(h[key])) for h in hist
                   if isinstance(h.get(key), (int, float)) and math.isfinite(float(h[key]))]
            if state == "completed":
                colour = palette[completed_ids.index(t["trial_id"]) % len(palette)]
            else:
                colour = STATE_COLOURS.get(state, "#ff7f0e")
            is_winner = t["trial_id"] == winner
            style = dict(color=colour, lw=2.8 if is_winner else 1.3, alpha=1.0 if state != "stopped" else 0.75,
                         ls="--" if state == "error" else "-", marker="o", ms=3.5, zorder=3 if is_winner else 2)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=(t["trial_id"] + (" (winner)" if is_winner else "")) if label_ids else None,
                        **style)
                if is_winner and key == metric and t.get("best_epoch") is not None:
                    best_x = int(t["best_epoch"]) + 1
                    best_y = next((y for x, y in pts if x == best_x), None)
                    if best_y is not None:
                        ax.plot([best_x], [best_y], marker="*", ms=16, color=colour, mec="black", zorder=4)
            if state == "pruned":
                last = next((h for h in reversed(t.get("history") or []) if h.get("diverged_epoch") is not None),
                            None)
                x = int(last["diverged_epoch"]) + 1 if last else (pts[-1][0] + 1 if pts else 1)
                ax.plot([x], [1.0], transform=top, marker="X", ms=11, color=STATE_COLOURS["pruned"],
                        mec="white", clip_on=False, zorder=5)
                if not pts and label_ids:
                    ax.plot([], [], color=STATE_COLOURS["pruned"], marker="X", ls="none",
                            label=f"{t['trial_id']} (diverged)")
        ax.set_title(title)
        ax.set_xlabel("epochs trained")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if label_ids and handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="trial", title_fontsize=8)
    keys = [Line2D([], [], color=STATE_COLOURS["completed"], lw=1.5, label="completed"),
            Line2D([], [], color=STATE_COLOURS["stopped"], lw=1.5, label=STATE_TEXT["stopped"]),
            Line2D([], [], color=STATE_COLOURS["pruned"], marker="X", lw=1.5, label="pruned: loss became NaN/inf (X)"),
            Line2D([], [], color="black", lw=2.8, marker="*", ms=10, label="winner (star: best epoch)")]
    fig.legend(handles=keys, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig


def _optuna_plot(plot: Callable[..., Any], study: Any, metric: str, out: Path, *, width: Optional[float] = None,
                 title: Optional[str] = None, background: Optional[str] = None) -> Path:
    import matplotlib

    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna's own style, not leaking into ours
        warnings.simplefilter("ignore")  # optuna.exceptions.ExperimentalWarning for the matplotlib backend
        ax = plot(study, target_name=metric)
    axes = ax.ravel() if hasattr(ax, "ravel") else [ax]
    fig = axes[0].figure
    try:
        if width:
            fig.set_size_inches(width, fig.get_size_inches()[1])
        if title:
            axes[0].set_title(title)
        if background:
            axes[0].set_facecolor(background)
        return _save(fig, out)
    finally:
        _close(fig)


def _completed(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def optimization_history(study: Any, metric: str, out: Path) -> Path:
    from optuna.visualization.matplotlib import plot_optimization_history

    if not _completed(study):
        raise ValueError("no completed trial in the Optuna study")
    return _optuna_plot(plot_optimization_history, study, metric, out, width=8.5)


def parallel_coordinates(study: Any, metric: str, out: Path) -> Path:
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    done = _completed(study)
    if not done:
        raise ValueError("no completed trial in the Optuna study")
    n_params = len({p for t in done for p in t.params})
    # grey behind the lines: Optuna colours the worst trial near-white
    return _optuna_plot(plot_parallel_coordinate, study, metric, out, width=max(8.5, 1.5 * (n_params + 1)),
                        background="#e6e6e6")


def param_importances(study: Any, metric: str, out: Path) -> Path:
    from optuna.visualization.matplotlib import plot_param_importances

    done = _completed(study)
    if len(done) < 2:
        raise ValueError(f"parameter importances need at least 2 completed trials; this search has {len(done)}")
    varied = {p for p in done[0].params if len({repr(t.params.get(p)) for t in done}) > 1}
    if not varied:
        raise ValueError("the completed trials all share the same parameter values, so no parameter's effect can "
                         "be told apart")
    return _optuna_plot(plot_param_importances, study, metric, out, width=8.5)


def winner_predictions(results: Path, summary: Mapping[str, Any], out: Path, num_images: int = 4) -> Path:
    return _save(winner_predictions_figure(results, summary, num_images), out, dpi=80, palette=True)


def winner_predictions_figure(results: Path, summary: Mapping[str, Any], num_images: int = 4) -> Any:
    """RGB | ground truth | prediction | |error| of the winner on `num_images` validation images; ground truth and
    prediction share one colour scale per row (metres; relative models are aligned by scale and shift first)."""
    import numpy as np
    from matplotlib.figure import Figure as MplFigure
    from omegaconf import OmegaConf

    from trainer.config import build_spec
    from trainer.data import build_dataset, read_image
    from trainer.metrics import align_relative, depth_metrics
    from trainer.module import as_depth
    from trainer.runtime import build_predictor, resize_prediction

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
    raw = OmegaConf.to_container(OmegaConf.load(spec_path), resolve=True)
    spec = build_spec(raw, check_files=False, notice=lambda _m: None)
    section = OmegaConf.create({"checkpoint": str(ckpt)})
    predictor, used = build_predictor(spec, section)
    relative = used.model.model_type == "RelativeDepthAnything"
    dataset = build_dataset(used, "val_dataset", train=False)
    if len(dataset) == 0:
        raise ValueError("the validation split is empty")
    n = max(1, min(int(num_images), len(dataset)))
    picks = sorted({int(round(i)) for i in np.linspace(0, len(dataset) - 1, n)})

    rows = []
    for idx in picks:
        item = dataset[idx]
        valid = item["valid"].bool()
        gt = as_depth(item["depth"], valid, relative).float()
        pred = resize_prediction(predictor(item["image"][None])[0], tuple(gt.shape[-2:])).float()
        if relative:
            pred = align_relative(pred.double(), gt.double(), valid, max_depth=used.dataset.max_depth).float()
        scores = depth_metrics(pred, gt, valid) or {}
        rgb = read_image(item["path"])
        if rgb.shape[:2] != tuple(gt.shape):
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize((gt.shape[1], gt.shape[0]), Image.BILINEAR))
        rows.append((Path(item["path"]).name, rgb, gt.numpy(), pred.numpy(), valid.numpy(), scores))

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
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: white; border: 1px solid #e1e4e8; border-radius: 8px; padding: 12px 16px; min-width: 150px; }
.card .k { color: #5f6368; font-size: 12px; } .card .v { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; background: white; font-size: 13px; }
th, td { border-bottom: 1px solid #e1e4e8; padding: 5px 10px; text-align: right; white-space: nowrap; }
th { background: #f0f2f5; position: sticky; top: 0; } td.l, th.l { text-align: left; }
tr.winner td { background: #fff7d6; font-weight: 600; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: white; font-size: 12px; }
.tablewrap { overflow-x: auto; border: 1px solid #e1e4e8; border-radius: 8px; }
figure { background: white; border: 1px solid #e1e4e8; border-radius: 8px; margin: 0 0 16px; padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #5f6368; font-size: 13px; margin-top: 8px; }
.note { background: #fff4e5; border-left: 4px solid #f0a030; padding: 10px 14px; margin: 0; }
code { background: #eef0f3; padding: 1px 5px; border-radius: 4px; font-size: 12px; }
ul.files { font-size: 13px; }
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(path.stem)}" data-file="{_e(path.name)}">'


def _figure_html(f: Figure) -> str:
    body = _img(f.png) if f.png is not None else f'<p class="note">{_e(f.note)}</p>'
    cls = "figure" if f.png is not None else "figure missing"
    return (f'<h2 id="{f.key}">{_e(f.title)}</h2>\n<figure class="{cls}" data-key="{f.key}">{body}'
            f"<figcaption>{f.caption}</figcaption></figure>")


def _ordered(trials: Sequence[Mapping[str, Any]], mode: str) -> list[Mapping[str, Any]]:
    sign = 1 if mode == "min" else -1
    return sorted(trials, key=lambda t: (t.get("best") is None, sign * (t.get("best") or 0.0)))


def leaderboard_html(summary: Mapping[str, Any]) -> str:
    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    names = list(summary.get("search_space") or {})
    winner = (summary.get("winner") or {}).get("trial_id")
    head = ["#", "trial", "state", "epochs", f"{metric} (best)", "best epoch"] + [_short(n) for n in names] + ["note"]
    left = {1, 2, len(head) - 1}
    out = ['<div class="tablewrap"><table id="leaderboard"><thead><tr>']
    out += [f'<th class="{"l" if i in left else ""}" title="{_e(names[i - 6]) if 6 <= i < 6 + len(names) else ""}">'
            f"{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for rank, t in enumerate(_ordered(summary.get("trials") or [], mode), 1):
        state = t.get("state", "?")
        marks = []
        if t.get("trial_id") == winner:
            marks.append("winner")
        if t.get("baseline"):
            marks.append("baseline: the spec's own values")
        if t.get("reason") and state != "stopped":
            marks.append(str(t["reason"]))
        colour = STATE_COLOURS.get(state, "#ff7f0e")
        cells = [str(rank), _e(t.get("trial_id")),
                 f'<span class="badge" style="background:{colour}">{_e(STATE_TEXT.get(state, state))}</span>',
                 _e(t.get("epochs")), _e(_fmt(t.get("best"), 5)),
                 _e(int(t["best_epoch"]) + 1 if t.get("best_epoch") is not None else "-")]
        cells += [_e(_fmt((t.get("params") or {}).get(n))) for n in names]
        cells.append(_e("; ".join(marks)))
        cls = ' class="winner"' if t.get("trial_id") == winner else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="{"l" if i in left else ""}">{c}</td>'
                                          for i, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _cards(summary: Mapping[str, Any]) -> str:
    metric = summary["objective"]["metric"]
    w = summary.get("winner") or {}
    states = summary.get("states") or {}
    items = [("trials", summary.get("num_trials", len(summary.get("trials") or []))),
             (f"best {metric}", _fmt(w.get("best"), 5)), ("winner", w.get("trial_id", "none"))]
    items += [(s, states.get(s, 0)) for s in ("completed", "stopped", "pruned", "error")]
    items.append(("wall time", f"{float(summary.get('wall_time_s') or 0) / 60:.1f} min"))
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
    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    ml = summary.get("mlflow") or {}
    by_key = {f.key: f for f in figures}
    order = ["learning-curves", "predictions", "optimization-history", "parallel-coordinates",
             "param-importances"]
    title = f"Search report: {results.name}"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="sub">{_e(results)} &middot; objective <b>{_e(metric)}</b> ({_e(mode)}) &middot; scheduler '
            f'{_e(summary.get("scheduler", "?"))} &middot; written {_e(time.strftime("%Y-%m-%d %H:%M"))}</p>',
            _cards(summary),
            '<h2 id="winner">Winner</h2>', _winner_html(summary),
            '<h2 id="leaderboard-title">Leaderboard</h2>', leaderboard_html(summary)]
    body += [_figure_html(by_key[k]) for k in order if k in by_key]
    body.append('<h2 id="more">More</h2><ul class="files">'
                f"<li>every trial side by side in MLflow: <code>automl ui {_e(results)}</code>"
                f" (parent run {_e(ml.get('parent_run_id', '?'))}, experiment {_e(ml.get('experiment', '?'))})</li>"
                f"<li>the Optuna study: <code>optuna-dashboard {_e(summary.get('optuna_storage', ''))}</code></li>"
                f"<li>all numbers: <code>{_e(results / 'summary.json')}</code></li></ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head>\n<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


# --------------------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------------------


def write_report(results_dir: str | Path, *, num_images: int = 4, out_dir: Optional[str | Path] = None,
                 predictions: bool = True) -> Report:
    """Write RESULTS_DIR/report/report.html (self-contained) and its PNGs; return what was written."""
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

    def attempt(key: str, title: str, caption: str, draw: Callable[[Path], Path]) -> None:
        png = out / f"{key.replace('-', '_')}.png"
        try:
            figures.append(Figure(key, title, caption, png=draw(png)))
        except Exception as exc:  # noqa: BLE001 - one figure must not cost the others
            png.unlink(missing_ok=True)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            figures.append(Figure(key, title, caption, note=f"Not drawn: {reason}"))

    attempt("learning-curves", "Learning curves",
            f"{_e(metric)} and train_loss after each epoch of every trial. Grey: stopped early by the scheduler; "
            "red: pruned because the loss became NaN/inf (X marks the epoch it diverged in); bold with a star: the "
            "winner and its best epoch.",
            lambda p: learning_curves(summary, p))
    if predictions:
        attempt("predictions", "The winner on validation images",
                "RGB | ground truth | prediction | absolute error. Ground truth and prediction share one colour "
                "scale per row (near red, far blue; black: no ground truth); the error map has its own scale, "
                "the same for every row.",
                lambda p: winner_predictions(results, summary, p, num_images))
    try:
        study = load_study(results, summary)
    except Exception as exc:  # noqa: BLE001
        study, study_error = None, f"Not drawn: the Optuna study could not be read ({exc})"
    else:
        study_error = ""
    optuna_figs = [
        ("optimization-history", "Optimisation history",
         f"{_e(metric)} of each completed trial in the order they were asked for, and the best so far (Optuna). "
         "Pruned trials have no value and are left out here.", optimization_history),
        ("parallel-coordinates", "Parameters against the objective",
         "Each line is a completed trial; its colour is its objective (Optuna's parallel coordinate plot).",
         parallel_coordinates),
        ("param-importances", "Parameter importances",
         "How much of the objective's variation each parameter explains (fANOVA over completed trials). With "
         "few trials this is a rough guide.", param_importances),
    ]
    for key, title, caption, draw in optuna_figs:
        if study is None:
            figures.append(Figure(key, title, caption, note=study_error))
        else:
            attempt(key, title, caption, lambda p, draw=draw: draw(study, metric, p))

    html_path = out / REPORT_FILE
    html_path.write_text(render_html(results, summary, figures), encoding="utf-8")
    return Report(html=html_path, figures=figures)


def report_after_search(results_dir: str | Path, summary: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """`automl run`'s last step: write the report and attach it to the search's MLflow parent run. Never raises
    (a report must not cost the search); returns the HTML path or None."""
    try:
        report = write_report(results_dir)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: writing the search report failed ({type(exc).__name__}: {exc}); the search's results are "
              f"intact; retry with: automl report {results_dir}", file=sys.stderr)
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
            print(f"warning: could not attach the report to the MLflow parent run: {exc}", file=sys.stderr)
    for key, note in report.notes.items():
        print(f"report: {key}: {note}", file=sys.stderr)
    if not (summary or {}).get("winner"):  # the search ends in an error; say where to look
        print(f"report: {report.html}", file=sys.stderr)
    return report.html
