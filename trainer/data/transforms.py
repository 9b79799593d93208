"""Geometric and photometric transforms for RGB-D training and evaluation.

All randomness comes from a `numpy.random.Generator` passed in, so a transform is a pure function of its inputs
and that generator (same seed -> same output). Training resizes RGB with the original training pipeline's cv2 `INTER_CUBIC` (on uint8); evaluation and
inference use the original's pre-processing exactly (cv2 `INTER_CUBIC` on the [0, 1] float image,
`preprocess_image`). Depth and its validity mask are resized
with nearest-neighbour sampling only, so a depth value is never interpolated across an invalid pixel or an object
boundary. Colour jitter touches RGB only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from trainer.constants import PATCH_SIZE as PATCH



# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of uint8 `[H, W, 3]` to `size` = (height, width) with the original training pipeline's
    kernel (cv2 `INTER_CUBIC`, no antialiasing); on uint8, so values are rounded and clipped to 0..255 where the
    original keeps [0, 1] floats (at most half a grey level apart)."""
    import cv2

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_CUBIC)


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (pixel-centre sampling); works for float depth and bool masks."""
    h, w = size
    H, W = arr.shape[:2]
    if (H, W) == (h, w):
        return arr
    rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
    return arr[rows[:, None], cols[None, :]]


def cover_size(hw: tuple[int, int], crop: tuple[int, int], scale: float = 1.0) -> tuple[int, int]:
    """Keep-aspect size at which an `hw` image covers `crop` (the tighter side matches), times `scale`."""
    H, W = hw
    f = max(crop[0] / H, crop[1] / W) * scale
    h, w = H * f, W * f
    if scale >= 1.0:  # guard against rounding a hair below the crop
        return max(crop[0], round(h)), max(crop[1], round(w))
    return max(1, round(h)), max(1, round(w))


def eval_input_size(hw: tuple[int, int], short_side: int, height: Optional[int] = None,
                    width: Optional[int] = None) -> tuple[int, int]:
    """Network input size (height, width) for evaluation/inference.

    Both `height` and `width` given: exactly that. One given: that side, the other keeps the aspect ratio (nearest
    multiple of 14). Neither: the original Depth Anything V2 rule (`Resize(short_side, short_side,
    keep_aspect_ratio=True, ensure_multiple_of=14, resize_method="lower_bound")`): one scale factor
    `f = max(short_side / H, short_side / W)`, each side `round(f * side / 14) * 14` (NumPy's half-to-even
    rounding), raised to the next multiple of 14 when that falls below `short_side`.
    """
    H, W = hw
    if height and width:
        return int(height), int(width)
    if height:
        return int(height), _round14(W * height / H)
    if width:
        return _round14(H * width / W), int(width)
    f = max(short_side / H, short_side / W)
    return _lower_bound14(f * H, short_side), _lower_bound14(f * W, short_side)


def _lower_bound14(x: float, low: int) -> int:
    y = int(np.round(x / PATCH) * PATCH)
    return int(np.ceil(x / PATCH) * PATCH) if y < low else y


def _round14(x: float) -> int:
    return max(PATCH, int(round(x / PATCH)) * PATCH)


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 `[H, W, 3]` -> float32 `[3, H, W]`: `(rgb / 255 - mean) / std`."""
    x = torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"])).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, *, brightness: float, contrast: float,
                 saturation: Sequence[float], hue: Sequence[float]) -> np.ndarray:
    """Random brightness/contrast/saturation/hue, applied in a random order (torchvision's definitions).

    brightness b: factor U(max(0, 1-b), 1+b); contrast likewise; saturation: factor U(lo, hi); hue: shift U(lo, hi)
    as a fraction of the colour circle (torchvision's hue_factor, clipped to [-0.5, 0.5]).
    """
    import torchvision.transforms.functional as TF

    t = torch.from_numpy(np.require(rgb, np.uint8, ["C", "W"])).permute(2, 0, 1)
    ops = []
    if brightness > 0:
        f = float(rng.uniform(max(0.0, 1 - brightness), 1 + brightness))
        ops.append(lambda x, f=f: TF.adjust_brightness(x, f))
    if contrast > 0:
        f = float(rng.uniform(max(0.0, 1 - contrast), 1 + contrast))
        ops.append(lambda x, f=f: TF.adjust_contrast(x, f))
    if tuple(saturation) != (1.0, 1.0):
        f = float(rng.uniform(saturation[0], saturation[1]))
        ops.append(lambda x, f=f: TF.adjust_saturation(x, f))
    if tuple(hue) != (0.0, 0.0):
        f = float(np.clip(rng.uniform(hue[0], hue[1]), -0.5, 0.5))
        ops.append(lambda x, f=f: TF.adjust_hue(x, f))
    for i in rng.permutation(len(ops)):
        t = ops[i](t)
    return t.permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainTransform:
    """Scale jitter + keep-aspect resize (covering the crop), random crop, horizontal flip, colour jitter,
    normalisation. Returns `image [3, h, w]`, `depth [h, w]` (0 where invalid) and `valid [h, w]` tensors."""

    crop_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    min_scale: float = 0.0
    max_scale: float = 0.0
    h_flip_prob: float = 0.5
    color_aug_prob: float = 0.2
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: tuple[float, float] = (0.0, 1.4)
    hue: tuple[float, float] = (-5 / 180.0, 5 / 180.0)

    @classmethod
    def from_config(cls, aug: Any) -> "TrainTransform":
        """From a `dataset.<split>.augmentation` section."""
        return cls(crop_size=(int(aug.crop_size[0]), int(aug.crop_size[1])),
                   mean=tuple(float(v) for v in aug.input_mean), std=tuple(float(v) for v in aug.input_std),
                   min_scale=float(aug.min_scale), max_scale=float(aug.max_scale),
                   h_flip_prob=float(aug.h_flip_prob), color_aug_prob=float(aug.color_aug_prob),
                   brightness=float(aug.color_aug_brightness), contrast=float(aug.color_aug_contrast),
                   saturation=(float(aug.color_aug_saturation[0]), float(aug.color_aug_saturation[1])),
                   hue=(float(aug.color_aug_hue_range[0]), float(aug.color_aug_hue_range[1])))

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ch, cw = self.crop_size
        scale = 2.0 ** float(rng.uniform(self.min_scale, self.max_scale)) \
            if self.max_scale > self.min_scale else 2.0 ** self.min_scale
        h, w = cover_size(rgb.shape[:2], (ch, cw), scale)
        rgb = resize_rgb(rgb, (h, w))
        depth = resize_nearest(depth, (h, w))
        valid = resize_nearest(valid, (h, w))
        if h < ch or w < cw:  # zoomed out below the crop: pad; padding is invalid depth and mean colour
            rgb, depth, valid = self._pad(rgb, depth, valid, max(h, ch), max(w, cw))
            h, w = rgb.shape[:2]
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        rgb, depth, valid = rgb[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw], valid[y:y + ch, x:x + cw]
        if rng.random() < self.h_flip_prob:
            rgb, depth, valid = rgb[:, ::-1], depth[:, ::-1], valid[:, ::-1]
        if rng.random() < self.color_aug_prob:
            rgb = color_jitter(rgb, rng, brightness=self.brightness, contrast=self.contrast,
                               saturation=self.saturation, hue=self.hue)
        image = normalize(rgb, self.mean, self.std)
        valid_t = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))
        depth_t = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)) * valid_t
        return image, depth_t, valid_t

    def _pad(self, rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray, H: int, W: int):
        fill = np.clip(np.rint(np.asarray(self.mean) * 255), 0, 255).astype(np.uint8)
        out_rgb = np.empty((H, W, 3), np.uint8)
        out_rgb[:] = fill
        out_depth = np.zeros((H, W), np.float32)
        out_valid = np.zeros((H, W), bool)
        h, w = rgb.shape[:2]
        y, x = (H - h) // 2, (W - w) // 2
        out_rgb[y:y + h, x:x + w] = rgb
        out_depth[y:y + h, x:x + w] = depth
        out_valid[y:y + h, x:x + w] = valid
        return out_rgb, out_depth, out_valid


# --------------------------------------------------------------------------------------------------------------
# Evaluation / inference
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTransform:
    """The original Depth Anything V2 evaluation/inference pre-processing (`preprocess_image`): keep-aspect
    resize with lower bound `short_side` to multiples of 14 (`eval_input_size`), or exactly `height` x `width`
    when given, cv2 bicubic on the [0, 1] float image, then normalisation. Ground truth is not touched:
    predictions are resized to it instead (bilinear, align_corners=True: `trainer.runtime.resize_prediction`)."""

    short_side: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    height: Optional[int] = None
    width: Optional[int] = None

    @classmethod
    def from_config(cls, aug: Any, height: Optional[int] = None, width: Optional[int] = None,
                    section: str = "evaluate") -> "EvalTransform":
        """From a `dataset.<split>.augmentation` section (short side = min(crop_size)) and an optional fixed size
        (`evaluate.input_height/width`, `inference.input_height/width`; `section` names it in errors)."""
        for name, v in (("input_height", height), ("input_width", width)):
            if v is not None and (int(v) <= 0 or int(v) % PATCH):
                from trainer.errors import SpecError, SpecProblem
                raise SpecError([SpecProblem(f"{section}.{name}", f"found {v}, expected a positive multiple of "
                                                                  f"{PATCH} (nearest: {_round14(int(v))})")])
        return cls(short_side=int(min(aug.crop_size)), mean=tuple(float(v) for v in aug.input_mean),
                   std=tuple(float(v) for v in aug.input_std), height=height, width=width)

    def input_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        return eval_input_size(hw, self.short_side, self.height, self.width)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return preprocess_image(rgb, self.input_size(rgb.shape[:2]), self.mean, self.std)


def preprocess_image(rgb: np.ndarray, size: tuple[int, int], mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """The original `infer_image` pre-processing: uint8 RGB `[H, W, 3]` -> `rgb / 255` as float64 -> cv2
    `INTER_CUBIC` resize to `size` = (height, width) (no antialiasing; skipped at the same size) ->
    `(x - mean) / std` -> float32 `[3, h, w]`. Shared by the PyTorch, ONNX Runtime and TensorRT paths (they all
    read images through `EvalTransform`)."""
    import cv2

    h, w = int(size[0]), int(size[1])
    x = np.require(rgb, np.uint8) / 255.0  # float64 like the original (cv2's float32 cubic is ~1e-4 off)
    if x.shape[:2] != (h, w):
        x = cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC)
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))

