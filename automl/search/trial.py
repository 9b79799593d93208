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
from dataclasses import dataclass, field
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
    import torch
    from omegaconf import OmegaConf
    from ray import tune

    from automl.skills import get_skill
    from trainer.errors import NonFiniteLossError
    from trainer.tracking import TrackingConfig

    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "Checkpoint successfully created" per epoch
    import ray

    os.environ.update(ctx.tracking_env)  # read by MLflow's HTTP client at each request
    trial_id = tune.get_context().get_trial_id()
    node_id = ray.get_runtime_context().get_node_id()
    torch.set_num_threads(max(int(ctx.cpus_per_trial), 1))
    skill = get_skill(ctx.skill_name)
    out = Path(ctx.trials_dir) / trial_id
    values = {**ctx.fixed, **config, "results_dir": str(out), "train.results_dir": None,
              "train.optim.monitor_name": ctx.metric}
    spec = skill.with_overrides(OmegaConf.create(ctx.base_spec), values)

    restored = tune.get_checkpoint()
    if restored is not None:
        local = Path(restored.to_directory())
        if (local / "last.ckpt").is_file():
            spec.train.resume_training_checkpoint_path = str(local / "last.ckpt")

    run_id = find_child_run(ctx.tracking_uri, ctx.experiment_name, ctx.parent_run_id, trial_id) \
        if ctx.tracking_uri and ctx.parent_run_id else None
    tracking = TrackingConfig(uri=ctx.tracking_uri, experiment_name=ctx.experiment_name, run_name=trial_id,
                              parent_run_id=ctx.parent_run_id, run_id=run_id,
                              tags={TRIAL_TAG: trial_id, **{f"param.{k}": str(v) for k, v in config.items()}},
                              enabled=ctx.tracking_uri is not None)

    def report(epoch: int, metrics: dict[str, float], checkpoint_path: Optional[str]) -> None:
        payload: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
        payload["epoch"] = int(epoch)
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

    callbacks = []
    if ctx.faults:
        from automl.testing import fault_callbacks

        callbacks = fault_callbacks(ctx.faults, _trial_index(trial_id, ctx.trials_dir), out)
    try:
        skill.fit(spec, report, tracking=tracking, progress=False, quiet=True, callbacks=callbacks)
    except torch.OutOfMemoryError as exc:
        # deterministic for a given batch/crop/encoder: recorded as an error at once, no retry to burn budget on
        from trainer.errors import out_of_memory_message

        tune.report({ctx.metric: None, FAIL_KEY: f"out_of_memory: {out_of_memory_message(exc)}",
                     "trial_state": "error", "reported_at": time.time()})
    except NonFiniteLossError as exc:
        tune.report({ctx.metric: None, PRUNE_KEY: exc.reason, "trial_state": "pruned", "reported_at": time.time(),
                     "diverged_step": exc.step, "diverged_epoch": exc.epoch, "diverged_what": exc.what})
