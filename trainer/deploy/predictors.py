"""The `Predictor` contract, and its backends over exported files: `OnnxPredictor`, `TensorRTPredictor`.

Every backend (also `trainer.runtime.TorchPredictor`) maps images [B, 3, H, W] as `trainer.data.EvalTransform`
gives them (the original's keep-aspect cv2 bicubic resize to multiples of 14, normalised) to depth [B, H, W]
float32 on the CPU (metric: metres; relative: disparity). `Predictor.predict` takes a batch or a list of
differently sized images; `resize_prediction` (bilinear, align_corners=True) brings a prediction back to the
image / ground-truth size. `ExportedPredictor.from_spec` opens any exported file with its sidecar and returns the
spec to evaluate/infer with; its subclasses only say how to open the file and run one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, TypeVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from trainer.deploy.sidecar import (
    INPUT_NAME,
    OUTPUT_NAME,
    Notice,
    deployed_spec,
    read_sidecar,
    sidecar_path,
    stderr_notice,
)
from trainer.errors import UserError

__all__ = ["ExportedPredictor", "OnnxPredictor", "Predictor", "TensorRTPredictor", "check_hw", "resize_prediction",
           "run_batched"]

HW = tuple[int, int]
P = TypeVar("P", bound="ExportedPredictor")


def resize_prediction(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[H,W] or [B,H,W] -> same at `size`, bilinear with align_corners=True (as the original `infer_image` and
    metric_depth evaluation); how predictions meet ground truth or original images, for every backend."""
    squeeze = pred.dim() == 2
    p = pred[None] if squeeze else pred
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p[:, None].float(), size=tuple(int(s) for s in size), mode="bilinear",
                          align_corners=True)[:, 0]
    return p[0] if squeeze else p


class Predictor(ABC):
    """images [B,3,H,W] normalised float32 -> depth [B,H,W] float32 on the CPU (metric: metres; relative:
    disparity). `description` names the backend and file in reports; `is_metric` says which of the two it is."""

    description: str
    is_metric: bool

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def predict(self, images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """A batch tensor goes through the network at once; a list (images of different sizes) one by one."""
        if isinstance(images, torch.Tensor):
            return list(self(images))
        return [self(img[None])[0] for img in images]


def run_batched(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, min_batch: int = 1,
                max_batch: Optional[int] = None) -> torch.Tensor:
    """Call `run` on chunks of at most `max_batch` images; a chunk smaller than `min_batch` is padded by repeating
    its last image and the padding's outputs are dropped (fixed-batch files take any number of images)."""
    if images.shape[0] == 0:
        raise ValueError("no images")
    step = int(max_batch) if max_batch else images.shape[0]
    outputs = []
    for chunk in images.split(step):
        n = chunk.shape[0]
        if n < min_batch:
            chunk = torch.cat([chunk, chunk[-1:].expand(min_batch - n, *chunk.shape[1:])])
        outputs.append(run(chunk)[:n])
    return torch.cat(outputs)


def check_hw(shape: Sequence[int], low: Sequence[int], high: Sequence[int], source: str, hint: str = "") -> None:
    """Raise `UserError` when an input's height/width lie outside what the exported file accepts."""
    h, w = int(shape[-2]), int(shape[-1])
    if not (low[0] <= h <= high[0] and low[1] <= w <= high[1]):
        raise UserError(f"input {h}x{w} is outside what {source} accepts ({low[0]}x{low[1]} .. {high[0]}x{high[1]}); "
                        f"set evaluate/inference.input_height and input_width inside that range"
                        + (f", {hint}" if hint else ""))


class ExportedPredictor(Predictor):
    """A network in an exported file (+ its sidecar). Batches outside the file's batch range are chunked and
    padded, heights/widths outside its range refused (`UserError`). Subclasses give `key` (the evaluate/inference
    key naming the file), `what` (its name in messages), `_open`, `_run`, `batch_range` and `hw_range`."""

    key: ClassVar[str]
    what: ClassVar[str]
    hw_hint: ClassVar[str] = ""
    source: str

    @classmethod
    def from_spec(cls: type[P], spec: DictConfig, file: str, *, notice: Notice = stderr_notice
                  ) -> tuple[P, DictConfig]:
        """The predictor for `file` and the spec to evaluate/infer with (see `trainer.deploy.sidecar.deployed_spec`):
        `UserError` when the file or its sidecar is missing, or the spec contradicts the file."""
        path = Path(file)
        if not path.is_file():
            raise UserError(f"{cls.key}: file not found: {file}")
        meta = read_sidecar(path, cls.what)
        section = spec.evaluate if spec.evaluate.get(cls.key) else spec.inference
        gpu_ids = list(section.get("gpu_ids") or [0])
        pred = cls._open(path, meta, int(gpu_ids[0]) if gpu_ids else 0, notice)
        used = deployed_spec(spec, meta, str(path), fixed_size=pred.fixed_hw, notice=notice)
        return pred, used

    @classmethod
    @abstractmethod
    def _open(cls: type[P], path: Path, meta: Mapping[str, Any], gpu: int, notice: Notice) -> P:
        """The predictor for `path` whose sidecar is `meta`, on CUDA device `gpu` where it uses one."""

    @abstractmethod
    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """One batch inside the file's ranges -> depth [B, H, W] float32 on the CPU."""

    @property
    @abstractmethod
    def batch_range(self) -> tuple[int, Optional[int]]:
        """(min, max) batch the file runs; max None: any."""

    @property
    @abstractmethod
    def hw_range(self) -> Optional[tuple[HW, HW]]:
        """((min height, min width), (max height, max width)) the file accepts; None: any multiple of 14."""

    @property
    def fixed_hw(self) -> Optional[HW]:
        """(height, width) when the file takes only one size."""
        hw = self.hw_range
        return tuple(hw[0]) if hw is not None and tuple(hw[0]) == tuple(hw[1]) else None  # type: ignore[return-value]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        hw = self.hw_range
        if hw is not None:
            check_hw(images.shape, hw[0], hw[1], self.source, hint=self.hw_hint)
        low, high = self.batch_range
        return run_batched(self._run, images, min_batch=low, max_batch=high)


@dataclass
class OnnxPredictor(ExportedPredictor):
    """An ONNX file on ONNX Runtime: CUDAExecutionProvider when available, else the CPU."""

    key: ClassVar[str] = "onnx_file"
    what: ClassVar[str] = "ONNX file"

    session: Any
    is_metric: bool
    description: str
    min_batch: int = 1
    max_batch: Optional[int] = None
    fixed_size: Optional[HW] = None
    source: str = ""

    @classmethod
    def _open(cls, path: Path, meta: Mapping[str, Any], gpu: int, notice: Notice) -> "OnnxPredictor":
        import onnxruntime as ort

        if meta.get("validation", {}).get("status") == "failed":
            notice(f"{sidecar_path(path)} records a failed validation: {meta['validation'].get('problems')}")
        providers: list[Any] = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
        session = ort.InferenceSession(str(path), providers=providers)
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
            raise UserError(f"{path}: inputs {names_in} / outputs {names_out}; expected [{INPUT_NAME!r}] / "
                            f"[{OUTPUT_NAME!r}] as written by `automl export`")
        batch = int(meta.get("batch_size", -1))
        return cls(session=session, is_metric=bool(meta["model"]["is_metric"]),
                   description=f"onnxruntime ({session.get_providers()[0]}) {path}",
                   min_batch=1 if batch == -1 else batch, max_batch=None if batch == -1 else batch,
                   fixed_size=None if meta.get("dynamic_hw") else (int(meta["input_height"]),
                                                                   int(meta["input_width"])),
                   source=str(path))

    @property
    def batch_range(self) -> tuple[int, Optional[int]]:
        return self.min_batch, self.max_batch

    @property
    def hw_range(self) -> Optional[tuple[HW, HW]]:
        return None if self.fixed_size is None else (self.fixed_size, self.fixed_size)

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: images.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).float()


@dataclass
class TensorRTPredictor(ExportedPredictor):
    """A TensorRT engine (CUDA only); `TensorRTUnavailableError` naming the engine's ONNX file where TensorRT or
    a GPU is missing."""

    key: ClassVar[str] = "trt_engine"
    what: ClassVar[str] = "TensorRT engine"
    hw_hint: ClassVar[str] = "or build the engine with a wider gen_trt_engine.tensorrt.min_/max_height/width range"

    runner: Any  # trainer.deploy.tensorrt.EngineRunner, or any callable with the same contract (tests)
    is_metric: bool
    description: str
    profile: Any  # trainer.deploy.tensorrt.ShapeProfile
    source: str = ""

    @classmethod
    def _open(cls, path: Path, meta: Mapping[str, Any], gpu: int, notice: Notice) -> "TensorRTPredictor":
        from trainer.deploy.tensorrt import (
            INSTALL_HINT,
            EngineRunner,
            ShapeProfile,
            TensorRTUnavailableError,
            tensorrt_status,
        )

        profile = ShapeProfile.from_dict(meta["profile"])
        available, reason = tensorrt_status()
        if not available:
            onnx = meta.get("source_onnx")
            alt = f"; the engine's ONNX file runs without it: evaluate.onnx_file={onnx}" if onnx else ""
            raise TensorRTUnavailableError(f"cannot run {path}: {reason}{alt}\n{INSTALL_HINT}")
        device = torch.device(f"cuda:{gpu}")
        return cls(runner=EngineRunner(path.read_bytes(), device, source=str(path)),
                   is_metric=bool(meta["model"]["is_metric"]),
                   description=f"tensorrt {meta.get('precision')} ({torch.cuda.get_device_name(device)}) {path}",
                   profile=profile, source=str(path))

    @property
    def batch_range(self) -> tuple[int, Optional[int]]:
        return self.profile.min[0], self.profile.max[0]

    @property
    def hw_range(self) -> Optional[tuple[HW, HW]]:
        return tuple(self.profile.min[2:]), tuple(self.profile.max[2:])  # type: ignore[return-value]

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner(images)
