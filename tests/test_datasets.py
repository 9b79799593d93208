"""Datasets by dataset_name: units, valid masks, the Eigen crop, skipping, construction checks, loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.config import build_spec
from trainer.data.datasets import (
    MISSING_FILE,
    TOO_FEW_VALID,
    UNREADABLE,
    build_dataloader,
    build_dataset,
    build_infer_dataloader,
    build_infer_dataset,
    collate_depth_batch,
    count_skipped,
    eigen_crop_mask,
)
from trainer.data.depth_io import write_pfm
from trainer.errors import DataError, SpecError

CROP = [28, 42]


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def write_rgb(path: Path, hw: tuple[int, int], seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3)).astype(np.uint8)).save(path)
    return path


def write_depth(path: Path, depth: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(depth.astype(np.uint16)).save(path)
    elif path.suffix == ".npy":
        np.save(path, depth)
    else:
        write_pfm(path, depth)
    return path


def make_source(root: Path, depths: list[np.ndarray], ext: str = ".png", name: str = "list.txt") -> Path:
    """Images + depth files + an annotation file (relative paths) under root."""
    lines = []
    for i, d in enumerate(depths):
        write_rgb(root / "rgb" / f"{i}.jpg", d.shape[:2], seed=i)
        write_depth(root / "depth" / f"{i}{ext}", d)
        lines.append(f"rgb/{i}.jpg depth/{i}{ext}")
    ann = root / name
    ann.write_text("\n".join(lines) + "\n")
    return ann


def make_spec(sources: dict[str, list[tuple[Path, str]]], *, model: str = "MetricDepthAnything",
              depth_scale: Optional[float] = None, gt_type: str = "depth", **dataset: Any):
    raw: dict[str, Any] = {"model": {"model_type": model}, "dataset": dict(dataset)}
    for split, srcs in sources.items():
        entries = []
        for f, n in srcs:
            e: dict[str, Any] = {"data_file": str(f), "dataset_name": n, "gt_type": gt_type}
            if depth_scale is not None:
                e["depth_scale"] = depth_scale
            entries.append(e)
        raw["dataset"][split] = {"data_sources": entries, "batch_size": 2, "workers": 0, "pin_memory": False,
                                 "augmentation": {"crop_size": CROP}}
    return build_spec(raw, notice=lambda _m: None, check_files=False)


def mm(h: int, w: int, value: float) -> np.ndarray:
    return np.full((h, w), value, np.float64)


# --------------------------------------------------------------------------------------------------------------
# NYU
# --------------------------------------------------------------------------------------------------------------


def test_nyu_reads_millimetres_as_metres_with_its_range_and_eigen_crop(tmp_path: Path) -> None:
    d = mm(480, 640, 2500)
    d[0:10, 300:310] = 0  # sensor hole
    d[200:210, 300:310] = 12000  # beyond NYU's 10 m
    d[300, 300] = 10000  # exactly 10 m: valid
    ann = make_source(tmp_path, [d])
    spec = make_spec({"test_dataset": [(ann, "NYUDV2")]}, min_depth=0.001, max_depth=10)
    item = build_dataset(spec, "test_dataset", train=False)[0]
    depth, valid = item["depth"].numpy(), item["valid"].numpy()
    assert depth.shape == (480, 640)  # ground truth keeps its resolution at evaluation
    assert item["image"].shape[1:] == (28, 42)  # short side at min(crop_size), both sides multiples of 14
    assert depth[100, 100] == pytest.approx(2.5) and depth[300, 300] == pytest.approx(10.0)
    assert not valid[205, 305] and depth[205, 305] == 0
    crop = np.zeros((480, 640), bool)
    crop[45:471, 41:601] = True
    assert np.array_equal(eigen_crop_mask((480, 640)), crop)
    assert not valid[~crop].any()  # Eigen crop at evaluation
    expected = crop & (d > 0) & (d <= 10000)
    assert np.array_equal(valid, expected)


def test_nyu_training_has_no_eigen_crop_and_intersects_the_spec_range(tmp_path: Path) -> None:
    d = np.tile(np.round(np.linspace(200, 9000, 64)), (48, 1))  # 0.2 .. 9 m across columns
    ann = make_source(tmp_path, [d])
    spec = make_spec({"train_dataset": [(ann, "nyudv2")]}, min_depth=0.5, max_depth=5.0)  # case-insensitive
    ds = build_dataset(spec, "train_dataset", train=False).datasets[0]
    ds.train = True  # inspect the untransformed training target
    _, target, valid = ds.load(0)
    m = target[valid]
    assert m.min() >= 0.5 and m.max() <= 5.0
    assert valid[:, 30].all() and valid[0].any()  # no Eigen crop in training
    np.testing.assert_allclose(target[valid], (d / 1000.0)[valid], rtol=1e-6)


def test_nyu_relative_target_is_inverse_metres(tmp_path: Path) -> None:
    d = mm(48, 64, 2000)
    d[:, :32] = 4000
    d[0, 0] = 0
    ann = make_source(tmp_path, [d])
    spec = make_spec({"val_dataset": [(ann, "NYUDV2Relative")]}, model="RelativeDepthAnything")
    item = build_dataset(spec, "val_dataset", train=False)[0]
    depth, valid = item["depth"], item["valid"]
    assert depth[20, 40].item() == pytest.approx(0.5) and depth[20, 10].item() == pytest.approx(0.25)
    assert not valid[0, 0] and depth[0, 0] == 0
    assert not valid[0].any()  # Eigen crop (scaled to 48x64) at evaluation


# --------------------------------------------------------------------------------------------------------------
# generic datasets
# --------------------------------------------------------------------------------------------------------------


def test_metric_uint16_png_without_depth_scale_is_an_error_that_explains_units(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(20, 30, 1500)])
    spec = make_spec({"train_dataset": [(ann, "MetricMonoDataset")]}, min_depth=0.001, max_depth=10)
    with pytest.raises(DataError) as err:
        build_dataset(spec, "train_dataset", train=True)
    msg = str(err.value)
    assert "dataset.train_dataset.data_sources.0.depth_scale is not set" in msg
    assert "0.001 for millimetres" in msg and "NYUDV2" in msg and str(ann) in msg


def test_metric_uint16_png_with_depth_scale(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(20, 30, 1500)])
    spec = make_spec({"test_dataset": [(ann, "MetricMonoDataset")]}, depth_scale=0.001, min_depth=0.001,
                     max_depth=10)
    item = build_dataset(spec, "test_dataset", train=False)[0]
    assert item["depth"][5, 5].item() == pytest.approx(1.5) and bool(item["valid"].all())  # no Eigen crop


def test_metric_float_formats_are_metres(tmp_path: Path) -> None:
    d = np.full((20, 30), 3.25, np.float32)
    d[0, 0] = np.nan
    d[0, 1] = np.inf
    a1 = make_source(tmp_path / "a", [d], ext=".npy")
    a2 = make_source(tmp_path / "b", [d], ext=".pfm")
    spec = make_spec({"test_dataset": [(a1, "MetricMonoDataset"), (a2, "MetricMonoDataset")]},
                     min_depth=0.1, max_depth=80)
    ds = build_dataset(spec, "test_dataset", train=False)
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        assert item["index"] == i
        assert item["depth"][5, 5].item() == pytest.approx(3.25)
        assert not item["valid"][0, 0] and not item["valid"][0, 1] and item["depth"][0, 0] == 0  # no NaN leaks


def test_all_invalid_dataset_fails_at_construction_naming_the_cause(tmp_path: Path) -> None:
    depths = [np.full((20, 30), 1500.0 + 100 * i, np.float32) for i in range(3)]  # millimetres saved as float
    ann = make_source(tmp_path, depths, ext=".npy")
    spec = make_spec({"train_dataset": [(ann, "MetricMonoDataset")]}, min_depth=0.001, max_depth=10)
    with pytest.raises(DataError) as err:
        build_dataset(spec, "train_dataset", train=True)
    msg = str(err.value)
    assert "none of the 3 samples checked" in msg
    assert "1500..1700" in msg and "[0.001, 10]" in msg
    assert "units" in msg and "depth_scale" in msg and "min_depth/max_depth" in msg


def test_relative_dataset_converts_depth_to_disparity(tmp_path: Path) -> None:
    d = np.full((20, 30), 4.0, np.float32)
    d[:, :10] = 0.5
    d[0, 0] = 0
    ann = make_source(tmp_path, [d], ext=".npy")
    spec = make_spec({"test_dataset": [(ann, "RelativeMonoDataset")]}, model="RelativeDepthAnything",
                     min_depth=1.0, max_depth=2.0)  # ignored for relative data (scale-free)
    item = build_dataset(spec, "test_dataset", train=False)[0]
    assert item["depth"][5, 20].item() == pytest.approx(0.25) and item["depth"][5, 5].item() == pytest.approx(2.0)
    assert int(item["valid"].sum()) == 20 * 30 - 1


def test_relative_dataset_with_disparity_files_keeps_them(tmp_path: Path) -> None:
    disp = np.full((20, 30), 8.0, np.float32)
    ann = make_source(tmp_path, [disp], ext=".pfm")
    spec = make_spec({"test_dataset": [(ann, "RelativeMonoDataset")]}, model="RelativeDepthAnything",
                     gt_type="disparity")
    item = build_dataset(spec, "test_dataset", train=False)[0]
    assert item["depth"][3, 3].item() == pytest.approx(8.0)


def test_every_schema_dataset_name_has_a_class() -> None:
    from trainer.config.schema import MONO_DATASET_NAMES
    from trainer.data.datasets import DATASETS, dataset_class

    assert {c.name for c in DATASETS.values()} == set(MONO_DATASET_NAMES)
    assert all(dataset_class(n.upper()).name == n for n in MONO_DATASET_NAMES)


def test_unknown_dataset_name_suggests_the_nearest(tmp_path: Path) -> None:
    from trainer.data.datasets import dataset_class

    with pytest.raises(SpecError, match="did you mean 'NYUDV2'"):
        dataset_class("NYUDV", "dataset.train_dataset.data_sources.0.dataset_name")


# --------------------------------------------------------------------------------------------------------------
# bad files and skipping
# --------------------------------------------------------------------------------------------------------------


def test_three_channel_depth_names_both_files_and_shapes(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [np.ones((20, 30), np.float32)], ext=".npy")
    np.save(tmp_path / "depth" / "0.npy", np.ones((20, 30, 3), np.float32))
    spec = make_spec({"train_dataset": [(ann, "MetricMonoDataset")]}, min_depth=0.1, max_depth=10)
    with pytest.raises(DataError) as err:
        build_dataset(spec, "train_dataset", train=True)
    msg = str(err.value)
    assert f"{ann}:1" in msg and str(tmp_path / "depth" / "0.npy") in msg and "(20, 30, 3)" in msg
    assert str(tmp_path / "rgb" / "0.jpg") in msg and "20x30" in msg


def test_depth_size_mismatch_names_both_files_and_shapes(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(20, 30, 1000)])
    write_rgb(tmp_path / "rgb" / "0.jpg", (40, 60))
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)
    with pytest.raises(DataError) as err:
        build_dataset(spec, "train_dataset", train=True)
    msg = str(err.value)
    assert f"{ann}:1" in msg and "depth/0.png" in msg and "(20, 30)" in msg
    assert "rgb/0.jpg" in msg and "40x60" in msg


def truncate(path: Path, keep: float) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def test_truncated_image_raises_with_error_policy(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(120, 160, 1000), mm(120, 160, 2000)])
    truncate(tmp_path / "rgb" / "1.jpg", 0.6)  # header intact: found when the pixels are read
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)
    ds = build_dataset(spec, "train_dataset", train=True)
    with pytest.raises(DataError) as err:
        ds[1]
    assert f"{ann}:2" in str(err.value) and "rgb/1.jpg" in str(err.value)
    truncate(tmp_path / "rgb" / "1.jpg", 0.02)  # header gone: found by the construction check
    with pytest.raises(DataError, match=r"list\.txt:2: .*rgb/1\.jpg: cannot read image header"):
        build_dataset(spec, "train_dataset", train=True)


def test_skip_policy_substitutes_and_counts_unreadable_samples(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(120, 160, 1000 * (i + 1)) for i in range(4)])
    truncate(tmp_path / "rgb" / "1.jpg", 0.6)
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10, on_bad_sample="skip")
    ds = build_dataset(spec, "train_dataset", train=True)
    assert ds.skipped == {}  # not known yet: the header is intact
    item = ds[1]
    assert item["path"] != str((tmp_path / "rgb" / "1.jpg").resolve()) and item["index"] != 1
    assert item["image"].shape == (3, *CROP)
    assert item["skipped"] == [(UNREADABLE, str((tmp_path / "rgb" / "1.jpg").resolve()))]
    ds[1]
    assert ds.skipped == {UNREADABLE: 1}  # distinct samples, not events
    assert count_skipped([item["skipped"], item["skipped"]]) == {UNREADABLE: 1}


def test_samples_with_too_few_valid_pixels_are_skipped_and_counted(tmp_path: Path) -> None:
    sparse = mm(20, 30, 0)
    sparse[0, :5] = 1000  # 5 valid pixels < min_valid_pixels 10
    ann = make_source(tmp_path, [mm(20, 30, 1000), sparse, mm(20, 30, 3000)])
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")], "test_dataset": [(ann, "NYUDV2")]},
                     min_depth=0.1, max_depth=10)
    train = build_dataset(spec, "train_dataset", train=True)
    assert train.skipped == {TOO_FEW_VALID: 1}  # found by the construction check
    item = train[1]
    assert item["index"] in (0, 2) and item["valid"].all()
    test = build_dataset(spec, "test_dataset", train=False)
    item = test[1]  # evaluation keeps the frame but with an empty mask, so metrics ignore it
    assert item["index"] == 1 and not item["valid"].any() and (item["depth"] == 0).all()
    assert item["skipped"][0][0] == TOO_FEW_VALID


def test_missing_files_error_or_skip(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(20, 30, 1000), mm(20, 30, 2000)])
    (tmp_path / "depth" / "1.png").unlink()
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)
    with pytest.raises(DataError, match=r"list\.txt:2: depth file not found"):
        build_dataset(spec, "train_dataset", train=True)
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10, on_bad_sample="skip")
    ds = build_dataset(spec, "train_dataset", train=True)
    assert len(ds) == 1 and ds.skipped == {MISSING_FILE: 1}


# --------------------------------------------------------------------------------------------------------------
# concatenation, collate, loaders, inference
# --------------------------------------------------------------------------------------------------------------


def test_sources_are_concatenated_with_global_indices(tmp_path: Path) -> None:
    a = make_source(tmp_path / "a", [mm(20, 30, 1000)] * 2)
    b = make_source(tmp_path / "b", [np.full((20, 30), 2.0, np.float32)] * 3, ext=".npy")
    spec = make_spec({"val_dataset": [(a, "NYUDV2"), (b, "MetricMonoDataset")]}, min_depth=0.1, max_depth=10)
    ds = build_dataset(spec, "val_dataset", train=False)
    assert len(ds) == 5 and len(ds.samples) == 5
    assert ds[3]["index"] == 3 and ds[3]["path"].endswith("b/rgb/1.jpg")
    assert ds[3]["depth"][10, 10].item() == pytest.approx(2.0)


def test_collate_stacks_equal_sizes_and_lists_different_ground_truth(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(28, 42, 1000), mm(28, 40, 1000)])
    spec = make_spec({"test_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)
    ds = build_dataset(spec, "test_dataset", train=False)
    batch = collate_depth_batch([ds[0], ds[1]])
    assert isinstance(batch["depth"], list) and [d.shape for d in batch["depth"]] == [(28, 42), (28, 40)]
    assert isinstance(batch["image"], torch.Tensor) and batch["image"].shape == (2, 3, 28, 42)
    assert batch["index"].tolist() == [0, 1] and len(batch["path"]) == 2
    same = collate_depth_batch([ds[0], ds[0]])
    assert same["depth"].shape == (2, 28, 42) and same["valid"].dtype == torch.bool


def test_loader_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(40, 60, 1000 + 100 * i) for i in range(6)])
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)

    def first_batches(seed: int) -> list[dict]:
        torch.manual_seed(123)  # workers=0: augmentation draws from torch's global generator
        loader = build_dataloader(spec, "train_dataset", train=True, seed=seed)
        return list(loader)

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert len(a) == 3 and a[0]["image"].shape == (2, 3, *CROP)
    assert all(torch.equal(x["image"], y["image"]) and x["index"].tolist() == y["index"].tolist()
               for x, y in zip(a, b))
    assert [x["index"].tolist() for x in a] != [x["index"].tolist() for x in c]


def test_loader_uses_split_settings(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(20, 30, 1000)] * 3)
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)
    loader = build_dataloader(spec, "train_dataset", train=True)
    assert loader.batch_size == 2 and loader.num_workers == 0 and loader.drop_last
    assert len(loader) == 1  # 3 samples, batch 2, last incomplete batch dropped
    small = build_dataloader(spec, "train_dataset", train=True, batch_size=8)
    assert len(small) == 1  # never zero batches: a dataset smaller than the batch keeps its one batch


def test_infer_dataset_from_folder_and_annotation_file(tmp_path: Path) -> None:
    write_rgb(tmp_path / "imgs" / "b" / "2.png", (30, 40))
    write_rgb(tmp_path / "imgs" / "a" / "1.jpg", (40, 30))
    write_rgb(tmp_path / "imgs" / "a" / "0.JPEG", (20, 20))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    raw = {"dataset": {"infer_dataset": {"data_root": str(tmp_path / "imgs"), "workers": 0,
                                         "augmentation": {"crop_size": [28, 28]}}}}
    spec = build_spec(raw, notice=lambda _m: None, check_files=False)
    ds = build_infer_dataset(spec)
    assert [Path(p).name for p in ds.images] == ["0.JPEG", "1.jpg", "2.png"]  # recursive, sorted
    item = ds[2]
    assert item["orig_size"].tolist() == [30, 40] and item["image"].shape == (3, 28, 42)
    assert build_dataset(spec, "infer_dataset", train=False)[1]["image"].shape == (3, 42, 28)

    ann = tmp_path / "infer.txt"
    ann.write_text("imgs/a/1.jpg\nimgs/b/2.png imgs/whatever.png\n")  # a depth column is allowed and ignored
    raw = {"inference": {"input_height": 56, "input_width": 70},
           "dataset": {"infer_dataset": {"data_sources": [{"data_file": str(ann), "dataset_name": "NYUDV2"}],
                                         "workers": 0}}}
    spec = build_spec(raw, notice=lambda _m: None, check_files=False)
    ds = build_infer_dataset(spec)
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 56, 70) and ds[0]["orig_size"].tolist() == [40, 30]
    batch = next(iter(build_infer_dataloader(spec, batch_size=2)))  # fixed input size: images stack
    assert batch["image"].shape == (2, 3, 56, 70) and batch["orig_size"].tolist() == [[40, 30], [30, 40]]


def test_loader_with_workers_is_reproducible_and_reports_skips(tmp_path: Path) -> None:
    sparse = mm(120, 160, 0)  # found by the construction check, in the main process
    ann = make_source(tmp_path, [mm(120, 160, 1000 + 100 * i) for i in range(5)] + [sparse])
    truncate(tmp_path / "rgb" / "2.jpg", 0.6)  # header intact: only found when a worker reads the pixels
    spec = make_spec({"train_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10, on_bad_sample="skip")
    spec.dataset.train_dataset.workers = 2

    def run() -> tuple[list[dict], dict]:
        loader = build_dataloader(spec, "train_dataset", train=True, seed=4)
        assert loader.persistent_workers and loader.worker_init_fn is not None
        assert loader.dataset.skipped == {TOO_FEW_VALID: 1}
        batches = [b for _epoch in range(2) for b in loader]
        return batches, loader.dataset.skipped

    (a, skipped_a), (b, _) = run(), run()
    assert len(a) == 6
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["image"], a[3]["image"])  # epochs differ
    # what workers found reaches the main process: through shared counts and through the items
    assert skipped_a == {TOO_FEW_VALID: 1, UNREADABLE: 1}
    assert count_skipped(lst for batch in a for lst in batch["skipped"]) == skipped_a


def test_evaluate_batch_size_overrides_the_split(tmp_path: Path) -> None:
    ann = make_source(tmp_path, [mm(20, 30, 1000)] * 3)
    spec = make_spec({"test_dataset": [(ann, "NYUDV2")]}, min_depth=0.1, max_depth=10)
    assert build_dataloader(spec, "test_dataset", train=False).batch_size == 2
    spec.evaluate.batch_size = 3
    loader = build_dataloader(spec, "test_dataset", train=False)
    assert loader.batch_size == 3 and not loader.drop_last and len(loader) == 1


# --------------------------------------------------------------------------------------------------------------
# frame cache (decoded frames shared by the runs of a node)
# --------------------------------------------------------------------------------------------------------------


def _cached_spec(tmp_path: Path, cache: Path, **dataset: Any):
    ann = make_source(tmp_path / "data", [mm(30 + 2 * i, 40, 1000 + 100 * i) for i in range(5)])
    val = make_source(tmp_path / "data", [mm(30, 40, 2000)] * 3, name="val.txt")
    return make_spec({"train_dataset": [(ann, "NYUDV2")], "val_dataset": [(val, "NYUDV2")]}, min_depth=0.1,
                     max_depth=10, frame_cache_dir=str(cache), **dataset)


def _items(spec: Any, split: str, train: bool) -> list[dict]:
    torch.manual_seed(7)  # workers=0: augmentation draws from torch's global generator
    return list(build_dataloader(spec, split, train=train, seed=3))


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "depth",
                                                                                            "valid", "index"))


def test_second_build_reads_the_frame_cache_and_gives_identical_samples(tmp_path: Path, monkeypatch) -> None:
    from trainer.data.datasets import MonoDataset

    cache = tmp_path / "cache"
    spec = _cached_spec(tmp_path, cache)
    plain = _cached_spec(tmp_path, cache)
    plain.dataset.frame_cache_dir = None
    expected = {s: _items(plain, s, s == "train_dataset") for s in ("train_dataset", "val_dataset")}
    first = {s: _items(spec, s, s == "train_dataset") for s in ("train_dataset", "val_dataset")}
    files = sorted(cache.glob("frames-*.bin"))
    assert len(files) == 2  # one per annotation file

    def no_files(self: Any, i: int) -> Any:
        raise AssertionError(f"read sample {i} from its files although it is cached")

    monkeypatch.setattr(MonoDataset, "read_files", no_files)
    second = {s: _items(spec, s, s == "train_dataset") for s in ("train_dataset", "val_dataset")}
    for s in expected:
        assert _same_batches(first[s], expected[s]) and _same_batches(second[s], expected[s])
    assert sorted(cache.glob("frames-*.bin")) == files


def test_changed_data_gets_a_new_frame_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _cached_spec(tmp_path, cache)
    build_dataset(spec, "train_dataset", train=True)
    write_depth(tmp_path / "data" / "depth" / "0.png", mm(30, 40, 3000))  # same size, new content and mtime
    import os
    os.utime(tmp_path / "data" / "depth" / "0.png", ns=(1, 1))
    ds = build_dataset(spec, "train_dataset", train=True)
    assert len(list(cache.glob("frames-*.bin"))) == 2
    assert ds.datasets[0].load(0)[1].max() == pytest.approx(3.0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_bad_or_partial_frame_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    spec = _cached_spec(tmp_path, cache)
    plain = _cached_spec(tmp_path, cache)
    plain.dataset.frame_cache_dir = None
    build_dataset(spec, "train_dataset", train=True)
    (path,) = cache.glob("frames-*.bin")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a cache" * 10, "empty": b""}[damage])
    assert _same_batches(_items(spec, "train_dataset", True), _items(plain, "train_dataset", True))
    assert path.read_bytes() == data


def test_frame_cache_over_its_limit_reads_the_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _cached_spec(tmp_path, cache, frame_cache_max_gib=1e-6)  # about 1 KiB: no frame fits
    ds = build_dataset(spec, "train_dataset", train=True)
    assert ds.datasets[0].frame_cache is None and not list(cache.glob("frames-*.bin"))
    assert ds[0]["image"].shape == (3, *CROP)


def test_unreadable_sample_is_not_cached_and_still_skipped(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _cached_spec(tmp_path, cache, on_bad_sample="skip")
    truncate(tmp_path / "data" / "rgb" / "2.jpg", 0.6)
    ds = build_dataset(spec, "train_dataset", train=True)
    part = ds.datasets[0]
    assert part.frame_cache is not None and part.frame_cache.cached == 4 and part.frame_cache.get(2) is None
    item = ds[2]
    assert item["index"] != 2 and ds.skipped == {UNREADABLE: 1}
