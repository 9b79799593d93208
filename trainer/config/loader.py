"""Load a spec file plus dotted overrides into a validated, typed OmegaConf config.

Validation happens in two passes, each collecting every problem before raising one `SpecError`:

1. structure: unknown keys (with the nearest valid key), wrong types, TAO aliases;
2. values: ranges, allowed values, cross-field rules (depth range, model/dataset pairing, data files).
"""

from __future__ import annotations

import difflib
import logging
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from trainer.errors import SpecError, SpecProblem
from trainer.config import schema, tao
from trainer.config.paths import resolve_paths
from trainer.config.schema import ExperimentConfig
from trainer.constants import METRIC, MODEL_TYPES

log = logging.getLogger(__name__)

Notice = Callable[[str], None]


def _stderr_notice(msg: str) -> None:
    log.warning(f"notice: {msg}")


# --------------------------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------------------------


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """`["train.optim.lr=5e-6", "dataset.train_dataset.batch_size=4"]` -> [(path, typed value), ...]."""
    parsed: list[tuple[str, Any]] = []
    problems: list[SpecProblem] = []
    for item in items:
        if "=" not in item:
            problems.append(SpecProblem(
                item, "an override must look like key.path=value (found no '='); "
                      "example: train.optim.lr=5e-6", "command-line override"))
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            problems.append(SpecProblem(item, "empty key path; example: train.num_epochs=5", "command-line override"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError as exc:
            problems.append(SpecProblem(key, f"value {raw!r} is not valid YAML: {exc}", "command-line override"))
            continue
        parsed.append((key, value))
    if problems:
        raise SpecError(problems)
    return parsed


def _set_dotted(tree: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        if part not in node or node[part] is None or not isinstance(node[part], (dict, list)):
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append({})
        node[idx] = value
    else:
        node[last] = value


# --------------------------------------------------------------------------------------------------------------
# Pass 1: structure and types
# --------------------------------------------------------------------------------------------------------------


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        inner = _unwrap(hints[f.name])
        if is_dataclass(inner):
            out += _all_paths(inner, path + ".")
        elif typing.get_origin(inner) in (list, List) and is_dataclass(_list_item(inner)):
            out += _all_paths(_list_item(inner), path + ".*.")
    return out


List = typing.List


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _list_item(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[0] if args else Any


_PATHS_CACHE: dict[type, list[str]] = {}

# names people type for keys that this schema (TAO's) spells otherwise
_SYNONYMS = {
    "learning_rate": "lr", "wd": "weight_decay", "epochs": "num_epochs", "max_epochs": "num_epochs",
    "batch": "batch_size", "bs": "batch_size", "backbone": "encoder", "num_workers": "workers",
    "warmup": "warmup_steps", "scheduler": "lr_scheduler", "gpus": "num_gpus", "output_dir": "results_dir",
}


def _paths_of(cls: type) -> list[str]:
    if cls not in _PATHS_CACHE:
        _PATHS_CACHE[cls] = _all_paths(cls)
    return _PATHS_CACHE[cls]


def _suggest(path: str, root: type = ExperimentConfig) -> Optional[str]:
    """Nearest valid key for an unknown dotted path: same leaf name elsewhere first, then spelling."""
    _ALL_PATHS = _paths_of(root)
    norm = ".".join("*" if p.isdigit() else p for p in path.split("."))
    leaf = norm.split(".")[-1]
    if leaf in _SYNONYMS:
        leaf = _SYNONYMS[leaf]
        norm = norm.rsplit(".", 1)[0] + "." + leaf if "." in norm else leaf
        if norm in _ALL_PATHS:
            return norm
    same_leaf = [p for p in _ALL_PATHS if p.split(".")[-1] == leaf and p != norm]
    if same_leaf:
        # prefer the candidate sharing the most leading components
        def shared(p: str) -> int:
            n = 0
            for a, b in zip(p.split("."), norm.split(".")):
                if a != b:
                    break
                n += 1
            return n
        return max(same_leaf, key=lambda p: (shared(p), -len(p)))
    parent = norm.rsplit(".", 1)[0] + "." if "." in norm else ""
    siblings = [p for p in _ALL_PATHS if p.startswith(parent) and "." not in p[len(parent):]]
    close = difflib.get_close_matches(norm, siblings, n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(norm, _ALL_PATHS, n=1, cutoff=0.75)
    return close[0] if close else None


def _type_name(tp: Any) -> str:
    tp = _unwrap(tp)
    if is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) in (list,):
        return f"a list of {_type_name(_list_item(tp))}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _coerce_scalar(tp: Any, value: Any) -> tuple[bool, Any]:
    """Return (ok, converted). Accepts the common YAML surprises: `5e-6` read as a string, `10.0` for an int."""
    if tp is Any:
        return True, value
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return True, value.lower() in ("true", "yes")
        return False, value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, value
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        if isinstance(value, str):
            return True, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, value
    return True, value


_DROP = object()  # marks a value that failed its check (left out so that the rest can still be validated)


def _check_tree(cls: type, raw: Any, prefix: str, origin_of: Callable[[str], Optional[str]],
                problems: list[SpecProblem], touched: list[str], root: Optional[type] = None) -> Any:
    """Validate `raw` against dataclass `cls`; return a cleaned copy (types converted)."""
    if not isinstance(raw, Mapping):
        problems.append(SpecProblem(prefix.rstrip(".") or "<root>",
                                    f"expected a mapping of keys, found {type(raw).__name__} {raw!r}",
                                    origin_of(prefix.rstrip("."))))
        return _DROP
    root = root or cls
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    cleaned: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in names:
            hint = _suggest(path, root)
            msg = f"unknown key (found {key!r} in section '{prefix.rstrip('.') or '<root>'}')"
            if hint:
                msg += f"; did you mean '{hint.replace('*', '0')}'?"
            else:
                msg += f"; valid keys here: {', '.join(sorted(names))}"
            problems.append(SpecProblem(path, msg, origin_of(path)))
            continue
        touched.append(path)
        checked = _check_value(hints[key], value, path, origin_of, problems, touched, root)
        if checked is not _DROP:
            cleaned[key] = checked
    return cleaned


def _check_value(tp: Any, value: Any, path: str, origin_of, problems, touched, root: type) -> Any:
    if value is None:
        if _is_optional(tp):
            return None
        inner = _unwrap(tp)
        if is_dataclass(inner):
            return {}
        problems.append(SpecProblem(path, f"expected {_type_name(tp)}, found null", origin_of(path)))
        return _DROP
    inner = _unwrap(tp)
    if is_dataclass(inner):
        return _check_tree(inner, value, path + ".", origin_of, problems, touched, root)
    if typing.get_origin(inner) is list:
        item_tp = _list_item(inner)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            problems.append(SpecProblem(path, f"expected {_type_name(inner)}, found {value!r}", origin_of(path)))
            return _DROP
        out = [_check_value(item_tp, item, f"{path}.{i}", origin_of, problems, touched, root)
               for i, item in enumerate(value)]
        return _DROP if any(v is _DROP for v in out) else out
    ok, conv = _coerce_scalar(inner, value)
    if not ok:
        problems.append(SpecProblem(path, f"expected {_type_name(inner)}, found {value!r}", origin_of(path)))
        return _DROP
    return conv


# --------------------------------------------------------------------------------------------------------------
# Pass 2: values
# --------------------------------------------------------------------------------------------------------------

_SPLIT_FOR_ACTION = {
    "train": ("train_dataset", "val_dataset"),
    "evaluate": ("test_dataset",),
    "inference": ("infer_dataset",),
}

_CANONICAL_DATASETS = {n.lower(): n for n in schema.MONO_DATASET_NAMES}
RELATIVE_DATASETS = ("RelativeMonoDataset", "NYUDV2Relative") + schema.TAO_RELATIVE_DATASET_NAMES
METRIC_DATASETS = ("MetricMonoDataset", "NYUDV2")


def _one_of(value: Any, allowed: Sequence[str], path: str, problems: list[SpecProblem], origin: Optional[str],
            case_insensitive: bool = False) -> Optional[str]:
    if case_insensitive:
        lookup = {a.lower(): a for a in allowed}
        if isinstance(value, str) and value.lower() in lookup:
            return lookup[value.lower()]
    elif value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    problems.append(SpecProblem(path, f"found {value!r}, expected one of: {', '.join(allowed)}{hint}", origin))
    return None


Bad = Callable[[str, str], None]


def _validate_values(spec: DictConfig, action: Optional[str], origin_of: Callable[[str], Optional[str]],
                     notice: Notice, check_files: bool, model_given: bool = True) -> list[SpecProblem]:
    """Pass 2: every value rule, section by section; returns all problems (normalising spellings in place)."""
    P: list[SpecProblem] = []

    def bad(path: str, msg: str) -> None:
        P.append(SpecProblem(path, msg, origin_of(path)))

    _check_model(spec, P, bad, origin_of)
    _check_depth_range(spec, action, P, bad, notice, origin_of)
    used = _SPLIT_FOR_ACTION.get(action or "", ())
    # without a model section (TAO Deploy specs) the model comes from the file the action reads at run time
    pair_check = model_given or action == "train"
    for split in ("train_dataset", "val_dataset", "test_dataset", "infer_dataset"):
        _check_split(spec, split, split in used, check_files, pair_check, P, bad, origin_of)
    _check_train(spec, P, bad, origin_of)
    _check_deploy(spec, P, bad, origin_of)
    _check_automl(spec, P, bad, origin_of)
    return P


def _check_model(spec: DictConfig, P: list[SpecProblem], bad: Bad, origin_of) -> None:
    m = spec.model
    if m.model_type in schema.TAO_STEREO_MODEL_TYPES:
        bad("model.model_type", f"found {m.model_type!r}: a stereo model; this skill (depth_net_mono) trains "
                                f"{' or '.join(MODEL_TYPES)}")
    else:
        mt = _one_of(m.model_type, MODEL_TYPES, "model.model_type", P, origin_of("model.model_type"), True)
        if mt:
            spec.model.model_type = mt
    enc = _one_of(m.encoder, schema.ENCODERS, "model.encoder", P, origin_of("model.encoder"), True)
    if enc:
        spec.model.encoder = enc
    if enc != "custom":
        return
    c = m.custom
    if c.embed_dim <= 0 or c.depth <= 0 or c.num_heads <= 0:
        bad("model.custom", "embed_dim, depth and num_heads must be positive integers")
    elif c.embed_dim % c.num_heads:
        bad("model.custom.num_heads", f"embed_dim {c.embed_dim} is not divisible by num_heads {c.num_heads}")
    if len(c.out_channels) != 4 or any(ch <= 0 for ch in c.out_channels):
        bad("model.custom.out_channels", f"expected 4 positive integers, found {list(c.out_channels)}")
    if c.features <= 0:
        bad("model.custom.features", f"expected a positive integer, found {c.features}")
    if c.intermediate_layers is not None:
        il = list(c.intermediate_layers)
        if len(il) != 4 or any(not 0 <= i < c.depth for i in il):
            bad("model.custom.intermediate_layers", f"expected 4 block indices in [0, {c.depth - 1}], found {il}")


def _check_depth_range(spec: DictConfig, action: Optional[str], P: list[SpecProblem], bad: Bad, notice: Notice,
                       origin_of) -> None:
    d = spec.dataset
    if spec.model.model_type == METRIC:
        if (d.min_depth is None or d.max_depth is None) and action == "train":
            for k in [k for k in ("min_depth", "max_depth") if d[k] is None]:
                bad(f"dataset.{k}", "required for MetricDepthAnything (the model outputs sigmoid * max_depth and "
                                    "the loss masks ground truth to [min_depth, max_depth]); e.g. min_depth: 0.001, "
                                    "max_depth: 10 for NYU, 80 for driving scenes")
        elif d.min_depth is not None and d.max_depth is not None:
            if d.min_depth < 0:
                bad("dataset.min_depth", f"found {d.min_depth}, expected >= 0")
            if d.max_depth <= d.min_depth:
                bad("dataset.max_depth", f"found max_depth {d.max_depth} <= min_depth {d.min_depth}; "
                                         f"expected max_depth > min_depth")
    else:
        for k in ("min_depth", "max_depth"):
            if d[k] is not None and origin_of(f"dataset.{k}") is not None:
                notice(f"dataset.{k}={d[k]} is ignored by RelativeDepthAnything (relative models are "
                       f"scale-free; valid ground truth is every finite value > 0)")
    _one_of(d.on_bad_sample, schema.BAD_SAMPLE_POLICIES, "dataset.on_bad_sample", P,
            origin_of("dataset.on_bad_sample"))
    if d.min_valid_pixels < 1:
        bad("dataset.min_valid_pixels", f"found {d.min_valid_pixels}, expected >= 1")
    if not d.frame_cache_max_gib > 0:
        bad("dataset.frame_cache_max_gib", f"found {d.frame_cache_max_gib}, expected a size in GiB > 0")


def _check_augmentation(a: Any, base: str, P: list[SpecProblem], bad: Bad, origin_of) -> None:
    pipe = _one_of(str(a.pipeline).lower(), schema.AUGMENT_PIPELINES, f"{base}.pipeline", P,
                   origin_of(f"{base}.pipeline"))
    if pipe:
        a.pipeline = pipe
    crop = list(a.crop_size)
    if len(crop) != 2 or any((not isinstance(c, int)) or c <= 0 for c in crop):
        bad(f"{base}.crop_size", f"found {crop}, expected [height, width], two positive integers (multiples of 14, "
                                 f"the ViT patch size; others are rounded to one)")
    if len(a.input_mean) != 3 or len(a.input_std) != 3 or any(v <= 0 for v in a.input_std):
        bad(base, "input_mean and input_std must have 3 values each, std > 0")
    for k in ("h_flip_prob", "color_aug_prob"):
        if not 0.0 <= a[k] <= 1.0:
            bad(f"{base}.{k}", f"found {a[k]}, expected a probability in [0, 1]")
    if a.min_scale > a.max_scale:
        bad(f"{base}.min_scale", f"found min_scale {a.min_scale} > max_scale {a.max_scale}")


def _check_source(src: Any, sp: str, used: bool, check_files: bool, pair_check: bool, is_metric: bool,
                  P: list[SpecProblem], bad: Bad, origin_of) -> None:
    if src.dataset_name or used:
        name = _one_of(src.dataset_name, schema.MONO_DATASET_NAMES, f"{sp}.dataset_name", P,
                       origin_of(f"{sp}.dataset_name"), case_insensitive=True)
        if name:
            src.dataset_name = name
            if pair_check and is_metric and name in RELATIVE_DATASETS:
                alt = "NYUDV2" if name == "NYUDV2Relative" else "MetricMonoDataset"
                bad(f"{sp}.dataset_name", f"found {name} (relative depth) with MetricDepthAnything; use {alt} for "
                                          f"metric training or set model.model_type=RelativeDepthAnything")
    gt = _one_of(src.gt_type, schema.GT_TYPES, f"{sp}.gt_type", P, origin_of(f"{sp}.gt_type"))
    if gt == "disparity" and is_metric and pair_check:
        bad(f"{sp}.gt_type", "disparity ground truth has no metric scale; MetricDepthAnything needs depth in metres "
                             "(gt_type: depth)")
    if src.depth_scale is not None and src.depth_scale <= 0:
        bad(f"{sp}.depth_scale", f"found {src.depth_scale}, expected > 0")
    if not src.data_file:
        if used:
            bad(f"{sp}.data_file", "empty; expected the path of an annotation file (one '<image> [<depth>]' per "
                                   "line; `automl convert` writes them)")
    elif check_files and used and not Path(src.data_file).is_file():
        bad(f"{sp}.data_file", f"file not found: {src.data_file}")


def _check_split(spec: DictConfig, split: str, used: bool, check_files: bool, pair_check: bool,
                 P: list[SpecProblem], bad: Bad, origin_of) -> None:
    s = spec.dataset[split]
    base = f"dataset.{split}"
    if s.batch_size < 1:
        bad(f"{base}.batch_size", f"found {s.batch_size}, expected an integer >= 1")
    if s.workers < 0:
        bad(f"{base}.workers", f"found {s.workers}, expected an integer >= 0")
    _check_augmentation(s.augmentation, f"{base}.augmentation", P, bad, origin_of)
    is_metric = spec.model.model_type == METRIC
    for i, src in enumerate(s.data_sources):
        _check_source(src, f"{base}.data_sources.{i}", used, check_files, pair_check, is_metric, P, bad, origin_of)
    if not (check_files and used):
        return
    if split in ("train_dataset", "test_dataset") and not s.data_sources:
        bad(f"{base}.data_sources", "empty; expected at least one {data_file, dataset_name} entry")
    if split == "infer_dataset" and not s.data_sources and not s.data_root:
        bad(base, "give data_sources (annotation files) or data_root (a folder of images)")


def _check_train(spec: DictConfig, P: list[SpecProblem], bad: Bad, origin_of) -> None:
    t, o = spec.train, spec.train.optim
    for k in ("num_epochs", "num_gpus", "num_nodes", "checkpoint_interval", "validation_interval",
              "accumulate_grad_batches", "log_every_n_steps"):
        if t[k] < 1:
            bad(f"train.{k}", f"found {t[k]}, expected an integer >= 1")
    if t.num_gpus > 1 and len(t.gpu_ids) not in (0, t.num_gpus):
        bad("train.gpu_ids", f"found {list(t.gpu_ids)} for num_gpus={t.num_gpus}; expected {t.num_gpus} ids")
    for k in ("num_threads", "max_steps_per_epoch"):
        if t[k] is not None and t[k] < 1:
            bad(f"train.{k}", f"found {t[k]}, expected an integer >= 1 or null")
    if t.clip_grad_norm < 0:
        bad("train.clip_grad_norm", f"found {t.clip_grad_norm}, expected >= 0 (0 disables clipping)")
    prec = _one_of(str(t.precision).lower(), schema.PRECISIONS, "train.precision", P, origin_of("train.precision"))
    if prec:
        spec.train.precision = prec
    for path, allowed in (("train.distributed_strategy", schema.DISTRIBUTED_STRATEGIES),
                          ("train.optim.monitor_name", schema.MONITOR_NAMES),
                          ("train.optim.optimizer", schema.OPTIMIZERS),
                          ("train.optim.lr_scheduler", schema.LR_SCHEDULERS)):
        _one_of(OmegaConf.select(spec, path), allowed, path, P, origin_of(path))
    if not o.lr > 0:
        bad("train.optim.lr", f"found {o.lr}, expected a learning rate > 0 (finetuning recipes use 5e-6)")
    for k, ok, expected in (("weight_decay", o.weight_decay >= 0, ">= 0"),
                            ("head_lr_multiplier", o.head_lr_multiplier > 0, "> 0"),
                            ("warmup_steps", o.warmup_steps >= 0, "an integer >= 0"),
                            ("lr_decay", 0 < o.lr_decay <= 1, "a factor in (0, 1]"),
                            ("min_lr", o.min_lr >= 0, ">= 0"),
                            ("lr_step_size", o.lr_step_size >= 1, "an integer >= 1"),
                            ("poly_power", o.poly_power > 0, "> 0")):
        if not ok:
            bad(f"train.optim.{k}", f"found {o[k]}, expected {expected}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        bad("train.optim.betas", f"found {list(o.betas)}, expected two values in [0, 1)")


def _check_deploy(spec: DictConfig, P: list[SpecProblem], bad: Bad, origin_of) -> None:
    """evaluate / inference / export / gen_trt_engine (sizes were rounded to multiples of 14 already)."""
    for section in ("evaluate", "inference"):
        b = spec[section].batch_size
        if b is not None and b < 1:
            bad(f"{section}.batch_size", f"found {b}, expected -1 (TAO's default: the split's batch size) or >= 1")
        for k in ("input_width", "input_height"):
            v = spec[section][k]
            if v is not None and v <= 0:
                bad(f"{section}.{k}", f"found {v}, expected a positive size (a multiple of 14) or null")
    e = spec.export
    if e.opset_version < 7:
        bad("export.opset_version", f"found {e.opset_version}, expected >= 17")
    for k in ("input_width", "input_height"):
        if e[k] <= 0:
            bad(f"export.{k}", f"found {e[k]}, expected a positive multiple of 14")
    if e.batch_size == 0 or e.batch_size < -1:
        bad("export.batch_size", f"found {e.batch_size}, expected -1 (dynamic) or >= 1")
    trt = spec.gen_trt_engine.tensorrt
    dt = _one_of(str(trt.data_type).upper(), schema.TRT_DATA_TYPES, "gen_trt_engine.tensorrt.data_type", P,
                 origin_of("gen_trt_engine.tensorrt.data_type"))
    if dt:
        spec.gen_trt_engine.tensorrt.data_type = dt
    if not 1 <= trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size:
        bad("gen_trt_engine.tensorrt", f"expected 1 <= min_batch_size <= opt_batch_size <= max_batch_size, found "
                                       f"{trt.min_batch_size}, {trt.opt_batch_size}, {trt.max_batch_size}")
    if trt.workspace_size <= 0:
        bad("gen_trt_engine.tensorrt.workspace_size", f"found {trt.workspace_size}, expected MiB > 0")


def _check_automl(spec: DictConfig, P: list[SpecProblem], bad: Bad, origin_of) -> None:
    a = spec.automl
    for key, allowed in (("policy", schema.AUTOML_POLICIES), ("scheduler", schema.SCHEDULERS),
                         ("sampler", schema.SAMPLERS)):
        value = _one_of(str(a[key]).lower(), allowed, f"automl.{key}", P, origin_of(f"automl.{key}"))
        if value:
            spec.automl[key] = value
    _one_of(a.export, schema.AUTOML_EXPORT, "automl.export", P, origin_of("automl.export"))
    if a.mode is not None:
        _one_of(a.mode, ("min", "max"), "automl.mode", P, origin_of("automl.mode"))
    for k, lowest in (("budget_epochs", 1), ("max_concurrent", 1)):
        if a[k] is not None and a[k] < lowest:
            bad(f"automl.{k}", f"found {a[k]}, expected an integer >= {lowest} or null")
    for k, ok, expected in (("num_trials", a.num_trials >= 1, "an integer >= 1"),
                            ("gpus_per_trial", a.gpus_per_trial is None or a.gpus_per_trial >= 0, ">= 0"),
                            ("cpus_per_trial", a.cpus_per_trial > 0, "> 0"),
                            ("grace_period", a.grace_period >= 1, "an integer >= 1"),
                            ("reduction_factor", a.reduction_factor >= 2, "an integer >= 2"),
                            ("max_failures", a.max_failures >= 0, "an integer >= 0")):
        if not ok:
            bad(f"automl.{k}", f"found {a[k]}, expected {expected}")


# --------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise SpecError([SpecProblem("<file>", f"{path} is a folder; expected a YAML spec file")], str(path))
    if not path.is_file():
        raise SpecError([SpecProblem("<file>", f"spec file not found: {path}")], str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError([SpecProblem("<file>", f"not a text file: byte {exc.start} is not UTF-8 "
                                               f"(0x{exc.object[exc.start]:02x}); expected a YAML spec in UTF-8 text")],
                        str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError([SpecProblem("<file>", f"{where}not valid YAML ({getattr(exc, 'problem', exc)})")],
                        str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError([SpecProblem("<root>", f"expected a mapping of sections, found {type(data).__name__}")],
                        str(path))
    return data


def _apply_aliases(raw: dict, notice: Notice) -> None:
    for old, new in schema.KEY_ALIASES.items():
        if old in raw:
            value = raw.pop(old)
            if old == "automl_enabled":
                if isinstance(value, bool):
                    value = "auto" if value else "off"
                else:
                    value = str(value)
            _set_dotted(raw, new, value)


def _matches(pattern: str, path: str) -> bool:
    """True when dotted `path` (digits normalised to *) is `pattern` or lies under it; `*` matches one part."""
    pat, parts = pattern.split("."), path.split(".")
    return len(parts) >= len(pat) and all(a == "*" or a == b for a, b in zip(pat, parts))


def _notice_unused(touched: list[str], notice: Notice, extra: Sequence[str] = ()) -> None:
    """One line per unused key the spec sets: `accepted, not used: KEY`. A whole unused section (e.g. `wandb`) is
    one line; the same key in several dataset splits is one line naming the splits."""
    found: dict[str, list[str]] = {}  # key (split as *) -> splits
    for path in touched:
        norm = ".".join("*" if p.isdigit() else p for p in path.split("."))
        for pattern in list(schema.UNUSED_KEYS) + list(extra):
            if _matches(pattern, norm):
                parts = norm.split(".")[:len(pattern.split("."))]
                split = None
                if len(parts) > 1 and parts[0] == "dataset" and parts[1] in _ALL_SPLITS:
                    split, parts[1] = parts[1], "*"
                splits = found.setdefault(".".join(parts), [])
                if split and split not in splits:
                    splits.append(split)
                break
    for key, splits in found.items():
        if len(splits) == 1:
            key = key.replace("*", splits[0], 1)
        elif splits:
            names = ",".join(s.replace("_dataset", "") for s in splits)
            key = key.replace("dataset.*.", "dataset.{" + names + "}_dataset.", 1)
        notice(f"accepted, not used: {key}")


_ALL_SPLITS = ("train_dataset", "val_dataset", "test_dataset", "infer_dataset")


def build_spec(raw: Optional[Mapping] = None, overrides: Sequence[str] | Sequence[tuple[str, Any]] = (),
               *, source: Optional[str] = None, action: Optional[str] = None, notice: Optional[Notice] = None,
               check_files: bool = True, base: Optional[Mapping] = None,
               base_dir: Optional[str | Path] = None) -> DictConfig:
    """Validate `raw` (a spec as a plain mapping) with `overrides` on top and return the typed spec.

    Relative path values are made absolute under `base_dir` (default: the current directory), see
    `trainer.config.paths`.
    `base`, when given, is a plain mapping applied under `raw` (e.g. the embedded demo spec).
    `action` selects which dataset splits must name existing files (train: train+val, evaluate: test,
    inference: infer).
    """
    notice = notice or _stderr_notice
    tree: dict = {}
    file_keys: set[str] = set()
    override_keys: set[str] = set()

    def merge_into(dst: dict, src: Mapping) -> None:
        for k, v in src.items():
            if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
                merge_into(dst[k], v)
            else:
                dst[k] = _plain(v)

    if base:
        merge_into(tree, base)
    raw_tree = _plain(dict(raw or {}))
    _apply_aliases(raw_tree, notice)
    _collect_keys(raw_tree, "", file_keys)
    merge_into(tree, raw_tree)
    parsed = parse_overrides(overrides) if overrides and isinstance(next(iter(overrides)), str) \
        else list(overrides)
    for key, value in parsed:
        key = schema.KEY_ALIASES.get(key, key)
        if key == "automl.policy" and isinstance(value, bool):
            value = "auto" if value else "off"
        override_keys.add(key)
        _set_dotted(tree, key, value)

    def origin_of(path: str) -> Optional[str]:
        norm = path
        if norm in override_keys or any(norm.startswith(k + ".") or k.startswith(norm + ".")
                                        for k in override_keys):
            return "command-line override"
        if norm in file_keys:
            return source or "spec"
        return None

    problems: list[SpecProblem] = []
    touched: list[str] = []
    problems += _tao_before(tree, action, notice, check_files, Path(base_dir) if base_dir else None)
    model_given = "model" in tree
    cleaned = _check_tree(ExperimentConfig, tree, "", origin_of, problems, touched)
    spec = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cleaned if cleaned is not _DROP else {})
    problems += _tao_after(spec, notice)
    # value checks run on whatever passed the structural checks, so that one run reports everything
    problems += _validate_values(spec, action, origin_of, notice, check_files, model_given)
    if problems:
        raise SpecError(problems, source)
    unused_augmentation = tao.apply_pipeline(spec)
    _notice_unused([p for p in touched if p in file_keys or p in override_keys], notice, unused_augmentation)
    return spec


def _tao_before(tree: dict, action: Optional[str], notice: Notice, check_files: bool,
                base_dir: Optional[Path]) -> list[SpecProblem]:
    """TAO conventions on the plain tree (trainer.config.tao): empty paths, placeholders, -1 batch sizes; then
    relative paths made absolute under `base_dir` (default: the cwd; trainer.config.paths), so that every trial,
    rank and node sees the same files; then the model section of specs that have none, from the files named."""
    tao.normalize_raw(tree)
    resolve_paths(tree, base_dir)
    return tao.model_from_artifacts(tree, action, notice) if check_files else []


def _tao_after(spec: DictConfig, notice: Notice) -> list[SpecProblem]:
    """TAO conventions on the typed spec: sizes rounded to multiples of 14, TAO's engine shape keys."""
    tao.round_sizes(spec, notice)
    return tao.map_engine_shapes(spec, notice) + tao.check_interval_unit(spec, notice)


def build_config(cls: type, raw: Optional[Mapping], overrides: Sequence[str] = (), *,
                 source: Optional[str] = None,
                 validate: Optional[Callable[[DictConfig, Callable[[str], Optional[str]]], list[SpecProblem]]] = None,
                 ) -> DictConfig:
    """Validate a plain mapping against any schema dataclass `cls` (e.g. the convert spec) the same way specs are:
    unknown keys with suggestions, types, then `validate(cfg, origin_of)` for value rules; all problems at once."""
    tree = _plain(dict(raw or {}))
    file_keys: set[str] = set()
    _collect_keys(tree, "", file_keys)
    override_keys: set[str] = set()
    for key, value in parse_overrides(overrides):
        override_keys.add(key)
        _set_dotted(tree, key, value)
    resolve_paths(tree)

    def origin_of(path: str) -> Optional[str]:
        if path in override_keys or any(path.startswith(k + ".") or k.startswith(path + ".") for k in override_keys):
            return "command-line override"
        return (source or "spec") if path in file_keys else None

    problems: list[SpecProblem] = []
    cleaned = _check_tree(cls, tree, "", origin_of, problems, [], cls)
    cfg = OmegaConf.merge(OmegaConf.structured(cls), cleaned if cleaned is not _DROP else {})
    if validate is not None:
        problems += validate(cfg, origin_of)
    if problems:
        raise SpecError(problems, source)
    return cfg


def load_config(cls: type, path: str | Path, overrides: Sequence[str] = (), *,
                validate: Optional[Callable[[DictConfig, Callable[[str], Optional[str]]], list[SpecProblem]]] = None,
                ) -> DictConfig:
    """`build_config` on a YAML file."""
    return build_config(cls, _read_yaml(Path(path)), overrides, source=str(path), validate=validate)


def _collect_keys(tree: Any, prefix: str, out: set[str]) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            path = f"{prefix}{k}"
            out.add(path)
            _collect_keys(v, path + ".", out)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            path = f"{prefix}{i}"
            out.add(path)
            _collect_keys(v, path + ".", out)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_spec(path: Optional[str | Path] = None, overrides: Sequence[str] = (), *, action: Optional[str] = None,
              notice: Optional[Notice] = None, check_files: bool = True,
              base: Optional[Mapping] = None) -> DictConfig:
    """Read a spec YAML file (TAO depth_net keys accepted) plus dotted overrides; validate; return the typed spec."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    return build_spec(raw, overrides, source=str(path) if path is not None else None, action=action,
                      notice=notice, check_files=check_files, base=base)


def with_overrides(spec: DictConfig, values: Mapping[str, Any], *, action: Optional[str] = None,
                   check_files: bool = False, notice: Optional[Notice] = None,
                   base_dir: Optional[str | Path] = None) -> DictConfig:
    """A copy of `spec` with dotted `values` applied and validated again (used for search trials); relative paths
    among `values` mean `base_dir` (default: the current directory)."""
    return build_spec(_plain(spec), list(values.items()), action=action, check_files=check_files,
                      notice=notice or (lambda _m: None), base_dir=base_dir)


def to_plain(spec: DictConfig) -> dict:
    """The spec as plain Python containers (for JSON, checkpoints and MLflow)."""
    return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]


def save_spec(spec: DictConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(spec))


def known_key(path: str, root: type = ExperimentConfig) -> bool:
    """True when `path` (dotted, list indices as digits) names a key of the spec schema."""
    norm = ".".join("*" if p.isdigit() else p for p in path.split("."))
    return norm in _paths_of(root)


def nearest_key(path: str) -> Optional[str]:
    return _suggest(path)
