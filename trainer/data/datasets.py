"""Datasets by `dataset_name`, the inference dataset, collate and data loaders.

Every data source of a split is read by the class its `dataset_name` names (case-insensitive):

| dataset_name          | ground truth files                          | target (item `depth`)          |
|-----------------------|---------------------------------------------|--------------------------------|
| `MetricMonoDataset`   | metres as float (PFM/NPY), or integer codes with `depth_scale` (16-bit PNG) | metres |
| `RelativeMonoDataset` | depth (default) or disparity (`gt_type: disparity`) | disparity (1/depth)    |
| `NYUDV2`              | NYU uint16 millimetre PNGs                  | metres, valid 1e-3..10 m, Eigen crop at evaluation |
| `NYUDV2Relative`      | same                                        | disparity, Eigen crop at evaluation |
| `NvCLIP`, `Middlebury`, `ThreeDVLM`, `FSD`, `IssacStereo`, `Crestereo` (TAO) | disparity, valid < 1000 | disparity |

Items follow docs/internals.md: `image` float32 [3, H, W] (normalised, multiples of 14), `depth` float32 [h, w]
(0 where invalid), `valid` bool [h, w], `path`, `index`, plus `skipped`: a list of `(reason, path)` for samples
that were skipped to produce this item.

Samples with fewer than `dataset.min_valid_pixels` valid pixels are skipped (training: another sample is
substituted; evaluation: the sample is kept with an empty mask so that metrics ignore it). Unreadable samples
raise `DataError` unless `dataset.on_bad_sample: skip`, which skips them the same way. `dataset.skipped` counts
distinct skipped samples by reason; the per-sample record lives in shared memory, so it includes what DataLoader
workers found. A construction check reads a bounded number of ground-truth maps and raises when none is usable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
from collections import Counter
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any, ClassVar, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, default_collate

from trainer.data.annotations import Sample, describe_missing, missing_files, read_annotation_file
from trainer.data.frame_cache import FrameCache
from trainer.data.depth_io import INTEGER_KINDS, check_depth_matches_image, image_size, read_depth, read_image
from trainer.data.transforms import EvalTransform, TrainTransform
from trainer.errors import DataError, SpecError, SpecProblem

SPLITS = ("train_dataset", "val_dataset", "test_dataset", "infer_dataset")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PROBE_ALL_BELOW = 200  # construction check: every sample when fewer, else a random PROBE_SAMPLE of them
PROBE_SAMPLE = 50
MAX_SUBSTITUTIONS = 50  # a training item gives up after this many consecutive bad samples
FRAME_CACHE_VERSION = 1  # part of the frame cache's key: raise when load()'s output changes

# skip reasons
TOO_FEW_VALID = "too_few_valid_pixels"
UNREADABLE = "unreadable"
MISSING_FILE = "missing_file"
_REASONS = (None, TOO_FEW_VALID, UNREADABLE)  # shared per-sample codes: 0 = usable
_REASON_CODES = {r: c for c, r in enumerate(_REASONS) if r}


class DataConfigError(DataError):
    """A data problem caused by the spec (e.g. units), not by one bad file: never skipped."""


# --------------------------------------------------------------------------------------------------------------
# NYU conventions
# --------------------------------------------------------------------------------------------------------------

NYU_DEPTH_SCALE = 1e-3  # uint16 millimetres -> metres
NYU_RANGE = (1e-3, 10.0)
NYU_FRAME = (480, 640)
NYU_EIGEN_CROP = (45, 471, 41, 601)  # rows [45, 471), cols [41, 601) on 480x640 frames


def eigen_crop_mask(hw: tuple[int, int]) -> np.ndarray:
    """The Eigen evaluation crop as a bool mask: exact on 480x640, scaled proportionally on other sizes."""
    h, w = hw
    r0, r1, c0, c1 = NYU_EIGEN_CROP
    if (h, w) != NYU_FRAME:
        r0, r1 = round(r0 * h / NYU_FRAME[0]), round(r1 * h / NYU_FRAME[0])
        c0, c1 = round(c0 * w / NYU_FRAME[1]), round(c1 * w / NYU_FRAME[1])
    mask = np.zeros((h, w), bool)
    mask[r0:r1, c0:c1] = True
    return mask


# --------------------------------------------------------------------------------------------------------------
# Ground-truth datasets
# --------------------------------------------------------------------------------------------------------------


class MonoDataset(Dataset):
    """One annotation file read with one dataset convention. Subclasses set the class attributes."""

    name: ClassVar[str] = ""
    relative: ClassVar[bool] = False  # target is disparity (True) or metres (False)
    integer_scale: ClassVar[Optional[float]] = None  # default depth_scale for integer-coded files; None: required
    own_range: ClassVar[Optional[tuple[float, float]]] = None  # the data's valid depth range (metres)
    uses_eigen_crop: ClassVar[bool] = False
    disparity_below: ClassVar[Optional[float]] = None  # TAO's relative classes: ground truth is disparity < this

    def __init__(self, samples: Sequence[Sample], *, train: bool, transform: TrainTransform | EvalTransform,
                 depth_scale: Optional[float] = None, gt_type: str = "depth", min_depth: Optional[float] = None,
                 max_depth: Optional[float] = None, min_valid_pixels: int = 10, on_bad_sample: str = "error",
                 seed: int = 0, key: str = "", annotation_file: Optional[Path] = None, probe: bool = True):
        if not samples:
            raise DataError(f"{key or self.name}: no samples")
        self.samples = list(samples)
        self.train = train
        self.transform = transform
        self.depth_scale = depth_scale
        self.gt_type = "disparity" if self.disparity_below is not None else gt_type  # TAO: files hold disparity
        self.min_valid_pixels = int(min_valid_pixels)
        self.on_bad_sample = on_bad_sample
        self.seed = int(seed)
        self.key = key or self.name
        self.annotation_file = annotation_file or self.samples[0].source
        if self.relative:  # relative targets are scale-free: the spec's metric range does not apply
            min_depth = max_depth = None
        lo, hi = self.own_range or (None, None)
        self.min_depth = _tighter(lo, min_depth, max)
        self.max_depth = _tighter(hi, max_depth, min)
        # per-sample skip reason code, in shared memory so that DataLoader workers' findings are seen by the
        # main process (training reports `skipped`) and by each other (a known-bad file is not read again)
        self._codes = RawArray("b", len(self.samples))
        self.messages: dict[int, str] = {}  # index -> why it was skipped (this process's findings)
        self.missing_files = 0  # samples dropped before construction (missing files, on_bad_sample: skip)
        if gt_type not in ("depth", "disparity"):
            raise DataConfigError(f"{self.key}.gt_type: found {gt_type!r}, expected depth or disparity")
        if gt_type == "disparity" and (not self.relative or self.own_range is not None):
            raise DataConfigError(f"{self.key}.gt_type: found 'disparity', but {self.name} reads depth "
                                  f"files; expected gt_type: depth (disparity ground truth needs "
                                  f"RelativeMonoDataset)")
        if any(s.depth is None for s in self.samples):
            s = next(s for s in self.samples if s.depth is None)
            raise DataError(f"{s.where}: found only an image path; expected '<image> <depth>' ({self.name} needs "
                            f"ground truth on every line)")
        self.frame_cache: Optional[FrameCache] = None
        if probe:
            self._probe()

    # -- ground truth --------------------------------------------------------------------------------------

    def scale_for(self, kind: str) -> float:
        """Metres (or disparity units) per stored value for a file of `kind`."""
        if self.depth_scale is not None:
            return float(self.depth_scale)
        if kind in INTEGER_KINDS:
            if self.integer_scale is not None:
                return self.integer_scale
            if self.relative:
                return 1.0  # scale-free target: any unit works
            raise DataConfigError(
                f"{self.key}.depth_scale is not set, but {self.annotation_file} lists integer-coded depth "
                f"({kind}: 16-bit PNG or integer .npy). Such files hold codes in some unit; expected depth_scale = "
                f"metres per code, e.g. 0.001 for millimetres (NYU, most RGB-D sensors) or 1/256 for KITTI; for NYU "
                f"data use dataset_name: NYUDV2. Reading millimetres as metres leaves no pixel inside "
                f"[min_depth, max_depth] and training turns to NaN.")
        return 1.0

    def read_target(self, sample: Sample, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, dict]:
        """(target float32 [h, w], valid bool [h, w], stats) for one sample, in the training space."""
        try:
            raw, kind = read_depth(sample.depth)  # type: ignore[arg-type]
        except DataError as exc:
            raise DataError(f"{exc} [paired with image {sample.image} of size {image_hw[0]}x{image_hw[1]}]") from None
        check_depth_matches_image(raw, image_hw, sample.depth, sample.image)  # type: ignore[arg-type]
        scale = self.scale_for(kind)
        values = raw * np.float32(scale) if scale != 1.0 else raw
        valid = np.isfinite(values) & (values > 0)
        if not self.relative or self.gt_type == "depth":
            if self.min_depth is not None:
                valid &= values >= self.min_depth
            if self.max_depth is not None:
                valid &= values <= self.max_depth
        if self.disparity_below is not None:  # TAO's relative classes: valid where disparity < 1000
            valid &= values < self.disparity_below
        if self.uses_eigen_crop and not self.train:
            valid &= eigen_crop_mask(values.shape)
        positive = raw[np.isfinite(raw) & (raw > 0)]
        stats = {"kind": kind, "scale": scale, "raw_min": float(positive.min()) if positive.size else None,
                 "raw_max": float(positive.max()) if positive.size else None, "valid": int(valid.sum())}
        target = np.zeros(values.shape, np.float32)
        if self.relative and self.gt_type == "depth":
            with np.errstate(over="ignore", divide="ignore"):
                target[valid] = 1.0 / values[valid]
            valid &= np.isfinite(target)  # 1/denormal overflows
            target[~valid] = 0.0
        else:
            target[valid] = values[valid]
        stats["valid"] = int(valid.sum())
        return target, valid, stats

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 [H, W, 3], target, valid) of sample `i`, untransformed: from the frame cache when it holds
        the sample (`use_frame_cache`), else from the files. Raises DataError for a bad file."""
        cached = self.frame_cache.get(i) if self.frame_cache is not None else None
        return cached if cached is not None else self.read_files(i)

    def read_files(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`load(i)` from the image and depth files. Raises DataError for a bad file."""
        s = self.samples[i]
        rgb = read_image(s.image)
        target, valid, _ = self.read_target(s, rgb.shape[:2])
        return rgb, target, valid

    # -- construction check ---------------------------------------------------------------------------------

    def _probe(self) -> None:
        """Load a bounded number of ground-truth maps; raise if none is usable (almost always a units problem)."""
        n = len(self.samples)
        if n < PROBE_ALL_BELOW:
            idx = range(n)
        else:
            idx = sorted(np.random.default_rng([self.seed, n]).choice(n, PROBE_SAMPLE, replace=False).tolist())
        checked, usable, seen = 0, 0, []
        for i in idx:
            if self.is_bad(i) or self._cached_usable(i):
                usable += not self.is_bad(i)
                continue
            s = self.samples[i]
            try:
                target, valid, stats = self.read_target(s, image_size(s.image))
            except DataConfigError:
                raise
            except DataError as exc:
                if self.on_bad_sample == "error":
                    raise DataError(f"{s.where}: {exc}") from None
                self._mark_bad(i, UNREADABLE, f"{s.where}: {exc}")
                continue
            checked += 1
            seen.append(stats)
            if stats["valid"] >= self.min_valid_pixels:
                usable += 1
            else:
                self._mark_bad(i, TOO_FEW_VALID, f"{stats['valid']} valid pixels")
        if usable == 0:
            raise DataError(self._nothing_valid_message(checked, len(list(idx)), seen))

    def _cached_usable(self, i: int) -> bool:
        """True when the frame cache holds sample `i` with enough valid pixels (the probe need not read it)."""
        frame = self.frame_cache.get(i) if self.frame_cache is not None else None
        return frame is not None and int(frame[2].sum()) >= self.min_valid_pixels

    def cache_key(self) -> str:
        """What the decoded frames depend on: the class and its conversion settings, the annotation file's path
        and content, and each listed file's path, size and modification time."""
        files = []
        for s in self.samples:
            for p in (s.image, s.depth):
                try:
                    st = os.stat(p)  # type: ignore[arg-type]
                    files.append([str(p), st.st_size, st.st_mtime_ns])
                except OSError:
                    files.append([str(p), None, None])
        try:
            listing = hashlib.sha256(Path(self.annotation_file).read_bytes()).hexdigest()
        except OSError:
            listing = None
        what = [FRAME_CACHE_VERSION, self.name, self.train, self.depth_scale, self.gt_type, self.min_depth,
                self.max_depth, str(self.annotation_file), listing, files]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]

    def use_frame_cache(self, folder: Path, max_bytes: int, threads: int = 4) -> bool:
        """Read decoded frames from the node-wide cache in `folder` (built by the first process that asks; see
        trainer.data.frame_cache). False when the frames do not fit (`max_bytes`, free space): files are read."""
        self.frame_cache = FrameCache.open_or_build(
            folder, self.cache_key(), len(self.samples), self.read_files, lambda i: image_size(self.samples[i].image),
            max_bytes=max_bytes, threads=threads)
        return self.frame_cache is not None

    def _nothing_valid_message(self, checked: int, tried: int, stats: list[dict]) -> str:
        head = (f"{self.key} ({self.name}, {self.annotation_file}): none of the {tried} samples checked has at "
                f"least {self.min_valid_pixels} valid ground-truth pixels (dataset.min_valid_pixels)")
        if checked == 0:
            first = next(iter(self.messages.values()), "")
            return head + f"; every checked sample was unreadable, e.g. {first}"
        lows = [s["raw_min"] for s in stats if s["raw_min"] is not None]
        highs = [s["raw_max"] for s in stats if s["raw_max"] is not None]
        kinds = sorted({s["kind"] for s in stats})
        scale = stats[0]["scale"]
        if lows:
            found = (f"found stored values {min(lows):g}..{max(highs):g} ({', '.join(kinds)}) x scale {scale:g} = "
                     f"{min(lows) * scale:g}..{max(highs) * scale:g}")
        else:
            found = "found no finite value > 0 in any checked file"
        rng = f"[{self.min_depth if self.min_depth is not None else 0:g}, " \
              f"{self.max_depth if self.max_depth is not None else float('inf'):g}]"
        return (f"{head}; {found}; expected values inside the valid range {rng}"
                f"{' m' if not self.relative else ''}. The usual cause is units: millimetres read as metres "
                f"(set {self.key}.depth_scale: 0.001, or use NYUDV2 for NYU data), a wrong depth_scale, or "
                f"dataset.min_depth/max_depth not matching the data.")

    # -- items ----------------------------------------------------------------------------------------------

    def _mark_bad(self, i: int, reason: str, message: str) -> None:
        if not self._codes[i]:
            self._codes[i] = _REASON_CODES[reason]
        self.messages.setdefault(i, message)

    def is_bad(self, i: int) -> bool:
        """True when sample `i` is known to be skipped (by this process or any loader worker)."""
        return bool(self._codes[i])

    def reason(self, i: int) -> Optional[str]:
        """Why sample `i` is skipped, or None."""
        return _REASONS[self._codes[i]]

    @property
    def skipped(self) -> dict[str, int]:
        """Distinct samples skipped so far, by reason, including those found inside DataLoader workers."""
        counts = np.bincount(np.frombuffer(self._codes, dtype=np.int8), minlength=len(_REASONS))
        out = {_REASONS[c]: int(n) for c, n in enumerate(counts) if c and n}
        if self.missing_files:
            out[MISSING_FILE] = self.missing_files
        return out  # type: ignore[return-value]

    def _item_rng(self, index: int) -> np.random.Generator:
        # torch's RNG is seeded per DataLoader worker (and per epoch) from the loader's generator: mixing one draw
        # of it with (seed, index) makes augmentation differ between epochs yet be reproducible.
        draw = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        return np.random.default_rng([self.seed, index, draw])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._train_item(index) if self.train else self._eval_item(index)

    def _try_load(self, i: int) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`load(i)`, or None (recorded as unreadable) for a bad file under `on_bad_sample: skip`."""
        try:
            return self.load(i)
        except DataConfigError:
            raise
        except DataError as exc:
            if self.on_bad_sample == "error":
                raise DataError(f"{self.samples[i].where}: {exc}") from None
            self._mark_bad(i, UNREADABLE, str(exc))
            return None

    def _train_item(self, index: int) -> dict[str, Any]:
        """Training: a bad or empty sample is replaced by the first usable one of a seeded random permutation.

        The candidates do not depend on which samples are already known to be bad (that knowledge is shared with
        other workers and so depends on timing): known-bad candidates are passed over without reading them, which
        gives the same result as reading them. At most MAX_SUBSTITUTIONS unknown bad files are read per item."""
        rng = self._item_rng(index)
        skipped: list[tuple[str, str]] = []
        candidates: Iterable[int] = [index]
        reads = 0
        for attempt in range(2):
            for i in candidates:
                i = int(i)
                if attempt and i == index:
                    continue
                if not self.is_bad(i):
                    if reads >= MAX_SUBSTITUTIONS:
                        break
                    reads += 1
                    loaded = self._try_load(i)
                    if loaded is not None:
                        rgb, target, valid = loaded
                        n_valid = int(valid.sum())
                        if n_valid >= self.min_valid_pixels:
                            return self._make_item(i, rgb, target, valid, rng, skipped)
                        self._mark_bad(i, TOO_FEW_VALID, f"{n_valid} valid pixels")
                if len(skipped) < MAX_SUBSTITUTIONS:
                    skipped.append((self.reason(i) or UNREADABLE, str(self.samples[i].image)))
            candidates = rng.permutation(len(self.samples))
        raise DataError(f"{self.key} ({self.annotation_file}): no usable sample found to substitute for "
                        f"{self.samples[index].where}; skipped so far: {self.skipped}")

    def _eval_item(self, index: int) -> dict[str, Any]:
        """Evaluation: never substitute a scored frame. An empty or too sparse sample keeps an empty mask (metrics
        ignore it); an unreadable one is replaced by the next readable frame with an empty mask."""
        skipped: list[tuple[str, str]] = []
        i = index
        for _ in range(len(self.samples)):
            loaded = None if self.reason(i) == UNREADABLE else self._try_load(i)
            if loaded is not None:
                break
            skipped.append((UNREADABLE, str(self.samples[i].image)))
            i = (i + 1) % len(self.samples)
        else:
            raise DataError(f"{self.key} ({self.annotation_file}): no readable sample; skipped so far: "
                            f"{self.skipped}")
        rgb, target, valid = loaded
        n_valid = int(valid.sum())
        if i == index and n_valid < self.min_valid_pixels:
            self._mark_bad(i, TOO_FEW_VALID, f"{n_valid} valid pixels")
            skipped.append((TOO_FEW_VALID, str(self.samples[i].image)))
        if skipped:
            valid = np.zeros_like(valid)
            target = np.zeros_like(target)
        return self._make_item(i, rgb, target, valid, None, skipped)

    def _make_item(self, i: int, rgb: np.ndarray, target: np.ndarray, valid: np.ndarray,
                   rng: Optional[np.random.Generator], skipped: list[tuple[str, str]]) -> dict[str, Any]:
        if self.train:
            assert isinstance(self.transform, TrainTransform) and rng is not None
            image, depth, valid_t = self.transform(rgb, target, valid, rng)
        else:
            image = self.transform(rgb)  # type: ignore[call-arg]
            depth, valid_t = torch.from_numpy(target), torch.from_numpy(valid)
        return {"image": image, "depth": depth, "valid": valid_t, "path": str(self.samples[i].image),
                "index": i, "skipped": skipped}


def _tighter(a: Optional[float], b: Optional[float], pick) -> Optional[float]:
    if a is None:
        return None if b is None else float(b)
    return float(a) if b is None else float(pick(a, b))


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

DATASETS: dict[str, type[MonoDataset]] = {}


def register_dataset(cls: type[MonoDataset]) -> type[MonoDataset]:
    """Class decorator: make `cls` available under `cls.name` (looked up case-insensitively)."""
    DATASETS[cls.name.lower()] = cls
    return cls


def dataset_class(name: str, key: str = "dataset_name") -> type[MonoDataset]:
    """The dataset class registered under `name` (case-insensitive); SpecError naming `key` otherwise."""
    cls = DATASETS.get(str(name).lower())
    if cls is None:
        names = [c.name for c in DATASETS.values()]
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SpecError([SpecProblem(key, f"found {name!r}, expected one of: {', '.join(names)}{hint}")])
    return cls


@register_dataset
class MetricMonoDataset(MonoDataset):
    """Generic metric depth: float files in metres; integer-coded files (16-bit PNG) need `depth_scale`."""

    name = "MetricMonoDataset"


@register_dataset
class RelativeMonoDataset(MonoDataset):
    """Generic relative depth: the target is disparity, 1/depth on valid pixels (`gt_type: disparity`: as stored)."""

    name = "RelativeMonoDataset"
    relative = True


@register_dataset
class NYUDV2(MonoDataset):
    """NYU Depth V2: uint16 millimetre PNGs -> metres, valid 1e-3..10 m, Eigen crop at evaluation."""

    name = "NYUDV2"
    integer_scale = NYU_DEPTH_SCALE
    own_range = NYU_RANGE
    uses_eigen_crop = True


@register_dataset
class NYUDV2Relative(MonoDataset):
    """NYU Depth V2 with a disparity target (1/metres on pixels valid in 1e-3..10 m), Eigen crop at evaluation."""

    name = "NYUDV2Relative"
    relative = True
    integer_scale = NYU_DEPTH_SCALE
    own_range = NYU_RANGE
    uses_eigen_crop = True




class TaoRelativeDataset(MonoDataset):
    """TAO's relative mono classes named after their sources (NvCLIP, Middlebury, ...): TAO reads every one of them
    as `BaseRelativeMonoDataset` does: the ground-truth file holds disparity (PFM, NPY or PNG, as stored) and a pixel
    is valid where it is below 1000; the target is that disparity (`gt_type` is always disparity)."""

    relative = True
    disparity_below = 1000.0


for _tao_name in ("NvCLIP", "Middlebury", "ThreeDVLM", "FSD", "IssacStereo", "Crestereo"):
    register_dataset(type(_tao_name, (TaoRelativeDataset,), {"name": _tao_name, "__doc__": (
        f"TAO's `{_tao_name}` relative mono dataset: disparity ground truth as stored, valid below 1000.")}))

# --------------------------------------------------------------------------------------------------------------
# Building from the spec
# --------------------------------------------------------------------------------------------------------------


class ConcatDepthDataset(ConcatDataset):
    """The data sources of one split, concatenated; `index` in items is the position in the concatenation."""

    datasets: list[MonoDataset]  # type: ignore[assignment]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if idx < 0:
            idx += len(self)
        part = int(np.searchsorted(self.cumulative_sizes, idx, side="right"))
        offset = self.cumulative_sizes[part - 1] if part else 0
        item = self.datasets[part][idx - offset]
        item["index"] = offset + item["index"]  # substitutes come from the same part
        return item

    @property
    def samples(self) -> list[Sample]:
        return [s for ds in self.datasets for s in ds.samples]

    @property
    def skipped(self) -> dict[str, int]:
        """Distinct samples skipped so far, by reason (including skips found inside DataLoader workers)."""
        total: Counter[str] = Counter()
        for ds in self.datasets:
            total.update(ds.skipped)
        return dict(total)


def _eval_size(spec: Any, split: str) -> tuple[Optional[int], Optional[int]]:
    section = {"test_dataset": "evaluate", "infer_dataset": "inference"}.get(split)
    if section is None:
        return None, None
    cfg = spec[section]
    return cfg.input_height, cfg.input_width


def _split_cfg(spec: Any, split: str) -> Any:
    if split not in SPLITS:
        raise ValueError(f"split: found {split!r}, expected one of {', '.join(SPLITS)}")
    return spec.dataset[split]


def build_transform(spec: Any, split: str, train: bool) -> TrainTransform | EvalTransform:
    """The transform for `split`: training augmentation, or the evaluation resize (sizes from evaluate/inference)."""
    aug = _split_cfg(spec, split).augmentation
    if train:
        return TrainTransform.from_config(aug)
    h, w = _eval_size(spec, split)
    return EvalTransform.from_config(aug, h, w, "inference" if split == "infer_dataset" else "evaluate")


def build_dataset(spec: Any, split: str, train: bool) -> Dataset:
    """All data sources of `split` (`train_dataset`, `val_dataset`, `test_dataset`, `infer_dataset`), each read by
    the class its `dataset_name` names, concatenated. `infer_dataset` gives `build_infer_dataset(spec)`."""
    if split == "infer_dataset":
        return build_infer_dataset(spec)
    cfg = _split_cfg(spec, split)
    if not cfg.data_sources:
        raise DataError(f"dataset.{split}.data_sources is empty; expected at least one "
                        f"{{data_file, dataset_name}} entry")
    transform = build_transform(spec, split, train)
    d = spec.dataset
    seed = int(spec.train.seed)
    parts: list[MonoDataset] = []
    for i, src in enumerate(cfg.data_sources):
        key = f"dataset.{split}.data_sources.{i}"
        cls = dataset_class(src.dataset_name, f"{key}.dataset_name")
        samples, n_missing = _read_samples(Path(src.data_file), d.on_bad_sample, key)
        part = cls(samples, train=train, transform=transform, depth_scale=src.depth_scale, gt_type=src.gt_type,
                   min_depth=d.min_depth, max_depth=d.max_depth, min_valid_pixels=d.min_valid_pixels,
                   on_bad_sample=d.on_bad_sample, seed=seed + i, key=key, annotation_file=Path(src.data_file),
                   probe=False)
        if d.frame_cache_dir:
            part.use_frame_cache(Path(d.frame_cache_dir), int(float(d.frame_cache_max_gib) * 2**30),
                                 threads=max(1, min(int(cfg.workers), os.cpu_count() or 1)))
        part._probe()
        part.missing_files = n_missing
        parts.append(part)
    return ConcatDepthDataset(parts)


def _read_samples(path: Path, on_bad_sample: str, key: str) -> tuple[list[Sample], int]:
    """The samples of one annotation file and how many were dropped for missing files (`skip` only)."""
    if not path.is_file():
        raise DataError(f"{key}.data_file: annotation file not found: {path}")
    samples = read_annotation_file(path, require_depth=True, check_files=on_bad_sample == "error")
    if on_bad_sample == "error":
        return samples, 0
    missing = missing_files(samples)
    bad = {s.line for s, _, _ in missing}
    kept = [s for s in samples if s.line not in bad]
    if not kept:
        raise DataError(describe_missing(path, missing) + "\nno sample is left (on_bad_sample: skip)")
    return kept, len(bad)


# --------------------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------------------


class InferDataset(Dataset):
    """Images to predict on. Items: `image` [3, H, W] (network size), `path`, `index`, `orig_size` int64 [2]
    (height, width of the file, to resize the prediction back). Unreadable images raise `DataError`."""

    def __init__(self, images: Sequence[Path], transform: EvalTransform, where: Optional[Sequence[str]] = None):
        if not images:
            raise DataError("no images to run inference on")
        self.images = [Path(p) for p in images]
        self.transform = transform
        self.where = list(where) if where is not None else [str(p) for p in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            rgb = read_image(self.images[index])
        except DataError as exc:
            raise DataError(f"{self.where[index]}: {exc}") from None
        return {"image": self.transform(rgb), "path": str(self.images[index]), "index": index,
                "orig_size": torch.tensor(rgb.shape[:2], dtype=torch.int64)}


def find_images(root: str | Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under `root`, recursively, sorted (extension match is case-insensitive)."""
    exts = tuple(e.lower() for e in extensions)
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _is_depth_map(path: Path) -> bool:
    """In folder mode, 16-bit single-channel PNGs beside the photos are depth maps (e.g. NYU's sync_depth_*.png),
    not images to predict on."""
    if path.suffix.lower() != ".png":
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.mode in ("I;16", "I;16B", "I;16L", "I")
    except OSError:
        return False


def build_infer_dataset(spec: Any) -> InferDataset:
    """Images from `dataset.infer_dataset.data_sources` annotation files (a depth column is allowed and ignored),
    or from `dataset.infer_dataset.data_root` (every .jpg/.jpeg/.png below it, sorted)."""
    cfg = spec.dataset.infer_dataset
    transform = build_transform(spec, "infer_dataset", train=False)
    images: list[Path] = []
    where: list[str] = []
    if cfg.data_sources:
        for i, src in enumerate(cfg.data_sources):
            path = Path(src.data_file)
            if not path.is_file():
                raise DataError(f"dataset.infer_dataset.data_sources.{i}.data_file: annotation file not found: "
                                f"{path}")
            samples = read_annotation_file(path, require_depth=False, check_files=False)
            missing = [(s, "image", s.image) for s in samples if not s.image.is_file()]
            if missing:
                raise DataError(describe_missing(path, missing))
            images += [s.image for s in samples]
            where += [s.where for s in samples]
    elif cfg.data_root:
        root = Path(cfg.data_root)
        if not root.is_dir():
            raise DataError(f"dataset.infer_dataset.data_root: folder not found: {root}")
        images = [p for p in find_images(root) if not _is_depth_map(p)]
        if not images:
            raise DataError(f"dataset.infer_dataset.data_root: no {'/'.join(IMAGE_EXTENSIONS)} image found under "
                            f"{root} (searched recursively)")
        where = [str(p) for p in images]
    else:
        raise DataError("dataset.infer_dataset: give data_sources (annotation files) or data_root (a folder of "
                        "images)")
    return InferDataset(images, transform, where)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Collate and loaders
# --------------------------------------------------------------------------------------------------------------


def collate_depth_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape into a batch; keep a list where shapes differ (evaluation ground truth at
    each image's own resolution, or images of different aspect ratios); ints become an int64 tensor; other
    values (paths, skip lists) stay lists. Stacking goes through torch's default_collate, which in a loader
    worker writes the batch straight into shared memory (no second copy when it is sent to the trainer)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if all(isinstance(v, torch.Tensor) for v in values):
            same = all(v.shape == values[0].shape for v in values)
            out[key] = default_collate(values) if same else values
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


def count_skipped(skipped_lists: Iterable[Iterable[tuple[str, str]]]) -> dict[str, int]:
    """Distinct skipped samples by reason from items' (or batches') `skipped` lists."""
    seen: dict[str, str] = {}
    for lst in skipped_lists:
        for reason, path in lst:
            seen.setdefault(path, reason)
    return dict(Counter(seen.values()))


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: seed Python's and NumPy's global RNGs from the worker's torch seed (which the
    loader derives from its generator), so that any library randomness in workers is reproducible too."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def build_infer_dataloader(spec: Any, *, batch_size: Optional[int] = None) -> DataLoader:
    """`build_dataloader` for `infer_dataset` (images only; sizes may differ, so `image` may be a list)."""
    return build_dataloader(spec, "infer_dataset", train=False, batch_size=batch_size)


def build_dataloader(spec: Any, split: str, train: bool, *, dataset: Optional[Dataset] = None,
                     batch_size: Optional[int] = None, shuffle: Optional[bool] = None,
                     drop_last: Optional[bool] = None, seed: Optional[int] = None) -> DataLoader:
    """A DataLoader for `split` with batch_size/workers/pin_memory from `dataset.<split>` (pin_memory only when
    CUDA is available), seeded shuffling and worker init, persistent workers when workers > 0.

    Batch size: `batch_size`, else `evaluate.batch_size` / `inference.batch_size` for the test / infer split when
    set, else `dataset.<split>.batch_size`. Training drops the last incomplete batch unless that would leave no
    batch at all.
    """
    cfg = _split_cfg(spec, split)
    ds = dataset if dataset is not None else build_dataset(spec, split, train)
    section = {"test_dataset": "evaluate", "infer_dataset": "inference"}.get(split)
    bs = int(batch_size or (section and spec[section].batch_size) or cfg.batch_size)
    workers = min(int(cfg.workers), os.cpu_count() or 1)  # more workers than cores only adds contention
    generator = torch.Generator()
    generator.manual_seed(int(spec.train.seed if seed is None else seed))
    if drop_last is None:
        drop_last = train and len(ds) >= bs  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=bs, shuffle=train if shuffle is None else shuffle, num_workers=workers,
                      pin_memory=bool(cfg.pin_memory) and torch.cuda.is_available(), drop_last=drop_last,
                      collate_fn=collate_depth_batch, worker_init_fn=seed_worker if workers > 0 else None,
                      generator=generator, persistent_workers=workers > 0)

