"""The Ray Tune trainable: a plain function that runs the skill's `fit` with the sampled values.

Every validated epoch is reported to Tune with the trainer's `last.ckpt` as a Tune checkpoint, so a retried trial
(worker died) or a resumed search (driver died) continues from it. A NaN/inf loss ends the trial with one flagged
report (objective None, `prune_reason`), which the guarded searcher and schedulers turn into a pruned trial. Out of
memory ends it the same way with `fail_reason` (an error, not retried: the same batch would not fit the next time).

A trial that ends by itself writes every report it sent to `trials/<id>/tune_reports.json`. Tune's experiment
snapshot, which `--resume` restores, can be older than that (it is written every few seconds and at each checkpoint):
a trial restored as unfinished whose folder holds the file replays the reports Tune had not seen instead of training
again.

Trial workers are warm (`reuse_actors`, see `prepare_worker`): one Ray actor runs trial after trial, so a trial
after the first finds torch, Lightning and timm imported, the CUDA context made and the compiled regions in memory;
the compile caches (Inductor, AOTAutograd, Triton) live in the search's folder, shared by every trial of a node.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from automl.search.guards import DISK_FULL_PREFIX, FAIL_KEY, PRUNE_KEY
from automl.search.tracking import TRIAL_TAG, find_child_run, searched_tag, trial_params
from automl.skills.shared import UserError, first_line
from automl.search.states import TrialState

log = logging.getLogger(__name__)

# Test hooks (never set by the CLI or by a spec): see automl/testing.py; the driver reads them once
# (automl.testing.read_fault_hooks) into TrialContext.faults.
INJECT_ENV = "AUTOML_TESTING_INJECT_NONFINITE"

REPORTS_FILE = "tune_reports.json"  # in the trial's folder, written when the trial ended by itself
CHECKPOINT_EPOCH_FILE = "epoch.json"  # in each Tune checkpoint: the epoch of the report that carried it


@dataclass
class TrialContext:
    """Everything a trial needs besides its sampled values; pickled to the workers once."""

    skill_name: str
    base_spec: dict[str, Any]
    trials_dir: str
    metric: str
    mode: str
    tracking_uri: Optional[str]
    experiment_name: str
    parent_run_id: Optional[str]
    cpus_per_trial: float = 1.0
    faults: tuple = ()  # automl.testing.FaultHook values of the test hooks, resolved once by the driver
    tracking_env: dict[str, str] = field(default_factory=dict)  # MLflow HTTP retry settings (fail fast)
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides applied to every trial
    ddp_workers: int = 0  # > 1: each trial is a DDP run over this many processes (one GPU each)
    user_cwd: Optional[str] = None  # where the user ran the search: relative paths among sampled values mean it
    compile_cache: Optional[str] = None  # torch.compile's caches, shared by the search's trials (prepare_worker)
    driver_pid: int = 0  # the driver process: a worker on its node stops when it is gone (automl.search.resume)
    driver_host: str = ""


WARM_ENV = "AUTOML_WARM_WORKERS"  # "0": a fresh Ray actor (process) for every trial, as before warm workers
# How long Ray, handing a warm worker to its next trial, waits for the previous trial's thread to end (a
# scheduler-stopped trial unwinds then: status.json, MLflow, Lightning's teardown). With Ray's default, 2 s, a
# slower unwind fails the next trial.
RESET_WAIT_S = "120"
_worker = {"trials": 0}  # trials this process has started


def warm_workers_enabled() -> bool:
    """Whether a search reuses its trial workers (the default; AUTOML_WARM_WORKERS=0 turns it off)."""
    return os.environ.get(WARM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def prepare_worker(ctx: TrialContext) -> dict[str, Any]:
    """Make this process ready for a trial and say how warm it was: `worker_pid`, `worker_trial` (how many
    trials this process ran before this one; 0 = a cold start that pays CUDA start-up and compilation) and
    `preloaded` (the process imported the trainer stack when Ray started it: automl.search.preload).

    The first time, before torch is imported, points torch.compile's caches (Inductor's FX graphs, AOTAutograd,
    Triton's kernels) into `ctx.compile_cache` (a TORCHINDUCTOR_CACHE_DIR already in the environment wins) and lets
    Ray wait for a stopped trial's thread before reusing the worker. On a warm worker, frees what the previous trial
    left on the GPU (its model and optimizer are garbage once its thread has ended)."""
    index = _worker["trials"]
    _worker["trials"] += 1
    if index == 0:
        os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", RESET_WAIT_S)
        if ctx.compile_cache:  # Inductor keeps its FX-graph and AOTAutograd caches (on by default) and, unless
            # TRITON_CACHE_DIR says otherwise, Triton's kernels (triton/<device>) in this folder
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(ctx.compile_cache) / "inductor"))
    else:
        gc.collect()
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    preload = sys.modules.get("automl.search.preload")
    return {"worker_pid": os.getpid(), "worker_trial": index, "preloaded": bool(preload and preload._held)}


def _trial_index(trial_id: str, trials_dir: str) -> int:
    """Sequence number of a trial (order of first start), stable across retries: recorded in trials_dir."""
    registry = Path(trials_dir) / ".order"
    registry.parent.mkdir(parents=True, exist_ok=True)
    order = registry.read_text().split() if registry.exists() else []
    if trial_id not in order:
        with registry.open("a") as fh:
            fh.write(trial_id + "\n")
        order = registry.read_text().split()  # trials starting together: the file's order is the one order
    return order.index(trial_id)


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    started_at = time.time()
    worker = prepare_worker(ctx)  # first: the compile caches' environment before torch is imported
    from omegaconf import OmegaConf
    from ray import tune

    from automl.skills import get_skill
    from automl.skills.shared import TrackingConfig

    import logging

    from automl import logs

    logs.configure()  # the trainer's notices and warnings reach the worker's output, which Ray shows the driver
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "Checkpoint successfully created" per epoch
    import ray

    # seconds from the trial's start to the end of its imports, of its spec, of its tracking lookup (reports)
    worker["startup_imports_s"] = round(time.time() - started_at, 2)
    os.environ.update(ctx.tracking_env)  # read by MLflow's HTTP client at each request
    from automl.search.resume import stop_with_driver

    stop_with_driver(ctx.driver_pid, ctx.driver_host)
    trial_id = tune.get_context().get_trial_id()
    skill = get_skill(ctx.skill_name)
    out = Path(ctx.trials_dir) / trial_id
    values = {**ctx.fixed, **config, "results_dir": str(out), "train.results_dir": None,
              "train.optim.monitor_name": ctx.metric}
    try:
        spec = skill.with_overrides(OmegaConf.create(ctx.base_spec), values, base_dir=ctx.user_cwd)
    except UserError as exc:  # the sampled values make an invalid spec: the same on every retry
        tune.report({ctx.metric: None, FAIL_KEY: deterministic_failure(exc), "trial_state": TrialState.ERROR})
        return

    worker["startup_spec_s"] = round(time.time() - started_at, 2)
    # a trial's MLflow run exists only after an earlier attempt made its folder (retried, resumed): a new trial does
    # not pay for the lookup (MLflow's store costs seconds to open)
    run_id = find_child_run(ctx.tracking_uri, ctx.experiment_name, ctx.parent_run_id, trial_id) \
        if ctx.tracking_uri and ctx.parent_run_id and out.exists() else None
    worker["startup_tracking_s"] = round(time.time() - started_at, 2)
    tracking = TrackingConfig(uri=ctx.tracking_uri, experiment_name=ctx.experiment_name, run_name=trial_id,
                              parent_run_id=ctx.parent_run_id, run_id=run_id,
                              tags={TRIAL_TAG: trial_id, **searched_tag(config)},
                              params=trial_params(config, ctx.metric, ctx.mode),
                              enabled=ctx.tracking_uri is not None)
    node_id = ray.get_runtime_context().get_node_id()
    restored = tune.get_checkpoint()
    # Tune's checkpoint of this trial, if any, read where it lies: to_directory() would copy it to a temporary
    # folder that nothing removes (a full checkpoint per resumed trial left in /tmp)
    with restored.as_directory() if restored is not None else contextlib.nullcontext() as restored_path:
        restored_dir = Path(restored_path) if restored_path is not None else None
        if _replay_finished(out / REPORTS_FILE, restored_dir):
            return
        sent: list[dict[str, Any]] = []
        send = _reporter(ctx, out, sent, {"node_id": node_id, "trial_started_at": started_at, **worker})
        with _finish_before_process_exit():
            _run(ctx, spec, trial_id, out, tracking, restored_dir, send)
        _write_json_atomic(out / REPORTS_FILE, {"trial_id": trial_id, "reports": sent})


REPORT_STAGING_PREFIX = ".tune-report-"


def _reporter(ctx: TrialContext, out: Path, sent: list[dict[str, Any]], extra: dict[str, Any]) -> Any:
    """The trial's report function: each payload gets `extra` (node_id: where the trial ran, for summary.json;
    trial_started_at and the worker's start-up times: benchmarks/search_gpu_busy.py) and its wall-clock time
    (reported_at: orders epochs of concurrent trials), is kept in `sent`, and goes to Tune with the epoch's
    checkpoint. The checkpoint is staged as a hard link in a hidden folder of the trial's own folder (same
    filesystem: no copy); a folder left there by a killed process is removed by the trial's next attempt, so
    nothing accumulates in /tmp. A DDP trial keeps its checkpoint in its own folder (see _run_distributed)."""
    from ray import tune

    for stale in out.glob(REPORT_STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)

    def send(payload: dict[str, Any], checkpoint_path: Optional[str] = None) -> None:
        payload.update(extra, reported_at=time.time())
        sent.append(dict(payload))
        if not checkpoint_path or ctx.ddp_workers > 1:
            tune.report(payload)
            return
        with tempfile.TemporaryDirectory(prefix=REPORT_STAGING_PREFIX, dir=out) as tmp:
            target = Path(tmp) / "last.ckpt"
            try:
                os.link(checkpoint_path, target)
            except OSError:
                shutil.copy2(checkpoint_path, target)
            (Path(tmp) / CHECKPOINT_EPOCH_FILE).write_text(json.dumps({"epoch": payload.get("epoch")}))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))

    return send


def _run(ctx: TrialContext, spec: Any, trial_id: str, out: Path, tracking: Any, restored_dir: Optional[Path],
         send: Any) -> None:
    """Train the trial: over its DDP ranks, or in this process (from the newest complete checkpoint: Tune's or the
    trial folder's, if any)."""
    from automl.search.resume import newest_checkpoint
    from automl.skills import get_skill

    skill = get_skill(ctx.skill_name)
    if ctx.ddp_workers > 1:
        payload_extra = {"ddp_world_size": ctx.ddp_workers}
        _run_distributed(ctx, trial_id, spec, tracking, lambda p, c=None: send({**p, **payload_extra}, c))
    else:
        import torch

        torch.set_num_threads(max(int(ctx.cpus_per_trial), 1))
        point = newest_checkpoint(restored_dir, out, ctx.metric)  # the trial folder's may be newer than Tune's
        if point.path is not None:
            spec.train.resume_training_checkpoint_path = str(point.path)
        for payload in point.unseen:  # epochs finished after Tune's snapshot: reported, not trained again
            send(payload)
        _fit_and_report(skill, spec, ctx, trial_id, out, tracking, send)


@contextlib.contextmanager
def _finish_before_process_exit(timeout_s: float = 60.0):
    """Ray runs the trial in a daemon thread, and when a scheduler stops the trial it ends the actor's process while
    that thread is still unwinding (status record, Lightning's teardown). A daemon thread caught inside CUDA by the
    interpreter's shutdown aborts the process (`Fatal Python error: Aborted`), so the process waits, at exit, for
    this thread to end (at most `timeout_s`)."""
    thread = threading.current_thread()

    def wait_for_trial() -> None:
        if thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout_s)

    atexit.register(wait_for_trial)
    try:
        yield
    finally:
        atexit.unregister(wait_for_trial)


def _replay_finished(reports_file: Path, restored_dir: Optional[Path]) -> bool:
    """A trial that already ended by itself under an earlier driver (see the module's doc): send Tune the reports it
    has not seen (those after the epoch of the checkpoint it restored; all of them when it restored none) and
    train nothing. False when the trial has not ended yet."""
    from ray import tune

    try:
        reports = json.loads(reports_file.read_text())["reports"]
    except (OSError, ValueError, KeyError):
        return False
    seen = -1
    if restored_dir is not None:
        try:
            seen = int(json.loads((restored_dir / CHECKPOINT_EPOCH_FILE).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            seen = -1
    for payload in reports:
        epoch = payload.get("epoch")
        if epoch is None or int(epoch) > seen:  # epoch None: the last, flagged report of a pruned/failed trial
            tune.report({**payload, "replayed": True})
    return True


def _write_json_atomic(path: Path, data: Any) -> None:
    from automl.skills.shared import write_json_atomic

    write_json_atomic(path, data, indent=1)


def _fit_and_report(skill: Any, spec: Any, ctx: TrialContext, trial_id: str, out: Path, tracking: Any,
                    send: Any, **fit_kwargs: Any) -> str:
    """Run the skill's fit; every validated epoch and the way the run ended become reports through `send`.
    Returns how it ended: "finished", "pruned" (non-finite loss) or "error" (out of memory)."""
    import torch

    from automl.skills.shared import NonFiniteLossError

    timings: dict[str, Any] = {}

    def report(epoch: int, metrics: dict[str, float], checkpoint_path: Optional[str]) -> None:
        payload: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
        payload["epoch"] = int(epoch)
        payload["first_step_at"] = timings.get("first_step_at")  # wall clock of the first training step (start-up)
        send(payload, checkpoint_path)

    callbacks = skill.fault_callbacks(ctx.faults, _trial_index(trial_id, ctx.trials_dir), out) if ctx.faults else []
    try:
        skill.fit(spec, report, tracking=tracking, progress=False, quiet=True, callbacks=callbacks, timings=timings,
                  **fit_kwargs)
        return "finished"
    except torch.OutOfMemoryError as exc:
        # deterministic for a given batch/crop/encoder: recorded as an error at once, no retry to burn budget on
        from automl.skills.shared import out_of_memory_message

        send({ctx.metric: None, FAIL_KEY: f"out_of_memory: {out_of_memory_message(exc)}", "trial_state": TrialState.ERROR})
        return "error"
    except NonFiniteLossError as exc:
        send({ctx.metric: None, PRUNE_KEY: exc.reason, "trial_state": TrialState.PRUNED, "diverged_step": exc.step,
              "diverged_epoch": exc.epoch, "diverged_what": exc.what})
        return "pruned"
    except (UserError, OSError) as exc:
        reason = deterministic_failure(exc)
        if reason is None:
            raise  # may pass on a retry (a flaky mount, a lost connection): Ray retries from the last checkpoint
        send({ctx.metric: None, FAIL_KEY: reason, "trial_state": TrialState.ERROR})
        return "error"


# errno values of OSErrors, besides a full or failing disk, that a retry on the same machine cannot fix
_LASTING_OS_ERRORS = {errno.EACCES: "permission_denied", errno.ENOENT: "file_not_found"}


def deterministic_failure(exc: BaseException) -> Optional[str]:
    """`KIND: message` for an error that would happen again on a retry (a bad spec, data or checkpoint; a full,
    failing or read-only disk, whose kind is DISK_FULL_PREFIX and on which the driver stops the search; a
    permission), None for one that might not. A trial ending with such an error is recorded as an error at once and
    never retried; the driver stops the search when every trial fails with the same one."""
    from automl.skills.shared import storage_error

    if isinstance(exc, UserError):
        kind = {"SpecError": "invalid_spec", "DataError": "bad_data", "DataConfigError": "bad_data",
                "CheckpointError": "bad_checkpoint"}.get(type(exc).__name__, "user_error")
        problems = getattr(exc, "problems", None)
        return f"{kind}: {'; '.join(map(str, problems)) if problems else first_line(exc)}"
    disk = storage_error(exc)
    if disk is not None:
        return f"{DISK_FULL_PREFIX}: {disk.strerror}: {disk.filename or exc}"
    if isinstance(exc, OSError) and exc.errno in _LASTING_OS_ERRORS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{_LASTING_OS_ERRORS[exc.errno]}: {exc.strerror or exc}{where}"
    return None


# --------------------------------------------------------------------------------------------------------------
# a trial over several GPUs (DDP inside a trial): rank 0 runs in the trial itself, ranks 1..N-1 in child processes
# --------------------------------------------------------------------------------------------------------------

RANK_CONFIG = "ddp_ranks.json"  # in the trial's folder: what the child ranks need to build the same run


def _run_distributed(ctx: TrialContext, trial_id: str, spec: Any, tracking: Any, send: Any) -> None:
    """Lightning DDP over the trial's GPUs (Ray gives the trial all N of them, on one node). The trial process is
    rank 0: it reports to Tune like any trial. Ranks 1..N-1 are child processes started here with the usual
    torch.distributed variables; the kernel ends them when the trial process dies (a scheduler stopping the trial, a
    killed worker), so no rank outlives its trial and no GPU stays taken. Every rank stops at the same step on a
    NaN/inf (the all-reduced gradient carries it)."""
    import socket
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from automl.skills import get_skill

    out = Path(ctx.trials_dir) / trial_id
    out.mkdir(parents=True, exist_ok=True)
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():  # a retried or resumed trial continues from its own checkpoint
        spec.train.resume_training_checkpoint_path = str(last)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    n = ctx.ddp_workers
    dist_env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "NODE_RANK": "0",
                "OMP_NUM_THREADS": str(max(int(ctx.cpus_per_trial // n), 1))}
    config = out / RANK_CONFIG
    config.write_text(json.dumps({"ctx": {k: v for k, v in ctx.__dict__.items() if k != "faults"},
                                  "faults": [f.__dict__ for f in ctx.faults], "trial_id": trial_id,
                                  "spec": OmegaConf.to_container(spec)}))
    children = [subprocess.Popen([sys.executable, "-m", "automl.search.trial", str(config)],
                                 env={**os.environ, **dist_env, "LOCAL_RANK": str(r), "RANK": str(r)},
                                 preexec_fn=_die_with_parent)
                for r in range(1, n)]
    os.environ.update(dist_env, LOCAL_RANK="0", RANK="0")
    done = threading.Event()
    threading.Thread(target=_watch_ranks, args=(children, done, trial_id), daemon=True).start()
    # the test hook that kills "the trial's worker" kills the last rank here (a child), see _child_rank
    rank0_ctx = replace(ctx, faults=tuple(f for f in ctx.faults if f.kind != "kill_worker"))
    try:
        ended = _fit_and_report(get_skill(ctx.skill_name), spec, rank0_ctx, trial_id, out, tracking, send,
                                ranks=n)
        if ended != "error":  # every rank stopped at the same step (an OOM may hit this rank alone)
            _leave_process_group()  # with the watchdog still on: a rank that died meanwhile ends this one
    finally:
        done.set()
        lingering = []
        for rank, child in enumerate(children, start=1):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.warning(f"trial {trial_id}: DDP rank {rank} did not exit within 60 s of the trial's end; "
                            "killing it")
                child.kill()
                child.wait()
                lingering.append(child)
        for key in (*dist_env, "LOCAL_RANK", "RANK"):
            os.environ.pop(key, None)
    failed = [c.returncode for c in children if c.returncode not in (0, None) and c not in lingering]
    if failed:
        raise RuntimeError(f"trial {trial_id}: {len(failed)} of its {n - 1} other DDP ranks failed "
                           f"(exit codes {failed}); their output is in the Ray worker logs")


def _watch_ranks(children: list, done: threading.Event, trial_id: str) -> None:
    """Rank 0's watchdog: a child rank that dies (crash, OOM kill) would leave rank 0 waiting in its next collective
    until the process-group timeout; instead rank 0 ends its own process at once, which Ray handles as a dead
    worker: the trial is retried from its last checkpoint (automl.max_failures) or recorded as an error."""
    import signal

    while not done.wait(2.0):
        dead = [(i + 1, c.returncode) for i, c in enumerate(children) if c.poll() not in (None, 0)]
        if dead and not done.is_set():
            log.warning(f"trial {trial_id}: DDP rank(s) {', '.join(f'{r} (exit {code})' for r, code in dead)} died; "
                        f"ending rank 0 so that Ray retries the trial")
            os.kill(os.getpid(), signal.SIGKILL)


def _die_with_parent() -> None:
    """In a child rank, before exec: SIGKILL when the trial process dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def _child_rank(config_path: str) -> int:
    """Ranks 1..N-1 of a DDP trial: the same fit as rank 0, without tracking or reporting."""
    from omegaconf import OmegaConf

    from automl.skills import get_skill
    from automl.skills.shared import NonFiniteLossError, TrackingConfig
    from automl.testing import FaultHook

    cfg = json.loads(Path(config_path).read_text())
    ctx = TrialContext(**{**cfg["ctx"], "faults": tuple(FaultHook(**f) for f in cfg["faults"])})
    spec = OmegaConf.create(cfg["spec"])
    n = int(os.environ["WORLD_SIZE"])
    skill = get_skill(ctx.skill_name)
    callbacks = []
    faults = ctx.faults if int(os.environ["RANK"]) == n - 1 else tuple(f for f in ctx.faults if f.kind != "kill_worker")
    if faults:
        out = Path(ctx.trials_dir) / cfg["trial_id"]
        callbacks = skill.fault_callbacks(faults, _trial_index(cfg["trial_id"], ctx.trials_dir), out)
    try:
        skill.fit(spec, None, tracking=TrackingConfig(enabled=False), progress=False, quiet=True,
                  callbacks=callbacks, ranks=n)
    except NonFiniteLossError:
        pass  # rank 0 stopped at the same step and reports the prune
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Close this rank's process group once a DDP fit has ended on every rank (finished, or stopped together on a
    NaN/inf); Lightning leaves it open. Every rank must: a rank that exits with its NCCL communicator open waits in
    NCCL's teardown for the ranks still alive, holding its GPU past the trial's end (docs/internals.md, Search)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # a child rank of a DDP trial (see _run_distributed)
    sys.exit(_child_rank(sys.argv[1]))
