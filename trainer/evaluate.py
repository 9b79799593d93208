"""`evaluate(spec)`: the standard depth metrics of a checkpoint (or ONNX file / TensorRT engine) on test_dataset."""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig

from trainer.records import StatusFile
from trainer.metrics import MetricAccumulator
from trainer.module import as_depth
from trainer.records import write_json_atomic
from trainer.runtime import Predictor, build_predictor, output_dir, resize_prediction
from trainer.constants import RELATIVE

log = logging.getLogger(__name__)

METRIC_ORDER = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")


def evaluate_loader(predictor: Predictor, loader: Any, *, relative: bool, progress: bool = True) -> dict[str, float]:
    """Run `predictor` over an evaluation loader; metrics per image at ground-truth size, averaged over images.

    Predictions are resized to the ground truth with `resize_prediction` (bilinear, align_corners=True). Metric
    models are scored as they are; relative models by the capped scale-and-shift protocol of
    `trainer.metrics.align_relative`, with the depth cap of the item's data source (`source_info`)."""
    from tqdm import tqdm

    acc = MetricAccumulator()
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        pred = predictor.predict(batch["image"])
        depths, valids = batch["depth"], batch["valid"]
        if isinstance(depths, torch.Tensor):
            depths, valids = list(depths), list(valids)
        indices = batch.get("index")
        for i, (gt, valid) in enumerate(zip(depths, valids)):
            p = resize_prediction(pred[i], tuple(gt.shape[-2:]))
            if not relative:
                acc.update(p, gt, valid)
                continue
            index = int(indices[i]) if indices is not None else None
            disparity, cap = source_info(loader.dataset, index)
            acc.update(p, as_depth(gt, valid, True) if disparity else gt, valid, relative=True, max_depth=cap)
    return acc.compute()


def source_info(dataset: Any, index: Optional[int]) -> tuple[bool, Optional[float]]:
    """(ground truth is disparity, depth cap in the ground truth's depth units or None) for item `index` of an
    evaluation dataset: relative datasets (`RelativeMonoDataset`, `NYUDV2Relative`) carry disparity, metric
    ones metres; the cap is the source's `max_depth` (NYU: 10 m; the spec's `dataset.max_depth` for
    `MetricMonoDataset`), None when unknown (then `align_relative` caps at the image's deepest valid pixel)."""
    parts = list(getattr(dataset, "datasets", None) or [dataset])
    part = parts[0]
    if index is not None and len(parts) > 1:
        part = parts[min(bisect.bisect_right(dataset.cumulative_sizes, index), len(parts) - 1)]
    return bool(getattr(part, "relative", True)), getattr(part, "max_depth", None)


def format_table(metrics: Mapping[str, float]) -> str:
    keys = [k for k in METRIC_ORDER if k in metrics]
    head = " | ".join(f"{k:>8}" for k in keys)
    row = " | ".join(f"{metrics[k]:8.4f}" for k in keys)
    return f"{head}\n{'-' * len(head)}\n{row}"


def evaluate(spec: DictConfig, *, progress: bool = True) -> dict[str, Any]:
    """Writes `<results>/metrics.json` and a status.json line; prints the metrics as a table; returns the metrics."""
    from trainer.data import build_dataloader

    started = time.time()
    out = output_dir(spec, "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    predictor, used = build_predictor(spec, spec.evaluate)
    relative = used.model.model_type == RELATIVE
    loader = build_dataloader(used, "test_dataset", train=False, batch_size=spec.evaluate.batch_size)
    metrics = evaluate_loader(predictor, loader, relative=relative, progress=progress)
    count = int(metrics.pop("count", 0))
    result = {
        "model": predictor.description,
        "model_type": used.model.model_type,
        "encoder": used.model.encoder,
        "num_images": count,
        "metrics": metrics,
        "skipped_samples": dict(getattr(loader.dataset, "skipped", {}) or {}),
        "wall_time_s": round(time.time() - started, 2),
    }
    write_json_atomic(out / "metrics.json", result)
    StatusFile(out / "status.json").write("SUCCESS", "Evaluation finished", kpi=metrics, num_images=count)
    log.info(f"\nevaluated {count} images with {predictor.description}")
    log.info(format_table(metrics))
    log.info(f"\nmetrics written to {out / 'metrics.json'}")
    return result
