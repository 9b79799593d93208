"""TensorRT engines from exported ONNX files: `build_engine(spec)` and `EngineRunner` (runs one engine).

`tensorrt` is optional: it is imported only inside the functions that talk to it, so shape profiles, precision
rules and sidecars work without it. Where it does not import (or no GPU is seen), `build_engine` raises
`TensorRTUnavailableError` (a `UserError`) naming the ready ONNX file, how it validated, and how to get TensorRT.
An engine has one optimization profile, BF16 (default) / FP16 / FP32 precision (FP16 refused for vitl), a
timing cache reused across builds, and a sidecar `<engine>.json` carrying the ONNX sidecar's model section.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig

from trainer.constants import PATCH_SIZE as PATCH
from trainer.deploy.onnx import default_onnx_path, random_normalised_images
from trainer.deploy.sidecar import (
    INPUT_NAME,
    OUTPUT_NAME,
    Notice,
    read_sidecar,
    sidecar_path,
    stderr_notice,
    write_json,
)
from trainer.errors import SpecError, SpecProblem, UserError

log = logging.getLogger(__name__)

__all__ = [
    "EngineResult",
    "EngineRunner",
    "FP16_REFUSED_ENCODERS",
    "INSTALL_HINT",
    "ShapeProfile",
    "TensorRTUnavailableError",
    "build_engine",
    "check_precision",
    "default_engine_path",
    "engine_profile",
    "engine_sidecar",
    "parse_layer_precisions",
    "tensorrt_status",
    "tensorrt_unavailable_message",
]

DATA_TYPES = ("BF16", "FP32", "FP16")
LAYER_PRECISIONS = ("fp32", "fp16", "bf16")
FP16_REFUSED_ENCODERS = ("vitl",)  # DINOv2 ViT-L activations overflow FP16 (attention, LayerNorm); BF16 does not
ENGINE_SIDECAR_FORMAT = "depth-automl/tensorrt-engine/1"
INSTALL_HINT = (
    "  - pip install tensorrt --extra-index-url https://pypi.nvidia.com  (NVIDIA's wheels; needs an NVIDIA GPU and "
    "driver), then run this command again; or\n"
    "  - run it inside an NGC container that ships TensorRT (e.g. nvcr.io/nvidia/pytorch:<yy.mm>-py3 or "
    "nvcr.io/nvidia/tensorrt:<yy.mm>-py3)"
)


class TensorRTUnavailableError(UserError):
    """TensorRT (or a GPU for it) is not available here; the message says what is ready and what to install."""


class EngineBuildError(UserError):
    """TensorRT rejected the ONNX file or could not build an engine from it."""


# --------------------------------------------------------------------------------------------------------------
# Pure Python: shapes, precision rules, sidecars
# --------------------------------------------------------------------------------------------------------------

Shape = tuple[int, int, int, int]
KEEP_ASPECT_RANGE = 2  # default profile of dynamic-size files: short side s .. KEEP_ASPECT_RANGE * s on H and W


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile of the `image` input: [batch, 3, height, width] at min / opt / max."""

    min: Shape
    opt: Shape
    max: Shape

    @property
    def fixed_hw(self) -> Optional[tuple[int, int]]:
        """(height, width) when the profile admits only one size."""
        return (self.min[2], self.min[3]) if self.min[2:] == self.max[2:] else None

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> "ShapeProfile":
        return cls(tuple(int(v) for v in d["min"]), tuple(int(v) for v in d["opt"]),  # type: ignore[arg-type]
                   tuple(int(v) for v in d["max"]))  # type: ignore[arg-type]

    def trtexec_args(self, name: str = INPUT_NAME) -> str:
        def fmt(s: Shape) -> str:
            return f"{name}:{'x'.join(str(v) for v in s)}"

        return f"--minShapes={fmt(self.min)} --optShapes={fmt(self.opt)} --maxShapes={fmt(self.max)}"


def _given(value: Any) -> Optional[int]:
    """-1 (the schema's "take it from the ONNX file") -> None."""
    return None if value is None or int(value) == -1 else int(value)


def _short_side(meta: Mapping[str, Any]) -> int:
    """The evaluation short side of an ONNX file: its training crop's (the pre-processing evaluate/inference use
    with it), else the export size's."""
    crop = ((meta.get("preprocessing") or {}).get("augmentation") or {}).get("crop_size")
    if crop:
        return int(min(crop))
    return min(int(meta["input_height"]), int(meta["input_width"]))


def engine_profile(gen: Any, meta: Mapping[str, Any]) -> ShapeProfile:
    """The optimization profile from the `gen_trt_engine` section and the ONNX sidecar `meta`.

    Batch: a fixed-batch ONNX file gives its batch (the `tensorrt.*_batch_size` keys must then be left at 1 or equal
    it); a dynamic one takes `tensorrt.min/opt/max_batch_size`, or `gen_trt_engine.batch_size` (>= 1) for a
    fixed-batch engine. Height/width: a fixed-size ONNX file gives its size (`tensorrt.height/width`, when set,
    must equal it); a dynamic one takes `tensorrt.height/width` (default: the export size) as opt and
    `tensorrt.min_/max_height/width` as the range, by default the sizes the keep-aspect pre-processing produces
    for aspect ratios up to 2:1: from `s` to `2 * s` on both sides, `s` = the training crop's short side recorded in
    the sidecar, else the export size's (518 -> 518..1036; widened to include opt). Raises `SpecError` naming the key.
    """
    problems: list[SpecProblem] = []
    batches = _profile_batches(gen, meta, problems)
    h = _profile_side(gen.tensorrt, meta, "height", problems)
    w = _profile_side(gen.tensorrt, meta, "width", problems)
    if problems:
        raise SpecError(problems)
    return ShapeProfile((batches[0], 3, h[0], w[0]), (batches[1], 3, h[1], w[1]), (batches[2], 3, h[2], w[2]))


def _profile_batches(gen: Any, meta: Mapping[str, Any], problems: list[SpecProblem]) -> tuple[int, int, int]:
    """min/opt/max batch of the profile (see `engine_profile`); what contradicts the ONNX file goes to `problems`."""
    t = gen.tensorrt
    source = meta.get("onnx_file", "the ONNX file")
    keys = (int(t.min_batch_size), int(t.opt_batch_size), int(t.max_batch_size))
    fixed_batch = int(meta.get("batch_size", -1))
    engine_batch = _given(gen.get("batch_size"))
    if engine_batch is not None and engine_batch < 1:
        problems.append(SpecProblem("gen_trt_engine.batch_size", f"found {engine_batch}, expected -1 or >= 1"))
    if fixed_batch != -1:
        if keys not in ((1, 1, 1), (fixed_batch,) * 3):
            problems.append(SpecProblem(
                "gen_trt_engine.tensorrt", f"min/opt/max_batch_size found {keys[0]}/{keys[1]}/{keys[2]}, but "
                f"{source} has a fixed batch of {fixed_batch}; leave them at 1 or set them to {fixed_batch}, or "
                f"export again with export.batch_size=-1"))
        if engine_batch is not None and engine_batch != fixed_batch:
            problems.append(SpecProblem("gen_trt_engine.batch_size", f"found {engine_batch}, but {source} has a "
                                                                     f"fixed batch of {fixed_batch}"))
        return (fixed_batch,) * 3
    if engine_batch is not None:
        if keys not in ((1, 1, 1), (engine_batch,) * 3):
            problems.append(SpecProblem(
                "gen_trt_engine.batch_size", f"found {engine_batch} (a fixed-batch engine), but "
                f"tensorrt.min/opt/max_batch_size are {keys[0]}/{keys[1]}/{keys[2]}; set one or the other"))
        return (engine_batch,) * 3
    if not 1 <= keys[0] <= keys[1] <= keys[2]:
        problems.append(SpecProblem("gen_trt_engine.tensorrt", f"expected 1 <= min_batch_size <= "
                                                               f"opt_batch_size <= max_batch_size, found "
                                                               f"{keys[0]}, {keys[1]}, {keys[2]}"))
    return keys


def _profile_side(t: Any, meta: Mapping[str, Any], side: str, problems: list[SpecProblem]) -> tuple[int, int, int]:
    """min/opt/max of `side` ("height" or "width") of the profile (see `engine_profile`)."""
    source = meta.get("onnx_file", "the ONNX file")
    size = int(meta[f"input_{side}"])
    opt, lo, hi = _given(t.get(side)), _given(t.get(f"min_{side}")), _given(t.get(f"max_{side}"))
    if not meta.get("dynamic_hw"):
        for key, value in ((side, opt), (f"min_{side}", lo), (f"max_{side}", hi)):
            if value is not None and value != size:
                problems.append(SpecProblem(
                    f"gen_trt_engine.tensorrt.{key}", f"found {value}, but {source} has a fixed {side} of "
                    f"{size} (exported without dynamic height/width); leave it at -1 or export again "
                    f"with export.dynamic_hw=true"))
        return (size,) * 3
    opt = size if opt is None else opt
    short = _short_side(meta)  # keep-aspect inputs: one side is the short side, the other longer
    lo = min(short, opt) if lo is None else lo
    hi = max(KEEP_ASPECT_RANGE * short, opt) if hi is None else hi
    for key, value in ((side, opt), (f"min_{side}", lo), (f"max_{side}", hi)):
        if value <= 0 or value % PATCH:
            problems.append(SpecProblem(f"gen_trt_engine.tensorrt.{key}",
                                        f"found {value}, expected a positive multiple of {PATCH}"))
    if not lo <= opt <= hi:
        problems.append(SpecProblem(f"gen_trt_engine.tensorrt.{side}",
                                    f"expected min_{side} <= {side} <= max_{side}, found {lo}, {opt}, {hi}"))
    return lo, opt, hi


def check_precision(data_type: str, encoder: Optional[str], source: str, notice: Notice = stderr_notice) -> str:
    """The engine precision (BF16 | FP32 | FP16). FP16 is refused for the encoders in `FP16_REFUSED_ENCODERS`."""
    dt = str(data_type).upper()
    if dt not in DATA_TYPES:
        raise SpecError([SpecProblem("gen_trt_engine.tensorrt.data_type",
                                     f"found {data_type!r}, expected one of {', '.join(DATA_TYPES)}")])
    if dt == "FP16" and encoder in FP16_REFUSED_ENCODERS:
        raise UserError(
            f"gen_trt_engine.tensorrt.data_type: FP16 is refused for {source} (encoder {encoder}): FP16 overflows in "
            f"DINOv2 ViT-L (attention and LayerNorm activations exceed FP16's largest value, 65504, and the depth "
            f"map turns inf/NaN). Use BF16 (the default: FP32's range, same speed on SM80+ GPUs) or FP32")
    if dt == "FP16":
        notice(f"FP16 engine for encoder {encoder}: DINOv2 activations can overflow FP16; compare its depth with the "
               f"ONNX file's (automl evaluate) or use BF16 (the default)")
    return dt


def parse_layer_precisions(entries: Sequence[str]) -> list[tuple[str, str]]:
    """`tensorrt.layers_precision` entries `"<layer name pattern>:<fp32|fp16|bf16>"` (fnmatch patterns over
    TensorRT layer names, e.g. `"*LayerNormalization*:fp32"`) -> [(pattern, precision)]."""
    rules: list[tuple[str, str]] = []
    problems: list[SpecProblem] = []
    for i, entry in enumerate(entries or []):
        pattern, sep, precision = str(entry).rpartition(":")
        if not sep or not pattern or precision.lower() not in LAYER_PRECISIONS:
            problems.append(SpecProblem(f"gen_trt_engine.tensorrt.layers_precision.{i}",
                                        f"found {entry!r}, expected '<layer name pattern>:<precision>' with "
                                        f"precision one of {', '.join(LAYER_PRECISIONS)}, e.g. "
                                        f"'*LayerNormalization*:fp32'"))
            continue
        rules.append((pattern, precision.lower()))
    if problems:
        raise SpecError(problems)
    return rules


def default_engine_path(spec: DictConfig, onnx_file: Path, data_type: str) -> Path:
    """`gen_trt_engine.trt_engine`, else `<gen_trt_engine.results_dir or the ONNX folder>/<stem>.<precision>.engine`."""
    g = spec.gen_trt_engine
    if g.trt_engine:
        return Path(g.trt_engine)
    return Path(g.results_dir or onnx_file.parent) / f"{onnx_file.stem}.{data_type.lower()}.engine"


def onnx_validation_line(meta: Mapping[str, Any]) -> str:
    """'passed (onnxruntime vs PyTorch max |diff| 9.5e-07 at [2, 3, 518, 518], ...)' from an ONNX sidecar."""
    v = meta.get("validation") or {}
    parts = [f"{c['max_abs_diff']:.2g} at {c['input_shape']}" for c in (v.get("onnxruntime") or {}).get("checks", [])
             if "max_abs_diff" in c]
    detail = f" (onnxruntime vs PyTorch max |diff| {', '.join(parts)})" if parts else ""
    return f"{v.get('status', 'unknown')}{detail}"


def tensorrt_status() -> tuple[bool, str]:
    """(True, 'TensorRT 10.x') when an engine can be built here, else (False, why not)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install failing to load its libraries
        return False, f"the tensorrt Python package does not import here ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return False, "tensorrt imports, but no CUDA GPU is visible to build for"
    return True, f"TensorRT {getattr(tensorrt, '__version__', '?')}"


def tensorrt_unavailable_message(reason: str, onnx_file: Path, meta: Mapping[str, Any],
                                 profile: Optional[ShapeProfile], data_type: str, engine_file: Path) -> str:
    """What a user without TensorRT reads: the ONNX file is ready (and how it validated), how to get TensorRT,
    the equivalent trtexec command, and how to evaluate the ONNX file meanwhile."""
    flag = {"BF16": " --bf16", "FP16": " --fp16"}.get(data_type, "")
    shapes = f" {profile.trtexec_args()}" if profile is not None else ""
    return (
        f"cannot build the TensorRT engine: {reason}.\n"
        f"The ONNX file is ready: {onnx_file} (validation {onnx_validation_line(meta)}).\n"
        f"To build {engine_file}:\n{INSTALL_HINT}\n"
        f"  - or with TensorRT's trtexec: trtexec --onnx={onnx_file} --saveEngine={engine_file}{flag}{shapes}\n"
        f"    (automl evaluate/inference read the engine's sidecar, which only this command writes)\n"
        f"Meanwhile the ONNX file runs with ONNX Runtime: automl evaluate -e SPEC evaluate.onnx_file={onnx_file}"
    )


def engine_sidecar(onnx_meta: Mapping[str, Any], *, onnx_file: Path, engine_file: Path, data_type: str,
                   profile: ShapeProfile, tensorrt_version: str, gpu_name: str, compute_capability: str,
                   build_seconds: float, workspace_mib: int, timing_cache: Optional[Path],
                   timing_cache_loaded: bool, layer_precisions: Sequence[tuple[str, str]],
                   parity: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The engine's JSON sidecar: how it was built, plus what evaluate/inference need from the ONNX sidecar."""
    return {
        "format": ENGINE_SIDECAR_FORMAT,
        "engine_file": str(engine_file),
        "precision": data_type,
        "profile": profile.as_dict(),
        "fixed_hw": list(profile.fixed_hw) if profile.fixed_hw else None,
        "input": {**dict(onnx_meta.get("input") or {}), "name": INPUT_NAME},
        "output": {**dict(onnx_meta.get("output") or {}), "name": OUTPUT_NAME},
        "model": dict(onnx_meta["model"]),
        "source_onnx": str(onnx_file),
        "source_onnx_validation": (onnx_meta.get("validation") or {}).get("status"),
        "checkpoint": onnx_meta.get("checkpoint"),
        "tensorrt_version": tensorrt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "workspace_mib": int(workspace_mib),
        "layer_precisions": [f"{p}:{d}" for p, d in layer_precisions],
        "timing_cache": str(timing_cache) if timing_cache else None,
        "timing_cache_loaded": bool(timing_cache_loaded),
        "build_seconds": round(float(build_seconds), 2),
        "built_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "parity_vs_onnxruntime": dict(parity) if parity else None,
        "torch_version": torch.__version__,
    }


# --------------------------------------------------------------------------------------------------------------
# TensorRT itself (imported lazily)
# --------------------------------------------------------------------------------------------------------------


def _import_tensorrt() -> Any:
    import tensorrt as trt

    return trt


_LOGGER: Any = None


def _logger(trt: Any, verbose: bool = False) -> Any:
    """One TensorRT logger for the process (TensorRT keeps the first one it is given)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(_LOGGER, "")
    _LOGGER.min_severity = trt.Logger.Severity.VERBOSE if verbose else trt.Logger.Severity.WARNING
    return _LOGGER


def _trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 10


def _trt_dtype(trt: Any, precision: str) -> Any:
    return {"fp32": trt.DataType.FLOAT, "fp16": trt.DataType.HALF, "bf16": trt.DataType.BF16}[precision]


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool, "UINT8": torch.uint8}
    for name, t in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return t
    raise EngineBuildError(f"engine tensor type {dtype} has no torch equivalent")


def _build_plan(trt: Any, onnx_file: Path, *, profile: ShapeProfile, data_type: str, workspace_mib: int,
                timing_cache: bytes, layer_precisions: Sequence[tuple[str, str]], verbose: bool
                ) -> tuple[bytes, bytes, dict[str, Any]]:
    """ONNX -> serialized engine with the TensorRT Python API. Returns (plan, timing cache, notes)."""
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 0 if _trt_major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_file}: the TensorRT ONNX parser failed:\n" +
                               "\n".join(f"  - {e}" for e in errors[:10]))
    if network.num_inputs != 1 or network.get_input(0).name != INPUT_NAME:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise EngineBuildError(f"{onnx_file}: inputs {names}; expected one input named {INPUT_NAME!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if data_type == "BF16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif data_type == "FP16":
        config.set_flag(trt.BuilderFlag.FP16)
    pinned = _pin_precisions(trt, network, layer_precisions)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_file}: TensorRT built no engine (see its log above; a workspace too small "
                               f"for the largest shape is common: raise gen_trt_engine.tensorrt.workspace_size)")
    new_cache = config.get_timing_cache().serialize()
    return bytes(plan), bytes(new_cache), {"pinned_layers": pinned, "num_layers": network.num_layers}


def _pin_precisions(trt: Any, network: Any, layer_precisions: Sequence[tuple[str, str]]) -> int:
    """Sets the precision (and float output types) of every layer whose name matches a rule's pattern (first
    matching rule wins). Returns how many layers were pinned."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for pattern, precision in layer_precisions:
            if fnmatch.fnmatchcase(layer.name, pattern):
                layer.precision = _trt_dtype(trt, precision)
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16):
                        layer.set_output_type(j, _trt_dtype(trt, precision))
                pinned += 1
                break
    return pinned


class EngineRunner:
    """One deserialized engine with one execution context; `__call__(x [B,3,H,W]) -> [B,H,W]` on the GPU, with
    device buffers held by torch CUDA tensors."""

    def __init__(self, plan: bytes, device: torch.device, *, source: str = "engine"):
        trt = _import_tensorrt()
        self.trt = trt
        self.device = device
        self.source = source
        self.runtime = trt.Runtime(_logger(trt))
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise UserError(f"{source}: TensorRT cannot load this engine (built by another TensorRT version or "
                                f"for another GPU?); build it again here with automl gen_trt_engine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
            raise UserError(f"{source}: engine inputs {inputs} / outputs {outputs}; expected [{INPUT_NAME!r}] / "
                            f"[{OUTPUT_NAME!r}]")
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(INPUT_NAME))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(OUTPUT_NAME))
        lo, _opt, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.profile_min, self.profile_max = tuple(int(v) for v in lo), tuple(int(v) for v in hi)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, dtype=self.input_dtype, non_blocking=True).contiguous()
        with torch.cuda.device(self.device):
            if not self.context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise UserError(f"{self.source}: input shape {tuple(x.shape)} is outside the engine's profile "
                                f"{self.profile_min} .. {self.profile_max}")
            out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=self.output_dtype,
                              device=self.device)
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.source}: TensorRT execution failed")
            stream.synchronize()
        return out.float().cpu()


def _engine_parity(runner: EngineRunner, onnx_file: Path, shape: Shape, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The engine against ONNX Runtime (CPU, fp32) on random normalised images at `shape`."""
    import onnxruntime as ort

    x = random_normalised_images(shape, meta["input"]["mean"], meta["input"]["std"], seed=7)
    ref = torch.from_numpy(ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
                           .run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    got = runner(x)
    diff = (got.double() - ref.double()).abs()
    rel = diff / ref.double().abs().clamp_min(1e-6)
    return {"input_shape": list(shape), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "mean_rel_diff": float(rel.mean()), "finite": bool(torch.isfinite(got).all())}


@dataclass
class EngineResult:
    """What `build_engine` wrote."""

    engine_file: Path
    sidecar: Path
    meta: dict[str, Any]

    def summary(self) -> str:
        m = self.meta
        lines = [f"built {m['precision']} TensorRT engine {self.engine_file} from {m['source_onnx']}",
                 f"  profile min {m['profile']['min']} opt {m['profile']['opt']} max {m['profile']['max']}",
                 f"  TensorRT {m['tensorrt_version']} on {m['gpu']} (sm_{m['compute_capability']}), "
                 f"{m['build_seconds']:.1f} s, timing cache {m['timing_cache']}"
                 f"{' (reused)' if m['timing_cache_loaded'] else ' (new)'}"]
        p = m.get("parity_vs_onnxruntime")
        if p and "max_abs_diff" in p:
            lines.append(f"  engine vs onnxruntime fp32 at {p['input_shape']}: max |diff| {p['max_abs_diff']:.3g}, "
                         f"mean relative {p['mean_rel_diff']:.3g}")
        lines.append(f"  sidecar {self.sidecar}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# build_engine, step by step: plan (no TensorRT needed), GPU, build, record
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EnginePlan:
    """What one build reads and writes, checked before TensorRT is needed."""

    onnx_file: Path
    meta: dict[str, Any]  # the ONNX sidecar
    data_type: str
    engine_file: Path
    profile: ShapeProfile
    rules: list[tuple[str, str]]
    cache_file: Path


@dataclass(frozen=True)
class _Gpu:
    device: torch.device
    name: str
    capability: tuple[int, int]


def _plan_engine(spec: DictConfig, notice: Notice) -> _EnginePlan:
    """The ONNX file (validated export), precision, engine path, profile and layer rules; `UserError`/`SpecError`
    naming the key for each problem."""
    g = spec.gen_trt_engine
    onnx_file = Path(g.onnx_file) if g.onnx_file else default_onnx_path(spec)
    if not onnx_file.is_file():
        raise UserError(f"gen_trt_engine.onnx_file: file not found: {onnx_file}; export the model first "
                        f"(automl export -e SPEC export.checkpoint=CKPT)")
    meta = read_sidecar(onnx_file)
    if (meta.get("validation") or {}).get("status") != "passed":
        raise UserError(f"{onnx_file}: its export validation did not pass ({sidecar_path(onnx_file)}: "
                        f"{(meta.get('validation') or {}).get('problems')}); export again before building an engine")
    data_type = check_precision(g.tensorrt.data_type, meta["model"].get("encoder"), str(onnx_file), notice)
    engine_file = default_engine_path(spec, onnx_file, data_type)
    if engine_file.exists() and not g.overwrite:
        raise UserError(f"gen_trt_engine.trt_engine: {engine_file} already exists and gen_trt_engine.overwrite is "
                        f"false; pass --force (or gen_trt_engine.overwrite=true) to replace it")
    profile = engine_profile(g, meta)
    rules = parse_layer_precisions(list(g.tensorrt.layers_precision))
    cache_file = Path(g.timing_cache) if g.timing_cache else engine_file.parent / "timing.cache"
    return _EnginePlan(onnx_file, meta, data_type, engine_file, profile, rules, cache_file)


def _build_gpu(gpu: int, plan: _EnginePlan) -> _Gpu:
    """The CUDA device `gen_trt_engine.gpu_id` names, able to run the plan's precision."""
    if gpu >= torch.cuda.device_count():
        raise UserError(f"gen_trt_engine.gpu_id: found {gpu}, but {torch.cuda.device_count()} CUDA device(s) are "
                        f"visible")
    device = torch.device(f"cuda:{gpu}")
    capability = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if plan.data_type == "BF16" and capability < (8, 0):
        raise UserError(f"gen_trt_engine.tensorrt.data_type: BF16 needs an SM80+ GPU (Ampere or newer); "
                        f"{name} is sm_{capability[0]}{capability[1]}. Use FP32" +
                        ("" if plan.meta["model"].get("encoder") in FP16_REFUSED_ENCODERS else " or FP16"))
    return _Gpu(device, name, (int(capability[0]), int(capability[1])))


def _build_and_write(trt: Any, plan: _EnginePlan, gpu: _Gpu, g: Any, progress: bool) -> tuple[bytes, bool, float]:
    """Builds the engine with the timing cache, writes both. Returns (plan bytes, cache was loaded, seconds)."""
    cache_in = plan.cache_file.read_bytes() if plan.cache_file.is_file() else b""
    if progress:
        log.info(f"building a {plan.data_type} TensorRT {trt.__version__} engine on {gpu.name} from {plan.onnx_file} "
                 f"(profile {plan.profile.as_dict()}; timing cache {plan.cache_file}"
                 f"{' reused' if cache_in else ' new'})")
    started = time.time()
    with torch.cuda.device(gpu.device):
        engine, cache_out, _notes = _build_plan(trt, plan.onnx_file, profile=plan.profile, data_type=plan.data_type,
                                                workspace_mib=int(g.tensorrt.workspace_size), timing_cache=cache_in,
                                                layer_precisions=plan.rules, verbose=bool(g.verbose))
    seconds = time.time() - started
    plan.engine_file.parent.mkdir(parents=True, exist_ok=True)
    plan.engine_file.write_bytes(engine)
    plan.cache_file.parent.mkdir(parents=True, exist_ok=True)
    plan.cache_file.write_bytes(cache_out)
    return engine, bool(cache_in), seconds


def build_engine(spec: DictConfig, *, notice: Notice = stderr_notice, progress: bool = True) -> EngineResult:
    """Build a TensorRT engine from `gen_trt_engine.onnx_file` (default: the export's ONNX file); see the module
    docstring. Everything that needs no TensorRT is checked first (files, sidecar, precision, profile), then
    `TensorRTUnavailableError` is raised where TensorRT or a GPU is missing."""
    from trainer.records import StatusFile

    g = spec.gen_trt_engine
    plan = _plan_engine(spec, notice)
    available, reason = tensorrt_status()
    if not available:
        raise TensorRTUnavailableError(tensorrt_unavailable_message(
            reason, plan.onnx_file, plan.meta, plan.profile, plan.data_type, plan.engine_file))
    trt = _import_tensorrt()
    gpu = _build_gpu(int(g.gpu_id), plan)
    engine, cache_loaded, build_seconds = _build_and_write(trt, plan, gpu, g, progress)
    try:
        parity: Optional[dict[str, Any]] = _engine_parity(
            EngineRunner(engine, gpu.device, source=str(plan.engine_file)), plan.onnx_file, plan.profile.opt,
            plan.meta)
    except Exception as exc:  # noqa: BLE001 - the engine is built; a failing comparison is recorded, not fatal
        parity = {"error": f"{type(exc).__name__}: {exc}"}
    side_meta = engine_sidecar(
        plan.meta, onnx_file=plan.onnx_file, engine_file=plan.engine_file, data_type=plan.data_type,
        profile=plan.profile, tensorrt_version=str(trt.__version__), gpu_name=gpu.name,
        compute_capability=f"{gpu.capability[0]}{gpu.capability[1]}", build_seconds=build_seconds,
        workspace_mib=int(g.tensorrt.workspace_size), timing_cache=plan.cache_file, timing_cache_loaded=cache_loaded,
        layer_precisions=plan.rules, parity=parity)
    side = write_json(sidecar_path(plan.engine_file), side_meta)
    StatusFile(Path(g.results_dir or plan.engine_file.parent) / "status.json").write(
        "SUCCESS", "TensorRT engine built", engine=str(plan.engine_file), precision=plan.data_type,
        build_seconds=round(build_seconds, 2))
    result = EngineResult(plan.engine_file, side, side_meta)
    if progress:
        log.info(result.summary())
    return result
