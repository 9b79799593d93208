"""`automl run`: a search in three steps, each a function of this module or the one it names:

1. `prepare_search`: check what every trial would read (before Ray starts), load the search space, reach the
   tracking store, start or join Ray, open the MLflow parent run and write search_state.json (or read it back for
   `--resume`).
2. `run_tuner`: Ray Tune runs Optuna's trials (automl.search.trial) under the guarded scheduler and the stoppers.
3. `automl.search.winner.finish_search`: records, summary.json, the winner evaluated and exported, the report.

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

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from automl.search import cluster
from automl.search.cluster import TrialResources
from automl.search.guards import GuardedOptunaSearch, build_scheduler
from automl.search.packing import PackingChoice, resolve_packing
from automl.search.resume import driver_identity
from automl.search.space import SearchSpace, load_search_space
from automl.search.stop import search_interrupted, stop_signals
from automl.search.stoppers import EpochBudget, SameFailureStopper
from automl.search.tracking import ParentRun, bound_http_retries, check_tracking_reachable, is_server
from automl.search.trial import TrialContext, run_trial
from automl.search.warmup import overlap_checks_with_ray, preload_config, with_frame_cache
from automl.search.winner import finish_search
from automl.skills.shared import (StatusFile, UserError, check_free_space, check_writable, default_tracking_uri,
                                  storage_error, write_json_atomic)

log = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
EXPERIMENT = "search"
COMPILE_CACHE = "compile_cache"  # in RESULTS_DIR: torch.compile's caches, shared by the trials (trial.prepare_worker)
FRAME_CACHE = "frame_cache"  # in RESULTS_DIR: decoded frames, shared by the trials of a node (trainer.data.frame_cache)
PRELOAD_SLOTS_DIR = ".preload"  # in RESULTS_DIR: which Ray workers import the trainer stack (automl.search.preload)


@dataclass
class SearchOptions:
    """The search's settings: the spec's `automl` section with CLI flags on top (resolved once, by the CLI)."""

    num_trials: int
    max_concurrent: Optional[int]
    gpus_per_trial: Optional[float | str]  # "auto" (or None, the default): chosen by a probe on GPUs
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
class PreparedSearch:
    """What step 1 hands to steps 2 and 3."""

    spec: DictConfig  # the search's spec as every trial starts from it (with the frame cache of the search)
    options: SearchOptions  # with --gpus-per-trial auto resolved to the probe's choice
    packing: Optional[PackingChoice]  # the probe's choice and why (None: a number was given, or no GPU)
    results: Path
    storage: Path
    state: dict[str, Any]  # search_state.json (empty before the first run wrote it)
    space: SearchSpace
    tracking_uri: str
    tracking_env: dict[str, str]
    resources: TrialResources
    parent: ParentRun
    baseline: dict[str, Any]  # the spec's own values of the searched keys (the first trial), or {}
    status: StatusFile
    num_epochs: int
    started: float

    @property
    def study_name(self) -> str:
        return f"search-{self.results.name}"


def run_search(skill: Any, spec: DictConfig, opts: SearchOptions) -> dict[str, Any]:
    """Run (or resume) a search and return the summary written to RESULTS_DIR/summary.json. A full disk or an I/O
    error anywhere (trials, Tune's state, Optuna, MLflow, the summary) stops the search with its records closed and
    one message (`automl.search.stop`); `--resume` continues it once there is room."""
    from automl.search.stop import reserve_for, stop_on_storage_error

    results = Path(spec.results_dir).resolve()
    reserve = reserve_for(results)
    try:
        prep = prepare_search(skill, spec, opts)
        grid, stopped_all = run_tuner(skill, prep)
        return finish_search(skill, prep, grid, stopped_all)
    except Exception as exc:
        if isinstance(exc, UserError) or storage_error(exc) is None:
            raise  # a UserError already says what is wrong (a read-only or full results folder found up front too)
        raise stop_on_storage_error(exc, results, reserve) from None
    finally:
        if reserve is not None:
            reserve.release()


# --------------------------------------------------------------------------------------------------------------
# step 1: prepare (or restore)
# --------------------------------------------------------------------------------------------------------------


def prepare_search(skill: Any, spec: DictConfig, opts: SearchOptions) -> PreparedSearch:
    """Everything before the first trial: refuse in seconds what every trial would fail on (the skill's pre-flight
    runs while Ray starts, and a failed check stops Ray again); choose the packing (`--gpus-per-trial auto`), open
    the parent run and record the start (or the resume)."""
    started = time.time()
    results, state, storage = _check_results(skill, spec, opts)
    space_path = opts.search_space or state.get("search_space") or str(skill.default_search_space())
    space = load_search_space(space_path, skill=skill, spec=spec, metric=opts.metric, mode=opts.mode)
    tracking_uri = opts.tracking_uri or state.get("tracking_uri") or default_tracking_uri(results)
    tracking_env = bound_http_retries()  # MLflow calls fail in seconds, not minutes, when the server is down
    if is_server(tracking_uri):  # a server that does not answer stops the search before Ray starts
        check_tracking_reachable(tracking_uri)
    if "://" not in str(opts.storage_path or state.get("storage_path") or ""):
        check_writable(storage)  # a local --storage-path: writable, with room for checkpoints, before Ray starts

    spec = with_frame_cache(skill, spec, results / FRAME_CACHE)  # filled by the pre-flight check, read by trials
    system_config = preload_config(str(results / PRELOAD_SLOTS_DIR), skill.name, local=not opts.address)
    for line in overlap_checks_with_ray(lambda: _checks_beside_ray(skill, spec, opts, results, tracking_uri),
                                        lambda: cluster.init_ray(opts.address, system_config)):
        log.info(f"checked: {line}")
    storage.mkdir(parents=True, exist_ok=True)
    cluster.check_multinode_storage(storage, tracking_uri, skill.input_paths(spec))
    packing = resolve_packing(skill, spec, opts, str(results / COMPILE_CACHE))  # --gpus-per-trial auto: a probe
    if packing is not None:
        opts = replace(opts, gpus_per_trial=packing.gpus_per_trial)
    parent = ParentRun(tracking_uri, opts.experiment_name, run_name=f"search-{results.name}",
                       run_id=state.get("parent_run_id"))
    parent.start()
    prep = PreparedSearch(spec=spec, options=opts, packing=packing, results=results, storage=storage, state=state,
                          space=space, tracking_uri=tracking_uri, tracking_env=tracking_env,
                          resources=cluster.plan_resources(opts), parent=parent,
                          baseline=_baseline(space, spec, opts.sampler), status=StatusFile(results / "status.json"),
                          num_epochs=int(spec.train.num_epochs), started=started)
    _record_start(skill, prep, space_path)
    return prep


def _check_results(skill: Any, spec: DictConfig, opts: SearchOptions) -> tuple[Path, dict[str, Any], Path]:
    """The results folder (writable), the saved search state (for `--resume`; {} for a new search) and Ray's
    storage path; a new search never overwrites an old one."""
    results = Path(spec.results_dir).resolve()
    check_writable(results)
    state_path = results / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    storage = Path(opts.storage_path or state.get("storage_path") or results / "ray")
    if opts.resume and not state:
        raise UserError(f"--resume: no search to resume in {results} (no {STATE_FILE}); run without --resume")
    if not opts.resume and state and ((storage / EXPERIMENT).exists() or (results / "summary.json").exists()):
        raise UserError(f"{results} already holds a search; continue it with --resume, or choose another "
                        f"results_dir=PATH")
    return results, state, storage


def _checks_beside_ray(skill: Any, spec: DictConfig, opts: SearchOptions, results: Path,
                       tracking_uri: str) -> list[str]:
    """The checks that run while Ray starts (each costs seconds: torch's import, the creation of a local MLflow
    store): a local tracking store opens (a server was asked before Ray started), the results folder has room for
    every trial's checkpoints (a search with an epoch budget runs at most one trial per budgeted epoch), the skill's
    pre-flight of the data; its lines."""
    if not is_server(tracking_uri):
        check_tracking_reachable(tracking_uri)
    runs = min(opts.num_trials, opts.budget_epochs) if opts.budget_epochs else opts.num_trials
    check_free_space(results, *skill.storage_needed(spec, runs))
    return list(skill.preflight(spec))


def _baseline(space: SearchSpace, spec: DictConfig, sampler: str) -> dict[str, Any]:
    """The spec's own values of the searched keys, run as the first trial; none for a grid they are not a point of
    (Optuna's grid sampler refuses a partial point)."""
    baseline = space.baseline(spec)
    if sampler == "grid" and set(baseline) != {p.name for p in space.params}:
        log.warning("notice: the spec's own values are not a point of the grid; the search runs the grid alone")
        return {}
    return baseline


def _record_start(skill: Any, prep: PreparedSearch, space_path: str) -> None:
    """A new search writes search_state.json, the parent run's params, spec and search space, and STARTED; a
    resumed one writes STARTED "Search resumed"."""
    if prep.state:
        prep.status.write("STARTED", "Search resumed")
        return
    spec, opts, results, space, parent, res = prep.spec, prep.options, prep.results, prep.space, prep.parent, \
        prep.resources
    prep.state = {"parent_run_id": parent.run_id, "tracking_uri": prep.tracking_uri,
                  "storage_path": str(prep.storage), "search_space": str(space_path),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "options": asdict(opts)}
    write_json_atomic(results / STATE_FILE, prep.state)
    parent.log_params({**skill.curated_params(spec), "objective.metric": space.metric, "objective.mode": space.mode,
                       "search.scheduler": opts.scheduler, "search.num_trials": opts.num_trials,
                       "search.space": json.dumps(space.to_dict()["parameters"]),
                       "search.resources": json.dumps(res.per_trial)})
    parent.log_spec(spec)
    space_file = results / "search_space.json"
    write_json_atomic(space_file, space.to_dict())
    parent.log_artifact(str(space_file))
    prep.status.write("STARTED", f"Search started: {opts.num_trials} trials, {res.concurrent} at a time, "
                                 f"scheduler {opts.scheduler}, objective {space.metric} ({space.mode})")


# --------------------------------------------------------------------------------------------------------------
# step 2: build and run the Tuner
# --------------------------------------------------------------------------------------------------------------


def run_tuner(skill: Any, prep: PreparedSearch) -> tuple[Any, bool]:
    """Run the trials (a new Tuner, or the saved one restored for `--resume`); returns Tune's result grid and
    whether the same-failure stopper ended the search. An interrupt (Ctrl-C, SIGTERM) raises the resume hint."""
    from ray import tune
    from ray.tune.stopper import CombinedStopper

    from automl.search.progress import TrialTable
    from automl.search.trial_errors import quiet_ray_trial_errors

    # our trial table replaces Tune's console reporter; Tune's snapshot-frequency warning is about its own
    # bookkeeping (we checkpoint every epoch on purpose)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet_ray_trial_errors()  # one line per failed attempt from the table, not Ray's traceback each time
    opts, res = prep.options, prep.resources
    table = TrialTable(prep.space, prep.num_epochs, trials_dir=prep.results / "trials")
    same_failure = SameFailureStopper(min(res.concurrent, opts.num_trials))
    stoppers = [same_failure, *([EpochBudget(opts.budget_epochs)] if opts.budget_epochs else [])]
    run_config = tune.RunConfig(
        stop=CombinedStopper(*stoppers), name=EXPERIMENT, storage_path=str(prep.storage),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=[table], verbose=0)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=_trial_context(skill, prep)),
                                    res.tune)
    exp_dir = prep.storage / EXPERIMENT
    if opts.resume and tune.Tuner.can_restore(str(exp_dir)):
        log.info(f"resuming the search in {exp_dir}")
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, tune_config=_tune_config(opts, prep), run_config=run_config)
    with stop_signals() as signals:  # SIGTERM stops the search as gracefully as Ctrl-C (Tune saves its state)
        grid = tuner.fit()
    if signals.interrupted:  # Tune returned with trials unfinished: nothing is final, --resume continues
        raise search_interrupted(prep.results, prep.status, table.unfinished)
    return grid, same_failure.stop_all()


def _trial_context(skill: Any, prep: PreparedSearch) -> TrialContext:
    """What every trial gets besides its sampled values (pickled to the workers once)."""
    spec, opts = prep.spec, prep.options
    pid, host = driver_identity()
    return TrialContext(
        skill_name=skill.name, base_spec=OmegaConf.to_container(spec, resolve=True),
        trials_dir=str(prep.results / "trials"), metric=prep.space.metric, mode=prep.space.mode,
        tracking_uri=prep.tracking_uri, experiment_name=opts.experiment_name, parent_run_id=prep.parent.run_id,
        cpus_per_trial=prep.resources.per_trial["cpu"], faults=_fault_hooks(),
        ddp_workers=prep.resources.ddp_workers, tracking_env=prep.tracking_env, user_cwd=os.getcwd(),
        compile_cache=str(prep.results / COMPILE_CACHE), driver_pid=pid, driver_host=host)


def _tune_config(opts: SearchOptions, prep: PreparedSearch) -> Any:
    """Optuna's sampler behind the guard (its study in RESULTS_DIR/optuna.db), the scheduler, how many at once."""
    import optuna
    from ray import tune

    space = prep.space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = [prep.baseline, *space.initial_points] if prep.baseline else list(space.initial_points) or None
    searcher = GuardedOptunaSearch(
        space=space, metric=space.metric, mode=space.mode, points_to_evaluate=first,
        sampler=build_sampler(opts.sampler, space, opts.seed),
        storage=optuna.storages.RDBStorage(f"sqlite:///{prep.results / 'optuna.db'}"), study_name=prep.study_name)
    scheduler = build_scheduler(opts.scheduler, metric=space.metric, mode=space.mode, max_t=prep.num_epochs,
                                grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.num_trials,
                           max_concurrent_trials=prep.resources.concurrent,
                           reuse_actors=cluster.reuse_workers(prep.resources))


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


def _fault_hooks() -> tuple:
    """The test suite's fault-injection hooks (automl/testing.py), read once here from the environment."""
    from automl.testing import read_fault_hooks

    return read_fault_hooks()
