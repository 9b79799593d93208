"""`inference(spec)`: a depth map per image at the image's own size: colourised PNG + raw depth (NPY or PFM)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from trainer.records import StatusFile
from trainer.records import write_json_atomic
from trainer.runtime import build_predictor, output_dir, resize_prediction
from trainer.constants import METRIC

log = logging.getLogger(__name__)


def colorize(depth: np.ndarray, *, metric: bool, cmap: str = "Spectral_r") -> np.ndarray:
    """float [H,W] -> uint8 [H,W,3]. Near is warm (red), far is cool (blue), for both kinds (metric depth is inverted first); the 2nd..98th
    percentiles of the valid values span the colour map so that one far outlier does not flatten the image."""
    import matplotlib

    values = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(values) & (values > 0)
    nearness = np.zeros_like(values)
    if valid.any():
        v = 1.0 / values[valid] if metric else values[valid]
        lo, hi = np.percentile(v, 2), np.percentile(v, 98)
        nearness[valid] = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = matplotlib.colormaps[cmap](nearness)[..., :3]  # Spectral_r: near red, far blue
    rgb[~valid] = 0
    return (rgb * 255).astype(np.uint8)


def _unique_stem(path: str, used: set[str]) -> str:
    stem = Path(path).stem
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def inference(spec: DictConfig, *, progress: bool = True) -> dict[str, Any]:
    """Writes `<results>/<stem>_depth.png` and `<stem>.npy` (or `.pfm`) per image plus `inference.json`."""
    from PIL import Image
    from tqdm import tqdm

    from trainer.data import build_infer_dataloader
    from trainer.data.depth_io import write_pfm

    started = time.time()
    out = output_dir(spec, "inference")
    out.mkdir(parents=True, exist_ok=True)
    predictor, used = build_predictor(spec, spec.inference)
    metric = used.model.model_type == METRIC
    loader = build_infer_dataloader(used, batch_size=spec.inference.batch_size)
    written: list[dict[str, Any]] = []
    stems: set[str] = set()
    for batch in tqdm(loader, desc="inference", disable=not progress, leave=False):
        pred = predictor.predict(batch["image"])
        for i, path in enumerate(batch["path"]):
            h, w = (int(v) for v in batch["orig_size"][i])
            depth = resize_prediction(pred[i], (h, w)).numpy().astype(np.float32)
            stem = _unique_stem(path, stems)
            png = out / f"{stem}_depth.png"
            Image.fromarray(colorize(depth, metric=metric)).save(png)
            raw = out / (f"{stem}.pfm" if spec.inference.save_raw_pfm else f"{stem}.npy")
            if spec.inference.save_raw_pfm:
                write_pfm(raw, depth)
            else:
                np.save(raw, depth)
            written.append({"image": str(path), "depth_png": str(png), "raw": str(raw),
                            "size": [h, w], "min": float(depth.min()), "max": float(depth.max())})
    summary = {"model": predictor.description, "kind": "metric depth (m)" if metric else "relative disparity",
               "images": written, "wall_time_s": round(time.time() - started, 2)}
    write_json_atomic(out / "inference.json", summary)
    StatusFile(out / "status.json").write("SUCCESS", "Inference finished", num_images=len(written))
    log.info(f"wrote depth for {len(written)} images to {out} ({summary['kind']}; raw as "
             f"{'PFM' if spec.inference.save_raw_pfm else 'NPY'})")
    return summary
