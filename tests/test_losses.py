"""SiLog and scale-and-shift-invariant losses: values by hand, and no NaN for degenerate input."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import ScaleShiftInvariantLoss, SiLogLoss, align_scale_shift

LOSSES = [SiLogLoss(), ScaleShiftInvariantLoss()]


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------
# SiLog
# --------------------------------------------------------------------------------------------------------------


def test_silog_by_hand():
    # d = log 2 - log [1, 2, 4] = [log 2, 0, -log 2]: mean 0, mean of squares 2/3 log^2 2
    pred, gt = t([[[1.0, 2.0, 4.0]]]), t([[[2.0, 2.0, 2.0]]])
    loss = SiLogLoss()(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.sqrt(2 / 3) * math.log(2), rel=1e-6)


def test_silog_variance_term_uses_lambda():
    # d = [log 2, log 2]: mean^2 = mean of squares = log^2 2 -> sqrt((1 - lambda) log^2 2)
    pred, gt = t([[[1.0, 1.0]]]), t([[[2.0, 2.0]]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert SiLogLoss(0.5)(pred, gt, valid).item() == pytest.approx(math.sqrt(0.5) * math.log(2), rel=1e-6)
    assert SiLogLoss(0.0)(pred, gt, valid).item() == pytest.approx(math.log(2), rel=1e-6)


def test_silog_ignores_invalid_and_non_positive_targets():
    pred = t([[[1.0, 2.0, 4.0, 123.0, 5.0, 7.0]]])
    gt = t([[[2.0, 2.0, 2.0, 9.0, 0.0, float("inf")]]])
    valid = t([[[1, 1, 1, 0, 1, 1]]]).bool()
    loss = SiLogLoss()(pred, gt, valid)
    assert loss.item() == pytest.approx(math.sqrt(2 / 3) * math.log(2), rel=1e-6)


def test_silog_pools_the_whole_batch():
    pred = t([[[1.0]], [[2.0]], [[4.0]]])
    gt = torch.full_like(pred, 2.0)
    loss = SiLogLoss()(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.sqrt(2 / 3) * math.log(2), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Scale-and-shift invariant
# --------------------------------------------------------------------------------------------------------------


def test_alignment_is_least_squares():
    pred = t([[[0.0, 1.0, 2.0, 3.0]]])
    target = t([[[0.0, 1.0, 1.0, 3.0]]])
    scale, shift = align_scale_shift(pred, target, torch.ones_like(pred, dtype=torch.bool))
    assert scale.item() == pytest.approx(0.9, rel=1e-6)  # cov / var = 4.5 / 5
    assert shift.item() == pytest.approx(-0.1, abs=1e-6)  # 1.25 - 0.9 * 1.5


def test_ssi_by_hand():
    # aligned = 0.9 p - 0.1 = [-0.1, 0.8, 1.7, 2.6]; r = [-0.1, -0.2, 0.7, -0.4]
    # data = sum r^2 / (2 * 4) = 0.7 / 8
    # gradient, scale 1: (0.1 + 0.9 + 1.1) / 4; scale 2 (pixels 0, 2): 0.8 / 2; scales 4, 8: one pixel, 0
    pred = t([[[0.0, 1.0, 2.0, 3.0]]])
    target = t([[[0.0, 1.0, 1.0, 3.0]]])
    loss = ScaleShiftInvariantLoss(alpha=0.5, scales=4)(pred, target, torch.ones_like(pred, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.7 / 8 + 0.5 * (2.1 / 4 + 0.8 / 2), rel=1e-5)
    data_only = ScaleShiftInvariantLoss(alpha=0.0)(pred, target, torch.ones_like(pred, dtype=torch.bool))
    assert data_only.item() == pytest.approx(0.7 / 8, rel=1e-5)


def test_ssi_is_zero_for_an_affine_prediction_and_aligns_per_image():
    target = torch.rand(2, 16, 20) + 0.1
    pred = torch.stack([3.0 * target[0] + 1.0, 0.5 * target[1] - 0.2])  # a different affine map per image
    loss = ScaleShiftInvariantLoss()(pred, target, torch.ones_like(target, dtype=torch.bool))
    assert loss.item() < 1e-5


def test_ssi_gradient_term_only_uses_pairs_of_valid_pixels():
    pred = t([[[0.0, 1.0, 2.0, 3.0, 50.0]]])
    target = t([[[0.0, 1.0, 1.0, 3.0, -7.0]]])
    valid = t([[[1, 1, 1, 1, 0]]]).bool()
    loss = ScaleShiftInvariantLoss(alpha=0.5, scales=1)(pred, target, valid)
    assert loss.item() == pytest.approx(0.7 / 8 + 0.5 * 2.1 / 4, rel=1e-5)


def test_ssi_gradient_matching_sees_both_directions():
    pred = t([[[1.0, 2.0], [3.0, 5.0]]])
    target = t([[[1.0, 2.0], [3.0, 4.0]]])
    valid = torch.ones_like(pred, dtype=torch.bool)
    s, b = align_scale_shift(pred, target, valid)
    r = (s[:, None, None] * pred + b[:, None, None] - target)[0]
    grad = ((r[:, 1:] - r[:, :-1]).abs().sum() + (r[1:] - r[:-1]).abs().sum()) / 4
    expected = (r ** 2).sum() / 8 + 0.5 * grad
    loss = ScaleShiftInvariantLoss(alpha=0.5, scales=1)(pred, target, valid)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Safety properties (both losses)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_zero_prediction_gives_finite_loss_and_gradient(loss_fn):
    pred = torch.zeros(2, 6, 7, requires_grad=True)
    gt = torch.rand(2, 6, 7) + 0.5
    loss = loss_fn(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_empty_mask_gives_zero_loss_with_a_graph(loss_fn):
    pred = (torch.rand(2, 6, 7) + 0.5).requires_grad_()
    gt = torch.rand(2, 6, 7) + 0.5
    loss = loss_fn(pred, gt, torch.zeros_like(gt, dtype=torch.bool))
    assert loss.item() == 0.0
    assert loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_bf16_autocast_input_gives_a_float32_loss(loss_fn):
    weight = torch.ones(1, requires_grad=True)
    gt = torch.rand(2, 8, 8) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = (torch.rand(2, 8, 8) + 0.5).to(torch.bfloat16) * weight.to(torch.bfloat16)
        loss = loss_fn(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert pred.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_nan_in_invalid_target_pixels_does_not_leak(loss_fn):
    pred = (torch.rand(1, 5, 5) + 0.5).requires_grad_()
    gt = torch.rand(1, 5, 5) + 0.5
    valid = torch.ones_like(gt, dtype=torch.bool)
    gt[0, 0, 0] = float("nan")
    valid[0, 0, 0] = False
    loss = loss_fn(pred, gt, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
def test_shapes_must_agree(loss_fn):
    with pytest.raises(ValueError, match="resize pred"):
        loss_fn(torch.rand(1, 4, 4), torch.rand(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool))
