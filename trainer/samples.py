"""A trained model's predictions on a few validation images, for a person to look at (the search report).

`predict_samples` reads a run's saved spec and checkpoint, predicts `num_images` validation images spread over the
split, and returns each with its ground truth, validity mask and depth metrics, at the ground truth's size. A
relative model's prediction is aligned to the ground truth by scale and shift first, as the metrics do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Sample:
    name: str  # the image's file name
    rgb: np.ndarray  # HxWx3 uint8, at the ground truth's size
    gt: np.ndarray  # HxW float, metres (relative models: their depth-like target)
    pred: np.ndarray  # HxW float, same units as gt
    valid: np.ndarray  # HxW bool
    scores: dict[str, float]


@dataclass
class Samples:
    relative: bool  # predictions were aligned by scale and shift (a relative model)
    items: list[Sample]


def predict_samples(spec_file: str | Path, checkpoint: str | Path, num_images: int = 4) -> Samples:
    """Predict `num_images` validation images (evenly spread over the split) with `checkpoint`, built per the saved
    spec `spec_file`. Raises ValueError when the validation split is empty."""
    from omegaconf import OmegaConf

    from trainer.config import build_spec
    from trainer.data import build_dataset
    from trainer.runtime import build_predictor

    raw = OmegaConf.to_container(OmegaConf.load(spec_file), resolve=True)
    spec = build_spec(raw, check_files=False, notice=lambda _m: None)
    predictor, used = build_predictor(spec, OmegaConf.create({"checkpoint": str(checkpoint)}))
    relative = used.model.model_type == "RelativeDepthAnything"
    dataset = build_dataset(used, "val_dataset", train=False)
    if len(dataset) == 0:
        raise ValueError("the validation split is empty")
    n = max(1, min(int(num_images), len(dataset)))
    picks = sorted({int(round(i)) for i in np.linspace(0, len(dataset) - 1, n)})
    return Samples(relative, [_sample(dataset[i], predictor, relative, float(used.dataset.max_depth)) for i in picks])


def _sample(item: dict[str, Any], predictor: Any, relative: bool, max_depth: float) -> Sample:
    """One dataset item predicted, aligned (relative models) and scored, with its RGB at the ground truth's size."""
    from trainer.data import read_image
    from trainer.metrics import align_relative, depth_metrics
    from trainer.module import as_depth
    from trainer.runtime import resize_prediction

    valid = item["valid"].bool()
    gt = as_depth(item["depth"], valid, relative).float()
    pred = resize_prediction(predictor(item["image"][None])[0], tuple(gt.shape[-2:])).float()
    if relative:
        pred = align_relative(pred.double(), gt.double(), valid, max_depth=max_depth).float()
    scores = depth_metrics(pred, gt, valid) or {}
    rgb = read_image(item["path"])
    if rgb.shape[:2] != tuple(gt.shape):
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((gt.shape[1], gt.shape[0]), Image.BILINEAR))
    return Sample(Path(item["path"]).name, rgb, gt.numpy(), pred.numpy(), valid.numpy(),
                  {k: float(v) for k, v in scores.items()})
