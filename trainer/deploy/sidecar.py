"""The contract of an exported file: input/output names and the JSON sidecar `<file>.json` written beside it.

Every exported file (`model.onnx`, `model.<precision>.engine`) has a sidecar with at least a `model` section
(model_type, encoder, max_depth, ...): what evaluate/inference need to use the file. `deployed_spec` turns a spec
and a sidecar into the spec evaluate/inference run with.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from omegaconf import DictConfig

from trainer.constants import METRIC
from trainer.errors import UserError
from trainer.records import write_atomic

log = logging.getLogger(__name__)

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "Notice", "deployed_spec", "read_sidecar", "sidecar_path", "stderr_notice",
           "write_json"]

INPUT_NAME = "image"  # float32 [B, 3, H, W], RGB normalised with the training mean/std
OUTPUT_NAME = "depth"  # float32 [B, H, W]: metres (metric) or relative disparity

Notice = Callable[[str], None]


def stderr_notice(message: str) -> None:
    """The default `notice`: one line on stderr."""
    log.warning(f"notice: {message}")


def sidecar_path(path: str | Path) -> Path:
    """`model.onnx` -> `model.onnx.json` (also for engines: `model.engine` -> `model.engine.json`)."""
    return Path(str(path) + ".json")


def read_sidecar(path: str | Path, what: str = "ONNX file") -> dict[str, Any]:
    """The JSON sidecar of an exported file; `UserError` naming both files when it is missing or unreadable."""
    side = sidecar_path(path)
    if not side.is_file():
        hint = ("it is written by `automl export` beside the ONNX file; export again (automl export -e SPEC "
                "export.checkpoint=CKPT --force)" if what == "ONNX file" else
                "it is written by `automl gen_trt_engine` beside the engine; build the engine again")
        raise UserError(f"{side}: sidecar of the {what} {path} not found; it records the model type, depth range "
                        f"and input size needed to use the file ({hint})")
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{side}: cannot read the sidecar of {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise UserError(f"{side}: expected a JSON object with a 'model' section (model_type, encoder, max_depth); "
                        f"found {type(data).__name__} without it")
    return data


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """`data` as indented JSON at `path` (folders created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, json.dumps(data, indent=2, default=str) + "\n")  # a sidecar is complete or absent
    return p


def deployed_spec(spec: DictConfig, meta: Mapping[str, Any], source: str, *,
                  fixed_size: Optional[tuple[int, int]], notice: Notice = stderr_notice) -> DictConfig:
    """The spec evaluate/inference run with for an exported file described by sidecar `meta`.

    The model section and depth range come from the sidecar (they are baked into the file), and so does the
    training's pre-processing (normalisation, crop size) when the spec's split keeps the default augmentation, as
    for checkpoints (`trainer.runtime.checkpoint_spec`). When the file only takes one height/width (`fixed_size`),
    `evaluate.input_height/width` and `inference.input_height/width` are set to it, so that the evaluation
    transform resizes to exactly that size (a notice says the aspect ratio is then lost); a different size set in
    the spec is an error naming both.
    """
    from trainer.config import build_spec, to_plain

    plain = to_plain(spec)
    _use_trained_augmentation(plain, (meta.get("preprocessing") or {}).get("augmentation"))
    _use_sidecar_model(plain, meta["model"], source, notice)
    if fixed_size is not None:
        _use_fixed_size(plain, fixed_size, source, notice)
    return build_spec(plain, check_files=False, notice=lambda _m: None)


def _use_trained_augmentation(plain: dict[str, Any], trained_aug: Optional[Mapping[str, Any]]) -> None:
    """As trainer.runtime.checkpoint_spec: training's pre-processing unless the spec sets its own."""
    if not trained_aug:
        return
    from trainer.config import default_spec, to_plain

    default_aug = to_plain(default_spec())["dataset"]["test_dataset"]["augmentation"]
    for split in ("test_dataset", "infer_dataset"):
        if plain["dataset"][split].get("augmentation") == default_aug:
            plain["dataset"][split]["augmentation"] = dict(trained_aug)


def _use_sidecar_model(plain: dict[str, Any], model: Mapping[str, Any], source: str, notice: Notice) -> None:
    plain["model"]["model_type"] = model["model_type"]
    plain["model"]["encoder"] = model["encoder"]
    if model.get("custom"):
        plain["model"]["custom"] = dict(model["custom"])
    if model["model_type"] != METRIC or model.get("max_depth") is None:
        return
    asked = plain["dataset"].get("max_depth")
    if asked is None:
        plain["dataset"]["max_depth"] = model["max_depth"]
    elif not math.isclose(float(asked), float(model["max_depth"]), rel_tol=1e-6):
        notice(f"dataset.max_depth={float(asked):g} masks the ground truth here; {source} outputs depths in "
               f"(0, {float(model['max_depth']):g}) m, the range it was trained and exported with")
    if plain["dataset"].get("min_depth") is None and model.get("min_depth") is not None:
        plain["dataset"]["min_depth"] = model["min_depth"]


def _use_fixed_size(plain: dict[str, Any], fixed_size: tuple[int, int], source: str, notice: Notice) -> None:
    h, w = int(fixed_size[0]), int(fixed_size[1])
    notice(f"{source} takes only {h}x{w} inputs: every image is resized to exactly that size, without keeping "
           f"its aspect ratio (non-square images then differ from the original model's prediction); the "
           f"default export (export.dynamic_hw=true) keeps it")
    for section in ("evaluate", "inference"):
        for key, value in (("input_height", h), ("input_width", w)):
            asked = plain[section].get(key)
            if asked is not None and int(asked) != value:
                raise UserError(f"{section}.{key}: found {asked}, but {source} takes only {h}x{w} inputs "
                                f"(exported without dynamic height/width); remove {section}.{key} or set it "
                                f"to {value}, or export again with export.dynamic_hw=true")
            plain[section][key] = value
