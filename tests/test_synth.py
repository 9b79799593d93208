"""Synthetic RGB-D scenes: exact z-depth, determinism, plausible frames, the files and lists written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from trainer.data.annotations import read_annotation_file
from trainer.data.depth_io import read_depth, read_image
from trainer.data.synth import Camera, Light, Material, Scene, Sphere, generate_dataset, render, render_frame

SMALL = (48, 64)


def looking_along_z(position: tuple[float, float, float], fx: float, size: tuple[int, int]) -> Camera:
    rot = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], np.float32).T  # columns: right, down, forward
    return Camera(position, rot, fx, fx, size[1] / 2, size[0] / 2)


def empty_room(spheres=()) -> Scene:
    mat = Material("checker", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 2.0, 0.05, (0.0, 0.0))
    return Scene(size=(4.0, 3.0, 6.0), room_materials=(0, 0, 0, 0, 0, 0), materials=[mat],
                 spheres=list(spheres), lights=[Light((2.0, 2.8, 3.0), 2.0, (1.0, 1.0, 1.0))],
                 noise=np.random.default_rng(0).random((64, 64)).astype(np.float32))


def test_depth_is_z_along_the_optical_axis_not_ray_length() -> None:
    size = (40, 60)
    cam = looking_along_z((2.0, 1.5, 1.0), fx=120.0, size=size)  # narrow view: only the far wall (z = 6) is seen
    _, depth = render(empty_room(), cam, size)
    # a wall facing the camera has the same z-depth everywhere, while the ray length grows towards the corners
    np.testing.assert_allclose(depth, 5.0, atol=1e-4)
    corner_ray = math.hypot(math.hypot((0.5 - 30) / 120.0, (0.5 - 20) / 120.0), 1.0) * 5.0
    assert corner_ray > 5.1


def test_sphere_occludes_the_wall_at_the_right_depth() -> None:
    size = (41, 61)  # odd: a pixel centre on the optical axis
    cam = looking_along_z((2.0, 1.5, 1.0), fx=120.0, size=size)
    rgb, depth = render(empty_room([Sphere((2.0, 1.5, 4.0), 0.5, 0)]), cam, size)
    assert depth[20, 30] == pytest.approx(2.5, abs=1e-4)  # 3 m away, radius 0.5
    assert depth[0, 0] == pytest.approx(5.0, abs=1e-4)
    # silhouette: a disc of angular radius asin(r / distance), seen through the pinhole
    disc_px = math.pi * (120.0 * math.tan(math.asin(0.5 / 3.0))) ** 2
    assert (depth < 4.0).sum() == pytest.approx(disc_px, rel=0.03)
    assert rgb[20, 30].astype(int).sum() != rgb[0, 0].astype(int).sum()


def test_render_frame_is_deterministic_and_plausible() -> None:
    a_rgb, a_depth = render_frame(3, SMALL)
    b_rgb, b_depth = render_frame(3, SMALL)
    c_rgb, c_depth = render_frame(4, SMALL)
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_depth, b_depth)
    assert not np.array_equal(a_depth, c_depth)
    for seed in range(6):
        rgb, depth = render_frame(seed, SMALL)
        assert rgb.shape == (*SMALL, 3) and rgb.dtype == np.uint8
        assert depth.shape == SMALL and depth.dtype == np.float32
        assert np.isfinite(depth).all() and depth.min() > 0.05 and depth.max() < 12.0
        assert depth.std() > 0.1 and depth.max() / depth.min() > 1.3  # varied, not a flat wall
        assert rgb.std() > 10  # a lit, textured image, not a flat colour


def test_generate_nyu_layout_writes_scenes_and_held_out_val_lists(tmp_path: Path) -> None:
    res = generate_dataset(tmp_path / "nyu", 10, size=SMALL, seed=5, scenes=5, progress=False)
    assert (res.num_frames, res.num_scenes, res.num_train, res.num_val) == (10, 5, 8, 2)
    assert res.val_scenes == (4,)
    train = read_annotation_file(res.train_file, require_depth=True)  # every listed file exists
    val = read_annotation_file(res.val_file, require_depth=True)
    assert len(train) == 8 and len(val) == 2
    assert {s.image.parent.name for s in train}.isdisjoint({s.image.parent.name for s in val})
    s = train[0]
    assert s.image.name.startswith("rgb_") and s.image.suffix == ".jpg"
    assert s.depth.name == s.image.name.replace("rgb_", "sync_depth_").replace(".jpg", ".png")
    assert "scene_000/rgb_00000.jpg scene_000/sync_depth_00000.png" in res.train_file.read_text()  # relative
    codes, kind = read_depth(s.depth)
    assert kind == "png16" and read_image(s.image).shape == (*SMALL, 3)
    assert codes.max() <= 10000 and (codes > 0).mean() > 0.9  # millimetres, NYU's 10 m range


def test_nyu_png_holds_the_metric_depth_in_millimetres(tmp_path: Path) -> None:
    nyu = generate_dataset(tmp_path / "nyu", 4, size=SMALL, seed=1, scenes=2, progress=False)
    met = generate_dataset(tmp_path / "met", 4, size=SMALL, seed=1, scenes=2, layout="metric", progress=False)
    for a, b in zip(read_annotation_file(nyu.train_file), read_annotation_file(met.train_file)):
        mm, _ = read_depth(a.depth)
        metres, kind = read_depth(b.depth)
        assert kind == "npy" and b.image.suffix == ".png"
        ok = metres <= 10.0
        np.testing.assert_allclose(mm[ok] / 1000.0, metres[ok], atol=0.0006)
        assert (mm[~ok] == 0).all()


def test_same_frames_in_one_process_or_several(tmp_path: Path) -> None:
    one = generate_dataset(tmp_path / "one", 6, size=(24, 32), seed=9, layout="metric", progress=False,
                           processes=1)
    two = generate_dataset(tmp_path / "two", 6, size=(24, 32), seed=9, layout="metric", progress=False,
                           processes=2)
    for a, b in zip(sorted((tmp_path / "one").rglob("*.npy")), sorted((tmp_path / "two").rglob("*.npy"))):
        assert a.name == b.name and np.array_equal(np.load(a), np.load(b))
    assert one.train_file.read_text() == two.train_file.read_text()


def test_generated_nyu_data_loads_with_the_nyu_dataset(tmp_path: Path) -> None:
    from trainer.config import build_spec
    from trainer.data import build_dataset

    res = generate_dataset(tmp_path / "d", 4, size=SMALL, seed=2, scenes=2, progress=False)
    spec = build_spec({"dataset": {"min_depth": 0.001, "max_depth": 10, "val_dataset": {
        "data_sources": [{"data_file": str(res.val_file), "dataset_name": "NYUDV2"}],
        "augmentation": {"crop_size": [42, 56]}}}}, notice=lambda _m: None, check_files=False)
    ds = build_dataset(spec, "val_dataset", train=False)
    item = ds[0]
    assert ds.skipped == {} and item["valid"].float().mean() > 0.5
    assert 0.05 < item["depth"][item["valid"]].min() and item["depth"].max() <= 10.0


def test_val_fraction_and_summary(tmp_path: Path) -> None:
    res = generate_dataset(tmp_path / "a", 10, size=(24, 32), scenes=10, val_fraction=0.3, progress=False)
    assert res.val_scenes == (7, 8, 9) and (res.num_train, res.num_val) == (7, 3)
    assert "val.txt (3 samples" in res.summary() and "NYUDV2" in res.summary()
    none = generate_dataset(tmp_path / "b", 4, size=(24, 32), scenes=2, val_fraction=0.0, progress=False)
    assert none.val_file is None and none.num_train == 4 and not (tmp_path / "b" / "val.txt").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        generate_dataset(tmp_path, 2, layout="kitti", progress=False)
    with pytest.raises(ValueError, match="scenes"):
        generate_dataset(tmp_path, 2, scenes=3, progress=False)


def test_camera_prior_is_hand_held_and_looks_across_the_room() -> None:
    from trainer.data.synth import _camera_rays, _cast, random_camera, random_scene

    open_views = 0
    for seed in range(24):
        scene = random_scene(np.random.default_rng([seed, 0]))
        cam = random_camera(scene, np.random.default_rng([seed, 1]), SMALL)
        fwd, right = cam.rotation[:, 2], cam.rotation[:, 0]
        assert 1.2 <= cam.position[1] <= 1.6  # at chest / eye height, like NYU's hand-held Kinect
        assert -0.41 <= math.asin(fwd[1]) <= 0.0  # about level, a little down
        assert abs(right[1]) < 0.15  # little roll
        assert 56 <= math.degrees(2 * math.atan(SMALL[1] / 2 / cam.fx)) <= 62
        assert all(0 < cam.position[k] < scene.size[k] for k in range(3))
        o, d = _camera_rays(cam, SMALL, step=4)
        open_views += float(np.median(_cast(scene, o, d)[0])) >= 1.8
    assert open_views >= 22  # rarely blocked by a nearby surface


def test_ambient_occlusion_darkens_the_floor_where_it_meets_furniture() -> None:
    from trainer.data.synth import Box

    size = (90, 120)
    flat = Material("plain", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0, 0.0, (0.0, 0.0))  # a uniform albedo
    scene = Scene(size=(4.0, 3.0, 6.0), room_materials=(0, 0, 0, 0, 0, 0), materials=[flat],
                  boxes=[Box((2.0, 0.3, 3.5), (0.5, 0.3, 0.3), 0.0, 0)], lights=[], ambient=0.3)
    cam = looking_along_z((2.0, 1.5, 1.0), fx=50.0, size=size)
    rgb, depth = render(scene, cam, size)

    def pixel(x: float, z: float) -> tuple[int, int]:  # the floor point (x, 0, z) in the image
        rel_x, rel_y, rel_z = x - 2.0, 0.0 - 1.5, z - 1.0
        return int(size[0] / 2 + 50.0 * -rel_y / rel_z), int(size[1] / 2 + 50.0 * -rel_x / rel_z)

    contact, open_floor = pixel(2.0, 3.15), pixel(3.2, 3.15)  # 5 cm before the box / 70 cm to its side
    assert depth[contact] == pytest.approx(depth[open_floor], abs=0.05)
    assert rgb[contact].mean() < 0.85 * rgb[open_floor].mean()


def test_floor_tiles_have_a_physical_size_so_their_image_density_follows_distance() -> None:
    size = (64, 160)
    tiles = Material("tiles", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 2.0, 0.0, (0.0, 0.0), gap=0.02)  # 0.5 m tiles
    scene = Scene(size=(8.0, 4.0, 8.0), room_materials=(0, 0, 0, 0, 0, 0), materials=[tiles], lights=[],
                  ambient=0.3)
    down = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float32).T  # columns: right, down, forward (-y)
    for height in (1.5, 3.0):
        cam = Camera((4.0, height, 4.0), down, 100.0, 100.0, size[1] / 2, size[0] / 2)
        rgb, depth = render(scene, cam, size)
        np.testing.assert_allclose(depth, height, atol=1e-4)
        profile = rgb.astype(float).mean(axis=(0, 2))  # grout lines across the image: brighter columns
        bright = profile > profile.mean() + 0.3 * (profile.max() - profile.mean())
        lines = int(np.sum(bright[1:] & ~bright[:-1]) + bright[0])
        expected = size[1] / (100.0 * 0.5 / height)  # image width / (fx * tile size / distance)
        assert abs(lines - expected) <= 1.0, (height, lines, expected)
