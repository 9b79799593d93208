"""TAO depth_net value conventions, applied while a spec loads (`trainer.config.loader.build_spec` calls these).

Each convention is mapped onto this project's meaning, with a notice where the value changes:

- `""` and `???` (Hydra's "required, not given") on a path key mean "no path" (None); a data source whose
  `dataset_name` and `data_file` are both empty (the placeholder TAO writes into every split of a dump) is dropped;
  `data_sources: null` is an empty list.
- `evaluate.batch_size: -1` / `inference.batch_size: -1` ("dynamic" in TAO) mean: the batch size of the split,
  `dataset.test_dataset.batch_size` / `dataset.infer_dataset.batch_size`, as TAO's PyTorch evaluate does.
- Sizes that are not multiples of 14 (the ViT patch) are rounded to the nearest multiple, as TAO's mono data
  pipeline does (`Resize(ensure_multiple_of=14)`: `round(x / 14) * 14`, at least 14), with a notice: crop sizes,
  `evaluate`/`inference`/`export` input sizes and the engine's shape range.
- `gen_trt_engine.{min,opt,max}_{height,width}` (TAO's dynamic-shape range) become
  `gen_trt_engine.tensorrt.{min_height,height,max_height,...}` (the keys the engine builder reads).
- `train.checkpoint_interval_unit: step` is not supported (checkpoints are per epoch): a notice says so.
- Augmentation: `dataset.<split>.augmentation.pipeline: tao` (the default) trains like TAO's mono pipeline, which
  applies only `crop_size`, `input_mean` and `input_std`; `h_flip_prob`, `color_aug_*`, `min_scale`/`max_scale`
  are then accepted and not used. `pipeline: full` (ours) applies them.
- A spec without a `model` section takes the model type and encoder from the file the action reads (a checkpoint
  with a stored spec, or the JSON sidecar of an ONNX file or engine), with a notice; when none tells, the actions
  that build a network are refused with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from omegaconf import DictConfig

from trainer.config.tao_keys import MISSING
from trainer.errors import SpecProblem
from trainer.constants import PATCH_SIZE as PATCH

Notice = Callable[[str], None]
SPLITS = ("train_dataset", "val_dataset", "test_dataset", "infer_dataset")

# keys holding a path (`*`: any split); "" and ??? mean no path
PATH_KEYS: tuple[str, ...] = (
    "encryption_key", "model.mono_backbone.pretrained_path",
    "model.stereo_backbone.depth_anything_v2_pretrained_path", "model.stereo_backbone.edgenext_pretrained_path",
    "train.resume_training_checkpoint_path", "train.results_dir", "train.pretrained_model_path",
    "evaluate.checkpoint", "evaluate.trt_engine", "evaluate.onnx_file", "evaluate.results_dir",
    "inference.checkpoint", "inference.trt_engine", "inference.onnx_file", "inference.results_dir",
    "export.results_dir", "export.checkpoint", "export.onnx_file",
    "gen_trt_engine.results_dir", "gen_trt_engine.onnx_file", "gen_trt_engine.trt_engine",
    "gen_trt_engine.timing_cache", "dataset.*.data_root", "dataset.quant_calibration_dataset.images_dir",
    "quantize.model_path", "quantize.results_dir",
    "automl.search_space", "automl.storage_path", "automl.tracking_uri",
)

# augmentation keys that only `pipeline: full` applies (TAO's mono pipeline reads none of them)
EXTRA_AUGMENTATION = ("h_flip_prob", "color_aug_prob", "color_aug_brightness", "color_aug_contrast",
                      "color_aug_saturation", "color_aug_hue_range", "min_scale", "max_scale")

# TAO's top-level engine shape keys -> the tensorrt keys read by trainer.deploy.tensorrt
ENGINE_SHAPE_KEYS = {f"{k}_{side}": f"{'' if k == 'opt' else k + '_'}{side}"
                     for k in ("min", "opt", "max") for side in ("height", "width")}


def round14(value: int) -> int:
    """TAO's `constrain_to_multiple_of(x, 14)`: the nearest multiple of 14, at least 14."""
    return max(PATCH, int(round(value / PATCH)) * PATCH)


# --------------------------------------------------------------------------------------------------------------
# Before the structural checks (plain tree)
# --------------------------------------------------------------------------------------------------------------


def _no_path(value: Any) -> bool:
    return isinstance(value, str) and value.strip() in ("", MISSING)


def _nodes(tree: Any, parts: list[str]) -> Iterable[tuple[dict, str]]:
    """(parent mapping, key) for every place dotted `parts` (with `*`) names in `tree`."""
    if not isinstance(tree, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    keys = list(tree) if head == "*" else [head] if head in tree else []
    for k in keys:
        if rest:
            yield from _nodes(tree[k], rest)
        else:
            yield tree, k


def _drop_placeholder_sources(tree: dict) -> None:
    dataset = tree.get("dataset")
    if not isinstance(dataset, dict):
        return
    for split in SPLITS:
        cfg = dataset.get(split)
        if not isinstance(cfg, dict) or "data_sources" not in cfg:
            continue
        sources = cfg["data_sources"]
        if sources is None:
            cfg["data_sources"] = []
        elif isinstance(sources, list):
            cfg["data_sources"] = [s for s in sources if not (
                isinstance(s, dict) and all(s.get(k) is None or _no_path(s.get(k))
                                            for k in ("dataset_name", "data_file")))]


def _drop_missing_markers(tree: Any) -> None:
    """`???` anywhere else: the key was not given (the schema default applies)."""
    if isinstance(tree, dict):
        for k in [k for k, v in tree.items() if isinstance(v, str) and v.strip() == MISSING]:
            del tree[k]
        for v in tree.values():
            _drop_missing_markers(v)
    elif isinstance(tree, list):
        for v in tree:
            _drop_missing_markers(v)


def normalize_raw(tree: dict) -> None:
    """Apply TAO's value conventions that change types or structure, in place, before the structural checks."""
    for pattern in PATH_KEYS:
        for parent, key in list(_nodes(tree, pattern.split("."))):
            if _no_path(parent[key]):
                parent[key] = None
    if "results_dir" in tree and (tree["results_dir"] is None or _no_path(tree["results_dir"])):
        del tree["results_dir"]  # the schema default
    _drop_placeholder_sources(tree)
    _drop_missing_markers(tree)
    for section in ("evaluate", "inference"):
        cfg = tree.get(section)
        if isinstance(cfg, dict) and cfg.get("batch_size") in (-1, "-1"):
            cfg["batch_size"] = None  # TAO's "dynamic": the split's batch size


# --------------------------------------------------------------------------------------------------------------
# After the structural checks (typed spec)
# --------------------------------------------------------------------------------------------------------------


def _round_key(cfg: Any, key: str, path: str, notice: Notice, why: str = "") -> None:
    value = cfg[key]
    if value is None or isinstance(value, bool) or int(value) <= 0 or int(value) % PATCH == 0:
        return  # non-positive values are left to the value checks
    cfg[key] = round14(int(value))
    notice(f"{path}={value} is not a multiple of 14 (the ViT patch size); using {cfg[key]}, the nearest one, as "
           f"TAO's mono data pipeline rounds sizes{why}")


def round_sizes(spec: DictConfig, notice: Notice) -> None:
    """Round the network sizes TAO spells (crop sizes, input sizes, the engine's min/opt/max) to multiples of 14,
    with a notice per changed value."""
    for split in SPLITS:
        crop = spec.dataset[split].augmentation.crop_size
        for i in range(len(crop)):
            _round_key(crop, i, f"dataset.{split}.augmentation.crop_size.{i}", notice)
    for section in ("evaluate", "inference", "export"):
        for key in ("input_height", "input_width"):
            _round_key(spec[section], key, f"{section}.{key}", notice)
    for key in ENGINE_SHAPE_KEYS:  # TAO's; the tensorrt.* spellings (ours) are checked by trainer.deploy.tensorrt
        _round_key(spec.gen_trt_engine, key, f"gen_trt_engine.{key}", notice)


def map_engine_shapes(spec: DictConfig, notice: Notice) -> list[SpecProblem]:
    """TAO's `gen_trt_engine.{min,opt,max}_{height,width}` -> `gen_trt_engine.tensorrt.*`; a contradiction between
    the two spellings is a problem naming both."""
    problems: list[SpecProblem] = []
    g = spec.gen_trt_engine
    for tao_key, ours in ENGINE_SHAPE_KEYS.items():
        value = g[tao_key]
        if value is None:
            continue
        current = g.tensorrt[ours]
        if current not in (-1, None) and int(current) != int(value):
            problems.append(SpecProblem(f"gen_trt_engine.{tao_key}", f"found {value}, but gen_trt_engine.tensorrt."
                                                                     f"{ours} is {current}; set one of the two"))
            continue
        g.tensorrt[ours] = int(value)
    return problems


def apply_pipeline(spec: DictConfig) -> list[str]:
    """`augmentation.pipeline: tao`: switch off what TAO's mono pipeline does not apply; return the dotted keys
    that are therefore not used (for the unused-key notices)."""
    unused = []
    for split in SPLITS:
        aug = spec.dataset[split].augmentation
        if split == "train_dataset" and aug.pipeline == "full":
            continue
        unused += [f"dataset.{split}.augmentation.{k}" for k in EXTRA_AUGMENTATION]
        if split == "train_dataset":
            aug.h_flip_prob = 0.0
            aug.color_aug_prob = 0.0
            aug.min_scale = 0.0
            aug.max_scale = 0.0
    return unused


def check_interval_unit(spec: DictConfig, notice: Notice) -> list[SpecProblem]:
    unit = spec.train.checkpoint_interval_unit
    if unit not in ("epoch", "step"):
        return [SpecProblem("train.checkpoint_interval_unit", f"found {unit!r}, expected one of: epoch, step")]
    if unit == "step":
        notice(f"train.checkpoint_interval_unit=step is not supported: checkpoints are written every "
               f"train.checkpoint_interval={spec.train.checkpoint_interval} epoch(s)")
    return []


# --------------------------------------------------------------------------------------------------------------
# A spec without `model`
# --------------------------------------------------------------------------------------------------------------

# where each action finds the model it runs: (spec key, kind)
_MODEL_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "evaluate": (("evaluate.trt_engine", "sidecar"), ("evaluate.onnx_file", "sidecar"),
                 ("evaluate.checkpoint", "checkpoint")),
    "inference": (("inference.trt_engine", "sidecar"), ("inference.onnx_file", "sidecar"),
                  ("inference.checkpoint", "checkpoint")),
    "export": (("export.checkpoint", "checkpoint"),),
    "gen_trt_engine": (("gen_trt_engine.onnx_file", "sidecar"),),
}


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _model_of(path: Path, kind: str) -> Optional[dict]:
    """{model_type, encoder} recorded by `path` (a checkpoint's stored spec, or a sidecar), None when it has none."""
    if kind == "sidecar":
        side = Path(str(path) + ".json")
        if not side.is_file():
            return None
        try:
            model = json.loads(side.read_text()).get("model") or {}
        except (OSError, ValueError):
            return None
    else:
        from trainer.errors import CheckpointError
        from trainer.model import read_checkpoint_spec

        try:
            model = (read_checkpoint_spec(path) or {}).get("model") or {}
        except CheckpointError:
            return None
    if not model.get("model_type"):
        return None
    return {k: model[k] for k in ("model_type", "encoder", "custom") if model.get(k) is not None}


def model_from_artifacts(tree: dict, action: Optional[str], notice: Notice) -> list[SpecProblem]:
    """For a spec without a `model` section: fill it from the file `action` reads; a problem when none tells and
    the action needs it (gen_trt_engine takes the model from the ONNX sidecar at run time, so it never needs it)."""
    sources = _MODEL_SOURCES.get(action or "")
    if "model" in tree or not sources:
        return []
    tried = []
    for key, kind in sources:
        given = _get(tree, key)
        if not given:
            continue
        path = Path(str(given))
        if not path.exists():
            return []  # the missing file is reported on its own
        model = _model_of(path, kind)
        if model:
            tree["model"] = model
            notice(f"the spec has no model section: model.model_type={model['model_type']}, "
                   f"model.encoder={model.get('encoder')} taken from {path}"
                   + (" (its sidecar)" if kind == "sidecar" else ""))
            return []
        tried.append(str(path))
    if action == "gen_trt_engine":
        return []
    what = f"{', '.join(tried)} records no model type" if tried else \
        f"no {' / '.join(k for k, _ in sources)} is given to take it from"
    return [SpecProblem("model", f"the spec has no model section and {what}; add one, e.g. model: {{model_type: "
                                 f"RelativeDepthAnything, encoder: vitl}} (or MetricDepthAnything), or point "
                                 f"{sources[-1][0]} at a checkpoint trained here")]
