"""Standard monocular depth metrics, per image over the valid mask, averaged over images.

Formulas (Depth Anything V2's metric_depth evaluation), with `pred` and `gt` in metres over valid pixels:
`thresh = max(gt / pred, pred / gt)`; d1, d2, d3 = fraction of `thresh < 1.25, 1.25^2, 1.25^3`;
`abs_rel = mean(|pred - gt| / gt)`; `sq_rel = mean((pred - gt)^2 / gt)`; `rmse = sqrt(mean((pred - gt)^2))`;
`rmse_log = sqrt(mean((log pred - log gt)^2))`; `log10 = mean(|log10 pred - log10 gt|)`;
`silog = sqrt(mean(d^2) - 0.5 * mean(d)^2)` with `d = log pred - log gt` (no 100x factor, as in the reference).

Predictions are resized to the ground-truth size first (`resize_to`: bilinear, align_corners=True, as the
original evaluation; `trainer.runtime.resize_prediction` is the same operation), and clamped to `>= MIN_DEPTH`
so the log metrics stay finite. Images with fewer than `min_valid_pixels` (10) valid pixels are skipped.
Arithmetic in float64.

Relative models (MiDaS / Depth Anything / Marigold protocol, `align_relative`): over the valid pixels `V`,
`(s, t) = argmin sum_V (s * pred + t - 1 / gt)^2` (least squares in disparity space; `gt` is depth), the aligned
disparity `a = s * pred + t` is capped at `a >= 1 / max_depth` (so no aligned depth exceeds the dataset's depth
cap: 10 m for NYU; without a known cap, the image's largest valid ground-truth depth), and `pred_depth = 1 / a`
is scored with the formulas above, in the ground truth's units.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from trainer.losses import align_scale_shift

__all__ = ["METRIC_NAMES", "MetricAccumulator", "align_relative", "depth_metrics", "resize_to"]

METRIC_NAMES = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
MIN_VALID_PIXELS = 10
MIN_DEPTH = 1e-6  # metres; predictions are clamped to this before scoring
MIN_DISPARITY = 1e-6  # lowest disparity cap whatever the depth range (keeps 1 / disparity finite)


def resize_to(pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=True, as the original evaluation) resize of [H, W] or [B, H, W] to `size`."""
    size = (int(size[0]), int(size[1]))
    if tuple(pred.shape[-2:]) == size:
        return pred
    squeeze = pred.dim() == 2
    x = pred[None, None] if squeeze else pred[:, None]
    x = F.interpolate(x.float() if not x.is_floating_point() else x, size=size, mode="bilinear", align_corners=True)
    return x[0, 0] if squeeze else x[:, 0]


def align_relative(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    *,
    gt_is_disparity: bool = False,
    max_depth: Optional[float] = None,
) -> torch.Tensor:
    """Depth from a relative (disparity-like) prediction: least-squares `s * pred + t ~ 1 / gt` over the valid
    pixels (or `~ gt` when gt already is disparity), the aligned disparity capped at `>= 1 / max_depth` (MiDaS'
    disparity cap; `max_depth` None: the largest valid ground-truth depth of this image), then inverted.
    Shapes [H, W]; returns depth [H, W] in the ground truth's units."""
    safe = torch.where(valid, gt, torch.ones_like(gt))
    target = safe if gt_is_disparity else 1.0 / safe
    scale, shift = align_scale_shift(pred[None], target[None], valid[None])
    disparity = scale[0] * pred + shift[0]
    if max_depth:
        floor = 1.0 / float(max_depth)
    else:  # the image's own depth range: its nearest-to-zero valid disparity
        floor = float(target[valid].min()) if bool(valid.any()) else MIN_DISPARITY
    return 1.0 / disparity.clamp_min(max(floor, MIN_DISPARITY))


def depth_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    relative: bool = False,
    *,
    gt_is_disparity: bool = False,
    max_depth: Optional[float] = None,
    min_valid_pixels: int = MIN_VALID_PIXELS,
) -> Optional[dict[str, float]]:
    """Metrics of one image, or None when it has fewer than `min_valid_pixels` valid pixels.

    Args:
        pred: [h, w] prediction (metres for metric models; disparity-like for relative models), any size:
            resized bilinearly to gt's size.
        gt: [H, W] ground-truth depth in metres (disparity when `gt_is_disparity`, relative scoring only).
        valid: [H, W] bool; pixels with non-finite or non-positive gt are dropped as well. Non-finite
            predictions are not hidden: they make the metrics non-finite.
        relative: align the prediction by scale and shift in disparity space before scoring.
        max_depth: for relative models, the depth cap of the alignment (aligned disparity >= 1 / max_depth);
            None: the image's largest valid ground-truth depth.
    """
    if pred.dim() == 3 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.dim() != 2 or gt.dim() != 2 or valid.shape != gt.shape:
        raise ValueError(f"expected pred [h, w], gt [H, W], valid [H, W]; found {tuple(pred.shape)}, "
                         f"{tuple(gt.shape)}, {tuple(valid.shape)}")
    gt = gt.detach().to(torch.float64)
    pred = resize_to(pred.detach().to(device=gt.device, dtype=torch.float64), gt.shape)
    mask = valid.to(gt.device).bool() & torch.isfinite(gt) & (gt > 0)
    if int(mask.sum()) < min_valid_pixels:
        return None
    if relative:
        pred = align_relative(pred, gt, mask, gt_is_disparity=gt_is_disparity, max_depth=max_depth)
        if gt_is_disparity:
            gt = 1.0 / torch.where(mask, gt, torch.ones_like(gt))
    elif gt_is_disparity:
        raise ValueError("gt_is_disparity applies to relative scoring only (metric models predict metres)")
    p = pred[mask].clamp_min(MIN_DEPTH)
    g = gt[mask]
    thresh = torch.maximum(g / p, p / g)
    diff = p - g
    diff_log = torch.log(p) - torch.log(g)
    values = {
        "d1": (thresh < 1.25).double().mean(),
        "d2": (thresh < 1.25 ** 2).double().mean(),
        "d3": (thresh < 1.25 ** 3).double().mean(),
        "abs_rel": (diff.abs() / g).mean(),
        "sq_rel": (diff ** 2 / g).mean(),
        "rmse": torch.sqrt((diff ** 2).mean()),
        "rmse_log": torch.sqrt((diff_log ** 2).mean()),
        "log10": (torch.log10(p) - torch.log10(g)).abs().mean(),
        "silog": torch.sqrt(((diff_log ** 2).mean() - 0.5 * diff_log.mean() ** 2).clamp_min(0.0)),
    }
    return {k: float(v) for k, v in values.items()}


class MetricAccumulator:
    """Averages `depth_metrics` over images.

    `update(pred [B, h, w], gt [B, H, W], valid [B, H, W])` (or one image: [h, w], [H, W], [H, W]) scores each
    image with `depth_metrics` and the options given here (`relative` may also be given per call);
    `compute()` returns the mean of each metric over the scored images plus `count` (images scored); with no
    image scored it returns only `count` (0). `skipped` counts images with too few valid pixels.
    """

    def __init__(
        self,
        relative: bool = False,
        *,
        gt_is_disparity: bool = False,
        max_depth: Optional[float] = None,
        min_valid_pixels: int = MIN_VALID_PIXELS,
    ):
        self.relative = relative
        self.gt_is_disparity = gt_is_disparity
        self.max_depth = max_depth
        self.min_valid_pixels = min_valid_pixels
        self.reset()

    def reset(self) -> None:
        self._sums = {k: 0.0 for k in METRIC_NAMES}
        self.count = 0
        self.skipped = 0

    def update(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, *,
               relative: Optional[bool] = None, max_depth: Optional[float] = None) -> int:
        """Score a batch; returns the number of images scored (not skipped). `relative` and `max_depth` (the
        relative depth cap) given here override the accumulator's for this batch."""
        relative = self.relative if relative is None else relative
        max_depth = self.max_depth if max_depth is None else max_depth
        if pred.dim() == 4 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if gt.dim() == 2:
            pred, gt, valid = pred.reshape(1, *pred.shape[-2:]), gt[None], valid[None]
        if pred.shape[0] != gt.shape[0] or valid.shape != gt.shape:
            raise ValueError(f"batch shapes disagree: pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, "
                             f"valid {tuple(valid.shape)}")
        scored = 0
        for i in range(gt.shape[0]):
            m = depth_metrics(pred[i], gt[i], valid[i], relative, gt_is_disparity=self.gt_is_disparity,
                              max_depth=max_depth, min_valid_pixels=self.min_valid_pixels)
            if m is None:
                self.skipped += 1
                continue
            for k, v in m.items():
                self._sums[k] += v
            self.count += 1
            scored += 1
        return scored

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.count:
            out = {k: self._sums[k] / self.count for k in METRIC_NAMES}
        out["count"] = self.count
        return out
