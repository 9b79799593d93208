"""The third step of a search: Tune's results become one record per trial, the summary (RESULTS_DIR/summary.json),
the leaderboard and the report; the winner is copied to RESULTS_DIR/best, evaluated and exported there.

`TrialRecord.state` is the trial's `TrialState`, the same in summary.json, the report, MLflow's tags and the
terminal. Nothing here raises on a failing evaluation, export or report: the search's results survive them.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from automl.search.guards import FAIL_KEY, PRUNE_KEY, is_finite_number
from automl.search.space import SearchSpace
from automl.search.states import ENDED, TrialState
from automl.search.stoppers import SEARCH_STOPPED
from automl.search.tracking import ParentRun
from automl.search.trial_errors import describe_error
from automl.skills.shared import TRACKING_FAILURES_FILE, UserError, first_line, write_json_atomic

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from automl.search.driver import PreparedSearch, SearchOptions

SUMMARY_FILE = "summary.json"


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    state: TrialState
    best: Optional[float]
    best_epoch: Optional[int]
    epochs: int
    reason: Optional[str] = None
    results_dir: Optional[str] = None
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline: bool = False

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)


def finish_search(skill: Any, prep: "PreparedSearch", grid: Any, stopped_all: bool) -> dict[str, Any]:
    """Step 3 of a search: records, summary.json, MLflow outcomes, the winner finalised, the leaderboard and the
    report; status.json's last line. Raises `UserError` (after writing all of that) when no trial is usable.
    `stopped_all`: the search was ended by the same-failure stopper."""
    spec, opts, results, space, parent = prep.spec, prep.options, prep.results, prep.space, prep.parent
    records = collect_trials(grid, space, prep.num_epochs, prep.baseline)
    for r in records:
        r.results_dir = str(results / "trials" / r.trial_id)
        if stopped_all and r.state == TrialState.STOPPED and r.epochs == 0:
            r.reason = SEARCH_STOPPED  # ended by the stop of the whole search, not by the scheduler
    orphans = _orphaned_trials(results, records)
    winner = pick_winner(records, space.mode)
    summary = build_summary(skill, opts, prep, records, orphans)
    _record_outcomes(parent, records, winner, orphans, results)
    if winner is not None:
        summary["winner"] = finalize_winner(skill, spec, winner, results, opts.export, parent)
        parent.log_metrics({f"best/{space.metric}": winner.best}, step=0)
        parent.set_tags({"automl.winner_trial": winner.trial_id})
    summary["tracking"] = tracking_report(records, parent)
    log.info("")
    log.info(leaderboard(records, space, winner))
    write_json_atomic(results / SUMMARY_FILE, summary)
    from automl.report import report_after_search

    report_after_search(results, summary)  # never raises: a failing report costs nothing of the search
    if winner is None:
        prep.status.write("FAILURE", "Search finished without a usable trial (all pruned or failed)",
                          states=summary["states"])
        parent.end("FAILED")
        raise UserError(failure_message(records, space.metric, results / SUMMARY_FILE))
    prep.status.write("SUCCESS", "Search finished", kpi={space.metric: winner.best}, winner=winner.trial_id,
                      states=summary["states"])
    parent.end("FINISHED")
    _print_paths(results, summary)
    return summary


def build_summary(skill: Any, opts: "SearchOptions", prep: "PreparedSearch", records: list[TrialRecord],
                  orphans: list[str]) -> dict[str, Any]:
    """summary.json's content before the winner is finalised (its `winner` is None here)."""
    results, space, res = prep.results, prep.space, prep.resources
    return {
        "skill": skill.name,
        "objective": {"metric": space.metric, "mode": space.mode},
        "search_space": space.to_dict()["parameters"], "scheduler": opts.scheduler,
        "num_trials": len(records), "concurrent": res.concurrent, "resources_per_trial": res.per_trial,
        "ddp_workers_per_trial": res.ddp_workers,
        "states": state_counts(records),
        "baseline": next((asdict(r) for r in records if r.baseline), None),
        "winner": None, "trials": [asdict(r) for r in records],
        "orphaned_trials": [{"trial_id": t, "results_dir": str(results / "trials" / t), "reason": ORPHAN_REASON}
                            for t in orphans],
        # every trial the Optuna study holds is listed in this summary
        "orphaned_optuna_trials": _close_orphans(results, prep.study_name),
        "mlflow": {"tracking_uri": prep.tracking_uri, "experiment": opts.experiment_name,
                   "parent_run_id": prep.parent.run_id},
        "optuna_storage": f"sqlite:///{results / 'optuna.db'}",
        "wall_time_s": round(time.time() - prep.started, 1),
        "gpu_hours": round(sum(_trial_seconds(r) for r in records) * res.per_trial["gpu"] / 3600, 4),
        "packing": prep.packing.to_dict() if prep.packing else None,  # --gpus-per-trial auto: the choice and why
    }


def _record_outcomes(parent: ParentRun, records: list[TrialRecord], winner: Optional[TrialRecord],
                     orphans: list[str], results: Path) -> None:
    """Each trial's state, reason and best value on its MLflow run; orphaned trials' runs marked KILLED."""
    for r in records:
        parent.set_trial_outcome(r.trial_id, r.state, r.reason, r.best,
                                 winner=winner is not None and r.trial_id == winner.trial_id)
    for trial_id in orphans:
        parent.set_trial_outcome(trial_id, TrialState.ORPHANED, ORPHAN_REASON)
    if orphans:
        log.warning(f"notice: {len(orphans)} trial(s) started after Ray Tune's last snapshot before the driver died "
                    f"({', '.join(orphans)}); the resumed search ran their points as new trials. Their folders under "
                    f"{results / 'trials'} are kept; their MLflow runs are marked KILLED (tag {ORPHAN_TAG_HINT}).")


def _best_in(history: list[Mapping[str, Any]], metric: str, mode: str) -> tuple[Optional[float], Optional[int]]:
    scored = [(float(h[metric]), int(h.get("epoch", i))) for i, h in enumerate(history)
              if is_finite_number(h.get(metric))]
    if not scored:
        return None, None
    pick = min(scored, key=lambda s: s[0]) if mode == "min" else max(scored, key=lambda s: s[0])
    return pick


def collect_trials(grid: Any, space: SearchSpace, num_epochs: int, baseline: Mapping[str, Any]) -> list[TrialRecord]:
    """One record per trial from Tune's results: state, best finite objective (TAO ranks the last one), epochs."""
    records = []
    for res in grid:
        cfg = dict(res.config or {})
        params = {k: cfg[k] for k in cfg if k in space.names}
        trial_id = (res.metrics or {}).get("trial_id") or Path(res.path).name
        unreadable = None
        try:
            df = res.metrics_dataframe
            history = df.to_dict("records") if df is not None else []
        except (OSError, ValueError) as exc:  # a damaged progress.csv: say so, never guess "stopped"
            history, unreadable = [], f"its metrics could not be read from {res.path}: {first_line(exc)}"
        last = res.metrics or {}
        # (in the dataframe, rows before a flagged one hold NaN under prune_reason: NaN is not a flag)
        scored = [h for h in history if not isinstance(h.get(PRUNE_KEY), str)]
        best, best_epoch = _best_in(scored, space.metric, space.mode)
        epochs = len([h for h in scored if "epoch" in h and h["epoch"] == h["epoch"]])
        if last.get(PRUNE_KEY):
            state, reason = TrialState.PRUNED, str(last.get(PRUNE_KEY))
            best, best_epoch = None, None  # a diverged trial has no result to rank (its finished epochs count)
        elif last.get(FAIL_KEY):  # ended itself with a recorded reason (out of memory), not retried
            state, reason = TrialState.ERROR, str(last.get(FAIL_KEY))
        elif unreadable is not None:
            state, reason = TrialState.ERROR, unreadable
        elif res.error is not None:
            state, reason = TrialState.ERROR, describe_error(res.error)
        elif epochs >= num_epochs:
            state, reason = TrialState.COMPLETED, None
        else:
            state, reason = TrialState.STOPPED, "scheduler"
        records.append(TrialRecord(trial_id=trial_id, params=params, state=state, best=best, best_epoch=best_epoch,
                                   epochs=epochs, reason=reason, history=[_clean(h) for h in history],
                                   baseline=bool(baseline) and all(params.get(k) == v for k, v in baseline.items())))
    return records


def _clean(h: Mapping[str, Any]) -> dict[str, Any]:
    keep = {}
    for k, v in h.items():
        if k.startswith("config/") or k in ("date", "hostname", "node_ip", "pid", "timestamp", "time_this_iter_s",
                                             "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
                                             "should_checkpoint", "done"):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if v is None or isinstance(v, (int, float, str, bool)):
            keep[k] = v
    return keep


def pick_winner(records: list[TrialRecord], mode: str) -> Optional[TrialRecord]:
    """Best finite objective over completed or scheduler-stopped trials; a diverged or failed trial never wins."""
    eligible = [r for r in records if r.state.has_result and r.best is not None]
    if not eligible:
        return None
    return min(eligible, key=lambda r: r.best) if mode == "min" else max(eligible, key=lambda r: r.best)


def leaderboard(records: list[TrialRecord], space: SearchSpace, winner: Optional[TrialRecord], top: int = 20) -> str:
    order = sorted(records, key=lambda r: (r.best is None, (r.best or 0) * (1 if space.mode == "min" else -1)))
    names = space.names
    short = [n.split(".")[-1] for n in names]
    head = f"{'':2}{'trial':<14}{'state':<10}{'epochs':>6}  {space.metric + ' (best)':>16}  " + "  ".join(
        f"{s:>12}" for s in short)
    lines = [head, "-" * len(head)]
    for r in order[:top]:
        mark = "*" if winner is not None and r.trial_id == winner.trial_id else ("b" if r.baseline else " ")
        best = f"{r.best:.5g}" if r.best is not None else "-"
        vals = "  ".join(f"{_fmt(r.params.get(n)):>12}" for n in names)
        lines.append(f"{mark:<2}{r.trial_id[:13]:<14}{r.state:<10}{r.epochs:>6}  {best:>16}  {vals}")
    lines.append("(* winner, b baseline = the spec's own values)")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def state_counts(records: list[TrialRecord]) -> dict[str, int]:
    """How many trials ended in each state, keyed by the states' plain names (summary.json, messages)."""
    return {s.value: sum(1 for r in records if r.state == s) for s in ENDED}


def failure_message(records: list[TrialRecord], metric: str, summary_file: Path) -> str:
    """Why a search produced no usable trial, in the words a user can act on: the one error every trial failed with,
    the learning-rate hint only when trials diverged, else the count of each ending."""
    errors = {r.reason for r in records if r.state == TrialState.ERROR and r.reason}
    states = state_counts(records)
    ran = [r for r in records if r.reason != SEARCH_STOPPED]
    if ran and all(r.state == TrialState.ERROR for r in ran) and len(errors) == 1:
        if len(ran) < len(records):  # the same-failure stopper ended the search before every trial ran
            return f"every trial failed with the same error, so the search stopped: {errors.pop()}"
        return f"every trial failed with the same error: {errors.pop()}"
    hint = (" (a learning-rate range that diverges everywhere is the usual cause)" if states[TrialState.PRUNED] else "")
    shown = "; ".join(sorted(errors))[:600]
    return (f"no trial finished with a finite {metric}: {states}" + (f"; errors: {shown}" if shown else "") +
            f"; see {summary_file}{hint}")


def tracking_report(records: list[TrialRecord], parent: ParentRun) -> dict[str, Any]:
    """What could not be logged to MLflow (summary.json `tracking`): each trial's tracking_failures.log, written as
    failures happen (so retried and failed trials count too), and the parent run's own failures. One warning line
    when anything failed; training never waits for tracking."""
    per_trial: dict[str, int] = {}
    first: Optional[str] = None
    for r in records:
        failures = Path(r.results_dir or ".") / TRACKING_FAILURES_FILE
        lines = [line for line in failures.read_text().splitlines() if line.strip()] if failures.is_file() else []
        if lines:
            per_trial[r.trial_id] = len(lines)
            first = first or lines[0]
    on_parent = list(parent.run.failures)
    first = first or (on_parent[0] if on_parent else None)
    total = sum(per_trial.values()) + len(on_parent)
    if total:
        log.warning(f"warning: {total} MLflow operations could not be logged to {parent.uri} ({len(per_trial)} trials, "
                    f"{len(on_parent)} on the search's parent run); training went on and summary.json holds every "
                    f"trial's results; first failure: {first}")
    return {"uri": parent.uri, "failed_operations": total, "trials": per_trial, "parent_run": len(on_parent),
            "first_failure": first}


def _trial_seconds(r: TrialRecord) -> float:
    times = [h.get("time_total_s") for h in r.history if isinstance(h.get("time_total_s"), (int, float))]
    return float(max(times)) if times else 0.0


ORPHAN_REASON = "started after the last Ray Tune snapshot before the driver died; not part of the resumed search"
ORPHAN_TAG_HINT = "automl.trial_state=orphaned"


def _orphaned_trials(results: Path, records: list[TrialRecord]) -> list[str]:
    """Trial folders that no trial of the (resumed) search owns: trials a crashed driver started after Tune's last
    experiment snapshot. `--resume` restores that snapshot, so the searcher suggests such a point again as a new
    trial; the old folder keeps what the trial wrote."""
    known = {r.trial_id for r in records}
    trials = results / "trials"
    if not trials.is_dir():
        return []
    return sorted(d.name for d in trials.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in known)


OPTUNA_ORPHAN_REASON = ("Optuna trial asked for just before the driver died, never run by a Tune trial; recorded FAIL "
                        "so that no trial stays RUNNING")


def _close_orphans(results: Path, study_name: str) -> list[dict[str, Any]]:
    """An Optuna trial asked for just before a driver crash is known to no Tune trial: mark it FAIL so that no
    trial stays RUNNING in the study, and return it for summary.json's `orphaned_optuna_trials`."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{results / 'optuna.db'}")
    except Exception:  # noqa: BLE001
        return []
    closed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "automl.orphan_reason", OPTUNA_ORPHAN_REASON)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        closed.append({"optuna_trial": t.number, "params": dict(t.params), "reason": OPTUNA_ORPHAN_REASON})
    return closed


def finalize_winner(skill: Any, spec: DictConfig, winner: TrialRecord, results: Path, export_mode: str,
                    parent: ParentRun) -> dict[str, Any]:
    """Copy the winner's best checkpoint and resolved spec to RESULTS_DIR/best and evaluate it there."""
    best_dir = results / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    trial_dir = Path(winner.results_dir)
    ckpt = trial_dir / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        ckpt = trial_dir / "checkpoints" / "last.ckpt"
    out: dict[str, Any] = {"trial_id": winner.trial_id, "params": winner.params, "best": winner.best,
                           "best_epoch": winner.best_epoch, "trial_dir": str(trial_dir)}
    if not ckpt.is_file():
        out["error"] = f"the winner's checkpoint is missing in {trial_dir / 'checkpoints'}"
        return out
    shutil.copy2(ckpt, best_dir / "model.ckpt")
    trial_spec = OmegaConf.load(trial_dir / "spec.yaml") if (trial_dir / "spec.yaml").is_file() else spec
    OmegaConf.save(trial_spec, best_dir / "spec.yaml")
    out["checkpoint"] = str(best_dir / "model.ckpt")
    out["spec"] = str(best_dir / "spec.yaml")
    eval_split = "test_dataset" if len(spec.dataset.test_dataset.data_sources) else "val_dataset"
    try:
        eval_spec = skill.with_overrides(
            trial_spec, {"evaluate.checkpoint": out["checkpoint"], "evaluate.results_dir": str(best_dir / "evaluate"),
                         "dataset.test_dataset": OmegaConf.to_container(spec.dataset[eval_split], resolve=True)})
        log.info(f"\nevaluating the winner ({winner.trial_id}) on {eval_split}:")
        evaluation = skill.evaluate(eval_spec)
        out["evaluation"] = {"split": eval_split, **{k: v for k, v in evaluation.items() if k != "model"}}
        parent.log_metrics({f"winner/{k}": v for k, v in evaluation["metrics"].items()}, step=0)
    except Exception as exc:  # noqa: BLE001 - the search's results must survive a failing evaluation
        out["evaluation_error"] = f"{type(exc).__name__}: {exc}"
        log.warning(f"warning: evaluating the winner failed: {exc}")
    out["export"] = export_winner(skill, trial_spec, Path(out["checkpoint"]), best_dir, export_mode)
    tagged = ("mode", "onnx_file", "engine", "status")
    parent.set_tags({f"automl.export.{k}": v for k, v in out["export"].items() if k in tagged})
    for key in ("onnx_sidecar", "engine_sidecar"):  # the export's numbers beside the search's metrics
        if out["export"].get(key) and Path(out["export"][key]).is_file():
            parent.log_artifact(out["export"][key])
    return out


def export_winner(skill: Any, trial_spec: DictConfig, checkpoint: Path, best_dir: Path, mode: str) -> dict[str, Any]:
    """`automl.export`: none | onnx | engine | auto (engine when TensorRT can build here, else ONNX with one line
    saying why the engine was skipped). Writes RESULTS_DIR/best/model.onnx (+ .json) and model.<precision>.engine;
    failures are recorded in the returned dict, never raised (the search's results must survive them)."""
    info: dict[str, Any] = {"mode": mode}
    if mode == "none":
        info["status"] = "skipped (automl.export=none)"
        return info
    build = mode == "engine"
    if mode == "auto":
        build, reason = skill.engine_available()
        if not build:
            info["engine_skipped"] = reason
            log.warning(f"automl.export=auto: TensorRT engine skipped ({reason}); exporting ONNX only")
    onnx_file = best_dir / "model.onnx"
    try:
        log.info(f"\nexporting the winner to {onnx_file}:")
        export_spec = skill.with_overrides(trial_spec, {
            "export.checkpoint": str(checkpoint), "export.onnx_file": str(onnx_file),
            "export.results_dir": str(best_dir / "export"), "export.overwrite": True,
            **skill.validated_input_size(trial_spec)})
        skill.export(export_spec)
        info["onnx_file"] = str(onnx_file)
        info["onnx_sidecar"] = str(onnx_file) + ".json"
    except Exception as exc:  # noqa: BLE001
        info["status"] = "failed"
        info["error"] = f"export: {type(exc).__name__}: {exc}"
        log.warning(f"warning: exporting the winner failed: {exc}")
        return info
    if build:
        try:
            result = skill.gen_trt_engine(skill.with_overrides(export_spec, {
                "gen_trt_engine.onnx_file": str(onnx_file), "gen_trt_engine.results_dir": str(best_dir),
                "gen_trt_engine.overwrite": True}))
            info["engine"] = str(result.engine_file)
            info["engine_sidecar"] = str(result.sidecar)
        except Exception as exc:  # noqa: BLE001
            info["status"] = "failed"
            info["error"] = f"gen_trt_engine: {type(exc).__name__}: {exc}"
            log.warning(f"warning: building the winner's TensorRT engine failed: {exc}")
            return info
    info["status"] = "exported"
    return info


def _print_paths(results: Path, summary: Mapping[str, Any]) -> None:
    w = summary.get("winner") or {}
    log.info(f"\nsearch finished in {summary['wall_time_s']:.0f} s: {summary['states']}")
    log.info(f"  winner:        {w.get('trial_id')}  {summary['objective']['metric']} = {w.get('best')}")
    log.info(f"  checkpoint:    {w.get('checkpoint')}")
    exported = w.get("export") or {}
    for key, label in (("onnx_file", "ONNX"), ("engine", "engine")):
        if exported.get(key):
            log.info(f"  {label + ':':<14} {exported[key]}")
    log.info(f"  summary:       {results / 'summary.json'}")
    if (results / "report" / "report.html").is_file():
        log.info(f"  report:        {results / 'report' / 'report.html'}")
    log.info(f"  MLflow:        automl ui {results}   (parent run {summary['mlflow']['parent_run_id']})")
    log.info(f"  Optuna study:  optuna-dashboard {summary['optuna_storage']}")
