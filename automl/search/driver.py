"""`automl run`: Ray Tune distributes Optuna (TPE) trials over the cluster's GPUs (or CPUs), a guarded scheduler
stops losers and diverged trials, MLflow gets one parent run with one child per trial, and the winner is
evaluated (and exported) into RESULTS_DIR/best.

Layout of RESULTS_DIR:
    search_state.json   what `--resume` needs (parent run id, tracking URI, storage path, options)
    summary.json        every trial (params, state, best objective, epochs), the winner, the baseline, timings
    status.json         TAO-style lines
    trials/<trial_id>/  each trial's own results (checkpoints, status.json, spec.yaml)
    ray/search/         Ray Tune's experiment state (restored by --resume)
    optuna.db           the Optuna study (optuna-dashboard sqlite:///RESULTS_DIR/optuna.db)
    mlflow.db           the default MLflow store (automl ui RESULTS_DIR)
    best/               the winner's checkpoint, spec and evaluation
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from omegaconf import DictConfig, OmegaConf
from ray.tune import Stopper
from ray.tune.stopper import CombinedStopper

from automl.search.guards import FAIL_KEY, PRUNE_KEY, GuardedOptunaSearch, build_scheduler, is_finite_number
from automl.search.resume import driver_identity
from automl.search.stop import search_interrupted, stop_signals
from automl.search.space import SearchSpace, load_search_space
from automl.search.tracking import ParentRun, bound_http_retries, check_tracking_reachable
from automl.search.trial import TrialContext, run_trial, warm_workers_enabled
from automl.search.trial_errors import describe_error
from trainer.callbacks import StatusFile
from trainer.errors import UserError, first_line
from trainer.records import write_json_atomic
from automl.search.states import ENDED, TrialState

STATE_FILE = "search_state.json"
EXPERIMENT = "search"


@dataclass
class SearchOptions:
    """The search's settings: the spec's `automl` section with CLI flags on top (resolved once, by the CLI)."""

    num_trials: int
    max_concurrent: Optional[int]
    gpus_per_trial: Optional[float]
    cpus_per_trial: float
    scheduler: str
    grace_period: int
    reduction_factor: int
    max_failures: int
    seed: int
    address: Optional[str]
    storage_path: Optional[str]
    tracking_uri: Optional[str]
    experiment_name: str
    search_space: Optional[str]
    metric: Optional[str]
    mode: Optional[str]
    export: str
    resume: bool = False
    sampler: str = "tpe"
    budget_epochs: Optional[int] = None

    @classmethod
    def from_spec(cls, spec: DictConfig, **flags: Any) -> "SearchOptions":
        a = spec.automl
        values = dict(num_trials=a.num_trials, max_concurrent=a.max_concurrent, gpus_per_trial=a.gpus_per_trial,
                      cpus_per_trial=a.cpus_per_trial, scheduler=a.scheduler, grace_period=a.grace_period,
                      reduction_factor=a.reduction_factor, max_failures=a.max_failures, seed=a.seed,
                      address=a.address, storage_path=a.storage_path, tracking_uri=a.tracking_uri,
                      experiment_name=a.experiment_name, search_space=a.search_space, metric=a.objective,
                      mode=a.mode, export=a.export, sampler=a.sampler, budget_epochs=a.budget_epochs)
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**values)


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


# --------------------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------------------


def _init_ray(address: Optional[str], results_dir: Path) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING",
                              "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # a private local Ray, bound to loopback; token authentication stays on (Ray's default), its notice about
        # that on every run is not repeated
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with local_ray_on_loopback():  # address=local: never a cluster someone else started on this machine
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)


@contextlib.contextmanager
def local_ray_on_loopback() -> Iterator[None]:
    """Make the private local Ray listen on 127.0.0.1 only (GCS, raylet, object manager, workers, runtime-env agent).

    Ray 2.60 replaces a loopback `_node_ip_address` by the machine's routable IP and its gRPC servers listen on every
    interface; its single-machine mode (the default on macOS and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) uses
    the loopback address as the node IP, and every server then binds to it. The variable is read when Ray is
    imported, so it is set for the processes Ray starts (GCS, raylet; the workers inherit the raylet's environment) and
    the already imported constant is set too, both only while Ray starts: a later `ray start` or `--address` run in
    this process is not affected."""
    import ray._private.ray_constants as ray_constants

    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_multinode_storage(storage: Path, tracking_uri: str, inputs: Mapping[str, str] | None = None) -> None:
    """On a cluster of several nodes, every node must see the storage path and the trials' input files (`inputs`:
    what each path is -> path, e.g. the spec key of a data file) at the same paths, and reach the tracking store."""
    import ray

    nodes = _alive_nodes()
    if len(nodes) <= 1:
        return
    if tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:") or "://" not in tracking_uri:
        raise UserError(
            f"the Ray cluster has {len(nodes)} nodes, but the MLflow store {tracking_uri} is a local file that "
            f"workers on other nodes cannot write; run a tracking server (mlflow server --backend-store-uri "
            f"sqlite:///mlflow.db --host 0.0.0.0 --port 5000 on a node all can reach) and pass "
            f"--tracking-uri http://HOST:5000")
    marker = storage / f".shared-check-{uuid.uuid4().hex[:8]}"
    marker.write_text("ok")
    paths = {STORAGE_KEY: str(marker), **(inputs or {})}
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0)
        def missing(wanted: dict[str, str]) -> tuple[str, list[str]]:
            return socket.gethostname(), [key for key, path in wanted.items() if not os.path.exists(path)]

        checks = [missing.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(paths) for n in nodes]
        blind: dict[str, set[str]] = {}
        for host, keys in ray.get(checks, timeout=120):
            for key in keys:
                blind.setdefault(key, set()).add(host)
    finally:
        marker.unlink(missing_ok=True)
    if STORAGE_KEY in blind:
        raise UserError(f"automl.storage_path {storage} is not shared: node(s) {', '.join(sorted(blind[STORAGE_KEY]))} "
                        f"cannot see it; put results on storage every node mounts at the same path (NFS) or use "
                        f"automl.storage_path=s3://bucket/path")
    if blind:
        lines = [f"  - {key}: {paths[key]} (missing on {', '.join(sorted(hosts))})" for key, hosts in blind.items()]
        raise UserError(f"the trials' input files must exist at the same paths on every node of the cluster; "
                        f"{len(blind)} do not:\n" + "\n".join(lines) + "\nput them on storage every node mounts "
                        f"at the same path (NFS), or copy them to each node")


STORAGE_KEY = "automl.storage_path"
COMPILE_CACHE = "compile_cache"  # in RESULTS_DIR: torch.compile's caches, shared by the trials (trial.prepare_worker)


@dataclass
class TrialResources:
    per_trial: dict[str, float]  # what one trial uses: {"cpu", "gpu"} (summary, GPU-hours)
    tune: dict[str, float]  # what Tune reserves for the trial itself (the trial, or the waiting DDP driver)
    concurrent: int  # trials at once
    ddp_workers: int = 0  # > 1: DDP processes (ranks) per trial


def _resources(opts: SearchOptions) -> TrialResources:
    """What a trial needs, how many run at once, and how many DDP workers a trial has.

    A trial of G > 1 GPUs takes G GPUs of one node and runs DDP over them, one process per GPU."""
    import ray

    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    cpus = float(total.get("CPU", 1))
    gpt = opts.gpus_per_trial if opts.gpus_per_trial is not None else (1.0 if gpus else 0.0)
    from automl.testing import testing_ddp_cpu_workers

    cpu_workers = testing_ddp_cpu_workers() if gpt == 0 else 0
    if gpt > 1 and gpt != int(gpt):
        raise UserError(f"--gpus-per-trial {gpt:g}: a trial of more than one GPU runs one DDP worker per GPU, so "
                        f"it takes a whole number of GPUs (2, 4, 8) or a fraction of one GPU (0.5, 0.25)")
    if gpt > 0 and gpus == 0:
        raise UserError(f"--gpus-per-trial {gpt:g}: the Ray cluster has no GPU; use --gpus-per-trial 0 on CPUs")
    if gpt > gpus > 0:
        raise UserError(f"--gpus-per-trial {gpt:g}: the Ray cluster has only {gpus:g} GPUs")
    cpt = min(opts.cpus_per_trial, cpus)
    workers = int(gpt) if gpt > 1 else cpu_workers
    fits = int(gpus // gpt) if gpt > 0 else int(cpus // cpt)
    concurrent = opts.max_concurrent or max(fits, 1)
    return TrialResources(per_trial={"cpu": cpt, "gpu": gpt}, tune={"cpu": cpt, "gpu": gpt},
                          concurrent=max(1, min(concurrent, opts.num_trials)), ddp_workers=workers if workers > 1 else 0)


def reuse_workers(res: TrialResources) -> bool:
    """Warm trial workers: a trial's Ray actor runs the next trial (imports, CUDA context and compiled regions kept),
    unless AUTOML_WARM_WORKERS=0 or trials are DDP runs (their ranks are child processes of one trial)."""
    return warm_workers_enabled() and res.ddp_workers <= 1


# --------------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------------------------


def run_search(skill: Any, spec: DictConfig, opts: SearchOptions) -> dict[str, Any]:
    """Run (or resume) a search and return the summary written to RESULTS_DIR/summary.json. A full disk or an I/O
    error anywhere (trials, Tune's state, Optuna, MLflow, the summary) stops the search with its records closed and
    one message (`automl.search.stop`); `--resume` continues it once there is room."""
    from automl.search.stop import reserve_for, stop_on_storage_error
    from trainer.records import storage_error

    results = Path(spec.results_dir).resolve()
    reserve = reserve_for(results)
    try:
        return _run_search(skill, spec, opts)
    except Exception as exc:
        if isinstance(exc, UserError) or storage_error(exc) is None:
            raise  # a UserError already says what is wrong (a read-only or full results folder found up front too)
        raise stop_on_storage_error(exc, results, reserve) from None
    finally:
        if reserve is not None:
            reserve.release()


def _run_search(skill: Any, spec: DictConfig, opts: SearchOptions) -> dict[str, Any]:
    import optuna
    import ray
    from ray import tune

    from trainer.config import to_plain
    from trainer.fit import check_free_space, check_writable, run_bytes
    from trainer.tracking import curated_params, default_tracking_uri

    started = time.time()
    results = Path(spec.results_dir).resolve()
    check_writable(results)
    # every trial keeps its checkpoints; a search with an epoch budget runs at most one trial per budgeted epoch
    runs = min(opts.num_trials, opts.budget_epochs) if opts.budget_epochs else opts.num_trials
    check_free_space(results, *run_bytes(spec, runs=runs))
    state_path = results / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    storage = Path(opts.storage_path or state.get("storage_path") or results / "ray")
    exp_dir = storage / EXPERIMENT
    if opts.resume and not state:
        raise UserError(f"--resume: no search to resume in {results} (no {STATE_FILE}); run without --resume")
    if not opts.resume and state and (exp_dir.exists() or (results / "summary.json").exists()):
        raise UserError(f"{results} already holds a search; continue it with --resume, or choose another "
                        f"results_dir=PATH")

    # what every trial would find wrong in its inputs stops the search here, in seconds, before Ray starts
    for line in skill.preflight(spec):
        print(f"checked: {line}", file=sys.stderr)
    space_path = opts.search_space or state.get("search_space") or str(skill.default_search_space())
    space = load_search_space(space_path, skill=skill, spec=spec, metric=opts.metric, mode=opts.mode)
    tracking_uri = opts.tracking_uri or state.get("tracking_uri") or default_tracking_uri(results)
    tracking_env = bound_http_retries()  # MLflow calls fail in seconds, not minutes, when the server is down
    check_tracking_reachable(tracking_uri)
    if "://" not in str(opts.storage_path or state.get("storage_path") or ""):
        check_writable(storage)  # a local --storage-path: writable, with room for checkpoints, before Ray starts

    _init_ray(opts.address, results)
    storage.mkdir(parents=True, exist_ok=True)
    check_multinode_storage(storage, tracking_uri, skill.input_paths(spec))
    res = _resources(opts)
    resources, concurrent = res.per_trial, res.concurrent
    num_epochs = int(spec.train.num_epochs)
    status = StatusFile(results / "status.json")

    parent = ParentRun(tracking_uri, opts.experiment_name, run_name=f"search-{results.name}",
                       run_id=state.get("parent_run_id"))
    parent.start()
    baseline = space.baseline(spec)
    if opts.sampler == "grid" and set(baseline) != {p.name for p in space.params}:
        # a grid search runs the grid's points; a spec value off the grid is no point of it (and Optuna's grid
        # sampler refuses a partial one)
        print("notice: the spec's own values are not a point of the grid; the search runs the grid alone",
              file=sys.stderr)
        baseline = {}
    if not state:
        state = {"parent_run_id": parent.run_id, "tracking_uri": tracking_uri, "storage_path": str(storage),
                 "search_space": str(space_path), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "options": asdict(opts)}
        write_json_atomic(state_path, state)
        parent.log_params({**curated_params(spec), "objective.metric": space.metric, "objective.mode": space.mode,
                           "search.scheduler": opts.scheduler, "search.num_trials": opts.num_trials,
                           "search.space": json.dumps(space.to_dict()["parameters"]),
                           "search.resources": json.dumps(resources)})
        parent.log_spec(spec)
        space_file = results / "search_space.json"
        write_json_atomic(space_file, space.to_dict())
        parent.log_artifact(str(space_file))
        status.write("STARTED", f"Search started: {opts.num_trials} trials, {concurrent} at a time, "
                                f"scheduler {opts.scheduler}, objective {space.metric} ({space.mode})")
    else:
        status.write("STARTED", "Search resumed")

    ctx = TrialContext(skill_name=skill.name, base_spec=to_plain(spec), trials_dir=str(results / "trials"),
                       metric=space.metric, mode=space.mode, tracking_uri=tracking_uri,
                       experiment_name=opts.experiment_name, parent_run_id=parent.run_id,
                       cpus_per_trial=resources["cpu"], faults=_fault_hooks(), ddp_workers=res.ddp_workers,
                       tracking_env=tracking_env, user_cwd=os.getcwd(), compile_cache=str(results / COMPILE_CACHE),
                       driver_pid=driver_identity()[0], driver_host=driver_identity()[1])
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), res.tune)

    from automl.search.progress import TrialTable
    from automl.search.trial_errors import quiet_ray_trial_errors

    # our trial table replaces Tune's console reporter; Tune's snapshot-frequency warning is about its own
    # bookkeeping (we checkpoint every epoch on purpose)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet_ray_trial_errors()  # one line per failed attempt from the table, not Ray's traceback each time

    table = TrialTable(space, num_epochs, trials_dir=results / "trials")
    same_failure = SameFailureStopper(min(concurrent, opts.num_trials))
    stoppers = [same_failure]
    if opts.budget_epochs:
        stoppers.append(EpochBudget(opts.budget_epochs))
    run_config = tune.RunConfig(
        stop=CombinedStopper(*stoppers),
        name=EXPERIMENT, storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[table], verbose=0)

    if opts.resume and tune.Tuner.can_restore(str(exp_dir)):
        print(f"resuming the search in {exp_dir}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_storage = optuna.storages.RDBStorage(f"sqlite:///{results / 'optuna.db'}")
        searcher = GuardedOptunaSearch(
            space=space, metric=space.metric, mode=space.mode,
            points_to_evaluate=[baseline, *space.initial_points] if baseline else list(space.initial_points) or None,
            sampler=build_sampler(opts.sampler, space, opts.seed), storage=study_storage,
            study_name=f"search-{results.name}")
        scheduler = build_scheduler(opts.scheduler, metric=space.metric, mode=space.mode, max_t=num_epochs,
                                    grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=opts.num_trials,
            max_concurrent_trials=concurrent, reuse_actors=reuse_workers(res)), run_config=run_config)
    with stop_signals() as signals:  # SIGTERM stops the search as gracefully as Ctrl-C (Tune saves its state)
        grid = tuner.fit()
    if signals.interrupted:  # Tune returned with trials unfinished: nothing is final, --resume continues
        raise search_interrupted(results, status, table.unfinished)
    records = collect_trials(grid, space, num_epochs, baseline)
    for r in records:
        r.results_dir = str(results / "trials" / r.trial_id)
        if same_failure.stop_all() and r.state == TrialState.STOPPED and r.epochs == 0:
            r.reason = SEARCH_STOPPED  # ended by the stop of the whole search, not by the scheduler
    optuna_orphans = _close_orphans(results, f"search-{results.name}")
    orphans = _orphaned_trials(results, records)
    winner = pick_winner(records, space.mode)

    summary: dict[str, Any] = {
        "objective": {"metric": space.metric, "mode": space.mode},
        "search_space": space.to_dict()["parameters"], "scheduler": opts.scheduler,
        "num_trials": len(records), "concurrent": concurrent, "resources_per_trial": resources,
        "ddp_workers_per_trial": res.ddp_workers,
        "states": state_counts(records),
        "baseline": next((asdict(r) for r in records if r.baseline), None),
        "winner": None, "trials": [asdict(r) for r in records],
        "orphaned_trials": [{"trial_id": t, "results_dir": str(results / "trials" / t), "reason": ORPHAN_REASON}
                            for t in orphans],
        "orphaned_optuna_trials": optuna_orphans,  # every trial the Optuna study holds is listed in this summary
        "mlflow": {"tracking_uri": tracking_uri, "experiment": opts.experiment_name,
                   "parent_run_id": parent.run_id},
        "optuna_storage": f"sqlite:///{results / 'optuna.db'}",
        "wall_time_s": round(time.time() - started, 1),
        "gpu_hours": round(sum(_trial_seconds(r) for r in records) * resources["gpu"] / 3600, 4),
    }
    for r in records:
        parent_state = r.state
        parent.set_trial_outcome(r.trial_id, parent_state, r.reason, r.best,
                                 winner=winner is not None and r.trial_id == winner.trial_id)
    for trial_id in orphans:
        parent.set_trial_outcome(trial_id, TrialState.ORPHANED, ORPHAN_REASON)
    if orphans:
        print(f"notice: {len(orphans)} trial(s) started after Ray Tune's last snapshot before the driver died "
              f"({', '.join(orphans)}); the resumed search ran their points as new trials. Their folders under "
              f"{results / 'trials'} are kept; their MLflow runs are marked KILLED (tag {ORPHAN_TAG_HINT}).",
              file=sys.stderr)

    if winner is not None:
        summary["winner"] = finalize_winner(skill, spec, winner, results, space, opts, parent)
        parent.log_metrics({f"best/{space.metric}": winner.best}, step=0)
        parent.set_tags({"automl.winner_trial": winner.trial_id})
    summary["tracking"] = tracking_report(records, parent)
    print()
    print(leaderboard(records, space, winner))
    write_json_atomic(results / "summary.json", summary)
    from automl.report import report_after_search

    report_after_search(results, summary)  # never raises: a failing report costs nothing of the search
    if winner is None:
        status.write("FAILURE", "Search finished without a usable trial (all pruned or failed)",
                     states=summary["states"])
        parent.end("FAILED")
        raise UserError(failure_message(records, space.metric, results / "summary.json"))
    status.write("SUCCESS", "Search finished", kpi={space.metric: winner.best}, winner=winner.trial_id,
                 states=summary["states"])
    parent.end("FINISHED")
    _print_paths(results, summary)
    return summary


def build_sampler(name: str, space: SearchSpace, seed: int) -> Any:
    """tpe (default) | random | gp (TAO-style Bayesian: Gaussian process + expected improvement) | grid."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "grid":
        bad = [p.name for p in space.params if p.type != "categorical" or p.when]
        if bad:
            raise UserError(f"automl.sampler=grid needs every parameter to be an unconditional categorical list of "
                            f"values; found ranges or conditions for: {', '.join(bad)} (in {space.source})")
        return optuna.samplers.GridSampler({p.name: list(p.choices) for p in space.params}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class EpochBudget(Stopper):
    """Tune stopper: end the whole search once its trials have trained `budget` epochs in total (every reported
    epoch counts, including those of trials the scheduler stopped later and of trials that diverged)."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.spent: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.spent[trial_id] = max(self.spent.get(trial_id, 0), int(result.get("training_iteration", 0)))
        return False

    def stop_all(self) -> bool:
        return sum(self.spent.values()) >= self.budget


SEARCH_STOPPED = "search stopped: every trial before it failed with the same error"


class SameFailureStopper(Stopper):
    """Tune stopper: end the whole search when the first `min_failures` trials to end have all failed with the same
    error that no retry fixes (a bad data file, spec or checkpoint, a full disk) and none produced a result: every
    further trial would fail the same way."""

    def __init__(self, min_failures: int):
        self.min_failures = max(int(min_failures), 1)
        self.failures: dict[str, str] = {}
        self.succeeded = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(FAIL_KEY):
            self.failures[trial_id] = str(result[FAIL_KEY])
        elif result.get("epoch") is not None:
            self.succeeded = True
        return False

    def stop_all(self) -> bool:
        return (not self.succeeded and len(self.failures) >= self.min_failures
                and len(set(self.failures.values())) == 1)


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
        return f"every trial failed with the same error, so the search stopped: {errors.pop()}"
    hint = (" (a learning-rate range that diverges everywhere is the usual cause)" if states[TrialState.PRUNED] else "")
    shown = "; ".join(sorted(errors))[:600]
    return (f"no trial finished with a finite {metric}: {states}" + (f"; errors: {shown}" if shown else "") +
            f"; see {summary_file}{hint}")


def _fault_hooks() -> tuple:
    """The test suite's fault-injection hooks (automl/testing.py), read once here from the environment."""
    from automl.testing import read_fault_hooks

    return read_fault_hooks()


def tracking_report(records: list[TrialRecord], parent: ParentRun) -> dict[str, Any]:
    """What could not be logged to MLflow (summary.json `tracking`): each trial's tracking_failures.log, written as
    failures happen (so retried and failed trials count too), and the parent run's own failures. One warning line
    when anything failed; training never waits for tracking."""
    from trainer.tracking import TRACKING_FAILURES_FILE

    per_trial: dict[str, int] = {}
    first: Optional[str] = None
    for r in records:
        log = Path(r.results_dir or ".") / TRACKING_FAILURES_FILE
        lines = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
        if lines:
            per_trial[r.trial_id] = len(lines)
            first = first or lines[0]
    on_parent = list(parent.run.failures)
    first = first or (on_parent[0] if on_parent else None)
    total = sum(per_trial.values()) + len(on_parent)
    if total:
        print(f"warning: {total} MLflow operations could not be logged to {parent.uri} ({len(per_trial)} trials, "
              f"{len(on_parent)} on the search's parent run); training went on and summary.json holds every "
              f"trial's results; first failure: {first}", file=sys.stderr)
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


def finalize_winner(skill: Any, spec: DictConfig, winner: TrialRecord, results: Path, space: SearchSpace,
                    opts: SearchOptions, parent: ParentRun) -> dict[str, Any]:
    """Copy the winner's best checkpoint and resolved spec to RESULTS_DIR/best and evaluate it there."""
    from trainer.config import save_spec

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
    save_spec(trial_spec, best_dir / "spec.yaml")
    out["checkpoint"] = str(best_dir / "model.ckpt")
    out["spec"] = str(best_dir / "spec.yaml")
    eval_split = "test_dataset" if len(spec.dataset.test_dataset.data_sources) else "val_dataset"
    try:
        eval_spec = skill.with_overrides(
            trial_spec, {"evaluate.checkpoint": out["checkpoint"], "evaluate.results_dir": str(best_dir / "evaluate"),
                         "dataset.test_dataset": OmegaConf.to_container(spec.dataset[eval_split], resolve=True)})
        print(f"\nevaluating the winner ({winner.trial_id}) on {eval_split}:")
        evaluation = skill.evaluate(eval_spec)
        out["evaluation"] = {"split": eval_split, **{k: v for k, v in evaluation.items() if k != "model"}}
        parent.log_metrics({f"winner/{k}": v for k, v in evaluation["metrics"].items()}, step=0)
    except Exception as exc:  # noqa: BLE001 - the search's results must survive a failing evaluation
        out["evaluation_error"] = f"{type(exc).__name__}: {exc}"
        print(f"warning: evaluating the winner failed: {exc}", file=sys.stderr)
    out["export"] = export_winner(skill, trial_spec, Path(out["checkpoint"]), best_dir, opts.export)
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
            print(f"automl.export=auto: TensorRT engine skipped ({reason}); exporting ONNX only", file=sys.stderr)
    onnx_file = best_dir / "model.onnx"
    try:
        print(f"\nexporting the winner to {onnx_file}:")
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
        print(f"warning: exporting the winner failed: {exc}", file=sys.stderr)
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
            print(f"warning: building the winner's TensorRT engine failed: {exc}", file=sys.stderr)
            return info
    info["status"] = "exported"
    return info


def _print_paths(results: Path, summary: Mapping[str, Any]) -> None:
    w = summary.get("winner") or {}
    print(f"\nsearch finished in {summary['wall_time_s']:.0f} s: {summary['states']}")
    print(f"  winner:        {w.get('trial_id')}  {summary['objective']['metric']} = {w.get('best')}")
    print(f"  checkpoint:    {w.get('checkpoint')}")
    exported = w.get("export") or {}
    for key, label in (("onnx_file", "ONNX"), ("engine", "engine")):
        if exported.get(key):
            print(f"  {label + ':':<14} {exported[key]}")
    print(f"  summary:       {results / 'summary.json'}")
    if (results / "report" / "report.html").is_file():
        print(f"  report:        {results / 'report' / 'report.html'}")
    print(f"  MLflow:        automl ui {results}   (parent run {summary['mlflow']['parent_run_id']})")
    print(f"  Optuna study:  optuna-dashboard {summary['optuna_storage']}")
