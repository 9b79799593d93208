"""`fit(spec)`: one finetune of Depth Anything V2. A plain run (`automl off`) and every search trial run this."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from trainer.callbacks import AtomicCheckpointIO, Reporter, RunRecorder, _is_tty
from trainer.config import save_spec, to_plain
from trainer.errors import CheckpointError, UserError, first_line
from trainer.disk import results_dir_of, run_bytes
from trainer.records import StatusFile, check_free_space, check_writable, write_json_atomic
from trainer.tracking import TRACKING_FAILURES_FILE, MlflowRun, TrackingConfig, curated_params

log = logging.getLogger(__name__)

# Lightning chatter that says nothing actionable to our users
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*The number of training batches.*is smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
# Lightning's advertisements ("💡 Tip: ... try installing litlogger/litmodels") on every Trainer
for _name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(lambda record: not str(record.msg).startswith("💡 Tip"))


@dataclass
class FitResult:
    results_dir: str
    monitor: str
    mode: str
    best_value: Optional[float]
    best_epoch: Optional[int]
    best_checkpoint: Optional[str]
    last_checkpoint: Optional[str]
    epochs_completed: int
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    tracking_failures: list[str] = field(default_factory=list)
    skipped_samples: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    status: str = "success"
    initial_metrics: dict[str, float] = field(default_factory=dict)  # validation before training, when asked
    started_at: float = 0.0  # time.time() when fit() began
    first_step_s: Optional[float] = None  # seconds from fit() to the start of the first training step (setup cost)
    # where it trained: "cpu" or "cuda:N" of rank 0, the GPU's name, processes (DDP ranks), Lightning's precision,
    # and CUDA_VISIBLE_DEVICES as this process saw it (which physical GPU a search trial got)
    device: str = "cpu"
    device_name: str = ""
    world_size: int = 1
    precision: str = ""
    visible_devices: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _FirstStep(pl.Callback):
    """Records when the first training step starts (setup cost: data, model, compilation; fit.json first_step_s),
    as `at` and, when given, in `timings["first_step_at"]` (wall clock) for a caller that reports it as it goes."""

    def __init__(self, timings: Optional[dict[str, Any]] = None) -> None:
        self.at: Optional[float] = None
        self.timings = timings

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.at is None:
            self.at = time.time()
            if self.timings is not None:
                self.timings["first_step_at"] = self.at


def _started_ranks(ranks: int) -> tuple[str, int, Any, list[Any]]:
    """Accelerator, devices, strategy and plugins for DDP over `ranks` processes started outside Lightning, one
    device each, found through torch.distributed's environment variables."""
    from pytorch_lightning.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    return "auto", ranks, DDPStrategy(find_unused_parameters=False), [LightningEnvironment()]


def _accelerator(spec: DictConfig) -> tuple[str, Any, str]:
    t = spec.train
    if torch.cuda.is_available():
        n = int(t.num_gpus)
        ids = list(t.gpu_ids)
        devices: Any = ids[:n] if len(ids) >= n else n
        if n * int(t.num_nodes) > 1:
            if t.distributed_strategy == "fsdp":
                strategy: Any = "fsdp"
            else:
                from pytorch_lightning.strategies import DDPStrategy

                # parameters that exist in released weights but are never called (refinenet4.resConfUnit1,
                # mask_token) are frozen by the model, so DDP needs no unused-parameter search
                strategy = DDPStrategy(find_unused_parameters=False)
        else:
            strategy = "auto"
        return "gpu", devices, strategy
    if int(t.num_gpus) > 1:
        log.warning(f"notice: train.num_gpus={t.num_gpus} but no GPU is visible; training on the CPU")
    return "cpu", 1, "auto"


def quiet_library_logs() -> None:
    """Lightning's device banners and tips, MLflow's schema migrations: nothing a user acts on."""
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "mlflow",
                 "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def resolve_precision(precision: str, on_gpu: Optional[bool] = None) -> str:
    """`train.precision` for this machine: `auto` is bf16 mixed precision on a GPU that supports bf16, else fp32."""
    if precision != "auto":
        return precision
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"


@dataclass(frozen=True)
class FastPath:
    """The speed settings one training run uses, resolved for its machine (docs/benchmarks.md measures them)."""

    precision: str  # fp32 | bf16 | fp16
    compile: bool  # regional torch.compile of the backbone blocks and the head (training steps only)
    channels_last: bool  # DPT head convolutions in channels_last
    matmul_upsample: bool = False  # DPT head's bilinear upsampling as matrix products in training (GPU)


def fast_path(spec: DictConfig, on_gpu: Optional[bool] = None) -> FastPath:
    """Resolve `train.precision` (auto), `train.compile` and `train.channels_last` (None = on for GPU training)."""
    t = spec.train
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    auto = lambda v: on_gpu if v is None else bool(v)  # noqa: E731
    return FastPath(resolve_precision(str(t.precision), on_gpu), auto(t.compile), auto(t.channels_last),
                    matmul_upsample=on_gpu)


def apply_fast_path(model: torch.nn.Module, fast: FastPath) -> None:
    """Put a freshly built (and weight-loaded) DepthAnythingV2 on the fast path before training starts."""
    if fast.channels_last:
        model.set_channels_last(True)
    model.depth_head.matmul_upsample = fast.matmul_upsample
    if fast.compile:
        model.compile_regions()


def monitor_of(spec: DictConfig, has_val: bool) -> tuple[str, str]:
    """(metric, mode) that selects best.ckpt: `train.optim.monitor_name` (TAO's val_loss/train_loss or any val/...)."""
    name = spec.train.optim.monitor_name
    name = {"val_loss": "val/loss"}.get(name, name)
    if not has_val:
        name = "train_loss"
    return name, ("max" if name in ("val/d1", "val/d2", "val/d3") else "min")


def fit(spec: DictConfig, reporter: Optional[Reporter] = None, *, tracking: Optional[TrackingConfig] = None,
        progress: Optional[bool] = None, quiet: bool = False,
        callbacks: Sequence[pl.Callback] = (), ranks: int = 0,
        timings: Optional[dict[str, Any]] = None) -> FitResult:
    """Finetune per `spec`; write checkpoints, status.json, spec.yaml, fit.json and an MLflow run to the results.

    `reporter(epoch, metrics, checkpoint_path)` is called after each validated epoch (the search reports to Ray
    Tune through it; under data parallelism it is called on every rank, rank 0's metrics being the synced ones).
    `quiet` drops the per-epoch console lines; `callbacks` are extra Lightning callbacks. `ranks` > 1: this process
    is one of `ranks` processes someone else started with torch.distributed's variables set (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; a search trial over several GPUs starts its ranks itself), and the run is DDP over
    them, one device each, instead of the spec's device choice. `timings` (optional) gets `first_step_at`, the wall
    clock of the first training step, as soon as it starts.
    Raises `NonFiniteLossError` when the loss or gradient norm becomes NaN/inf (recorded in status.json and MLflow
    first); never returns a result for a diverged run.
    """
    started = time.time()
    quiet_library_logs()
    out = _results_folder(spec)
    status = StatusFile(out / "status.json")
    try:
        fast, resume = _check_run(spec)
        train_loader, val_loader = _loaders(spec)
        module = _initial_module(spec, resume)
    except UserError as exc:  # recorded where the run's folder says what happened, then raised to the caller
        if int(os.environ.get("RANK", "0")) == 0:
            status.write("FAILURE", first_line(exc), reason=type(exc).__name__)
        raise
    has_val = val_loader is not None
    apply_fast_path(module.model, fast)
    monitor, mode = monitor_of(spec, has_val)
    tracking = tracking or TrackingConfig()
    mlrun = MlflowRun(tracking, out, failure_log=out / TRACKING_FAILURES_FILE) if tracking.enabled else None
    if mlrun is not None:
        mlrun.spec_file = out / "spec.yaml"  # the whole resolved spec as an artifact; params: curated_params
        mlrun.cfg.tags.setdefault("results_dir", str(out.resolve()))
    recorder = RunRecorder(status=status, mlflow_run=mlrun, checkpoint_dir=out / "checkpoints",
                           checkpoint_interval=int(spec.train.checkpoint_interval), has_validation=has_val,
                           reporter=reporter, console=not quiet, params=_params_for_tracking(spec))
    best_cb = pl.callbacks.ModelCheckpoint(
        dirpath=str(out / "checkpoints"), filename="best", monitor=monitor, mode=mode, save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False, save_on_train_epoch_end=not has_val)
    first_step = _FirstStep(timings)
    show_bar = _is_tty() if progress is None else progress
    trainer = _lightning_trainer(spec, fast, [recorder, best_cb, first_step, *callbacks], ranks, show_bar, out)

    if trainer.is_global_zero:
        status.write("STARTED", "Starting training" + (f" from {resume}" if resume else ""),
                     max_epoch=int(spec.train.num_epochs))
    initial = _validate_first(spec, trainer, module, val_loader, status, quiet) if not resume else {}
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume or None,
                weights_only=True)
    if recorder.failure is not None:  # Lightning swallowed an interrupt: never report it as a success
        raise recorder.failure
    if mlrun is not None:
        mlrun.wait_started()  # started off the critical path (RunRecorder.on_fit_start)
    result = FitResult(
        results_dir=str(out), monitor=monitor, mode=mode, best_value=_finite(best_cb.best_model_score),
        best_epoch=_best_epoch(recorder.history, monitor, mode), best_checkpoint=best_cb.best_model_path or None,
        last_checkpoint=recorder.last_checkpoint, epochs_completed=len(recorder.history), history=recorder.history,
        mlflow_run_id=mlrun.run_id if mlrun else None, tracking_uri=mlrun.uri if mlrun else None,
        skipped_samples=_skipped(train_loader, val_loader), wall_time_s=round(time.time() - started, 2),
        initial_metrics=initial, started_at=started,
        first_step_s=round(first_step.at - started, 3) if first_step.at is not None else None, **_hardware(trainer))
    if trainer.is_global_zero:
        _record_success(result, recorder, status, mlrun, out)
    return result


def _results_folder(spec: DictConfig) -> Path:
    """The run's results folder, checked writable with room for its checkpoints, holding the resolved spec.yaml."""
    out = results_dir_of(spec)
    check_writable(out)
    check_free_space(out, *run_bytes(spec))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_spec(spec, out / "spec.yaml")
    return out


def _lightning_trainer(spec: DictConfig, fast: FastPath, callbacks: list[pl.Callback], ranks: int, show_bar: bool,
                       out: Path) -> pl.Trainer:
    """Lightning's Trainer for the spec's loop settings on the spec's devices (or over `ranks` started processes)."""
    t = spec.train
    if show_bar:
        callbacks = [*callbacks, pl.callbacks.TQDMProgressBar(refresh_rate=1)]
    accelerator, devices, strategy, plugins = _started_ranks(ranks) if ranks > 1 else (*_accelerator(spec), [])
    limit = int(t.max_steps_per_epoch) * int(t.accumulate_grad_batches) if t.max_steps_per_epoch else None
    return pl.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=int(t.num_nodes),
        precision=_PRECISION[fast.precision], max_epochs=int(t.num_epochs),
        check_val_every_n_epoch=int(t.validation_interval), accumulate_grad_batches=int(t.accumulate_grad_batches),
        limit_train_batches=limit, log_every_n_steps=int(t.log_every_n_steps), callbacks=callbacks, logger=False,
        enable_progress_bar=show_bar, enable_model_summary=show_bar, default_root_dir=str(out),
        num_sanity_val_steps=0, enable_checkpointing=True, plugins=[*plugins, AtomicCheckpointIO()],
    )


def _validate_first(spec: DictConfig, trainer: pl.Trainer, module: Any, val_loader: Any, status: StatusFile,
                    quiet: bool) -> dict[str, float]:
    """`train.initial_validation`: the metrics before any step (status.json RUNNING at epoch -1), else {}."""
    if not spec.train.initial_validation or val_loader is None:
        return {}
    initial = {k: float(v) for k, v in trainer.validate(module, val_loader, verbose=False)[0].items()}
    if trainer.is_global_zero:
        status.write("RUNNING", "Validation before training", epoch=-1, kpi=initial)
        if not quiet:
            log.info("before training  " + "  ".join(f"{k}={v:.4g}" for k, v in initial.items()))
    module.last_validated_epoch = None
    return initial


def _record_success(result: FitResult, recorder: RunRecorder, status: StatusFile, mlrun: Optional[MlflowRun],
                    out: Path) -> None:
    """Rank 0, after the last epoch: SUCCESS in status.json, the MLflow run's best-checkpoint tags and end, fit.json."""
    final = recorder.history[-1] if recorder.history else {}
    kpi = {k: v for k, v in final.items() if k not in ("epoch", "lr")}
    status.write("SUCCESS", "Training finished", kpi=kpi, best_checkpoint=result.best_checkpoint,
                 last_checkpoint=result.last_checkpoint, best={result.monitor: result.best_value,
                                                               "epoch": result.best_epoch})
    if mlrun is not None:
        mlrun.set_tags({"best_checkpoint": result.best_checkpoint or "", "best_epoch": str(result.best_epoch),
                        f"best_{result.monitor}": str(result.best_value)})
        mlrun.end("FINISHED")
        result.tracking_failures = list(mlrun.failures)
    write_json_atomic(out / "fit.json", result.to_json())


def _check_run(spec: DictConfig) -> tuple[FastPath, Optional[str]]:
    """The run's speed settings and the checkpoint it resumes from (None: a fresh start), checked for this machine;
    also sets the process-wide settings a run needs (threads, seeds, cuDNN)."""
    t = spec.train
    fast = fast_path(spec)
    if fast.precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    resume = t.resume_training_checkpoint_path or None
    if resume and Path(resume).is_dir():
        inside = [p for p in (Path(resume) / "last.ckpt", Path(resume) / "checkpoints" / "last.ckpt") if p.is_file()]
        raise CheckpointError(f"train.resume_training_checkpoint_path: {resume} is a folder; expected a checkpoint "
                              f"file" + (f", e.g. {inside[0]}" if inside else " (RESULTS_DIR/checkpoints/last.ckpt)"))
    if resume and not Path(resume).is_file():
        raise CheckpointError(f"train.resume_training_checkpoint_path: file not found: {resume}")
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    pl.seed_everything(int(t.seed), workers=True, verbose=False)
    torch.backends.cudnn.benchmark = bool(t.cudnn.benchmark)
    torch.backends.cudnn.deterministic = bool(t.cudnn.deterministic)
    return fast, resume


def _loaders(spec: DictConfig) -> tuple[Any, Optional[Any]]:
    """The training loader and the validation loader (None when the spec has no validation data)."""
    from trainer.data import build_dataloader

    train_loader = build_dataloader(spec, "train_dataset", train=True)
    has_val = len(spec.dataset.val_dataset.data_sources) > 0
    return train_loader, build_dataloader(spec, "val_dataset", train=False) if has_val else None


def _initial_module(spec: DictConfig, resume: Optional[str]) -> Any:
    """The LightningModule with its initial weights: the full model or the backbone the spec names, or (resuming)
    the checkpoint's, read here first so that a truncated file, one that would run code or one of another model
    is a CheckpointError naming the file and the mismatch before Lightning restores it."""
    from trainer.model import load_weights
    from trainer.module import DepthModule

    t = spec.train
    module = DepthModule(to_plain(spec))
    if resume:
        try:
            load_weights(module.model, resume, strict=True)
        except CheckpointError as exc:
            raise CheckpointError(f"train.resume_training_checkpoint_path: {exc}") from None
    elif t.pretrained_model_path:
        load_weights(module.model, t.pretrained_model_path, strict=True)
        if spec.model.mono_backbone.pretrained_path:
            log.warning("notice: train.pretrained_model_path initialises the whole model; "
                        "model.mono_backbone.pretrained_path is not used")
    elif spec.model.mono_backbone.pretrained_path:
        load_weights(module.model, spec.model.mono_backbone.pretrained_path, strict=True, backbone_only=True)
    return module


def _hardware(trainer: pl.Trainer) -> dict[str, Any]:
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {"device": str(device), "device_name": name, "world_size": int(trainer.world_size),
            "precision": str(trainer.precision), "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _params_for_tracking(spec: DictConfig) -> dict[str, Any]:
    return curated_params(spec)


def _finite(x: Any) -> Optional[float]:
    if x is None:
        return None
    v = float(x)
    return v if v == v and abs(v) != float("inf") else None


def _best_epoch(history: list[Mapping[str, float]], monitor: str, mode: str) -> Optional[int]:
    scored = [(h[monitor], int(h["epoch"])) for h in history if monitor in h and _finite(h[monitor]) is not None]
    if not scored:
        return None
    return (min(scored) if mode == "min" else max(scored))[1]


def _skipped(*loaders: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for loader in loaders:
        ds = getattr(loader, "dataset", None)
        for k, v in (getattr(ds, "skipped", None) or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total
