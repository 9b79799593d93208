"""Depth metrics: reference formulas by hand, relative alignment, resizing, skipping and averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.metrics import METRIC_NAMES, MetricAccumulator, depth_metrics, resize_to

GT = torch.full((2, 5), 2.0)
PRED = torch.tensor([[1.0, 2.0, 4.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
ALL = torch.ones(2, 5, dtype=torch.bool)


def test_metrics_by_hand():
    # errors on two of ten pixels: pred 1 (ratio 2) and pred 4 (ratio 2), gt 2 everywhere
    m = depth_metrics(PRED, GT, ALL)
    log2 = math.log(2)
    expected = {
        "d1": 0.8, "d2": 0.8, "d3": 0.8,  # 2 > 1.25^3 = 1.953
        "abs_rel": (0.5 + 1.0) / 10,
        "sq_rel": (1 / 2 + 4 / 2) / 10,
        "rmse": math.sqrt((1 + 4) / 10),
        "rmse_log": math.sqrt(2 * log2 ** 2 / 10),
        "log10": 2 * math.log10(2) / 10,
        "silog": math.sqrt(2 * log2 ** 2 / 10 - 0.5 * 0.0 ** 2),  # mean log difference is 0 here
    }
    assert set(m) == set(METRIC_NAMES)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-12), k


def test_silog_has_no_100x_factor_and_subtracts_half_the_squared_mean():
    pred = torch.full((2, 5), 4.0)  # d = log 2 everywhere
    m = depth_metrics(pred, GT, ALL)
    assert m["silog"] == pytest.approx(math.sqrt(0.5) * math.log(2), rel=1e-12)
    assert m["d1"] == 0.0 and m["d3"] == 0.0
    assert m["abs_rel"] == pytest.approx(1.0)


def test_invalid_and_non_positive_ground_truth_are_ignored():
    gt = GT.clone()
    pred = PRED.clone()
    gt = torch.cat([gt, torch.tensor([[0.0, -1.0, float("nan"), 3.0, 3.0]])])
    pred = torch.cat([pred, torch.tensor([[5.0, 5.0, 5.0, 100.0, 100.0]])])
    valid = torch.cat([ALL, torch.tensor([[True, True, True, False, False]])])
    assert depth_metrics(pred, gt, valid) == pytest.approx(depth_metrics(PRED, GT, ALL), rel=1e-12)


def test_zero_prediction_gives_finite_metrics():
    m = depth_metrics(torch.zeros(2, 5), GT, ALL)
    assert all(math.isfinite(v) for v in m.values())
    assert m["d1"] == 0.0


def test_fewer_than_ten_valid_pixels_is_skipped():
    valid = ALL.clone()
    valid[0, 0] = False
    assert depth_metrics(PRED, GT, valid) is None
    assert depth_metrics(PRED, GT, ALL) is not None


def test_prediction_is_resized_bilinearly_to_the_ground_truth():
    gt = torch.rand(12, 16) * 5 + 1
    small = torch.rand(6, 8) * 5 + 1
    expected = F.interpolate(small[None, None].double(), size=(12, 16), mode="bilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(resize_to(small.double(), (12, 16)), expected)
    valid = torch.ones(12, 16, dtype=torch.bool)
    assert depth_metrics(small, gt, valid) == pytest.approx(depth_metrics(expected, gt, valid), rel=1e-12)


def test_relative_alignment_recovers_an_affine_disparity():
    gt = torch.rand(30, 40, dtype=torch.float64) * 9 + 1  # metres
    pred = 3.0 / gt + 0.5  # disparity up to an unknown scale and shift
    m = depth_metrics(pred, gt, torch.ones_like(gt, dtype=torch.bool), relative=True)
    assert m["d1"] == 1.0
    assert m["abs_rel"] < 1e-9 and m["rmse"] < 1e-8 and m["silog"] < 1e-9


def test_relative_alignment_with_disparity_ground_truth():
    depth = torch.rand(30, 40, dtype=torch.float64) * 9 + 1
    pred = 0.2 / depth - 0.01
    m = depth_metrics(pred, 1.0 / depth, torch.ones_like(depth, dtype=torch.bool), relative=True, gt_is_disparity=True)
    assert m["d1"] == 1.0 and m["abs_rel"] < 1e-9


def test_relative_alignment_clamps_aligned_disparity():
    gt = torch.rand(8, 8, dtype=torch.float64) * 9 + 1
    pred = 1.0 / gt
    pred[0, 0] = -100.0  # an outlier that the fit cannot follow: its aligned disparity ends up <= 0
    m = depth_metrics(pred, gt, torch.ones_like(gt, dtype=torch.bool), relative=True, max_depth=10.0)
    assert all(math.isfinite(v) for v in m.values())
    assert m["d1"] < 1.0


def test_accumulator_averages_per_image_and_counts_skips():
    acc = MetricAccumulator()
    pred = torch.stack([PRED, torch.full((2, 5), 2.0), PRED])
    gt = torch.stack([GT, GT, GT])
    valid = torch.stack([ALL, ALL, torch.zeros_like(ALL)])
    assert acc.update(pred, gt, valid) == 2
    out = acc.compute()
    assert out["count"] == 2 and acc.skipped == 1
    first = depth_metrics(PRED, GT, ALL)
    for k in METRIC_NAMES:
        perfect = 1.0 if k.startswith("d") else 0.0
        assert out[k] == pytest.approx((first[k] + perfect) / 2, rel=1e-12, abs=1e-15), k


def test_accumulator_with_nothing_scored_reports_only_counts():
    acc = MetricAccumulator()
    acc.update(PRED[None], GT[None], torch.zeros_like(ALL)[None])
    assert acc.compute() == {"count": 0}
    assert acc.skipped == 1


def test_accumulator_takes_channel_predictions_and_relative_scoring():
    gt = torch.rand(2, 10, 12) * 4 + 1
    pred = (2.0 / gt + 0.3)[:, None]  # [B, 1, H, W]
    acc = MetricAccumulator(relative=True)
    acc.update(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    out = acc.compute()
    assert out["count"] == 2 and out["d1"] == 1.0


def test_accumulator_takes_single_images_and_a_per_call_relative_flag():
    gt = torch.rand(10, 12, dtype=torch.float64) * 4 + 1
    acc = MetricAccumulator()
    acc.update(2.0 / gt + 0.3, gt, torch.ones_like(gt, dtype=torch.bool), relative=True)
    acc.update(gt.clone(), gt, torch.ones_like(gt, dtype=torch.bool))
    out = acc.compute()
    assert out["count"] == 2 and out["d1"] == 1.0 and out["abs_rel"] < 1e-9


# Capped relative protocol on a hand-solvable case: three equal groups of pixels with prediction 0, 1, 2 and
# ground truth 10 m, 2 m, 1 m (disparity 0.1, 0.5, 1). Least squares in disparity: s = cov / var = 0.3 / (2/3)
# = 0.45, t = mean(disp) - s * mean(pred) = 1.6/3 - 0.45 = 1/12. Aligned disparities 1/12, 8/15, 59/60, i.e.
# depths 12 m, 1.875 m, 60/59 m. With a 10 m cap the first group is clamped to 10 m (exact).
CAP_PRED = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64).repeat_interleave(4).reshape(3, 4)
CAP_GT = torch.tensor([10.0, 2.0, 1.0], dtype=torch.float64).repeat_interleave(4).reshape(3, 4)


def _abs_rel(depths):
    return sum(abs(d - g) / g for d, g in zip(depths, (10.0, 2.0, 1.0))) / 3


def test_capped_relative_protocol_known_answer():
    from trainer.metrics import align_relative

    valid = torch.ones_like(CAP_GT, dtype=torch.bool)
    uncapped = align_relative(CAP_PRED, CAP_GT, valid, max_depth=20.0)  # cap 0.05 < 1/12: not reached
    torch.testing.assert_close(uncapped[:, 0], torch.tensor([12.0, 1.875, 60 / 59], dtype=torch.float64))
    capped = depth_metrics(CAP_PRED, CAP_GT, valid, relative=True, max_depth=10.0)
    assert capped["abs_rel"] == pytest.approx(_abs_rel((10.0, 1.875, 60 / 59)), rel=1e-12)
    assert capped["rmse"] == pytest.approx(math.sqrt((0.125 ** 2 + (1 / 59) ** 2) / 3), rel=1e-12)
    assert capped["d1"] == 1.0
    loose = depth_metrics(CAP_PRED, CAP_GT, valid, relative=True, max_depth=20.0)
    assert loose["abs_rel"] == pytest.approx(_abs_rel((12.0, 1.875, 60 / 59)), rel=1e-12)
    # no cap given: the image's own deepest valid pixel (10 m) is the cap
    assert depth_metrics(CAP_PRED, CAP_GT, valid, relative=True) == pytest.approx(capped, rel=1e-12)


def test_relative_depth_is_capped_not_blown_up_by_near_zero_disparity():
    from trainer.metrics import align_relative

    gt = torch.rand(20, 20, dtype=torch.float64) * 4 + 0.7  # a 0.7..4.7 m room
    pred = torch.randn(20, 20, dtype=torch.float64)  # an untrained model: aligned disparity crosses zero
    valid = torch.ones_like(gt, dtype=torch.bool)
    for cap, deepest in ((10.0, 10.0), (None, float(gt.max()))):  # no cap given: the image's deepest pixel
        m = depth_metrics(pred, gt, valid, relative=True, max_depth=cap)
        assert m["rmse"] < deepest and m["abs_rel"] < deepest / 0.7  # in metres, bounded by the cap
        assert float(align_relative(pred, gt, valid, max_depth=cap).max()) <= deepest + 1e-9
