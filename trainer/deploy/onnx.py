"""ONNX export of a trained Depth Anything V2 network, with its validation and sidecar.

`export_onnx(spec)` writes `export.onnx_file` (default `<results_dir>/export/model.onnx`) and `<onnx_file>.json`:
- graph: input `image` float32 [B, 3, H, W] (normalised RGB), output `depth` float32 [B, H, W]; batch dynamic
  (`export.batch_size: -1`) or fixed; height/width dynamic in multiples of 14 (`export.dynamic_hw`, default) or
  fixed; opset >= 17 (LayerNorm stays one op); every Resize takes explicit sizes;
- the model section and depth range come from the checkpoint's stored training spec; an export spec that
  contradicts it is a `UserError` naming both values;
- validation (`onnx.checker`, the graph rules above, ONNX Runtime vs PyTorch on random images) is recorded in the
  sidecar; a failure raises `ExportValidationError` and keeps the file, marked failed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig

from trainer.constants import METRIC, PATCH_SIZE as PATCH
from trainer.deploy.sidecar import INPUT_NAME, OUTPUT_NAME, Notice, sidecar_path, stderr_notice, write_json
from trainer.errors import CheckpointError, UserError, first_line

log = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "ExportResult",
    "ExportSource",
    "ExportValidationError",
    "GraphReport",
    "default_onnx_path",
    "export_onnx",
    "inspect_graph",
    "random_normalised_images",
    "resolve_export_source",
    "trained_augmentation",
    "validate_onnx",
    "validation_shapes",
]

MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
SIDECAR_FORMAT = "depth-automl/onnx-export/1"
# Tolerances of the ONNX Runtime vs PyTorch check: metric models in metres (a fraction of the depth range),
# relative models relative to the largest output value.
METRIC_TOLERANCE = 1e-3  # x max_depth
RELATIVE_TOLERANCE = 1e-3  # x max |output|


class ExportValidationError(UserError):
    """The exported graph failed a check (checker, opset/LayerNormalization/Resize, or parity with PyTorch)."""


# --------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------


def default_onnx_path(spec: DictConfig) -> Path:
    """`export.onnx_file`, else `<export.results_dir or results_dir/export>/model.onnx`."""
    if spec.export.onnx_file:
        return Path(spec.export.onnx_file)
    return _export_dir(spec) / "model.onnx"


def _export_dir(spec: DictConfig) -> Path:
    return Path(spec.export.results_dir or Path(spec.results_dir) / "export")


def _external_data_file(path: Path) -> Optional[Path]:
    """The weights file the ONNX exporter writes beside a model over 2 GB (`<name>.data`), when present."""
    data = Path(str(path) + ".data")
    return data if data.is_file() else None


# --------------------------------------------------------------------------------------------------------------
# Which model to export: the checkpoint's own training spec wins, contradictions are errors
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSource:
    """What `export_onnx` builds: the spec the network is built from and what the checkpoint recorded."""

    checkpoint: str
    spec: DictConfig  # model section and depth range as trained
    stored: Optional[dict]  # the training spec stored in the checkpoint (None for released weights)

    @property
    def is_metric(self) -> bool:
        return self.spec.model.model_type == METRIC

    @property
    def max_depth(self) -> Optional[float]:
        return float(self.spec.dataset.max_depth) if self.is_metric else None


def resolve_export_source(spec: DictConfig, checkpoint: Optional[str], notice: Notice = stderr_notice
                          ) -> ExportSource:
    """The spec to export `checkpoint` with.

    Our Lightning checkpoints store their training spec: its model section and depth range are used. A spec value
    that contradicts it is an error naming both: `dataset.max_depth` whenever the spec sets it (metric models), and
    `model.model_type` / `model.encoder` when the spec sets them to something other than the schema default (a
    default value cannot be told apart from an unset key, so it only gets a notice). Released checkpoints store
    nothing: the spec describes the model, and metric models need `dataset.max_depth`.
    """
    from trainer.config import build_spec, to_plain
    from trainer.model import read_checkpoint_spec

    if not checkpoint:
        raise UserError("export.checkpoint: not set; expected the checkpoint to export (a .ckpt written by "
                        "training, e.g. results/x/checkpoints/best.ckpt, or a released depth_anything_v2_vit*.pth)")
    if not Path(checkpoint).exists():
        raise CheckpointError(f"export.checkpoint: file not found: {checkpoint}")
    stored = read_checkpoint_spec(checkpoint)
    plain = to_plain(spec)
    if not stored:
        if plain["model"]["model_type"] == METRIC and plain["dataset"].get("max_depth") is None:
            raise UserError(
                f"dataset.max_depth: not set; {checkpoint} records no training spec (released weights), so the "
                f"depth range baked into the exported MetricDepthAnything model must come from the spec: set "
                f"dataset.max_depth to the value the weights were trained with (20 for the indoor/Hypersim "
                f"metric models, 80 for the outdoor/VKITTI ones)")
        return ExportSource(str(checkpoint), spec, None)

    problems = _contradictions(plain, stored, checkpoint, notice)
    if problems:
        raise UserError("the export spec contradicts the checkpoint:\n" + "\n".join(f"  - {p}" for p in problems))
    trained_model = dict(stored.get("model") or {})
    trained_data = dict(stored.get("dataset") or {})
    plain["model"] = {**plain["model"], **trained_model}
    for key in ("min_depth", "max_depth"):
        if trained_data.get(key) is not None:
            plain["dataset"][key] = trained_data[key]
    if plain["model"]["model_type"] == METRIC and plain["dataset"].get("max_depth") is None:
        raise UserError(f"dataset.max_depth: {checkpoint} stores a training spec without max_depth for a "
                        f"MetricDepthAnything model; set dataset.max_depth to the value it was trained with")
    used = build_spec(plain, check_files=False, notice=lambda _m: None)
    return ExportSource(str(checkpoint), used, stored)


def _contradictions(plain: Mapping[str, Any], stored: Mapping[str, Any], checkpoint: str, notice: Notice
                    ) -> list[str]:
    """What the export spec (`plain`) says against the checkpoint's stored training spec (see
    `resolve_export_source`); a default `model_type`/`encoder` that differs only gets a notice."""
    from trainer.config.schema import ModelConfig

    defaults = ModelConfig()
    trained_model = dict(stored.get("model") or {})
    problems: list[str] = []
    for key in ("model_type", "encoder"):
        asked, trained = plain["model"].get(key), trained_model.get(key)
        if trained is None or asked == trained:
            continue
        if asked != getattr(defaults, key):
            problems.append(f"model.{key}: the export spec says {asked!r}, but {checkpoint} was trained as "
                            f"{trained!r} (its stored training spec)")
        else:
            notice(f"model.{key}: using the checkpoint's {trained!r} (the spec has the default {asked!r})")
    trained_type = trained_model.get("model_type", plain["model"]["model_type"])
    trained_max = (stored.get("dataset") or {}).get("max_depth")
    asked_max = plain["dataset"].get("max_depth")
    if trained_type == METRIC and asked_max is not None and trained_max is not None \
            and not math.isclose(float(asked_max), float(trained_max), rel_tol=1e-6):
        problems.append(
            f"dataset.max_depth: the export spec says {float(asked_max):g}, but {checkpoint} was trained with "
            f"max_depth {float(trained_max):g} (its stored training spec); the metric head outputs sigmoid * "
            f"max_depth, so the exported model would give non-physical depths. Remove dataset.max_depth from the "
            f"export spec or set it to {float(trained_max):g}")
    return problems


# --------------------------------------------------------------------------------------------------------------
# Graph checks
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GraphReport:
    """What the exported graph holds, as far as deployment cares."""

    opset: int
    node_count: int
    layer_normalization: int  # LayerNormalization nodes (one per ViT norm when kept as one op)
    resize: int
    resize_with_scales: int  # Resize nodes fed by a non-empty `scales` input (we expect explicit `sizes`)
    inputs: dict[str, list[Any]]  # name -> shape (int or symbolic name)
    outputs: dict[str, list[Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {i: d for i, d in enumerate(shape) if isinstance(d, str)}
                for name, shape in {**self.inputs, **self.outputs}.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"opset": self.opset, "node_count": self.node_count, "layer_normalization_nodes":
                self.layer_normalization, "resize_nodes": self.resize, "resize_with_scales": self.resize_with_scales,
                "problems": list(self.problems)}


def _shape(value_info: Any) -> list[Any]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def inspect_graph(model: Any, *, min_opset: int = MIN_OPSET, expect_layer_norm: bool = True) -> GraphReport:
    """Opset, LayerNormalization and Resize nodes, input/output shapes of an `onnx.ModelProto` (subgraphs and
    local functions included). `problems` lists what deployment would suffer from: opset below `min_opset`, no
    LayerNormalization node (the norms were decomposed into primitive ops, which TensorRT runs in reduced
    precision), Resize nodes with a `scales` input (sizes must be explicit)."""
    opset = max((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    initializers = {i.name for i in model.graph.initializer}
    nodes: list[Any] = []

    def walk(graph: Any) -> None:
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    for fn in model.functions:
        nodes.extend(fn.node)
    ln = sum(1 for n in nodes if n.op_type == "LayerNormalization")
    resizes = [n for n in nodes if n.op_type == "Resize"]
    with_scales = [n for n in resizes if len(n.input) > 2 and n.input[2] != ""]
    report = GraphReport(
        opset=opset, node_count=len(nodes), layer_normalization=ln, resize=len(resizes),
        resize_with_scales=len(with_scales),
        inputs={i.name: _shape(i) for i in model.graph.input if i.name not in initializers},
        outputs={o.name: _shape(o) for o in model.graph.output},
    )
    if opset < min_opset:
        report.problems.append(f"opset {opset} < {min_opset}: LayerNormalization is not an op before opset 17")
    if expect_layer_norm and ln == 0:
        report.problems.append("no LayerNormalization node: the ViT norms were decomposed into primitive ops")
    if with_scales:
        names = ", ".join(n.name or "?" for n in with_scales[:5])
        report.problems.append(f"{len(with_scales)} Resize node(s) with a scales input ({names}); expected explicit "
                               f"sizes")
    return report


# --------------------------------------------------------------------------------------------------------------
# Validation: onnx.checker + ONNX Runtime vs PyTorch
# --------------------------------------------------------------------------------------------------------------


def random_normalised_images(shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                             seed: int) -> torch.Tensor:
    """Random RGB in [0, 1] normalised like the real input (the range the network sees)."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(*shape, generator=g)
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
    return ((rgb - m) / s).contiguous()


def validation_shapes(height: int, width: int, batch_size: int, dynamic_hw: bool) -> list[tuple[int, int, int, int]]:
    """Input shapes the parity check runs: the export size (batch 2 when dynamic), plus, when anything is dynamic,
    a second shape that exercises it (batch 1; another height/width when those are dynamic)."""
    dynamic_batch = batch_size == -1
    first = (2 if dynamic_batch else batch_size, 3, height, width)
    shapes = [first]
    if dynamic_hw:
        w2 = width - 2 * PATCH if width > 3 * PATCH else width + PATCH
        shapes.append((1 if dynamic_batch else batch_size, 3, height + 2 * PATCH, w2))
    elif dynamic_batch:
        shapes.append((1, 3, height, width))
    return shapes


def validate_onnx(onnx_file: str | Path, model: torch.nn.Module, shapes: Sequence[Sequence[int]], *,
                  max_depth: Optional[float], mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """Run `onnx_file` in ONNX Runtime (CPU) and `model` in PyTorch (fp32, CPU) on the same random normalised
    images for every shape. Metric models (`max_depth` given) pass when max |difference| <= 1e-3 * max_depth
    metres; relative ones when max |difference| <= 1e-3 * max |output|. Returns the numbers per shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    model = model.to("cpu").eval()
    checks = []
    for k, shape in enumerate(shapes):
        x = random_normalised_images(shape, mean, std, seed=k)
        with torch.inference_mode():
            ref = model(x).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        entry: dict[str, Any] = {"input_shape": list(shape), "output_shape": list(got.shape)}
        if tuple(got.shape) != tuple(ref.shape):
            entry.update(passed=False, error=f"output shape {list(got.shape)} != PyTorch's {list(ref.shape)}")
            checks.append(entry)
            continue
        diff = abs(got.astype("float64") - ref.astype("float64"))
        scale = float(abs(ref).max())
        max_abs = float(diff.max())
        if max_depth is not None:
            tolerance = METRIC_TOLERANCE * float(max_depth)
            criterion = f"max_abs_diff <= {METRIC_TOLERANCE:g} x max_depth ({tolerance:.3g} m)"
        else:
            tolerance = RELATIVE_TOLERANCE * max(scale, 1e-12)
            criterion = f"max_abs_diff <= {RELATIVE_TOLERANCE:g} x max|output| ({tolerance:.3g})"
        entry.update(
            max_abs_diff=max_abs,
            mean_abs_diff=float(diff.mean()),
            max_rel_diff=max_abs / max(scale, 1e-12),
            output_max_abs=scale,
            tolerance=tolerance,
            criterion=criterion,
            finite=bool(torch.isfinite(torch.from_numpy(got)).all()),
        )
        entry["passed"] = bool(entry["finite"] and max_abs <= tolerance)
        checks.append(entry)
    return {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider vs PyTorch {torch.__version__} fp32 CPU",
            "checks": checks, "passed": all(c["passed"] for c in checks)}


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What `export_onnx` wrote and found."""

    onnx_file: Path
    sidecar: Path
    meta: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.meta.get("validation", {}).get("status") == "passed"

    def summary(self) -> str:
        m = self.meta
        lines = [f"exported {m['model']['model_type']} ({m['model']['encoder']}) to {self.onnx_file}",
                 f"  opset {m['opset']}, input {m['input']['name']} {m['input']['shape']}, output "
                 f"{m['output']['name']} {m['output']['shape']}",
                 f"  LayerNormalization nodes: {m['graph']['layer_normalization_nodes']}, Resize nodes: "
                 f"{m['graph']['resize_nodes']} (with scales: {m['graph']['resize_with_scales']})"]
        for c in m["validation"]["onnxruntime"].get("checks", []):
            if "max_abs_diff" in c:
                lines.append(f"  onnxruntime vs PyTorch at {c['input_shape']}: max |diff| {c['max_abs_diff']:.3g} "
                             f"(tolerance {c['tolerance']:.3g}) {'ok' if c['passed'] else 'FAILED'}")
        lines.append(f"  validation: {m['validation']['status']}; sidecar {self.sidecar}")
        return "\n".join(lines)


def trained_augmentation(stored: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """The evaluation-side augmentation section of a stored training spec (val_dataset's, else train_dataset's):
    normalisation mean/std and crop size (whose short side is the evaluation input size); None without a spec."""
    data = (stored or {}).get("dataset") or {}
    aug = (data.get("val_dataset") or {}).get("augmentation") or (data.get("train_dataset") or {}).get("augmentation")
    return dict(aug) if aug else None


def _to_plain(node: Any) -> Any:
    """Plain containers from an OmegaConf node (plain values pass through)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__}
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def _export_device(spec: DictConfig, notice: Notice) -> torch.device:
    if spec.export.on_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        gpu = int(spec.export.gpu_id)
        if gpu >= torch.cuda.device_count():
            raise UserError(f"export.gpu_id: found {gpu}, but {torch.cuda.device_count()} CUDA device(s) are "
                            f"visible; expected 0..{torch.cuda.device_count() - 1} or export.on_cpu=true")
        return torch.device(f"cuda:{gpu}")
    notice("no CUDA device visible: exporting on the CPU (export.on_cpu=true asks for that without this notice)")
    return torch.device("cpu")


def _check_target(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() != ".onnx":
        raise UserError(f"export.onnx_file: found {path}, expected a file name ending in .onnx")
    if path.is_dir():
        raise UserError(f"export.onnx_file: {path} is a folder; expected a file name ending in .onnx")
    if path.exists() and not overwrite:
        raise UserError(f"export.onnx_file: {path} already exists and export.overwrite is false; pass --force "
                        f"(or export.overwrite=true) to replace it, or choose another export.onnx_file")


def _remove_previous(path: Path) -> None:
    """The files of an earlier export at `path` (graph, external weights, sidecar), once replacing it is decided."""
    for stale in (path, sidecar_path(path), Path(str(path) + ".data")):
        if stale.is_file():
            stale.unlink()


def _checked_opset(requested: int, notice: Notice) -> int:
    if requested < MIN_OPSET:
        notice(f"export.opset_version {requested} raised to {MIN_OPSET}: LayerNormalization is one ONNX op from "
               f"opset 17 on (below it the norms are decomposed and run in reduced precision in TensorRT)")
        return MIN_OPSET
    return int(requested)


def _torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
                  dynamic_hw: bool) -> None:
    """torch.onnx.export (the dynamo exporter) with fixed input/output names and symbolic batch/height/width."""
    import warnings

    from torch.export import Dim

    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = Dim("batch", min=1)
    if dynamic_hw:
        axes[2] = PATCH * Dim("patch_h", min=1)
        axes[3] = PATCH * Dim("patch_w", min=1)
    import logging

    # the exporter's own notes (opset 18 implementations converted down to 17, ...), as warnings and as a log
    # line; the opset written is read back from the file and recorded in the sidecar
    logging.getLogger("torch.onnx._internal.exporter._compat").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamic_shapes=(axes,) if axes else None, verbose=False, optimize=True)
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))  # weights go to <path>.data only when the model is over 2 GB

# --------------------------------------------------------------------------------------------------------------
# export_onnx, step by step: plan, load, write, check, record
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What one export writes and with which network, decided before anything is written."""

    onnx_file: Path
    export_dir: Path
    source: ExportSource
    opset: int
    requested_opset: int
    height: int
    width: int
    batch: int  # -1: dynamic
    dynamic_hw: bool
    device: torch.device
    trained_aug: Optional[dict[str, Any]]  # the checkpoint's evaluation pre-processing (None: released weights)
    mean: list[float]
    std: list[float]

    @property
    def dynamic_batch(self) -> bool:
        return self.batch == -1


@dataclass(frozen=True)
class _Checks:
    """What the written graph was found to be."""

    checker: str
    graph: GraphReport
    parity: dict[str, Any]
    problems: list[str]


def _plan_export(spec: DictConfig, notice: Notice) -> _Plan:
    """Checks the target, the checkpoint against the spec, the opset and the device; writes nothing."""
    e = spec.export
    onnx_file = default_onnx_path(spec)
    _check_target(onnx_file, bool(e.overwrite))
    source = resolve_export_source(spec, e.checkpoint, notice)
    opset = _checked_opset(int(e.opset_version), notice)
    device = _export_device(spec, notice)
    trained_aug = trained_augmentation(source.stored)
    aug = trained_aug or _to_plain(source.spec.dataset.val_dataset.augmentation)
    return _Plan(onnx_file=onnx_file, export_dir=_export_dir(spec), source=source, opset=opset,
                 requested_opset=int(e.opset_version), height=int(e.input_height), width=int(e.input_width),
                 batch=int(e.batch_size), dynamic_hw=bool(e.dynamic_hw), device=device, trained_aug=trained_aug,
                 mean=list(aug.get("input_mean", [0.485, 0.456, 0.406])),
                 std=list(aug.get("input_std", [0.229, 0.224, 0.225])))


def _load_network(plan: _Plan) -> torch.nn.Module:
    """The network of `plan.source`, weights loaded strictly, in eval mode on the export device."""
    from trainer.model import build_model, load_weights

    model = build_model(plan.source.spec, activation_checkpoint=False, channels_last=False)
    load_weights(model, plan.source.checkpoint, strict=True)
    return model.eval().to(plan.device)


def _write_graph(plan: _Plan, model: torch.nn.Module, progress: bool) -> None:
    """Replaces an earlier export at the target with the graph of `model` traced on random normalised images."""
    example_shape = (2 if plan.dynamic_batch else plan.batch, 3, plan.height, plan.width)
    example = random_normalised_images(example_shape, plan.mean, plan.std, seed=1234).to(plan.device)
    plan.onnx_file.parent.mkdir(parents=True, exist_ok=True)
    _remove_previous(plan.onnx_file)
    if progress:
        log.info(f"exporting {plan.source.checkpoint} -> {plan.onnx_file} (opset {plan.opset}, {plan.device.type}, "
                 f"batch {'dynamic' if plan.dynamic_batch else plan.batch}, {plan.height}x{plan.width}"
                 f"{' dynamic' if plan.dynamic_hw else ''})")
    _torch_export(model, example, plan.onnx_file, opset=plan.opset, dynamic_batch=plan.dynamic_batch,
                  dynamic_hw=plan.dynamic_hw)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


def _check_graph(plan: _Plan, model: torch.nn.Module) -> _Checks:
    """`onnx.checker`, the graph rules (`inspect_graph`, input/output names) and ONNX Runtime vs PyTorch."""
    import onnx

    problems: list[str] = []
    try:
        onnx.checker.check_model(str(plan.onnx_file))
        checker = "passed"
    except Exception as exc:  # noqa: BLE001 - any checker failure is reported, not raised raw
        checker = f"failed: {_first_line(exc)}"
        problems.append(f"onnx.checker {checker}")
    graph = inspect_graph(onnx.load(str(plan.onnx_file), load_external_data=False), min_opset=MIN_OPSET)
    problems += graph.problems
    if list(graph.inputs) != [INPUT_NAME] or list(graph.outputs) != [OUTPUT_NAME]:
        problems.append(f"graph inputs {list(graph.inputs)} / outputs {list(graph.outputs)}; expected "
                        f"[{INPUT_NAME!r}] / [{OUTPUT_NAME!r}]")
    parity = _parity(plan, model, problems)
    return _Checks(checker, graph, parity, problems)


def _parity(plan: _Plan, model: torch.nn.Module, problems: list[str]) -> dict[str, Any]:
    """`validate_onnx` at `validation_shapes`; what fails is appended to `problems`."""
    shapes = validation_shapes(plan.height, plan.width, plan.batch, plan.dynamic_hw)
    try:
        parity = validate_onnx(plan.onnx_file, model, shapes, max_depth=plan.source.max_depth, mean=plan.mean,
                               std=plan.std)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing the file is a validation failure, reported
        parity = {"runtime": "onnxruntime CPUExecutionProvider", "checks": [], "passed": False,
                  "error": _first_line(exc)}
        problems.append(f"onnxruntime could not run the file: {parity['error']}")
    for c in parity["checks"]:
        if not c["passed"]:
            problems.append(f"onnxruntime differs from PyTorch at {c['input_shape']}: "
                            + (c.get("error") or f"max |diff| {c['max_abs_diff']:.3g} > tolerance "
                                                 f"{c['tolerance']:.3g}"))
    return parity


def _model_meta(plan: _Plan) -> dict[str, Any]:
    """The sidecar's `model` and `training_spec` sections: what evaluate/inference build their spec from."""
    source, m = plan.source, plan.source.spec.model
    stored = source.stored
    stored_data = (stored or {}).get("dataset") or {}
    return {
        "model": {"model_type": m.model_type, "encoder": m.encoder,
                  "custom": _to_plain(m.custom) if m.encoder == "custom" else None, "is_metric": source.is_metric,
                  "max_depth": source.max_depth,
                  "min_depth": source.spec.dataset.min_depth if source.is_metric else None},
        "checkpoint": str(Path(source.checkpoint).resolve()),
        "training_spec": None if stored is None else {
            "min_depth": stored_data.get("min_depth"), "max_depth": stored_data.get("max_depth"),
            "model_type": (stored.get("model") or {}).get("model_type"),
            "encoder": (stored.get("model") or {}).get("encoder")},
    }


def _sidecar_meta(plan: _Plan, checks: _Checks, export_seconds: float) -> dict[str, Any]:
    """The ONNX sidecar (format `SIDECAR_FORMAT`): the graph's interface, the model, and how it validated."""
    graph, onnx_file = checks.graph, plan.onnx_file
    data_file = _external_data_file(onnx_file)
    return {
        "format": SIDECAR_FORMAT,
        "onnx_file": str(onnx_file),
        "onnx_data_file": str(data_file) if data_file else None,
        "opset": graph.opset,
        "requested_opset": plan.requested_opset,
        "input": {"name": INPUT_NAME, "shape": graph.inputs.get(INPUT_NAME), "dtype": "float32",
                  "layout": "NCHW RGB, (x/255 - mean) / std", "mean": plan.mean, "std": plan.std},
        "output": {"name": OUTPUT_NAME, "shape": graph.outputs.get(OUTPUT_NAME), "dtype": "float32",
                   "units": "metres" if plan.source.is_metric else "relative disparity (affine-invariant)"},
        "dynamic_axes": {k: {str(i): d for i, d in v.items()} for k, v in graph.dynamic_axes.items()},
        "batch_size": plan.batch,
        "dynamic_batch": plan.dynamic_batch,
        "dynamic_hw": plan.dynamic_hw,
        "input_height": plan.height,
        "input_width": plan.width,
        **_model_meta(plan),
        # evaluate/inference on this file pre-process like the checkpoint path does (trainer.runtime)
        "preprocessing": {"augmentation": plan.trained_aug},
        "graph": graph.as_dict(),
        "validation": {"status": "passed" if not checks.problems else "failed", "checker": checks.checker,
                       "onnxruntime": checks.parity, "problems": checks.problems},
        "export_device": str(plan.device),
        "export_seconds": round(export_seconds, 2),
        "exported_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def _record_status(plan: _Plan, checks: _Checks, sidecar: Path) -> None:
    """`<export dir>/status.json`; raises `ExportValidationError` when a check failed."""
    from trainer.records import StatusFile

    status = StatusFile(plan.export_dir / "status.json")
    if checks.problems:
        status.write("FAILURE", "Export validation failed", problems=checks.problems, onnx_file=str(plan.onnx_file))
        raise ExportValidationError(
            f"{plan.onnx_file}: the exported graph failed validation (kept for inspection; {sidecar} says failed):\n"
            + "\n".join(f"  - {p}" for p in checks.problems))
    kpi = {f"max_abs_diff_{'x'.join(str(s) for s in c['input_shape'])}": c.get("max_abs_diff")
           for c in checks.parity["checks"]}
    status.write("SUCCESS", "Export finished", kpi=kpi, onnx_file=str(plan.onnx_file), opset=checks.graph.opset)


def export_onnx(spec: DictConfig, *, notice: Notice = stderr_notice, progress: bool = True) -> ExportResult:
    """Export `export.checkpoint` to ONNX, validate it and write the sidecar; see the module docstring.

    Raises `UserError` for problems with what the user gave (missing checkpoint, existing output without
    `export.overwrite`, a spec contradicting the checkpoint) and `ExportValidationError` when the written graph
    fails a check (the sidecar then says `validation.status: failed`).
    """
    started = time.time()
    plan = _plan_export(spec, notice)
    model = _load_network(plan)
    _write_graph(plan, model, progress)
    export_seconds = time.time() - started
    checks = _check_graph(plan, model)
    meta = _sidecar_meta(plan, checks, export_seconds)
    result = ExportResult(plan.onnx_file, write_json(sidecar_path(plan.onnx_file), meta), meta)
    _record_status(plan, checks, result.sidecar)
    if progress:
        log.info(result.summary())
    return result
