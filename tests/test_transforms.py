"""Transforms: sizes, image/depth alignment under crop and flip, nearest-only depth resizing, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data.transforms import (
    EvalTransform,
    TrainTransform,
    cover_size,
    eval_input_size,
    normalize,
    resize_nearest,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def ramp_sample(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image whose red channel and depth both encode the column, green and depth rows differently."""
    cols = np.linspace(10, 245, w)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.round(cols)[None, :]
    rgb[..., 1] = np.round(np.linspace(10, 245, h))[:, None]
    depth = np.tile((1.0 + cols / 100.0).astype(np.float32), (h, 1))
    valid = np.ones((h, w), bool)
    return rgb, depth, valid


def red(image: torch.Tensor) -> np.ndarray:
    return (image[0] * STD[0] + MEAN[0]).numpy() * 255


def no_color(**kw) -> TrainTransform:
    return TrainTransform(crop_size=kw.pop("crop_size", (28, 42)), color_aug_prob=0.0, **kw)


def test_train_output_is_the_crop_size_and_dtypes() -> None:
    rgb, depth, valid = ramp_sample()
    image, d, v = TrainTransform(crop_size=(42, 56), min_scale=0.0, max_scale=1.0)(
        rgb, depth, valid, np.random.default_rng(0))
    assert image.shape == (3, 42, 56) and image.dtype == torch.float32
    assert d.shape == v.shape == (42, 56) and d.dtype == torch.float32 and v.dtype == torch.bool


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_depth_stays_aligned_with_the_image_through_crop_and_flip(flip: float) -> None:
    rgb, depth, valid = ramp_sample()
    t = no_color(crop_size=(28, 42), h_flip_prob=flip, max_scale=0.5)
    for seed in range(5):
        image, d, _ = t(rgb, depth, valid, np.random.default_rng(seed))
        r, dd = red(image), d.numpy()
        # the red channel is (depth - 1) * 100 at every pixel wherever the crop and flip put it
        np.testing.assert_allclose(r, (dd - 1.0) * 100.0, atol=3.0)
        slope = np.sign(dd[:, -1] - dd[:, 0]).mean()
        assert slope == (-1.0 if flip else 1.0)


def test_depth_is_resized_nearest_without_mixing_invalid_pixels() -> None:
    rgb = np.full((50, 50, 3), 128, np.uint8)
    depth = np.where(np.indices((50, 50)).sum(0) % 2 == 0, 3.0, 0.0).astype(np.float32)  # checkerboard of holes
    depth[:, 25:] *= 2.0
    valid = depth > 0
    t = no_color(crop_size=(70, 70), h_flip_prob=0.0)  # upscale 1.4x
    _, d, v = t(rgb, depth, valid, np.random.default_rng(0))
    assert set(np.unique(d.numpy())) <= {0.0, 3.0, 6.0}  # never an interpolated value
    assert torch.equal(v, d > 0)
    small = resize_nearest(depth, (20, 20))
    assert set(np.unique(small)) <= {0.0, 3.0, 6.0}


def test_same_seed_same_output_other_seed_differs() -> None:
    rgb, depth, valid = ramp_sample(90, 120)
    t = TrainTransform(crop_size=(42, 56), min_scale=-0.5, max_scale=1.0, color_aug_prob=1.0)
    a = t(rgb, depth, valid, np.random.default_rng(7))
    b = t(rgb, depth, valid, np.random.default_rng(7))
    c = t(rgb, depth, valid, np.random.default_rng(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_color_jitter_changes_rgb_only() -> None:
    rgb, depth, valid = ramp_sample()
    plain = TrainTransform(crop_size=(28, 42), color_aug_prob=0.0)
    jit = TrainTransform(crop_size=(28, 42), color_aug_prob=1.0, brightness=0.8, contrast=0.8)
    # both draw scale, crop and flip first, so with the same seed geometry is identical
    a = plain(rgb, depth, valid, np.random.default_rng(3))
    b = jit(rgb, depth, valid, np.random.default_rng(3))
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.allclose(a[0], b[0])


def test_zoom_out_pads_with_invalid_depth() -> None:
    rgb, depth, valid = ramp_sample(56, 56)
    t = no_color(crop_size=(56, 56), min_scale=-1.0, max_scale=-1.0, h_flip_prob=0.0)
    image, d, v = t(rgb, depth, valid, np.random.default_rng(0))
    assert image.shape == (3, 56, 56)
    assert 0.2 < v.float().mean() < 0.3  # a 28x28 image centred in the 56x56 crop
    assert (d[~v] == 0).all() and not v[0].any()
    assert torch.allclose(image[:, 0, 0], torch.zeros(3), atol=0.01)  # padded with the mean colour


def test_cover_size_covers_the_crop_keeping_aspect() -> None:
    assert cover_size((480, 640), (518, 518)) == (518, 691)
    assert cover_size((640, 480), (266, 518)) == (691, 518)
    h, w = cover_size((480, 640), (518, 518), scale=1.5)
    assert h == 777 and abs(w / h - 640 / 480) < 0.01


def test_eval_size_is_multiple_of_14_with_the_short_side_at_the_crop() -> None:
    assert eval_input_size((480, 640), 518) == (518, 686)
    assert eval_input_size((640, 480), 518) == (686, 518)
    assert eval_input_size((240, 320), 266) == (266, 350)
    for hw in [(375, 1242), (1080, 1920), (37, 51)]:
        h, w = eval_input_size(hw, 224)
        assert h % 14 == 0 and w % 14 == 0 and min(h, w) == 224
    assert eval_input_size((480, 640), 518, 280, 420) == (280, 420)  # exact when both are given
    assert eval_input_size((480, 640), 518, height=280) == (280, 378)


def test_eval_transform_keeps_content_and_checks_fixed_sizes() -> None:
    class Aug:
        crop_size = [28, 42]
        input_mean = list(MEAN)
        input_std = list(STD)

    rgb, _, _ = ramp_sample(60, 80)
    t = EvalTransform.from_config(Aug())
    image = t(rgb)
    assert image.shape == (3, 28, 42)
    r = red(image)
    assert r[:, 0].mean() < 40 and r[:, -1].mean() > 215  # resized, not cropped or flipped
    with pytest.raises(Exception, match="multiple of 14"):
        EvalTransform.from_config(Aug(), height=500)


def test_normalize_uses_mean_and_std() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 255
    x = normalize(rgb, MEAN, STD)
    assert x.shape == (3, 2, 2)
    assert torch.allclose(x[:, 0, 0], torch.tensor([-MEAN[0] / STD[0], (1 - MEAN[1]) / STD[1], -MEAN[2] / STD[2]]))
