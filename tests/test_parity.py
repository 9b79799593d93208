"""Parity with the original Depth Anything V2 implementation (the `depth_anything_v2` package), random weights.

The original is the reference only: `trainer/` never imports it. Weights are randomised beyond the default init
(LayerScale around 1, non-zero biases, He-scaled head convs) so that every part of the network, the relative
head's ReLU included, carries signal; differences are compared with the output scale.
"""

from __future__ import annotations

import copy
import time
from functools import partial

import pytest
import torch

orig_dpt = pytest.importorskip("depth_anything_v2.dpt", reason="the original Depth Anything V2 package is not installed")

from trainer.model import DepthAnythingV2, load_weights, save_released  # noqa: E402
from trainer.model.backbone import EncoderConfig  # noqa: E402
from trainer.model.depth_anything import convert_original_state_dict  # noqa: E402

pytestmark = pytest.mark.parity

VITS = dict(encoder="vits", features=64, out_channels=[48, 96, 192, 384])
TOL = 1e-5  # max |ours - original| / max |original|


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("bias"):
                p.copy_(torch.empty_like(p).normal_(0, 0.02, generator=g))
            elif name.startswith("depth_head") and p.dim() == 4:
                fan_in = p[0].numel()
                p.copy_(torch.empty_like(p).normal_(0, (2 / fan_in) ** 0.5, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.empty_like(b).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("running_mean"):
                b.copy_(torch.empty_like(b).normal_(0, 0.1, generator=g))
        if hasattr(model, "depth_head"):
            model.depth_head.scratch.output_conv2[2].bias.fill_(1.0)  # keep the final ReLU mostly open


@pytest.fixture(scope="module")
def vits_pair():
    torch.manual_seed(0)
    original = orig_dpt.DepthAnythingV2(**VITS).eval()
    _randomise(original)
    ours = DepthAnythingV2("vits").eval()
    ours.load_state_dict(original.state_dict(), strict=True)
    return original, ours


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a - b).abs().max().item()
    return diff, diff / a.abs().max().item()


@pytest.mark.parametrize("size", [(518, 518), (364, 518)], ids=["518x518", "364x518"])
def test_vits_matches_the_original(vits_pair, size):
    original, ours = vits_pair
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t0 = time.perf_counter()
        expected = original(x)
        t1 = time.perf_counter()
        got = ours(x)
        t2 = time.perf_counter()
        feats_expected = original.pretrained.get_intermediate_layers(x, [2, 5, 8, 11], return_class_token=True)
        feats_got = ours.pretrained(x)
    assert got.shape == expected.shape == (1, *size)
    assert (expected > 0).float().mean() > 0.1, "the test weights should leave the final ReLU open"
    abs_diff, rel_diff = _compare(expected, got)
    feat_diff = max(max((fe[0] - fg[0]).abs().max().item(), (fe[1] - fg[1]).abs().max().item())
                    for fe, fg in zip(feats_expected, feats_got))
    print(f"\n{size}: output max|diff| {abs_diff:.3g} (scale {expected.abs().max().item():.3g}, relative "
          f"{rel_diff:.3g}); backbone features max|diff| {feat_diff:.3g}; original {t1 - t0:.2f}s, ours {t2 - t1:.2f}s")
    assert feat_diff < 1e-4
    assert rel_diff < TOL


def test_metric_variant_is_sigmoid_of_the_original_logits_times_max_depth(vits_pair):
    """The original metric code (metric_depth/) is not in the package: its head differs from the relative one only
    by the final Sigmoid and the multiplication by max_depth, so compare against the original's pre-activation."""
    original = copy.deepcopy(vits_pair[0])
    with torch.no_grad():  # logits of order 1, so that the sigmoid is not saturated
        original.depth_head.scratch.output_conv2[2].weight.mul_(0.02)
        original.depth_head.scratch.output_conv2[2].bias.zero_()
    metric = DepthAnythingV2("vits", metric=True, max_depth=20.0).eval()
    metric.load_state_dict(original.state_dict(), strict=True)
    logits: dict[str, torch.Tensor] = {}

    def keep(name):  # the hooked conv is followed by an in-place ReLU in the original: copy its output
        return lambda module, inputs, output: logits.__setitem__(name, output.detach().clone()[:, 0])

    hooks = [original.depth_head.scratch.output_conv2[2].register_forward_hook(keep("original")),
             metric.depth_head.scratch.output_conv2[2].register_forward_hook(keep("ours"))]
    x = torch.randn(1, 3, 364, 518, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            original(x)
            got = metric(x)
    finally:
        for h in hooks:
            h.remove()
    abs_diff, rel_diff = _compare(logits["original"], logits["ours"])
    out_diff = (torch.sigmoid(logits["original"]) * 20.0 - got).abs().max().item()
    print(f"\nmetric 364x518: logits max|diff| {abs_diff:.3g} (relative {rel_diff:.3g}); "
          f"output vs sigmoid(original logits) * 20 max|diff| {out_diff:.3g}")
    assert 0.5 < logits["original"].std() < 20
    assert rel_diff < TOL
    torch.testing.assert_close(got, torch.sigmoid(logits["ours"]) * 20.0, rtol=0, atol=1e-5)
    assert out_diff < 20.0 * 0.25 * abs_diff + 1e-5  # sigmoid is 1/4-Lipschitz


def test_head_options_match_the_original():
    """use_bn and use_clstoken (readout projections), at a small size."""
    torch.manual_seed(0)
    original = orig_dpt.DepthAnythingV2(**VITS, use_bn=True, use_clstoken=True).eval()
    _randomise(original, seed=3)
    ours = DepthAnythingV2("vits", use_bn=True, use_clstoken=True).eval()
    ours.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(1, 3, 196, 252, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        abs_diff, rel_diff = _compare(original(x), ours(x))
    assert rel_diff < TOL, abs_diff


def test_swiglu_ffn_of_vitg_matches_the_original():
    """vitg's packed SwiGLU FFN and the w12/w3 -> fc1/fc2 renaming, on a 2-block backbone of the original class."""
    from depth_anything_v2.dinov2 import DinoVisionTransformer
    from depth_anything_v2.dinov2_layers import MemEffAttention, NestedTensorBlock

    dim = 96
    original = DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=4, init_values=1.0,
        ffn_layer="swiglufused", block_chunks=0, block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
        interpolate_antialias=False, interpolate_offset=0.1,
    ).eval()
    _randomise(original)  # no depth_head: only gammas / biases
    cfg = EncoderConfig("custom", dim, 2, 2, (0, 0, 1, 1), 16, (8, 16, 32, 32), swiglu=True)
    ours = DepthAnythingV2("custom", custom=cfg).eval()
    released = {f"pretrained.{k}": v for k, v in original.state_dict().items()}
    assert any(".mlp.w12." in k for k in released)
    missing, unexpected = ours.load_state_dict(convert_original_state_dict(released), strict=False)
    assert unexpected == [] and all(k.startswith("depth_head.") for k in missing)
    x = torch.randn(1, 3, 70, 56)
    with torch.no_grad():
        expected = original.get_intermediate_layers(x, [0, 1], return_class_token=True)
        got = ours.pretrained(x)
    for e, (g, _) in zip(expected, (got[0], got[2])):
        torch.testing.assert_close(g, e[0], rtol=1e-5, atol=1e-5)


def test_released_files_round_trip_with_the_original(vits_pair, tmp_path):
    original, ours = vits_pair
    path = save_released(ours, tmp_path / "ours.pth")
    fresh = orig_dpt.DepthAnythingV2(**VITS)
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    torch.save(original.state_dict(), tmp_path / "original.pth")
    back = DepthAnythingV2("vits")
    report = load_weights(back, tmp_path / "original.pth")
    assert report.layout == "released" and report.loaded == len(original.state_dict())


def test_parameter_count_equals_the_original(vits_pair):
    original, ours = vits_pair
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in original.parameters()) == 24_785_089


# --------------------------------------------------------------------------------------------------------------
# `automl inference` end to end vs the original `infer_image`, on a non-square photo (PyTorch and ONNX Runtime)
# --------------------------------------------------------------------------------------------------------------

PHOTO_HW = (480, 640)
END_TO_END_TOL = 1e-3  # max |ours - original| / (max - min of the original's output)
MAX_DEPTH = 20.0


class _SigmoidTimes(torch.nn.Module):
    """The original metric_depth head ends in Sigmoid and its forward multiplies by max_depth; in the relative
    class the final ReLU sits at output_conv2[3] and forward applies another ReLU (a no-op on positive values)."""

    def __init__(self, max_depth: float):
        super().__init__()
        self.max_depth = max_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * self.max_depth


def photo_like(hw: tuple[int, int] = PHOTO_HW, seed: int = 0):
    """uint8 RGB [H, W, 3]: smooth colour gradients, sharp-edged discs and sensor-like noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(x / 37) * np.cos(y / 53), y / h, 1 - x / w], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 90)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photo")
    Image.fromarray(photo_like()).save(folder / "street.jpg", quality=90)  # JPEG: decoding is part of the path
    return folder / "street.jpg"


def _original_model(metric: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    original = orig_dpt.DepthAnythingV2(**VITS).eval()
    _randomise(original)
    if metric:  # logits of order 1 so that the sigmoid is not saturated; then the metric head
        with torch.no_grad():
            original.depth_head.scratch.output_conv2[2].weight.mul_(0.02)
            original.depth_head.scratch.output_conv2[2].bias.zero_()
        original.depth_head.scratch.output_conv2[3] = _SigmoidTimes(MAX_DEPTH)
    return original


def _inference_spec(tmp, photo, metric: bool, name: str, **section):
    from trainer.config import build_spec

    tree = {"results_dir": str(tmp / "results"),
            "model": {"model_type": "MetricDepthAnything" if metric else "RelativeDepthAnything", "encoder": "vits"},
            "dataset": {"infer_dataset": {"data_root": str(photo.parent), "batch_size": 1, "workers": 0,
                                          "pin_memory": False}},
            "inference": {"results_dir": str(tmp / name), **section},
            "export": {"onnx_file": str(tmp / "model.onnx"), "on_cpu": True, **section}}
    if metric:
        tree["dataset"]["max_depth"] = MAX_DEPTH
    return build_spec(tree, check_files=False, notice=lambda _m: None)


def end_to_end_differences(tmp, photo, metric: bool) -> dict[str, float]:
    """max |ours - original infer_image| / output range of `automl inference` with a released-layout checkpoint
    (PyTorch) and with its default ONNX export (ONNX Runtime)."""
    import cv2
    import numpy as np

    from trainer.deploy.onnx import export_onnx
    from trainer.infer import inference

    original = _original_model(metric)
    released = tmp / f"depth_anything_v2_{'metric_hypersim_' if metric else ''}vits.pth"
    torch.save(original.state_dict(), released)
    with torch.no_grad():
        expected = original.infer_image(cv2.imread(str(photo)))
    span = float(expected.max() - expected.min())
    assert expected.shape == PHOTO_HW and span > 0

    out = {}
    spec = _inference_spec(tmp, photo, metric, "pytorch", checkpoint=str(released))
    export = _inference_spec(tmp, photo, metric, "export", checkpoint=str(released))
    runs = {"pytorch": lambda: inference(spec, progress=False)}
    runs["onnx"] = lambda: (export_onnx(export, notice=lambda _m: None, progress=False), inference(
        _inference_spec(tmp, photo, metric, "onnx", onnx_file=str(tmp / "model.onnx")), progress=False))[1]
    for name, run in runs.items():
        got = np.load(run()["images"][0]["raw"])
        assert got.shape == expected.shape
        out[name] = float(np.abs(got - expected).max()) / span
    kind = "metric" if metric else "relative"
    print(f"\n{kind} vits {PHOTO_HW[0]}x{PHOTO_HW[1]}: max|ours - original| / range: "
          + ", ".join(f"{k} {v:.3g}" for k, v in out.items()) + f" (range {span:.4g})")
    return out


@pytest.mark.parametrize("metric", [False, True], ids=["relative", "metric"])
def test_inference_on_a_non_square_photo_matches_the_original_infer_image(photo, tmp_path, metric):
    diffs = end_to_end_differences(tmp_path, photo, metric)
    assert diffs["pytorch"] <= END_TO_END_TOL
    assert diffs["onnx"] <= END_TO_END_TOL


# --------------------------------------------------------------------------------------------------------------
# `automl evaluate` vs metrics computed from the original model's outputs with the original formulas
# --------------------------------------------------------------------------------------------------------------

EVAL_SIZE = 266  # network short side (crop_size) for speed; the original's infer_image takes it as input_size


def _original_eval_depth(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The formulas of the original metric_depth/util/metric.py `eval_depth`, on valid pixels (1-D tensors)."""
    thresh = torch.max(target / pred, pred / target)
    diff, diff_log = pred - target, torch.log(pred) - torch.log(target)
    return {"d1": (thresh < 1.25).float().mean().item(), "d2": (thresh < 1.25 ** 2).float().mean().item(),
            "d3": (thresh < 1.25 ** 3).float().mean().item(), "abs_rel": (diff.abs() / target).mean().item(),
            "sq_rel": (diff ** 2 / target).mean().item(), "rmse": diff.pow(2).mean().sqrt().item(),
            "rmse_log": diff_log.pow(2).mean().sqrt().item(),
            "log10": (torch.log10(pred) - torch.log10(target)).abs().mean().item(),
            "silog": (diff_log.pow(2).mean() - 0.5 * diff_log.mean() ** 2).sqrt().item()}


def _midas_align(pred, depth, cap: float):
    """MiDaS' relative evaluation, written out with NumPy: least squares in disparity, disparity cap, inverse."""
    import numpy as np

    a = np.stack([pred, np.ones_like(pred)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, 1.0 / depth, rcond=None)
    return 1.0 / np.maximum(s * pred + t, 1.0 / cap)


def reference_metrics(original: torch.nn.Module, data_file, relative: bool) -> dict[str, float]:
    """NYU frames listed in `data_file`: the original's pre-processing, network and align_corners=True resize-back,
    NYU's valid range (1e-3..10 m) and Eigen crop, the MiDaS alignment (relative), the original formulas; averaged
    over images."""
    import cv2
    import numpy as np
    import torch.nn.functional as F

    from trainer.data.datasets import eigen_crop_mask

    sums: dict[str, float] = {}
    lines = [ln.split() for ln in data_file.read_text().splitlines() if ln.strip()]
    for image, depth_file in lines:
        raw = cv2.imread(str(data_file.parent / image))
        depth = cv2.imread(str(data_file.parent / depth_file), cv2.IMREAD_UNCHANGED).astype(np.float64) / 1000.0
        with torch.no_grad():
            x, (h, w) = original.image2tensor(raw, EVAL_SIZE)
            pred = F.interpolate(original(x)[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0].numpy()
        valid = (depth >= 1e-3) & (depth <= 10.0) & eigen_crop_mask(depth.shape)
        p, g = pred[valid].astype(np.float64), depth[valid]
        if relative:
            p = _midas_align(p, g, cap=10.0)
        for k, v in _original_eval_depth(torch.from_numpy(p).float(), torch.from_numpy(g).float()).items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(lines) for k, v in sums.items()}


@pytest.fixture(scope="module")
def nyu_frames(tmp_path_factory):
    from trainer.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("nyu"), 3, size=(120, 160), layout="nyu", progress=False).train_file


@pytest.mark.parametrize("metric", [False, True], ids=["relative", "metric"])
def test_evaluate_matches_the_original_outputs_and_formulas(nyu_frames, tmp_path, metric):
    from trainer.config import build_spec
    from trainer.evaluate import evaluate

    original = _original_model(metric)
    released = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(original.state_dict(), released)
    tree = {"results_dir": str(tmp_path / "results"),
            "model": {"model_type": "MetricDepthAnything" if metric else "RelativeDepthAnything", "encoder": "vits"},
            "dataset": {"test_dataset": {"data_sources": [{"data_file": str(nyu_frames), "dataset_name": "NYUDV2"}],
                                         "batch_size": 2, "workers": 0, "pin_memory": False,
                                         "augmentation": {"crop_size": [EVAL_SIZE, EVAL_SIZE]}}},
            "evaluate": {"checkpoint": str(released), "results_dir": str(tmp_path / "eval")}}
    if metric:
        tree["dataset"].update(min_depth=1e-3, max_depth=MAX_DEPTH)
    got = evaluate(build_spec(tree, check_files=False, notice=lambda _m: None), progress=False)
    expected = reference_metrics(original, nyu_frames, relative=not metric)
    print(f"\n{'metric' if metric else 'relative'}: ours {got['metrics']}\noriginal {expected}")
    assert got["num_images"] == 3
    for k, v in expected.items():
        assert got["metrics"][k] == pytest.approx(v, rel=1e-3, abs=1e-5), k


@pytest.mark.parametrize("hw", [(518, 518), (480, 640), (640, 480), (375, 1242), (97, 131), (1080, 1920)],
                         ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_network_input_equals_the_original_image2tensor(vits_pair, hw):
    """Square, landscape, portrait, KITTI-like, tiny (upscaled) and full-HD (downscaled) images: same network input
    size and values as the original's pre-processing."""
    import cv2

    from trainer.data import EvalTransform

    rgb = photo_like(hw, seed=hw[0])
    expected, (h, w) = vits_pair[0].image2tensor(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 518)
    got = EvalTransform(short_side=518)(rgb)
    assert (h, w) == hw and got.shape == expected.shape[1:]
    torch.testing.assert_close(got, expected[0].float().cpu(), rtol=0, atol=1e-6)


def test_relative_scores_are_the_same_through_disparity_and_depth_datasets(nyu_frames, tmp_path):
    """NYUDV2Relative carries disparity targets, NYUDV2 metres: `automl evaluate` of a relative model inverts the
    former and caps both at NYU's 10 m, so the same frames give the same metres-based metrics either way."""
    from trainer.config import build_spec
    from trainer.evaluate import evaluate

    released = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(_original_model(False).state_dict(), released)
    results = {}
    for name in ("NYUDV2", "NYUDV2Relative"):
        tree = {"results_dir": str(tmp_path / "results"),
                "model": {"model_type": "RelativeDepthAnything", "encoder": "vits"},
                "dataset": {"test_dataset": {"data_sources": [{"data_file": str(nyu_frames), "dataset_name": name}],
                                             "batch_size": 3, "workers": 0, "pin_memory": False,
                                             "augmentation": {"crop_size": [EVAL_SIZE, EVAL_SIZE]}}},
                "evaluate": {"checkpoint": str(released), "results_dir": str(tmp_path / name)}}
        results[name] = evaluate(build_spec(tree, check_files=False, notice=lambda _m: None), progress=False)["metrics"]
    assert results["NYUDV2Relative"] == pytest.approx(results["NYUDV2"], rel=1e-5)
    assert results["NYUDV2"]["rmse"] < 10.0  # metres, not inverse metres or uncapped depths
