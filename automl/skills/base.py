"""The skill contract: everything the search, the CLI, the report and the UI need from one model family.

`automl/` reaches a trainer only through a `Skill` (and the shared errors and records of `automl.skills.shared`);
tests/test_layering.py keeps it so. A new model family is a subclass registered in `automl/skills/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from omegaconf import DictConfig

Reporter = Callable[[int, Mapping[str, float], Optional[str]], None]


class Skill(ABC):
    name: str = ""
    summary: str = ""

    # ---- specs --------------------------------------------------------------------------------------------
    @abstractmethod
    def load_spec(self, path: Optional[str], overrides: Sequence[str], action: str) -> DictConfig:
        """Read and validate a spec for `action`; with `path=None`, the embedded demo spec."""

    @abstractmethod
    def with_overrides(self, spec: DictConfig, values: Mapping[str, Any], *,
                       base_dir: Optional[str] = None) -> DictConfig:
        """A validated copy of `spec` with dotted `values` applied (search trials); relative paths among `values`
        mean `base_dir` (the folder the user ran the search from; default: the current directory)."""

    @abstractmethod
    def known_key(self, dotted: str) -> bool:
        """Whether `dotted` names a key of this skill's spec (search spaces are checked against it)."""

    @abstractmethod
    def nearest_key(self, dotted: str) -> Optional[str]:
        """The valid key nearest to an unknown one (for messages)."""

    @abstractmethod
    def default_search_space(self) -> Path:
        """The YAML search space used when the spec names none."""

    # ---- actions ------------------------------------------------------------------------------------------
    @abstractmethod
    def preflight(self, spec: DictConfig) -> list[str]:
        """Check, once and before any trial starts, what every training run of `spec` would read (data, initial
        weights, results folder); raise the `UserError` a run would raise. Returns one line per passed check."""

    @abstractmethod
    def input_paths(self, spec: DictConfig) -> dict[str, str]:
        """The files every training run of `spec` reads, by what they are (a spec key, or "first image of FILE");
        on a cluster each node must see them at the same paths."""

    @abstractmethod
    def fit(self, spec: DictConfig, reporter: Optional[Reporter] = None, *, tracking: Any = None,
            tracking_uri: Optional[str] = None, progress: Optional[bool] = None, quiet: bool = False,
            callbacks: Sequence[Any] = (), ranks: int = 0, timings: Optional[dict[str, Any]] = None) -> Any:
        """One training run (a plain run or a search trial). `reporter(epoch, metrics, checkpoint)` after each
        validated epoch; `tracking` a `TrackingConfig` (or `tracking_uri`); `callbacks` from `fault_callbacks`;
        `ranks` > 1: this process is one of `ranks` started with torch.distributed's variables (a DDP trial);
        `timings` gets `first_step_at` (wall clock) when the first training step starts. Raises
        `NonFiniteLossError` on a diverged run, a `UserError` on bad input."""

    def warm_imports(self) -> tuple[str, ...]:
        """Modules a training run imports before its first step (a search preloads them in idle Ray workers)."""
        return ()

    def probe_training(self, spec: DictConfig, steps: int, warmup: int) -> Optional[Mapping[str, Any]]:
        """A few training steps of `spec` measured for `--gpus-per-trial auto` (automl.search.packing): `img_per_s`,
        `gpu_busy` (0..1), `peak_memory_bytes`, `total_memory_bytes`, `cpu_cores`. None: this skill cannot probe,
        and the search keeps one trial per GPU."""
        return None

    @abstractmethod
    def print_fit_summary(self, spec: DictConfig, result: Any) -> None:
        """What a plain run (`automl off`) prints when training ends: where its results are."""

    @abstractmethod
    def storage_needed(self, spec: DictConfig, runs: int = 1) -> tuple[int, str]:
        """Bytes that `runs` training runs of `spec` write at most, and how that was counted (for the message)."""

    @abstractmethod
    def curated_params(self, spec: DictConfig) -> dict[str, Any]:
        """The few fixed spec values worth an MLflow param (the whole spec goes in as an artifact)."""

    @abstractmethod
    def fault_callbacks(self, hooks: Sequence[Any], trial_index: int, trial_dir: str | Path) -> list[Any]:
        """The test suite's fault hooks (automl.testing.FaultHook) aimed at trial `trial_index`, as objects `fit`
        takes in `callbacks`."""

    @abstractmethod
    def predict_samples(self, spec_file: str | Path, checkpoint: str | Path, num_images: int) -> Any:
        """A trained run's predictions on `num_images` validation images with ground truth and scores (the report's
        picture): an object with `relative` and `items` (each: name, rgb, gt, pred, valid, scores)."""

    @abstractmethod
    def evaluate(self, spec: DictConfig) -> Mapping[str, Any]:
        """Evaluate `spec.evaluate.checkpoint`; a mapping with `metrics` (name -> value) and where it wrote."""

    @abstractmethod
    def inference(self, spec: DictConfig) -> Any:
        """Predict the images `spec.inference` names and write the results."""

    @abstractmethod
    def export(self, spec: DictConfig) -> Any:
        """Export `spec.export.checkpoint` to ONNX (with its sidecar)."""

    @abstractmethod
    def validated_input_size(self, spec: DictConfig) -> dict[str, Any]:
        """The export keys (dotted) that make an exported model take inputs of the size the run validated at, so
        that a search's exported winner scores what the winner scored."""

    @abstractmethod
    def engine_available(self) -> tuple[bool, str]:
        """Whether `gen_trt_engine` can build an engine here (its runtime imports and a GPU is visible), and why not."""

    @abstractmethod
    def gen_trt_engine(self, spec: DictConfig) -> Any:
        """Build a TensorRT engine from `spec.gen_trt_engine.onnx_file`; the result has engine_file and sidecar."""

    # ---- data tools ---------------------------------------------------------------------------------------
    @abstractmethod
    def synthesize(self, out: str, num: int, size: tuple[int, int], seed: int, layout: str,
                   val_fraction: float) -> Any:
        """Write a synthetic dataset (images, ground truth, train/val lists) to `out`; the result has summary()."""

    @abstractmethod
    def convert(self, spec_path: str, overrides: Sequence[str]) -> Any:
        """`automl convert`: make annotation files from a dataset folder per a convert spec."""

    @abstractmethod
    def validate(self, spec_path: Optional[str], overrides: Sequence[str], action: str) -> Any:
        """Check a spec file for `action` without running it: a report with ok, notices and text(path)."""
