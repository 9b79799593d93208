"""Training losses: SiLog for metric models, scale-and-shift-invariant (MiDaS) for relative models.

Both take `(pred [B, H, W], target [B, H, W], valid [B, H, W] bool)` with `pred` already resized to the target's size,
compute in float32 even under autocast, and never return NaN for degenerate input: `pred == 0` is clamped before any
log, and an empty mask gives a loss of exactly 0 that is still attached to `pred`'s graph (so `backward()` works and
yields zero gradients). Neither synchronises with the device (no data-dependent Python branches).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SiLogLoss", "ScaleShiftInvariantLoss", "align_scale_shift"]


def _prepare(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape or valid.shape != target.shape:
        raise ValueError(f"pred, target and valid must have one shape [B, H, W]; found {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}, {tuple(valid.shape)} (resize pred to the target size first)")
    pred = pred.float()
    target = target.float()
    mask = valid.bool() & torch.isfinite(target)
    return pred, target, mask


class SiLogLoss(nn.Module):
    """Scale-invariant log loss of the original metric recipe.

    `d = log(target) - log(pred)` over the valid pixels of the whole batch (with target > 0);
    `loss = sqrt(mean(d^2) - lambd * mean(d)^2)`. `pred` is clamped to `>= eps` before the log and the variance
    term to `>= eps` before the square root; no valid pixel -> 0.
    """

    def __init__(self, lambd: float = 0.5, eps: float = 1e-6):
        super().__init__()
        self.lambd = lambd
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred, target, mask = _prepare(pred, target, valid)
            mask = mask & (target > 0)
            n = mask.sum()
            safe_target = torch.where(mask, target, torch.ones_like(target))
            d = torch.where(mask, torch.log(safe_target) - torch.log(pred.clamp_min(self.eps)), torch.zeros_like(pred))
            count = n.clamp_min(1).float()
            mean_d = d.sum() / count
            mean_d2 = (d * d).sum() / count
            variance = (mean_d2 - self.lambd * mean_d * mean_d).clamp_min(self.eps)
            loss = torch.sqrt(variance)
            return torch.where(n > 0, loss, torch.zeros_like(loss))


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image least-squares scale and shift: argmin_{s,t} sum(mask * (s * pred + t - target)^2).

    Inputs [B, H, W] (mask bool or 0/1); returns (scale [B], shift [B]). Images whose system is singular (fewer
    than two distinct valid predictions) get scale 0 and shift 0. Arithmetic in the inputs' dtype.
    """
    m = mask.to(pred.dtype)
    p = torch.where(mask.bool(), pred, torch.zeros_like(pred))
    t = torch.where(mask.bool(), target, torch.zeros_like(target))
    dims = tuple(range(1, pred.dim()))
    a00 = (m * p * p).sum(dims)
    a01 = (m * p).sum(dims)
    a11 = m.sum(dims)
    b0 = (m * p * t).sum(dims)
    b1 = (m * t).sum(dims)
    det = a00 * a11 - a01 * a01
    # det >= 0 by Cauchy-Schwarz; relative test so that it works for any units
    ok = det > 1e-12 * (a00 * a11).clamp_min(torch.finfo(pred.dtype).tiny)
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe, torch.zeros_like(det))
    return scale, shift


class ScaleShiftInvariantLoss(nn.Module):
    """MiDaS scale-and-shift-invariant loss for relative (disparity) models.

    Each image's prediction is aligned to its target disparity by least squares (`align_scale_shift`, the
    alignment is differentiable w.r.t. pred). With `r = mask * (aligned - target)` and M = number of valid pixels
    in the batch:

    - data term: `sum(r^2) / (2 M)` (MiDaS' batch-based MSE);
    - gradient matching over `scales` levels (level k keeps every 2^k-th pixel in each direction):
      `sum(|r[:, :, 1:] - r[:, :, :-1]| on pixel pairs both valid, and the same along H) / M_k`;
    - `loss = data + alpha * sum_k gradient_k`.

    No valid pixel -> 0.
    """

    def __init__(self, alpha: float = 0.5, scales: int = 4):
        super().__init__()
        self.alpha = alpha
        self.scales = scales

    @staticmethod
    def _gradient_term(residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        mx = m[:, :, 1:] * m[:, :, :-1]
        my = m[:, 1:, :] * m[:, :-1, :]
        gx = (residual[:, :, 1:] - residual[:, :, :-1]).abs() * mx
        gy = (residual[:, 1:, :] - residual[:, :-1, :]).abs() * my
        return (gx.sum() + gy.sum()) / m.sum().clamp_min(1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred, target, mask = _prepare(pred, target, valid)
            scale, shift = align_scale_shift(pred, target, mask)
            aligned = scale[:, None, None] * pred + shift[:, None, None]
            safe_target = torch.where(mask, target, torch.zeros_like(target))
            residual = torch.where(mask, aligned - safe_target, torch.zeros_like(aligned))
            n = mask.sum()
            loss = (residual * residual).sum() / (2 * n.clamp_min(1).float())
            if self.alpha > 0:
                for k in range(self.scales):
                    step = 2 ** k
                    loss = loss + self.alpha * self._gradient_term(residual[:, ::step, ::step], mask[:, ::step, ::step])
            return torch.where(n > 0, loss, torch.zeros_like(loss))
