"""Running a trained model for evaluation and inference: `build_predictor` picks the backend a section names
(`checkpoint`: PyTorch here; `onnx_file` / `trt_engine`: `trainer.deploy.predictors`), all behind one `Predictor`
contract with one pre- and post-processing (`trainer.deploy.predictors`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.constants import METRIC
from trainer.deploy.predictors import OnnxPredictor, Predictor, TensorRTPredictor, resize_prediction
from trainer.errors import CheckpointError, UserError

log = logging.getLogger(__name__)

__all__ = ["Predictor", "TorchPredictor", "build_predictor", "checkpoint_spec", "load_model", "pick_device",
           "resize_prediction"]


def pick_device(gpu_ids: Any = None) -> torch.device:
    if torch.cuda.is_available():
        ids = list(gpu_ids or [0])
        return torch.device(f"cuda:{ids[0] if ids else 0}")
    return torch.device("cpu")


def checkpoint_spec(spec: DictConfig, checkpoint: str) -> DictConfig:
    """The spec to build the network from: the model section and depth range stored in our own checkpoints win
    (they are what the weights were trained with); released checkpoints carry none, so the given spec is used."""
    from trainer.config import build_spec, default_spec, to_plain
    from trainer.model import read_checkpoint_spec

    stored = read_checkpoint_spec(checkpoint)
    if not stored:
        return spec
    plain = to_plain(spec)
    defaults = to_plain(default_spec())
    notes = []
    for key in ("model_type", "encoder"):
        given = plain["model"].get(key)
        if given != stored["model"].get(key) and given != defaults["model"][key]:
            notes.append(f"model.{key}: spec says {plain['model'].get(key)!r}, checkpoint was trained as "
                         f"{stored['model'].get(key)!r}")
    plain["model"] = stored["model"]
    stored_data = stored.get("dataset", {})
    given, trained = plain["dataset"].get("max_depth"), stored_data.get("max_depth")
    if stored["model"].get("model_type") == METRIC and given is not None and trained is not None \
            and float(given) != float(trained):
        raise UserError(f"dataset.max_depth={given} contradicts the checkpoint {checkpoint}, trained with "
                        f"max_depth={trained} (its output is sigmoid * max_depth); remove dataset.max_depth or set "
                        f"it to {trained}")
    for key in ("min_depth", "max_depth"):
        if plain["dataset"].get(key) is None:
            plain["dataset"][key] = stored_data.get(key)
    # pre-processing follows training (normalisation, network input size) unless the spec sets its own
    trained_aug = (stored_data.get("val_dataset") or {}).get("augmentation") \
        or (stored_data.get("train_dataset") or {}).get("augmentation")
    default_aug = to_plain(default_spec()).get("dataset", {}).get("test_dataset", {}).get("augmentation")
    if trained_aug:
        for split in ("test_dataset", "infer_dataset"):
            if plain["dataset"][split].get("augmentation") == default_aug:
                plain["dataset"][split]["augmentation"] = dict(trained_aug)
    for n in notes:
        log.warning(f"notice: {n}; using the checkpoint's")
    return build_spec(plain, check_files=False, notice=lambda _m: None)


def load_model(spec: DictConfig, checkpoint: Optional[str]) -> tuple[torch.nn.Module, DictConfig]:
    """Build the network for `checkpoint` and load its weights strictly. Returns (model in eval mode, spec used)."""
    from trainer.model import build_model, load_weights

    if not checkpoint:
        raise UserError("no checkpoint given: set evaluate.checkpoint / inference.checkpoint / export.checkpoint "
                        "(a .ckpt written by training, or a released depth_anything_v2_vit*.pth)")
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    used = checkpoint_spec(spec, checkpoint)
    if used.model.model_type == METRIC and used.dataset.max_depth is None:
        raise UserError("dataset.max_depth is needed to build a MetricDepthAnything model from a checkpoint that "
                        "does not record its training spec (released weights); e.g. dataset.max_depth=20 (indoor) "
                        "or 80 (outdoor)")
    model = build_model(used)
    load_weights(model, checkpoint, strict=True)
    model.eval()
    return model, used


@dataclass
class TorchPredictor(Predictor):
    """A network in memory (a checkpoint's), on `device`, in bf16 autocast when `precision` says so."""

    model: torch.nn.Module
    device: torch.device
    precision: str = "fp32"
    is_metric: bool = True
    description: str = "pytorch"

    def __post_init__(self) -> None:
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.precision == "bf16" and self.device.type in ("cuda", "cpu"):
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.model(x)
        else:
            out = self.model(x)
        return out.float().cpu()


def output_dir(spec: DictConfig, action: str) -> Path:
    """Where `evaluate` / `inference` write: `<action>.results_dir` when given; else, for an exported model, a folder
    beside that file (`<action>-engine` for a TensorRT engine, `<action>-onnx` for an ONNX file), so the results stay
    with the model they describe; else `<results_dir>/<action>`."""
    section = spec[action]
    if section.results_dir:
        return Path(section.results_dir)
    if section.trt_engine:
        return Path(section.trt_engine).parent / f"{action}-engine"
    if section.onnx_file:
        return Path(section.onnx_file).parent / f"{action}-onnx"
    return Path(spec.results_dir) / action


def build_predictor(spec: DictConfig, section: DictConfig) -> tuple[Predictor, DictConfig]:
    """From `evaluate` or `inference` section: checkpoint (PyTorch), onnx_file (ONNX Runtime) or trt_engine."""
    if section.get("trt_engine"):
        return TensorRTPredictor.from_spec(spec, section.trt_engine)
    if section.get("onnx_file"):
        return OnnxPredictor.from_spec(spec, section.onnx_file)
    model, used = load_model(spec, section.checkpoint)
    device = pick_device(section.get("gpu_ids"))
    precision = spec.train.precision if device.type == "cuda" else "fp32"
    pred = TorchPredictor(model, device, precision, is_metric=used.model.model_type == METRIC,
                          description=f"pytorch ({device.type}, {precision}) {section.checkpoint}")
    return pred, used


def plain_spec(spec: DictConfig) -> dict:
    return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
