"""The LightningModule: Depth Anything V2 finetuning (research code; engineering lives in fit.py/callbacks.py)."""

from __future__ import annotations

import math
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from trainer.errors import NonFiniteLossError
from trainer.losses import ScaleShiftInvariantLoss, SiLogLoss
from trainer.metrics import MetricAccumulator
from trainer.model import build_model
from trainer.runtime import resize_prediction as resize_to
from trainer.schedules import lr_factor_fn
from trainer.constants import RELATIVE


def _skips_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Whether `optimizer.step()` honours a device-side `found_inf` flag (fused AdamW/SGD, as used on GPUs)."""
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


def as_depth(target: torch.Tensor, valid: torch.Tensor, relative: bool) -> torch.Tensor:
    """Ground truth in depth units for metrics: relative datasets carry disparity targets."""
    if not relative:
        return target
    return torch.where(valid, 1.0 / target.clamp_min(1e-12), torch.zeros_like(target))


class DepthModule(pl.LightningModule):
    """Holds the network as `self.model` (so checkpoint keys are `model.<released key>`) and the spec as hparams."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"spec": spec})
        self.spec: DictConfig = OmegaConf.create(spec)
        self.model = build_model(self.spec)
        self.relative = self.spec.model.model_type == RELATIVE
        self.loss_fn = ScaleShiftInvariantLoss() if self.relative else SiLogLoss()
        self.val_metrics = MetricAccumulator()
        self._val_losses: list[torch.Tensor] = []
        self._last_paths: list[str] = []
        self.check_grad_norm = self.spec.train.precision != "fp16"  # fp16 loss scaling skips inf steps itself
        self._loss_finite: Optional[torch.Tensor] = None
        self.last_validated_epoch: Optional[int] = None
        self._step_loss = torch.zeros(())
        self._pending_nonfinite: Optional[tuple] = None
        self.defer_nonfinite_check = True  # see configure_gradient_clipping; False: read the flag in every step

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    # ---- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._last_paths = list(batch.get("path", []))
        pred = self.model(batch["image"])
        pred = resize_to(pred, tuple(batch["depth"].shape[-2:]))
        loss = self.loss_fn(pred.float(), batch["depth"], batch["valid"])
        finite = torch.isfinite(loss.detach())
        # with gradient accumulation, every micro-batch of the step must be finite
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        self._step_loss = loss.detach()
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0])
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """L2-norm clipping (train.clip_grad_norm; 0 = off) and the non-finite guard.

        With a fused optimizer (AdamW/SGD on a GPU) the guard never waits for the GPU inside the step: the optimizer
        skips a non-finite step on the device (its `found_inf` input, as under AMP loss scaling), the flag is copied
        to the host asynchronously and read one step later, before validation and at the end of training, and the
        error names the step that failed; the weights are never updated from a non-finite gradient. Otherwise (CPU,
        fp16) the flag is read at once: one host sync per step.
        """
        opt = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer wraps a copy of the __dict__
        self.raise_pending_nonfinite()
        clip = float(self.spec.train.clip_grad_norm)
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            norm = torch.zeros(())
        elif clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip)
        else:  # no clipping: the norm alone (for the guard), no pass that scales every gradient by 1
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        ok = self._loss_finite if self._loss_finite is not None else torch.ones((), dtype=torch.bool,
                                                                                device=norm.device)
        self._loss_finite = None
        if self.check_grad_norm:
            ok = ok & torch.isfinite(norm)
        if self.check_grad_norm and self.defer_nonfinite_check and _skips_on_device(opt, norm.device):
            opt.found_inf = (~ok).float()
            done = None
            flag = ok
            if ok.is_cuda:
                flag = torch.empty((), dtype=torch.bool, pin_memory=True)
                flag.copy_(ok, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            self._pending_nonfinite = (flag, done, self.global_step, self.current_epoch, self._step_loss, norm,
                                       list(self._last_paths))
            return
        if not bool(ok):  # the only host sync of the step
            self._raise_nonfinite(self.global_step, self.current_epoch, self._step_loss, norm, self._last_paths)

    def raise_pending_nonfinite(self) -> None:
        """Raise NonFiniteLossError for a deferred step whose loss or gradient norm was NaN/inf (waits only for that
        step's flag, which the GPU has long written when the next step asks)."""
        pending, self._pending_nonfinite = self._pending_nonfinite, None
        if pending is None:
            return
        flag, done, step, epoch, loss, norm, paths = pending
        if done is not None:
            done.synchronize()
        if not bool(flag):
            self._raise_nonfinite(step, epoch, loss, norm, paths)

    @staticmethod
    def _raise_nonfinite(step: int, epoch: int, loss_t: torch.Tensor, norm: torch.Tensor, paths: list[str]) -> None:
        loss = float(loss_t)
        what, value = ("training loss", loss) if not math.isfinite(loss) else ("gradient norm", float(norm))
        raise NonFiniteLossError(step=step, epoch=epoch, what=what, value=value, samples=paths)

    def on_train_epoch_end(self) -> None:
        self.raise_pending_nonfinite()

    def on_train_end(self) -> None:
        self.raise_pending_nonfinite()

    # ---- validation -----------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self.model(batch["image"]).float()
        depths, valids = batch["depth"], batch["valid"]
        if isinstance(depths, torch.Tensor):
            depths, valids = list(depths), list(valids)
        for i, (gt, valid) in enumerate(zip(depths, valids)):
            p = resize_to(pred[i:i + 1], tuple(gt.shape[-2:]))
            if int(valid.sum()) < 10:
                continue
            self._val_losses.append(self.loss_fn(p, gt[None], valid[None]).detach())
            self.val_metrics.update(p[0], as_depth(gt, valid, self.relative), valid, relative=self.relative)

    def on_validation_epoch_start(self) -> None:
        self.raise_pending_nonfinite()  # never validate, report or checkpoint after a non-finite step
        self.val_metrics.reset()
        self._val_losses = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_losses:
            return
        # under data parallelism every rank must agree on "non-finite" (one rank raising alone would leave the
        # others waiting in the next collective), so the check reads the mean over ranks
        val_loss = self.trainer.strategy.reduce(torch.stack(self._val_losses).mean(), reduce_op="mean")
        if not self.trainer.sanity_checking:
            self.last_validated_epoch = self.current_epoch
        if not torch.isfinite(val_loss) and not self.trainer.sanity_checking:
            raise NonFiniteLossError(step=self.global_step, epoch=self.current_epoch, what="validation loss",
                                     value=float(val_loss), samples=[])
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=True)
        for name, value in self.val_metrics.compute().items():
            if name == "count":
                continue
            self.log(f"val/{name}", float(value), sync_dist=True)

    # ---- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        o = self.spec.train.optim
        backbone, head = self.model.param_groups()
        groups = [
            {"params": [p for p in backbone if p.requires_grad], "lr": float(o.lr), "name": "backbone"},
            {"params": [p for p in head if p.requires_grad], "lr": float(o.lr) * float(o.head_lr_multiplier),
             "name": "head"},
        ]
        fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
        if o.optimizer == "SGD":
            opt = torch.optim.SGD(groups, lr=float(o.lr), momentum=float(o.momentum),
                                  weight_decay=float(o.weight_decay), fused=fused or None)
        else:
            opt = torch.optim.AdamW(groups, lr=float(o.lr), betas=tuple(float(b) for b in o.betas),
                                    weight_decay=float(o.weight_decay), fused=fused or None)
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor_fn(o, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def predict_depth(self, image: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        pred = self.model(image).float()
        return resize_to(pred, size) if size else pred
