"""What a skill provides to the driver. The search and the CLI only talk to a trainer through this surface."""

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
    def fit(self, spec: DictConfig, reporter: Optional[Reporter] = None) -> Any:
        """One training run (a plain run or a search trial)."""

    def probe_training(self, spec: DictConfig, steps: int, warmup: int) -> Optional[Mapping[str, Any]]:
        """A few training steps of `spec` measured for `--gpus-per-trial auto` (automl.search.packing): `img_per_s`,
        `gpu_busy` (0..1), `peak_memory_bytes`, `total_memory_bytes`, `cpu_cores`. None: this skill cannot probe,
        and the search keeps one trial per GPU."""
        return None

    @abstractmethod
    def evaluate(self, spec: DictConfig) -> Mapping[str, float]:
        ...

    @abstractmethod
    def inference(self, spec: DictConfig) -> Any:
        ...

    @abstractmethod
    def export(self, spec: DictConfig) -> Any:
        ...

    @abstractmethod
    def validated_input_size(self, spec: DictConfig) -> dict[str, Any]:
        """The export keys (dotted) that make an exported model take inputs of the size the run validated at, so
        that a search's exported winner scores what the winner scored."""

    @abstractmethod
    def engine_available(self) -> tuple[bool, str]:
        """Whether `gen_trt_engine` can build an engine here (its runtime imports and a GPU is visible), and why not."""

    @abstractmethod
    def gen_trt_engine(self, spec: DictConfig) -> Any:
        ...
