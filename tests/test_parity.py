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
