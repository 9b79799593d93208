"""convert: TAO semantics on a synthetic NYU-style tree, and the traps it closes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from automl.cli import main as cli_main

from trainer.data.annotations import read_annotation_file
from trainer.data.convert import build_convert_config, convert, load_convert_spec, split_train_val
from trainer.data.synth import generate_dataset
from trainer.errors import DataError, SpecError

REPO = Path(__file__).resolve().parents[1]
CONVERT_SPEC = REPO / "experiments" / "depth_net_mono" / "convert.yaml"
NYU_KEYS = {"image_dir_pattern": ["rgb_"], "depth_dir_pattern": ["sync_depth_"], "image_extension": ".jpg",
            "depth_extension": ".png"}


@pytest.fixture(scope="module")
def nyu_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nyu")
    generate_dataset(root, 20, size=(24, 32), seed=0, scenes=4, progress=False)
    return root


def spec(root: Path, out: Path, **kw) -> dict:
    return {"data_root": str(root), "results_dir": str(out), **NYU_KEYS, **kw}


def test_split_ratio_writes_train_and_val_with_absolute_existing_pairs(nyu_tree: Path, tmp_path: Path,
                                                                       capsys) -> None:
    res = convert(spec(nyu_tree, tmp_path / "out", split_ratio=0.8), log=print)
    assert res.counts == {"train": 15, "val": 5}  # 4 scenes of 5 frames: 3 whole scenes nearest int(0.8 * 20)
    assert set(res.files) == {"train", "val"} and res.files["train"] == tmp_path / "out" / "train.txt"
    lines = res.files["train"].read_text().splitlines()
    assert all(Path(col).is_absolute() for line in lines for col in line.split())
    train = read_annotation_file(res.files["train"], require_depth=True)  # every file exists
    val = read_annotation_file(res.files["val"], require_depth=True)
    for s in train + val:
        assert s.depth.name == s.image.name.replace("rgb_", "sync_depth_").replace(".jpg", ".png")
        assert s.depth.parent == s.image.parent
    assert {s.image for s in train}.isdisjoint({s.image for s in val})
    assert len({s.image for s in train + val}) == 20
    out = capsys.readouterr().out
    assert "train.txt (15 samples)" in out and "val.txt (5 samples)" in out
    assert "4 folders, 3 in train, 1 in val" in out
    assert "train: " in res.summary() and "(5 samples)" in res.summary()


def test_split_is_seeded(nyu_tree: Path, tmp_path: Path) -> None:
    a = convert(spec(nyu_tree, tmp_path / "a", split_ratio=0.5, seed=1), log=lambda _m: None)
    b = convert(spec(nyu_tree, tmp_path / "b", split_ratio=0.5, seed=1), log=lambda _m: None)
    c = convert(spec(nyu_tree, tmp_path / "c", split_ratio=0.5, seed=2), log=lambda _m: None)
    assert a.files["val"].read_text() == b.files["val"].read_text()
    assert a.files["val"].read_text() != c.files["val"].read_text()


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratio_zero_or_one_writes_one_test_file(nyu_tree: Path, tmp_path: Path, ratio: float) -> None:
    res = convert(spec(nyu_tree, tmp_path, split_ratio=ratio), log=lambda _m: None)
    assert res.counts == {"test": 20} and not (tmp_path / "train.txt").exists()


def test_tao_extensions_without_dot_work_as_in_tao(nyu_tree: Path, tmp_path: Path) -> None:
    # TAO's defaults are `jpg` / `png` (no dot); the NYU-style tree pairs rgb_*.jpg with sync_depth_*.png
    res = convert({"data_root": str(nyu_tree), "results_dir": str(tmp_path), "image_dir_pattern": ["rgb_"],
                   "depth_dir_pattern": ["sync_depth_"]}, log=lambda _m: None)
    assert res.counts == {"test": 20}
    cfg = build_convert_config({"data_root": str(nyu_tree), "results_dir": str(tmp_path),
                                "image_dir_pattern": ["rgb_"]})
    assert (cfg.image_extension, cfg.depth_extension) == ("jpg", "png")


def test_missing_depth_files_are_reported_then_dropped_on_request(nyu_tree: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for p in nyu_tree.rglob("*"):
        if p.is_file() and p.suffix in (".jpg", ".png"):
            (tree / p.relative_to(nyu_tree)).parent.mkdir(parents=True, exist_ok=True)
            (tree / p.relative_to(nyu_tree)).write_bytes(p.read_bytes())
    gone = sorted(tree.rglob("sync_depth_*.png"))[:7]
    for p in gone:
        p.unlink()
    with pytest.raises(DataError) as err:
        convert(spec(tree, tmp_path / "out", split_ratio=0.8), log=lambda _m: None)
    msg = str(err.value)
    assert "7 of 20 images have no depth file" in msg and str(gone[0]) in msg
    assert msg.count("(not found)") == 5 and "... and 2 more" in msg and "allow_missing_depth" in msg
    logs: list[str] = []
    res = convert(spec(tree, tmp_path / "out", split_ratio=0.8, allow_missing_depth=True), log=logs.append)
    assert res.dropped_missing_depth == 7 and sum(res.counts.values()) == 13
    assert any("7 images dropped" in m for m in logs)


def test_all_depth_missing_is_an_error_even_when_allowed(nyu_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="(?s)20 of 20 images have no depth file.*check depth_dir_pattern"):
        convert(spec(nyu_tree, tmp_path, depth_dir_pattern=["depth_map_"], allow_missing_depth=True),
                log=lambda _m: None)


def test_depth_files_are_never_taken_as_images(tmp_path: Path) -> None:
    # image paths contain 'rgb'; depth paths contain 'rgb_depth' (and so 'rgb' too): TAO would list them as images
    for scene in ("a", "b"):
        for i in range(3):
            for folder in ("rgb", "rgb_depth"):
                p = tmp_path / "root" / scene / folder / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"x")
    res = convert({"data_root": str(tmp_path / "root"), "results_dir": str(tmp_path / "out"),
                   "image_dir_pattern": ["rgb"], "depth_dir_pattern": ["rgb_depth"], "image_extension": "png"},
                  log=lambda _m: None)
    assert res.counts == {"test": 6}
    for s in read_annotation_file(res.files["test"], require_depth=True):
        assert s.image.parent.name == "rgb" and s.depth.parent.name == "rgb_depth"


def test_no_depth_pattern_writes_image_only_lists(nyu_tree: Path, tmp_path: Path) -> None:
    res = convert({"data_root": str(nyu_tree), "results_dir": str(tmp_path), "image_dir_pattern": ["rgb_"],
                   "image_extension": ".jpg"}, log=lambda _m: None)
    samples = read_annotation_file(res.files["test"])
    assert len(samples) == 20 and all(s.depth is None for s in samples)


def test_no_image_found_explains_what_was_searched(nyu_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        convert(spec(nyu_tree, tmp_path, image_extension=".JPG"), log=lambda _m: None)
    msg = str(err.value)
    assert "no image found" in msg and "'rgb_'" in msg and "'.JPG'" in msg and "case-sensitive" in msg


def test_load_convert_spec_from_yaml_with_overrides_and_notices(nyu_tree: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "convert.yaml"
    path.write_text(f"data_root: {nyu_tree}\nresults_dir: {tmp_path / 'out'}\nimage_dir_pattern: [rgb_]\n"
                    f"depth_dir_pattern: [sync_depth_]\nimage_extension: .jpg\ndepth_extension: .png\n"
                    f"split_ratio: 0.0\nright_dir_pattern: [right_]\n")
    cfg = load_convert_spec(path, ["split_ratio=0.75"])
    assert cfg.split_ratio == 0.75
    res = convert(cfg, log=lambda _m: None)
    assert res.counts == {"train": 15, "val": 5}
    assert "'right_dir_pattern' is a TAO stereo key" in capsys.readouterr().err


def test_spec_problems_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "convert.yaml"
    path.write_text("data_root: /no/such/folder\nimage_dir_patern: [rgb_]\nsplit_ratio: 1.5\n")
    with pytest.raises(SpecError) as err:
        load_convert_spec(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "did you mean 'image_dir_pattern'" in msg and "folder not found: /no/such/folder" in msg
    assert "split_ratio" in msg and "results_dir" in msg


def test_empty_depth_extension_keeps_the_image_extension(tmp_path: Path) -> None:
    for i in range(4):
        for folder in ("image", "depth"):
            p = tmp_path / "root" / "s0" / folder / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    res = convert({"data_root": str(tmp_path / "root"), "results_dir": str(tmp_path / "out"),
                   "image_dir_pattern": ["/image/"], "depth_dir_pattern": ["/depth/"], "image_extension": ".png",
                   "depth_extension": "", "split_ratio": 0.5}, log=lambda _m: None)
    assert res.counts == {"train": 2, "val": 2}
    samples = read_annotation_file(res.files["train"], require_depth=True)
    assert all(s.depth.suffix == ".png" and s.depth.parent.name == "depth" for s in samples)


def scenes_of(path: Path) -> Counter:
    """Frames per scene folder listed in an annotation file."""
    return Counter(s.image.parent.name for s in read_annotation_file(path, require_depth=True))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synth_output_converted_with_the_shipped_spec_keeps_each_scene_in_one_split(tmp_path: Path, capsys,
                                                                                   seed: int) -> None:
    # what a user runs: `automl synth` then `automl convert -e experiments/depth_net_mono/convert.yaml` with overrides
    data = tmp_path / "synth"
    assert cli_main(["synth", "--out", str(data), "--num", "30", "--size", "28x28", "--seed", "0",
                     "--layout", "nyu"]) == 0
    assert cli_main(["convert", "-e", str(CONVERT_SPEC), f"data_root={data}", f"results_dir={tmp_path / 'splits'}",
                     f"seed={seed}"]) == 0
    train, val = scenes_of(tmp_path / "splits" / "train.txt"), scenes_of(tmp_path / "splits" / "val.txt")
    written = {p.parent.name for p in data.rglob("rgb_*.jpg")}
    assert len(written) == 4  # 30 frames: one scene folder per 8 frames
    assert set(train).isdisjoint(val), f"scenes in both splits: {set(train) & set(val)}"
    assert set(train) | set(val) == written and sum(train.values()) + sum(val.values()) == 30
    assert train and val
    assert "4 folders" in capsys.readouterr().out


def test_split_by_pair_is_taos_per_pair_shuffle(nyu_tree: Path, tmp_path: Path) -> None:
    res = convert(spec(nyu_tree, tmp_path / "out", split_ratio=0.8, split_by="pair"), log=lambda _m: None)
    assert res.counts == {"train": 16, "val": 4}  # TAO: int(0.8 * 20)
    train, val = scenes_of(res.files["train"]), scenes_of(res.files["val"])
    assert set(train) & set(val), "with seed 0 a per-pair shuffle puts some scene in both splits"


def test_one_folder_of_images_is_split_pair_by_pair_as_tao(tmp_path: Path) -> None:
    for i in range(10):
        for name in (f"rgb_{i}.jpg", f"sync_depth_{i}.png"):
            (tmp_path / "flat").mkdir(exist_ok=True)
            (tmp_path / "flat" / name).write_bytes(b"x")
    res = convert(spec(tmp_path / "flat", tmp_path / "out", split_ratio=0.7), log=lambda _m: None)
    assert res.counts == {"train": 7, "val": 3}


def test_split_keeps_a_val_scene_when_the_nearest_cut_would_leave_none() -> None:
    # two scenes of 10: int(0.8 * 20) = 16 is nearer 20 (all train) than 10, yet val must get a scene
    groups = [[(Path(f"/d/{s}/rgb_{i}.jpg"), None) for i in range(10)] for s in "ab"]
    split = split_train_val(groups, 0.8, seed=0)
    assert len(split["train"]) == 10 and len(split["val"]) == 10


def test_split_by_must_be_folder_or_pair(nyu_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="split_by.*'scene'.*folder, pair"):
        build_convert_config(spec(nyu_tree, tmp_path, split_by="scene"))
