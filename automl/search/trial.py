"""The Ray Tune trainable: a plain function that runs the skill's `fit` with the sampled values.

Every validated epoch is reported to Tune with the trainer's `last.ckpt` as a Tune checkpoint, so a retried trial
(worker died) or a resumed search (driver died) continues from it. A NaN/inf loss ends the trial with one flagged
report (objective None, `prune_reason`), which the guarded searcher and schedulers turn into a pruned trial. Out of
memory ends it the same way with `fail_reason` (an error, not retried: the same batch would not fit the next time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from automl.search.guards import FAIL_KEY, PRUNE_KEY
from automl.search.tracking import TRIAL_TAG, find_child_run

# Test hooks (never set by the CLI or by a spec): see automl/testing.py; the driver reads them once
# (automl.testing.read_fault_hooks) into TrialContext.faults.
INJECT_ENV = "AUTOML_TESTING_INJECT_NONFINITE"


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
    ddp_workers: int = 0  # > 1: each trial is a DDP run over this many Ray Train workers (one GPU each)
    ddp_use_gpu: bool = True  # False only in tests: the workers are CPU processes talking over gloo


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
    from omegaconf import OmegaConf
    from ray import tune

    from automl.skills import get_skill
    from trainer.tracking import TrackingConfig

    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "Checkpoint successfully created" per epoch
    import ray

    os.environ.update(ctx.tracking_env)  # read by MLflow's HTTP client at each request
    trial_id = tune.get_context().get_trial_id()
    skill = get_skill(ctx.skill_name)
    out = Path(ctx.trials_dir) / trial_id
    values = {**ctx.fixed, **config, "results_dir": str(out), "train.results_dir": None,
              "train.optim.monitor_name": ctx.metric}
    spec = skill.with_overrides(OmegaConf.create(ctx.base_spec), values)

    run_id = find_child_run(ctx.tracking_uri, ctx.experiment_name, ctx.parent_run_id, trial_id) \
        if ctx.tracking_uri and ctx.parent_run_id else None
    tracking = TrackingConfig(uri=ctx.tracking_uri, experiment_name=ctx.experiment_name, run_name=trial_id,
                              parent_run_id=ctx.parent_run_id, run_id=run_id,
                              tags={TRIAL_TAG: trial_id, **{f"param.{k}": str(v) for k, v in config.items()}},
                              enabled=ctx.tracking_uri is not None)
    if ctx.ddp_workers > 1:
        _run_distributed(ctx, trial_id, spec, tracking)
        return

    import torch

    torch.set_num_threads(max(int(ctx.cpus_per_trial), 1))
    restored = tune.get_checkpoint()
    if restored is not None:
        local = Path(restored.to_directory())
        if (local / "last.ckpt").is_file():
            spec.train.resume_training_checkpoint_path = str(local / "last.ckpt")
    node_id = ray.get_runtime_context().get_node_id()

    def send(payload: dict[str, Any], checkpoint_path: Optional[str] = None) -> None:
        payload["node_id"] = node_id  # where the trial ran (summary.json)
        payload["reported_at"] = time.time()  # wall clock, to order epochs of concurrent trials (anytime curves)
        if checkpoint_path:
            with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
                target = Path(tmp) / "last.ckpt"
                try:
                    os.link(checkpoint_path, target)  # no copy when on the same filesystem
                except OSError:
                    shutil.copy2(checkpoint_path, target)
                tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(payload)

    _fit_and_report(skill, spec, ctx, trial_id, out, tracking, send)


def _fit_and_report(skill: Any, spec: Any, ctx: TrialContext, trial_id: str, out: Path, tracking: Any,
                    send: Any, **fit_kwargs: Any) -> None:
    """Run the skill's fit; every validated epoch and the way the run ended become reports through `send`."""
    import torch

    from trainer.errors import NonFiniteLossError

    def report(epoch: int, metrics: dict[str, float], checkpoint_path: Optional[str]) -> None:
        payload: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
        payload["epoch"] = int(epoch)
        send(payload, checkpoint_path)

    callbacks = []
    if ctx.faults:
        from automl.testing import fault_callbacks

        callbacks = fault_callbacks(ctx.faults, _trial_index(trial_id, ctx.trials_dir), out)
    try:
        skill.fit(spec, report, tracking=tracking, progress=False, quiet=True, callbacks=callbacks, **fit_kwargs)
    except torch.OutOfMemoryError as exc:
        # deterministic for a given batch/crop/encoder: recorded as an error at once, no retry to burn budget on
        from trainer.errors import out_of_memory_message

        send({ctx.metric: None, FAIL_KEY: f"out_of_memory: {out_of_memory_message(exc)}", "trial_state": "error"})
    except NonFiniteLossError as exc:
        send({ctx.metric: None, PRUNE_KEY: exc.reason, "trial_state": "pruned", "diverged_step": exc.step,
              "diverged_epoch": exc.epoch, "diverged_what": exc.what})


# --------------------------------------------------------------------------------------------------------------
# a trial over several workers (DDP inside a trial): Ray Train runs the workers, this trial waits for them
# --------------------------------------------------------------------------------------------------------------


def _run_distributed(ctx: TrialContext, trial_id: str, spec: Any, tracking: Any) -> None:
    """Start `ctx.ddp_workers` Ray Train workers (one GPU each, or CPU processes over gloo in tests) that run the
    same fit under Lightning's DDP; their per-epoch reports reach Tune through Ray Train's Tune callback, so the
    scheduler, the searcher and the NaN pruning see this trial as any other. The trial itself holds almost no
    resources: the workers hold the GPUs. A retried or resumed trial continues from its own `last.ckpt`."""
    import ray.train
    from omegaconf import OmegaConf
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    out = Path(ctx.trials_dir) / trial_id
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        spec.train.resume_training_checkpoint_path = str(last)
    per_worker: dict[str, float] = {"CPU": max(ctx.cpus_per_trial / ctx.ddp_workers, 0.01)}
    if ctx.ddp_use_gpu:
        per_worker["GPU"] = 1
    trainer = TorchTrainer(
        _distributed_worker,
        train_loop_config={"ctx": ctx, "trial_id": trial_id, "spec": OmegaConf.to_container(spec),
                           "tracking": tracking},
        scaling_config=ray.train.ScalingConfig(num_workers=ctx.ddp_workers, use_gpu=ctx.ddp_use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=f"ddp-{trial_id}", storage_path=str(out / "ray_train"),
                                       callbacks=[TuneReportCallback()],
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    trainer.fit()


def _distributed_worker(cfg: dict[str, Any]) -> None:
    """One DDP rank of a trial (runs in a Ray Train worker): Lightning with Ray's DDP strategy and cluster
    environment; every rank reports each epoch (Ray Train's report is a barrier), rank 0's metrics reach Tune."""
    import logging

    import ray
    import ray.train
    from omegaconf import OmegaConf
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    from automl.skills import get_skill

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:  # "Reporting training result N: ..." at every epoch of every rank; that logger is named by its file path
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    ctx: TrialContext = cfg["ctx"]
    os.environ.update(ctx.tracking_env)
    rank = ray.train.get_context().get_world_rank()
    tracking = cfg["tracking"] if rank == 0 else replace(cfg["tracking"], enabled=False)
    skill = get_skill(ctx.skill_name)
    spec = OmegaConf.create(cfg["spec"])
    node_id = ray.get_runtime_context().get_node_id()

    def send(payload: dict[str, Any], checkpoint_path: Optional[str] = None) -> None:
        # the checkpoint stays in the trial's folder (shared storage on a cluster); Tune needs none of its own
        payload.update(node_id=node_id, reported_at=time.time(), ddp_world_size=ctx.ddp_workers)
        ray.train.report(payload)

    out = Path(ctx.trials_dir) / cfg["trial_id"]
    _fit_and_report(skill, spec, ctx, cfg["trial_id"], out, tracking, send,
                    strategy=RayDDPStrategy(find_unused_parameters=False), plugins=[RayLightningEnvironment()])
