"""Engineering around the LightningModule: status.json, the per-epoch report (console, MLflow, the search's
reporter), and the `last.ckpt` that a resumed run or a retried trial continues from."""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from trainer.errors import NonFiniteLossError, first_line
from trainer.records import DiskReserve, StatusFile, storage_error, storage_message, write_atomic
from trainer.tracking import MlflowRun

log = logging.getLogger(__name__)

Reporter = Callable[[int, Mapping[str, float], Optional[str]], None]


def _fmt_td(seconds: float) -> str:
    return str(_dt.timedelta(seconds=int(max(seconds, 0))))


class RunRecorder(pl.Callback):
    """Collects each epoch's metrics once and hands them to status.json, MLflow, the console and the reporter.

    A checkpoint `last.ckpt` is written every `checkpoint_interval` epochs (and at the last epoch) before the
    reporter is called, so the reporter can hand it to the search (Ray Tune) for retries and resumes.
    """

    def __init__(self, *, status: StatusFile, mlflow_run: Optional[MlflowRun], checkpoint_dir: Path,
                 checkpoint_interval: int, has_validation: bool, reporter: Optional[Reporter] = None,
                 console: bool = True, params: Optional[Mapping[str, Any]] = None):
        self.status = status
        self.mlflow = mlflow_run
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_interval = max(int(checkpoint_interval), 1)
        self.has_validation = has_validation
        self.reporter = reporter
        self.console = console
        self.params = dict(params or {})
        self.history: list[dict[str, float]] = []
        self.restored_run_id: Optional[str] = None
        self._fit_start = 0.0
        self._epoch_start = 0.0
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_n = 0
        self.last_checkpoint: Optional[str] = None
        self._announce_resume = False
        self.failure: Optional[BaseException] = None

    # ---- checkpoint state: the MLflow run id and the history survive a resume -------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.mlflow is not None:
            self.mlflow.wait_started()
        return {"mlflow_run_id": self.mlflow.run_id if self.mlflow else None, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored_run_id = state.get("mlflow_run_id")
        self.history = list(state.get("history", []))

    # ---- hooks ------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.time()
        if trainer.is_global_zero:
            if self.status.reserve is None:  # room for the last records when the disk fills during the run
                self.status.reserve = DiskReserve(self.status.path.parent)
            if self.mlflow is not None:
                if self.restored_run_id and not self.mlflow.run_id:
                    self.mlflow.run_id = self.restored_run_id
                resuming = bool(self.mlflow.run_id)
                self.mlflow.start_in_background(None if resuming else self.params)
            self._announce_resume = bool(trainer.ckpt_path)  # loop state is restored after this hook

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.status.reserve is not None:
            self.status.reserve.release()
        _drop_optimizer_state(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._announce_resume and trainer.is_global_zero:
            self._announce_resume = False
            self.status.write("RUNNING", f"Training resumed at epoch {trainer.current_epoch}",
                              max_epoch=trainer.max_epochs)
        self._epoch_start = time.time()
        self._loss_sum, self._loss_n = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_n += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        pending_check = getattr(pl_module, "raise_pending_nonfinite", None)
        if pending_check is not None:  # the last step's deferred non-finite flag, before any record or checkpoint
            pending_check()
        epoch = trainer.current_epoch
        ran_validation = self.has_validation and getattr(pl_module, "last_validated_epoch", None) == epoch
        metrics: dict[str, float] = {}
        if self._loss_n:
            metrics["train_loss"] = float(self._loss_sum) / self._loss_n  # one sync per epoch
        if ran_validation:
            for k, v in trainer.callback_metrics.items():
                if k.startswith("val/"):
                    metrics[k] = float(v)
        metrics["epoch"] = epoch
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups] if trainer.optimizers else []
        if lrs:
            metrics["lr"] = float(lrs[0])
        self.history.append(metrics)

        is_last = epoch + 1 >= (trainer.max_epochs or 0)
        ckpt: Optional[str] = None
        if (epoch + 1) % self.checkpoint_interval == 0 or is_last:
            path = self.checkpoint_dir / "last.ckpt"
            trainer.save_checkpoint(str(path))
            ckpt = self.last_checkpoint = str(path)

        if trainer.is_global_zero:
            self._record_epoch(trainer, epoch, metrics)
        # on every rank given a reporter: a distributed reporter may be a barrier that each rank must reach
        if self.reporter is not None and (ran_validation or not self.has_validation):
            self.reporter(epoch, dict(metrics), ckpt if trainer.is_global_zero else None)

    def _record_epoch(self, trainer: pl.Trainer, epoch: int, metrics: dict[str, float]) -> None:
        elapsed = time.time() - self._epoch_start
        done = len(self.history)
        remaining = max((trainer.max_epochs or done) - (epoch + 1), 0)
        eta = (time.time() - self._fit_start) / max(done, 1) * remaining
        kpi = {k: v for k, v in metrics.items() if k not in ("epoch", "lr")}
        self.status.write("RUNNING", f"Epoch {epoch} finished", epoch=epoch, max_epoch=trainer.max_epochs,
                          time_per_epoch=_fmt_td(elapsed), eta=_fmt_td(eta), kpi=kpi)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        if self.console and not _is_tty():
            shown = "  ".join(f"{k}={v:.4g}" for k, v in kpi.items())
            log.info(f"epoch {epoch + 1}/{trainer.max_epochs}  {shown}  ({elapsed:.1f}s, eta {_fmt_td(eta)})")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Record how the run ended (STOPPED, or FAILURE with the reason) and end the MLflow run; never raises, so
        the original exception is the one the caller sees. A full disk first gives back the reserve, so that these
        last records fit."""
        self.failure = exception
        _drop_optimizer_state(trainer)
        if not trainer.is_global_zero:
            return
        try:
            self._record_end(trainer, exception)
        except OSError as exc:
            log.warning(f"warning: could not record the end of the run in {self.status.path}: {exc}")
        finally:
            if self.status.reserve is not None:
                self.status.reserve.release()

    def _record_end(self, trainer: pl.Trainer, exception: BaseException) -> None:
        stopped = isinstance(exception, (KeyboardInterrupt, SystemExit))
        if stopped and trainer.max_epochs and len(self.history) >= trainer.max_epochs:
            # stopped at its last report (a search scheduler ends every trial there): every epoch was trained
            self.status.write("SUCCESS", "Training finished", last_checkpoint=self.last_checkpoint,
                              kpi={k: v for k, v in self.history[-1].items() if k not in ("epoch", "lr")})
            if self.mlflow is not None:
                self.mlflow.end("FINISHED")
            return
        if stopped:
            # asked to stop from outside (Ctrl-C, or a search scheduler ending a losing trial): not a failure
            self.status.write("STOPPED", f"Training stopped from outside ({type(exception).__name__}) after "
                                         f"{len(self.history)} epochs", reason="interrupted",
                              last_checkpoint=self.last_checkpoint)
            if self.mlflow is not None:
                self.mlflow.set_tags({"stopped": "interrupted"})
                self.mlflow.end("KILLED")
            return
        disk = storage_error(exception)
        if disk is not None:
            if self.status.reserve is not None:
                self.status.reserve.release()
            reason = "disk_full" if disk.errno in (errno.ENOSPC, errno.EDQUOT) else "storage_error"
            message = storage_message(disk, self.status.path.parent)
            self.status.write("FAILURE", message, reason=reason, epochs_completed=len(self.history),
                              last_checkpoint=self.last_checkpoint)
            if self.mlflow is not None:
                self.mlflow.set_tags({"failure_reason": reason, "failure_message": message})
                self.mlflow.end("FAILED")
            return
        reason = getattr(exception, "reason", None) or type(exception).__name__
        extra: dict[str, Any] = {"reason": reason}
        if isinstance(exception, NonFiniteLossError):
            extra.update(step=exception.step, epoch=exception.epoch, samples=exception.samples[:32])
        self.status.write("FAILURE", first_line(exception) if str(exception).strip() else reason, **extra)
        if self.mlflow is not None:
            self.mlflow.set_tags({"failure_reason": reason, "failure_message": str(exception)[:4000]})
            self.mlflow.end("FAILED")


def _drop_optimizer_state(trainer: pl.Trainer) -> None:
    """Lightning's teardown moves the optimizer state to the CPU; once a run has ended nothing reads it (it is in
    last.ckpt), and on a GPU whose process a search scheduler is ending, that copy raced with the process exit."""
    trainer.strategy.optimizers = []


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: the checkpoint goes to a temporary file beside its target, is
    fsynced and renamed over it, so `last.ckpt` / `best.ckpt` are always complete (the previous one or the new one),
    also when the process is killed or the disk fills while saving."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        import io

        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, buf.getvalue())


def _is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def finite_or_none(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
