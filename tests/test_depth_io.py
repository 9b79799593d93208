"""Depth and image I/O: formats, the PFM conventions, and errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.depth_io import (
    check_depth_matches_image,
    read_depth,
    read_image,
    read_pfm,
    write_depth_png16,
    write_pfm,
)
from trainer.errors import DataError

cv2 = pytest.importorskip("cv2")  # test-only reference reader


def test_png16_is_read_exactly_as_stored(tmp_path: Path) -> None:
    codes = np.array([[0, 1, 1000], [9999, 40000, 65535]], np.uint16)
    Image.fromarray(codes).save(tmp_path / "d.png")
    depth, kind = read_depth(tmp_path / "d.png")
    assert kind == "png16" and depth.dtype == np.float32
    np.testing.assert_array_equal(depth, codes.astype(np.float32))


def test_write_depth_png16_millimetres_round_trip(tmp_path: Path) -> None:
    metres = np.array([[0.5, 1.2344, np.nan], [10.0, -1.0, 70.0]], np.float32)
    write_depth_png16(tmp_path / "d.png", metres, scale=1000.0)
    stored = cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [[500, 1234, 0], [10000, 0, 0]])  # invalid/out of range -> 0


def test_8bit_png_is_refused_for_depth(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(tmp_path / "vis.png")
    with pytest.raises(DataError) as err:
        read_depth(tmp_path / "vis.png")
    msg = str(err.value)
    assert str(tmp_path / "vis.png") in msg and "8-bit" in msg and "16-bit PNG" in msg


def test_colour_png_is_refused_with_its_shape(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"RGB PNG of shape \(4, 5, 3\); expected a single-channel"):
        read_depth(tmp_path / "rgb.png")


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_round_trip_keeps_row_order(tmp_path: Path, little_endian: bool) -> None:
    data = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    write_pfm(tmp_path / "d.pfm", data, little_endian=little_endian)
    back, scale = read_pfm(tmp_path / "d.pfm")
    np.testing.assert_array_equal(back, data)
    assert scale == 1.0
    header = (tmp_path / "d.pfm").read_bytes()[:12]
    assert header.startswith(b"Pf\n7 5\n" + (b"-1" if little_endian else b"1"))
    depth, kind = read_depth(tmp_path / "d.pfm")
    assert kind == "pfm" and np.array_equal(depth, data)


def test_pfm_matches_opencv_both_ways(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)  # row 0 on top
    write_pfm(tmp_path / "ours.pfm", data)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "ours.pfm"), cv2.IMREAD_UNCHANGED), data)
    cv2.imwrite(str(tmp_path / "cv.pfm"), data)
    np.testing.assert_array_equal(read_pfm(tmp_path / "cv.pfm")[0], data)


def test_truncated_pfm_and_colour_pfm(tmp_path: Path) -> None:
    write_pfm(tmp_path / "d.pfm", np.ones((6, 6), np.float32))
    raw = (tmp_path / "d.pfm").read_bytes()
    (tmp_path / "cut.pfm").write_bytes(raw[:-10])
    with pytest.raises(DataError, match=r"cut\.pfm: truncated PFM file: found 134 bytes .* expected 144"):
        read_depth(tmp_path / "cut.pfm")
    write_pfm(tmp_path / "c.pfm", np.ones((2, 3, 3), np.float32))
    with pytest.raises(DataError, match=r"3-channel .* shape \(2, 3, 3\)"):
        read_depth(tmp_path / "c.pfm")


def test_npy_float_int_and_bad_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.full((3, 4, 1), 2.5, np.float64))
    d, kind = read_depth(tmp_path / "f.npy")
    assert kind == "npy" and d.shape == (3, 4) and d.dtype == np.float32 and d[0, 0] == 2.5
    np.save(tmp_path / "i.npy", np.full((3, 4), 1500, np.uint16))
    assert read_depth(tmp_path / "i.npy")[1] == "npy_int"
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"rgb\.npy: found a depth array of shape \(3, 4, 3\)"):
        read_depth(tmp_path / "rgb.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "f.npy").read_bytes()[:60])
    with pytest.raises(DataError, match=r"cut\.npy: cannot read NumPy depth file"):
        read_depth(tmp_path / "cut.npy")


def test_unsupported_extension_and_missing_depth(tmp_path: Path) -> None:
    (tmp_path / "d.exr").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unsupported depth file type '\.exr'; expected one of \.png, \.pfm, \.npy"):
        read_depth(tmp_path / "d.exr")
    with pytest.raises(DataError, match="depth file not found"):
        read_depth(tmp_path / "nope.png")


def test_truncated_depth_png_names_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 60000, (64, 64)).astype(np.uint16)).save(tmp_path / "d.png")
    raw = (tmp_path / "d.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot read depth PNG"):
        read_depth(tmp_path / "cut.png")


def test_read_image_converts_modes_to_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((3, 4), 100, np.uint8)).save(tmp_path / "g.png")
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba).save(tmp_path / "a.png")
    g = read_image(tmp_path / "g.png")
    a = read_image(tmp_path / "a.png")
    assert g.shape == a.shape == (3, 4, 3) and g.dtype == np.uint8
    assert (g == 100).all() and (a[..., 0] == 200).all() and (a[..., 1] == 0).all()
    a[0, 0, 0] = 1  # callers may modify what they get


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_image_is_a_data_error_naming_the_file(tmp_path: Path, fmt: str, ext: str) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / f"ok.{ext}", format=fmt)
    raw = (tmp_path / f"ok.{ext}").read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        read_image(tmp_path / f"cut.{ext}")
    assert str(tmp_path / f"cut.{ext}") in str(err.value) and "truncated or corrupt" in str(err.value)
    assert read_image(tmp_path / f"ok.{ext}").shape == (64, 64, 3)


def test_16bit_depth_listed_as_image_is_explained(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 4), np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(DataError, match="16-bit single-channel image where an RGB image was expected"):
        read_image(tmp_path / "d.png")


def test_size_mismatch_names_both_files_and_shapes() -> None:
    with pytest.raises(DataError) as err:
        check_depth_matches_image(np.zeros((240, 320), np.float32), (480, 640), "d/0.png", "rgb/0.jpg", "a.txt:3")
    msg = str(err.value)
    assert msg.startswith("a.txt:3: ")
    assert "d/0.png" in msg and "(240, 320)" in msg and "rgb/0.jpg" in msg and "480x640" in msg
