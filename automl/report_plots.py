"""The interactive figures of the search report, as Plotly figures (Optuna's own plotting backend).

Each builder takes what `automl run` left (summary.json as a mapping, the trials' folders, the Optuna study) and
returns a `plotly.graph_objects.Figure`, or raises ValueError saying why it cannot be drawn (the report shows that
as a note). `figure_div` turns a figure into an HTML fragment that needs the plotly.js of `plotly_js()` on the page
and nothing from the network.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from automl.search.states import TrialState

STATE_COLOURS = {TrialState.COMPLETED: "#1f77b4", TrialState.STOPPED: "#9e9e9e", TrialState.PRUNED: "#d62728",
                 TrialState.ERROR: "#000000", TrialState.RUNNING: "#ff7f0e", TrialState.ORPHANED: "#8c564b"}
STATE_TEXT = {TrialState.COMPLETED: "completed", TrialState.STOPPED: "stopped by the scheduler",
              TrialState.PRUNED: "pruned (non-finite loss)", TrialState.ERROR: "error",
              TrialState.RUNNING: "unfinished", TrialState.ORPHANED: "orphaned"}
# colours of completed trials, one each (the winner keeps its own and is drawn bold)
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e", "#393b79",
           "#637939", "#8c6d31", "#843c39")
# keys of a trial's reports that are bookkeeping, not metrics
NOT_METRICS = {"epoch", "training_iteration", "time_total_s", "reported_at", "node_id", "diverged_epoch",
               "diverged_step", "ddp_world_size", "trial_id", "iterations_since_restore", "time_this_iter_s"}
IMPORTANCE_TRUST = 10  # below this many completed trials the importances carry a note about their uncertainty
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), hoverlabel=dict(namelength=-1),
              font=dict(size=12))


def plotly_js() -> str:
    """plotly.js itself (about 4.8 MB), to inline once per page: the report opens without a network."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def figure_div(fig: Any, key: str) -> str:
    """The figure as a <div> plus the script that draws it (plotly.js must already be on the page)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{key}",
                       config={"displaylogo": False, "responsive": True, "toImageButtonOptions": {"filename": key}})


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _finite(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def series(trial: Mapping[str, Any], key: str) -> list[tuple[int, float]]:
    """(epochs trained, value) of `key` over a trial's reports, finite values only."""
    out = []
    for h in trial.get("history") or []:
        epoch, value = _finite(h.get("epoch")), _finite(h.get(key))
        if epoch is not None and value is not None:
            out.append((int(epoch) + 1, value))
    return out


def metric_keys(trials: Sequence[Mapping[str, Any]], objective: str) -> list[str]:
    """Every metric the trials reported (objective first, then train_loss, the other val/ metrics, the rest)."""
    keys = {k for t in trials for h in t.get("history") or [] for k, v in h.items()
            if k not in NOT_METRICS and _finite(v) is not None}
    rank = {objective: 0, "train_loss": 1}
    return sorted(keys, key=lambda k: (rank.get(k, 2 if k.startswith("val/") else 3), k))


def trial_label(t: Mapping[str, Any], winner: Optional[str]) -> str:
    marks = (["winner"] if t.get("trial_id") == winner else []) + (["baseline"] if t.get("baseline") else [])
    return f"{t.get('trial_id')}" + (f" ({', '.join(marks)})" if marks else "")


def trial_colours(trials: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    completed = [t["trial_id"] for t in trials if t.get("state") == "completed"]
    return {t["trial_id"]: (PALETTE[completed.index(t["trial_id"]) % len(PALETTE)] if t.get("state") == "completed"
                            else STATE_COLOURS.get(t.get("state", "running"), "#ff7f0e")) for t in trials}


def _fmt_params(t: Mapping[str, Any]) -> str:
    return "<br>".join(f"{k.split('.')[-1]} = {v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]} = {v}"
                       for k, v in (t.get("params") or {}).items())


# --------------------------------------------------------------------------------------------------------------
# learning curves
# --------------------------------------------------------------------------------------------------------------


def _add_curves(fig: Any, summary: Mapping[str, Any], key: str, *, row: Optional[int] = None,
                col: Optional[int] = None, legend: bool = True) -> int:
    """One line per trial for `key` on the (sub)plot; returns how many trials had a value."""
    import plotly.graph_objects as go

    trials = summary.get("trials") or []
    winner = (summary.get("winner") or {}).get("trial_id")
    colours = trial_colours(trials)
    where = dict(row=row, col=col) if row else {}
    drawn = 0
    top = max((v for t in trials for _, v in series(t, key)), default=1.0)
    for t in trials:
        tid, state = t["trial_id"], t.get("state", "running")
        pts = series(t, key)
        is_winner = tid == winner
        common = dict(legendgroup=tid, name=trial_label(t, winner))
        hover = (f"<b>{tid}</b> ({STATE_TEXT.get(state, state)})<br>epoch %{{x}}<br>{key} = %{{y:.5g}}"
                 f"<br>{_fmt_params(t)}<extra></extra>")
        if pts:
            drawn += 1
            xs, ys = zip(*pts)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", showlegend=legend, hovertemplate=hover,
                line=dict(color=colours[tid], width=4 if is_winner else 1.8,
                          dash="dash" if state == "error" else ("dot" if t.get("baseline") else "solid")),
                marker=dict(size=9 if is_winner else 6), opacity=0.7 if state == "stopped" else 1.0, **common),
                **where)
            legend_shown = legend
        else:
            legend_shown = False
        if is_winner and key == summary["objective"]["metric"] and t.get("best_epoch") is not None:
            best = next((y for x, y in pts if x == int(t["best_epoch"]) + 1), None)
            if best is not None:
                fig.add_trace(go.Scatter(x=[int(t["best_epoch"]) + 1], y=[best], mode="markers", showlegend=False,
                                         marker=dict(symbol="star", size=18, color=colours[tid],
                                                     line=dict(color="black", width=1)),
                                         hovertemplate=f"<b>{tid}</b>: best epoch %{{x}}, {key} = %{{y:.5g}}"
                                                       "<extra></extra>", **common), **where)
        if state == "pruned":
            last = next((h for h in reversed(t.get("history") or []) if h.get("diverged_epoch") is not None), None)
            x = int(last["diverged_epoch"]) + 1 if last else (pts[-1][0] + 1 if pts else 1)
            fig.add_trace(go.Scatter(
                x=[x], y=[top], mode="markers", showlegend=legend and not legend_shown,
                marker=dict(symbol="x", size=13, color=STATE_COLOURS["pruned"], line=dict(color="white", width=1)),
                hovertemplate=f"<b>{tid}</b>: loss became NaN/inf in epoch %{{x}}<br>{_fmt_params(t)}<extra></extra>",
                **{**common, "name": f"{tid} (diverged)"}), **where)
    return drawn


def learning_curves_figure(summary: Mapping[str, Any]) -> Any:
    """The objective after each epoch of every trial: hover for the trial's values, click a legend entry to hide a
    trial (double-click: that trial alone). Completed trials in colour, scheduler-stopped grey, failed dashed,
    the baseline dotted, the winner bold with a star on its best epoch, a red X where a trial's loss diverged."""
    import plotly.graph_objects as go

    metric = summary["objective"]["metric"]
    fig = go.Figure()
    if not _add_curves(fig, summary, metric) and not any(t.get("state") == "pruned"
                                                         for t in summary.get("trials") or []):
        raise ValueError(f"no trial reported {metric}")
    fig.update_layout(**LAYOUT, height=460, hovermode="closest", xaxis_title="epochs trained", yaxis_title=metric,
                      legend_title_text="trial (click: hide, double-click: only this)")
    fig.update_xaxes(dtick=1)
    return fig


def all_metrics_figure(summary: Mapping[str, Any]) -> Any:
    """One small chart per metric the trials reported (train_loss, every val/ metric, the learning rate), the
    trials coloured as in the learning curves; a legend click hides a trial in all of them."""
    from plotly.subplots import make_subplots

    trials = summary.get("trials") or []
    keys = metric_keys(trials, summary["objective"]["metric"])
    if not keys:
        raise ValueError("the trials reported no metric")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys, horizontal_spacing=0.07,
                        vertical_spacing=0.32 / rows if rows > 1 else 0.1)
    for i, key in enumerate(keys):
        _add_curves(fig, summary, key, row=i // cols + 1, col=i % cols + 1, legend=i == 0)
        if key == "lr":
            fig.update_yaxes(type="log", exponentformat="e", row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(dtick=1)
    fig.update_layout(**LAYOUT, height=280 * rows + 60, hovermode="closest", legend_title_text="trial")
    return fig


# --------------------------------------------------------------------------------------------------------------
# time: when each trial ran, on which device, and for how long
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def trial_times(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each trial that ran: start and end (epoch seconds) and its devices. The start is the earlier of its
    first report minus the time Ray says it had run by then (which counts the worker's start-up) and the start in
    its fit.json; the end the later of its last report and fit.json's start + wall time. The CUDA devices come
    from fit.json (a trial stopped or failed mid-fit has none)."""
    out = []
    for t in summary.get("trials") or []:
        fit = _read_json(Path(t.get("results_dir") or "/nonexistent") / "fit.json")
        reports = [h for h in t.get("history") or [] if _finite(h.get("reported_at")) is not None]
        starts, ends = [], []
        if reports:
            first = reports[0]
            starts.append(float(first["reported_at"]) - float(_finite(first.get("time_total_s")) or 0.0))
            ends.append(float(reports[-1]["reported_at"]))
        if _finite(fit.get("started_at")) is not None:
            starts.append(float(fit["started_at"]))
            if _finite(fit.get("wall_time_s")) is not None:
                ends.append(float(fit["started_at"]) + float(fit["wall_time_s"]))
        start, end = (min(starts) if starts else None), (max(ends) if ends else None)
        if start is None or end is None:
            continue
        visible = str(fit.get("visible_devices") or "").strip()
        if str(fit.get("device", "")).startswith("cuda") and visible:
            devices = [f"GPU {d.strip()}" for d in visible.split(",") if d.strip()]
        else:
            devices = []
        fit_start = _finite(fit.get("started_at"))
        out.append({"trial_id": t["trial_id"], "state": t.get("state", "running"), "start": start,
                    "end": max(end, start), "devices": devices,
                    "fit_start": fit_start if fit_start is not None and fit_start > start else None, "node": (reports[-1].get("node_id") or "")[:8]
                    if reports else "", "gpus": float((summary.get("resources_per_trial") or {}).get("gpu") or 0)})
    return out


def _lanes(times: list[dict[str, Any]]) -> None:
    """Trials without a known GPU get the first free `slot` (trials that ran at the same time get different
    slots): the picture of how many ran at once."""
    free_at: list[float] = []
    for t in sorted((t for t in times if not t["devices"]), key=lambda t: t["start"]):
        slot = next((i for i, f in enumerate(free_at) if f <= t["start"]), None)
        if slot is None:
            free_at.append(t["end"])
            slot = len(free_at) - 1
        free_at[slot] = t["end"]
        t["devices"] = [f"slot {slot + 1}"]


def timeline_figure(summary: Mapping[str, Any]) -> Any:
    """A bar per trial from its start to its end, on a row per GPU (CUDA_VISIBLE_DEVICES of the trial), or per
    concurrent slot on a machine without GPUs: gaps are time the search left a device idle."""
    import plotly.graph_objects as go

    times = trial_times(summary)
    if not times:
        raise ValueError("no trial recorded when it ran (no fit.json and no reports)")
    _lanes(times)
    t0 = min(t["start"] for t in times)
    colours = trial_colours(summary.get("trials") or [])
    fig = go.Figure()
    for t in times:
        for dev in t["devices"]:
            fig.add_trace(go.Bar(
                y=[dev], x=[t["end"] - t["start"]], base=[t["start"] - t0], orientation="h", name=t["trial_id"],
                marker=dict(color=colours.get(t["trial_id"], "#888"), line=dict(color="white", width=1)),
                text=[t["trial_id"]], textposition="inside", insidetextanchor="middle", showlegend=False,
                hovertemplate=(f"<b>{t['trial_id']}</b> ({STATE_TEXT.get(t['state'], t['state'])}) on {dev}<br>"
                               f"from %{{base:.0f}} s to {t['end'] - t0:.0f} s "
                               f"({time.strftime('%H:%M:%S', time.localtime(t['start']))}-"
                               f"{time.strftime('%H:%M:%S', time.localtime(t['end']))})<br>"
                               f"ran %{{x:.1f}} s<extra></extra>")))
    lanes = sorted({d for t in times for d in t["devices"]}, key=lambda d: (d.split()[0], int(d.split()[-1])))
    busy = sum((t["end"] - t["start"]) * len(t["devices"]) for t in times)
    span = max(t["end"] for t in times) - t0
    fig.update_layout(**LAYOUT, height=140 + 45 * len(lanes), barmode="overlay", bargap=0.25,
                      xaxis_title="seconds since the first trial started", hovermode="closest",
                      title=dict(text=f"devices busy {100 * busy / max(span * len(lanes), 1e-9):.0f}% of the "
                                      f"{span:.0f} s", font=dict(size=13)))
    fig.update_yaxes(categoryorder="array", categoryarray=lanes[::-1])
    return fig


def wall_time_figure(summary: Mapping[str, Any]) -> Any:
    """Wall time of each trial, split where its fit.json says when training began: start-up (Ray worker, imports,
    data) and training; GPU time (wall time x GPUs per trial) in the hover where trials had GPUs."""
    import plotly.graph_objects as go

    times = {t["trial_id"]: t for t in trial_times(summary)}
    trials = [t for t in summary.get("trials") or [] if t["trial_id"] in times]
    if not trials:
        raise ValueError("no trial recorded when it ran (no fit.json and no reports)")
    colours = trial_colours(trials)
    gpus = float((summary.get("resources_per_trial") or {}).get("gpu") or 0)
    winner = (summary.get("winner") or {}).get("trial_id")
    names = [trial_label(t, winner) for t in trials]
    spans = [times[t["trial_id"]] for t in trials]
    setup = [(s["fit_start"] - s["start"]) if s["fit_start"] else 0.0 for s in spans]
    total = [s["end"] - s["start"] for s in spans]
    extra = [f"<br>GPU time {w * gpus / 60:.1f} GPU-min ({gpus:g} GPU)" if gpus else "" for w in total]
    data = [[STATE_TEXT.get(t.get("state", ""), t.get("state")), t.get("epochs"), e, w, u]
            for t, e, w, u in zip(trials, extra, total, setup)]
    hover = ("<b>%{x}</b> (%{customdata[0]})<br>wall time %{customdata[3]:.1f} s, of which start-up "
             "%{customdata[4]:.1f} s; %{customdata[1]} epochs%{customdata[2]}<extra></extra>")
    fig = go.Figure([
        go.Bar(x=names, y=setup, name="start-up (worker, imports, data)", marker_color="#c7c7c7", customdata=data,
               hovertemplate=hover),
        go.Bar(x=names, y=[w - u for w, u in zip(total, setup)], name="training and validation",
               marker_color=[colours[t["trial_id"]] for t in trials], customdata=data, hovertemplate=hover)])
    fig.update_layout(**LAYOUT, height=380, barmode="stack", yaxis_title="wall time [s]", xaxis_title="trial",
                      legend=dict(orientation="h", y=1.12))
    return fig


# --------------------------------------------------------------------------------------------------------------
# the Optuna study
# --------------------------------------------------------------------------------------------------------------


def completed_trials(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
            and t.value is not None and math.isfinite(t.value)]


def optimization_history_figure(study: Any, metric: str) -> Any:
    from optuna.visualization import plot_optimization_history

    if not completed_trials(study):
        raise ValueError("no completed trial in the Optuna study")
    fig = plot_optimization_history(study, target_name=metric)
    fig.update_layout(**LAYOUT, height=400, title=None)
    return fig


def _axis(name: str, spec: Mapping[str, Any], values: list[Any], label: str) -> dict[str, Any]:
    """One parcoords dimension spanning the searched range (`low`..`high`, so a line shows where in it the trial
    lay): log10 for a parameter searched on a log scale (ticks at powers of ten, labelled with the values),
    categories as their index (labelled with the choices), other numbers as they are."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    lows = [v for v in (spec.get("low"), *values) if isinstance(v, (int, float))] if numbers else []
    highs = [v for v in (spec.get("high"), *values) if isinstance(v, (int, float))] if numbers else []
    if numbers and spec.get("log") and min(lows) > 0:
        lo, hi = math.log10(min(lows)), math.log10(max(highs))
        ticks = list(range(math.ceil(lo), math.floor(hi) + 1))
        return dict(label=label, values=[math.log10(v) for v in values], range=[lo, hi], tickvals=ticks,
                    ticktext=[f"{10.0 ** k:g}" for k in ticks])
    if not numbers:
        cats = [str(c) for c in spec.get("choices") or []] or sorted({str(v) for v in values})
        cats += sorted({str(v) for v in values} - set(cats))
        return dict(label=label, values=[cats.index(str(v)) for v in values], tickvals=list(range(len(cats))),
                    ticktext=cats, range=[0, max(len(cats) - 1, 1)])
    return dict(label=label, values=[float(v) for v in values], range=[min(lows), max(highs)])


def parallel_coordinates_figure(summary: Mapping[str, Any]) -> Any:
    """One line per trial with a finite objective across its searched parameters and the objective, coloured by
    the objective (darker: better); log-scale axes for parameters searched on a log scale; drag along an axis to
    keep only the trials in that range (Plotly parcoords brushing). Axes carry the parameters' short names."""
    import plotly.graph_objects as go

    from automl.search.tracking import short_names

    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    space = summary.get("search_space") or {}
    trials = [t for t in summary.get("trials") or [] if _finite(t.get("best")) is not None]
    if not trials:
        raise ValueError(f"no trial finished with a finite {metric}")
    names = [n for n in space if all(n in (t.get("params") or {}) for t in trials)]
    if not names:
        raise ValueError("no searched parameter is recorded for the trials")
    aliases = short_names(names)
    dims = [_axis(n, space[n], [t["params"][n] for t in trials], aliases.get(n, n)) for n in names]
    best = [float(t["best"]) for t in trials]
    dims.append(dict(label=metric, values=best))
    fig = go.Figure(go.Parcoords(
        dimensions=dims, labelangle=0, labelside="top",
        line=dict(color=best, colorscale="Viridis", reversescale=mode == "min", showscale=True,
                  colorbar=dict(title=dict(text=metric)))))
    fig.update_layout(**{**LAYOUT, "margin": dict(l=70, r=70, t=70, b=30)}, height=420)
    return fig


def importance_spread(study: Any, params: Sequence[str], resamples: int = 12, seed: int = 0
                      ) -> dict[str, list[float]]:
    """fANOVA importances of `params` over `resamples` bootstrap resamples of the completed trials (each also
    with its own forest seed): the spread says how far the few trials of a search pin them down."""
    import numpy as np
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = completed_trials(study)
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {p: [] for p in params}
    for i in range(resamples):
        sample = [done[j] for j in rng.integers(0, len(done), len(done))]
        if len({t.number for t in sample}) < 2:
            continue
        boot = optuna.create_study(directions=study.directions)
        boot.add_trials(sample)
        try:
            imp = get_param_importances(boot, evaluator=FanovaImportanceEvaluator(n_trees=32, seed=i),
                                        params=list(params), normalize=True)
        except (RuntimeError, ValueError):  # a resample where no parameter varies
            continue
        for p in params:
            out[p].append(float(imp.get(p, 0.0)))
    return out


def importances_figure(study: Any, metric: str) -> tuple[Any, Optional[str]]:
    """Importances (fANOVA, normalised) with their spread over bootstrap resamples of the trials as error bars:
    bar = importance on all completed trials, whisker = 10th to 90th percentile of the resamples. Returns the
    figure and a note when the trials are too few for the numbers to mean much."""
    import numpy as np
    import plotly.graph_objects as go
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from automl.search.tracking import short_names

    done = completed_trials(study)
    if len(done) < 2:
        raise ValueError(f"parameter importances need at least 2 completed trials; this search has {len(done)}")
    varied = sorted(p for p in {p for t in done for p in t.params}
                    if len({repr(t.params.get(p)) for t in done}) > 1)
    if not varied:
        raise ValueError("the completed trials all share the same parameter values, so no parameter's effect can "
                         "be told apart")
    full = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=varied, normalize=True)
    spread = importance_spread(study, varied)
    order = sorted(varied, key=lambda p: full.get(p, 0.0))
    aliases = short_names(varied)
    lo = [max(full.get(p, 0) - float(np.percentile(spread[p], 10)), 0) if spread[p] else 0 for p in order]
    hi = [max(float(np.percentile(spread[p], 90)) - full.get(p, 0), 0) if spread[p] else 0 for p in order]
    fig = go.Figure(go.Bar(
        y=[aliases.get(p, p) for p in order], x=[full.get(p, 0.0) for p in order], orientation="h",
        marker_color="#1f77b4", error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo, color="#555"),
        customdata=[[p, f"{np.percentile(spread[p], 10):.2f}-{np.percentile(spread[p], 90):.2f}"
                     if spread[p] else "-"] for p in order],
        hovertemplate="<b>%{customdata[0]}</b><br>importance %{x:.2f} (resamples: %{customdata[1]})"
                      "<extra></extra>"))
    fig.update_layout(**LAYOUT, height=120 + 50 * len(order), xaxis_title=f"importance for {metric} (fANOVA)",
                      xaxis_range=[0, 1.05])
    note = None
    if len(done) < IMPORTANCE_TRUST:
        note = (f"Only {len(done)} completed trials: the importances are a rough guide. The whiskers show how much "
                f"they move when the trials are resampled; with fewer than {IMPORTANCE_TRUST} trials expect them to "
                f"change as the search goes on.")
    return fig, note


def _why(t: Mapping[str, Any]) -> str:
    """A trial's end in words: the recorded reason, and for a diverged trial where it diverged and with what."""
    reason = str(t.get("reason") or "(no reason recorded)")
    if t.get("state") != "pruned":
        return reason
    where = next((h for h in reversed(t.get("history") or []) if h.get("diverged_epoch") is not None), None)
    at = (f" in epoch {int(where['diverged_epoch']) + 1}" + (f", step {int(where['diverged_step'])}"
                                                             if where.get("diverged_step") is not None else "")
          ) if where else ""
    values = ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                       for k, v in (t.get("params") or {}).items())
    return f"the loss became NaN/inf{at}" + (f" with {values}" if values else "") + f" ({reason})"


def problems(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Trials that failed or were pruned, and orphaned ones, with their reason (for the report's first screen)."""
    out = [{"trial_id": t["trial_id"], "state": t.get("state"), "reason": _why(t),
            "results_dir": t.get("results_dir")} for t in summary.get("trials") or []
           if t.get("state") in ("error", "pruned")]
    out += [{"trial_id": o.get("trial_id"), "state": "orphaned", "reason": o.get("reason"),
             "results_dir": o.get("results_dir")} for o in summary.get("orphaned_trials") or []]
    return out
