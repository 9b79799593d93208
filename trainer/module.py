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
        self.relative = self.spec.model.model_type == "RelativeDepthAnything"
        self.loss_fn = ScaleShiftInvariantLoss() if self.relative else SiLogLoss()
        self.val_metrics = MetricAccumulator()
        self._val_losses: list[torch.Tensor] = []
        self._last_paths: list[str] = []
        self.check_grad_norm = self.spec.train.precision != "fp16"  # fp16 loss scaling skips inf steps itself
        self._loss_finite: Optional[torch.Tensor] = None
        self.last_validated_epoch: Optional[int] = None
        self._step_loss = torch.zeros(())

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
        """L2-norm clipping (train.clip_grad_norm; 0 = off) and the non-finite guard, with one host sync per step."""
        clip = float(self.spec.train.clip_grad_norm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip if clip > 0 else math.inf)
        ok = self._loss_finite if self._loss_finite is not None else torch.ones((), dtype=torch.bool)
        self._loss_finite = None
        if self.check_grad_norm:
            ok = ok & torch.isfinite(norm)
        if not bool(ok):  # the only host sync of the step
            loss = float(self._step_loss)
            what, value = ("training loss", loss) if not math.isfinite(loss) else ("gradient norm", float(norm))
            raise NonFiniteLossError(step=self.global_step, epoch=self.current_epoch, what=what, value=value,
                                     samples=self._last_paths)

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
        self.val_metrics.reset()
        self._val_losses = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_losses:
            return
        val_loss = torch.stack(self._val_losses).mean()
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
                                  weight_decay=float(o.weight_decay))
        else:
            opt = torch.optim.AdamW(groups, lr=float(o.lr), betas=tuple(float(b) for b in o.betas),
                                    weight_decay=float(o.weight_decay), fused=fused or None)
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor_fn(o, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def predict_depth(self, image: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        pred = self.model(image).float()
        return resize_to(pred, size) if size else pred
