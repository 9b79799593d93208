"""The model layer: shapes, names, spec building, parameter counts, training-time behaviour (tiny encoders, CPU)."""

from __future__ import annotations

import pytest
import torch

from trainer.config.schema import default_spec
from trainer.errors import SpecError
from trainer.model import ENCODER_CONFIGS, DepthAnythingV2, build_model, custom_encoder_config
from trainer.model.backbone import default_intermediate_layers

H, W = 56, 70  # 4 x 5 patches


def tiny_spec(model_type: str = "RelativeDepthAnything", **custom):
    spec = default_spec()
    spec.model.model_type = model_type
    spec.model.encoder = "custom"
    spec.model.custom.embed_dim = 32
    spec.model.custom.depth = 4
    spec.model.custom.num_heads = 2
    spec.model.custom.features = 16
    spec.model.custom.out_channels = [8, 16, 32, 32]
    for k, v in custom.items():
        spec.model.custom[k] = v
    spec.dataset.max_depth = 10.0
    return spec


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------


def test_relative_model_outputs_non_negative_map_at_input_size():
    model = build_model(tiny_spec()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, H, W))
    assert out.shape == (2, H, W)
    assert out.dtype == torch.float32
    assert (out >= 0).all()
    assert not model.is_metric and model.max_depth is None
    assert model.encoder == "custom" and model.patch_size == 14


def test_metric_model_outputs_metres_below_max_depth():
    spec = tiny_spec("MetricDepthAnything")
    spec.dataset.max_depth = 20.0
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W))
    assert model.is_metric and model.max_depth == 20.0
    assert out.shape == (1, H, W)
    assert ((out > 0) & (out < 20.0)).all()


def test_metric_output_is_sigmoid_of_the_relative_logits_times_max_depth():
    """Same weights, both heads: metric = sigmoid(z) * max_depth where relative = relu(z)."""
    cfg = custom_encoder_config(32, 2, 2, 16, [8, 16, 32, 32])
    rel = DepthAnythingV2("custom", custom=cfg).eval()
    met = DepthAnythingV2("custom", custom=cfg, metric=True, max_depth=5.0).eval()
    met.load_state_dict(rel.state_dict(), strict=True)
    logits = {}
    rel.depth_head.scratch.output_conv2[2].register_forward_hook(lambda m, i, o: logits.__setitem__("z", o.clone()))
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        r, m = rel(x), met(x)
    z = logits["z"][:, 0]
    torch.testing.assert_close(r, z.relu())
    torch.testing.assert_close(m, torch.sigmoid(z) * 5.0)


def test_metric_model_without_max_depth_is_a_spec_error():
    spec = tiny_spec("MetricDepthAnything")
    spec.dataset.max_depth = None
    with pytest.raises(SpecError, match=r"dataset\.max_depth"):
        build_model(spec)


def test_build_model_accepts_a_plain_dict_spec():
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(tiny_spec(), resolve=True)
    model = build_model(plain)
    assert model.encoder_config.embed_dim == 32


def test_bad_custom_encoder_is_a_spec_error():
    with pytest.raises(SpecError, match=r"model\.custom"):
        build_model(tiny_spec(intermediate_layers=[0, 1, 2, 9]))


def test_input_size_must_be_a_multiple_of_14():
    model = build_model(tiny_spec())
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.randn(1, 3, 50, 70))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, H, W))


@pytest.mark.parametrize("depth, expected", [(1, (0, 0, 0, 0)), (2, (0, 0, 1, 1)), (4, (0, 1, 2, 3)),
                                             (12, (2, 5, 8, 11)), (40, (9, 19, 29, 39))])
def test_default_intermediate_layers_are_evenly_spaced_ending_at_the_last_block(depth, expected):
    assert default_intermediate_layers(depth) == expected


def test_encoder_table_matches_the_reference():
    assert {k: (c.embed_dim, c.depth, c.num_heads, c.intermediate_layers, c.features, c.out_channels)
            for k, c in ENCODER_CONFIGS.items()} == {
        "vits": (384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
        "vitb": (768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
        "vitl": (1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
        "vitg": (1536, 40, 24, (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536)),
    }


def test_backbone_taps_the_configured_blocks_through_the_final_norm():
    model = build_model(tiny_spec(intermediate_layers=[3, 0, 2, 2])).eval()
    bb = model.pretrained
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        outs = bb(x)
        tokens = bb.embed(x)
        per_block = []
        for block in bb.blocks:
            tokens = block(tokens)
            per_block.append(bb.norm(tokens))
    assert len(outs) == 4
    for (patch, cls), i in zip(outs, [3, 0, 2, 2]):
        assert patch.shape == (1, (H // 14) * (W // 14), 32) and cls.shape == (1, 32)
        torch.testing.assert_close(patch, per_block[i][:, 1:])
        torch.testing.assert_close(cls, per_block[i][:, 0])


# --------------------------------------------------------------------------------------------------------------
# Names and parameters
# --------------------------------------------------------------------------------------------------------------


def test_state_dict_has_the_released_key_names():
    model = build_model(tiny_spec())
    keys = set(model.state_dict())
    assert all(k.startswith(("pretrained.", "depth_head.")) for k in keys)
    expected = {
        "pretrained.cls_token", "pretrained.pos_embed", "pretrained.mask_token",
        "pretrained.patch_embed.proj.weight", "pretrained.patch_embed.proj.bias",
        "pretrained.norm.weight", "pretrained.norm.bias",
        "depth_head.projects.0.weight", "depth_head.resize_layers.0.weight", "depth_head.resize_layers.3.bias",
        "depth_head.scratch.layer1_rn.weight", "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight",
        "depth_head.scratch.refinenet1.out_conv.bias", "depth_head.scratch.output_conv1.weight",
        "depth_head.scratch.output_conv2.0.weight", "depth_head.scratch.output_conv2.2.bias",
    }
    for i in range(4):
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                     "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"):
            expected.add(f"pretrained.blocks.{i}.{part}")
    assert expected <= keys
    assert not [k for k in keys if "resize_layers.2" in k or "bn" in k or "readout" in k or ".head." in k]
    assert model.state_dict()["pretrained.pos_embed"].shape == (1, 1370, 32)
    assert model.state_dict()["pretrained.mask_token"].shape == (1, 32)


def test_head_options_add_batch_norm_and_readout_projections():
    spec = tiny_spec()
    spec.model.mono_backbone.use_bn = True
    spec.model.mono_backbone.use_clstoken = True
    model = build_model(spec)
    keys = set(model.state_dict())
    assert "depth_head.scratch.refinenet1.resConfUnit2.bn1.running_mean" in keys
    assert "depth_head.readout_projects.3.0.weight" in keys
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, H, W)).shape == (1, H, W)


@pytest.mark.parametrize("encoder, total_m, head_m", [("vits", 24.8, 2.7), ("vitb", 97.5, 10.9), ("vitl", 335.3, 30.9)])
def test_parameter_counts_match_the_reference(encoder, total_m, head_m):
    with torch.device("meta"):  # shapes only: instant even for vitl
        model = DepthAnythingV2(encoder)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.depth_head.parameters())
    assert round(total / 1e6, 1) == total_m
    assert round(head / 1e6, 1) == head_m


def test_vitg_uses_the_packed_swiglu_ffn_of_the_original():
    with torch.device("meta"):
        model = DepthAnythingV2("vitg")
    block = model.pretrained.blocks[0]
    assert block.mlp.fc1.weight.shape == (8192, 1536)  # original w12
    assert block.mlp.fc2.weight.shape == (1536, 4096)  # original w3
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 1.26


def test_mask_token_and_the_unused_fusion_unit_are_frozen():
    model = build_model(tiny_spec())
    frozen = model.frozen_parameter_names()
    assert "pretrained.mask_token" in frozen
    assert all(n.startswith("depth_head.scratch.refinenet4.resConfUnit1.") or n == "pretrained.mask_token"
               for n in frozen)
    assert len(frozen) == 1 + 4  # mask_token + conv1/conv2 weight/bias


def test_param_groups_split_trainable_backbone_and_head():
    model = build_model(tiny_spec())
    groups = model.param_groups()
    backbone_ids = {id(p) for p in groups.backbone}
    head_ids = {id(p) for p in groups.head}
    assert not backbone_ids & head_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert backbone_ids | head_ids == trainable
    assert backbone_ids == {id(p) for p in model.pretrained.parameters() if p.requires_grad}
    assert id(model.pretrained.mask_token) not in backbone_ids


def test_every_trainable_parameter_gets_a_gradient_so_ddp_needs_no_unused_parameter_search():
    model = build_model(tiny_spec()).train()
    model(torch.randn(2, 3, H, W)).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_blocks_after_the_deepest_tap_are_frozen():
    model = build_model(tiny_spec(intermediate_layers=[0, 0, 1, 1]))
    frozen = model.frozen_parameter_names()
    assert any(n.startswith("pretrained.blocks.2.") for n in frozen)
    assert any(n.startswith("pretrained.blocks.3.") for n in frozen)
    model.train()(torch.randn(1, 3, H, W)).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------------------
# Training-time options
# --------------------------------------------------------------------------------------------------------------


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    plain = build_model(tiny_spec()).train()
    ckpt = build_model(tiny_spec(), activation_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.pretrained.grad_checkpointing
    x = torch.randn(2, 3, H, W)
    a, b = plain(x), ckpt(x)
    torch.testing.assert_close(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_channels_last_head_gives_the_same_output():
    a = build_model(tiny_spec()).eval()
    b = build_model(tiny_spec(), channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.depth_head.scratch.layer1_rn.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_is_finite():
    model = build_model(tiny_spec("MetricDepthAnything")).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, H, W))
    assert torch.isfinite(out).all()
    out.float().mean().backward()


def test_position_embeddings_are_kept_on_the_training_grid_and_resized_elsewhere():
    bb = build_model(tiny_spec()).pretrained
    assert bb.interpolate_pos_encoding(37, 37) is bb.pos_embed
    resized = bb.interpolate_pos_encoding(26, 37)
    assert resized.shape == (1, 1 + 26 * 37, 32)
    torch.testing.assert_close(resized[:, 0], bb.pos_embed[:, 0])  # class position untouched


def test_bicubic_resize_matrix_reproduces_the_original_f_interpolate_call():
    from trainer.model.backbone import bicubic_resize_matrix

    grid = torch.randn(5, 37, 37)
    for out_h, out_w in [(26, 37), (4, 5), (74, 30), (1, 1)]:
        expected = torch.nn.functional.interpolate(
            grid[None], scale_factor=((out_h + 0.1) / 37, (out_w + 0.1) / 37), mode="bicubic", antialias=False)[0]
        got = bicubic_resize_matrix(out_h, 37) @ grid @ bicubic_resize_matrix(out_w, 37).T
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("grid", [(37, 37), (26, 37), (4, 5), (74, 30)])
def test_traceable_position_embeddings_agree_with_the_eager_ones(grid):
    bb = build_model(tiny_spec()).pretrained
    with torch.no_grad():
        bb.pos_embed.normal_()
        eager = bb.interpolate_pos_encoding(*grid)
        traced = bb._interpolate_pos_encoding_traceable(*grid)
    if grid == (37, 37):
        assert torch.equal(eager, traced)
    torch.testing.assert_close(traced, eager, rtol=0, atol=2e-5)


def test_export_with_dynamic_height_and_width_is_right_at_every_size():
    """torch.export (the base of the ONNX exporter) with symbolic H and W: the position embeddings follow the
    input size instead of being frozen at the example's."""
    from torch.export import Dim

    model = build_model(tiny_spec("MetricDepthAnything")).eval()
    with torch.no_grad():
        model.pretrained.pos_embed.normal_()
    dims = {"x": {0: Dim("batch", min=1, max=8), 2: 14 * Dim("ph", min=1, max=40), 3: 14 * Dim("pw", min=1, max=40)}}
    program = torch.export.export(model, (torch.randn(2, 3, H, W),), dynamic_shapes=dims)
    for shape in [(1, 3, 98, 42), (1, 3, 518, 518), (2, 3, 364, 518)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Grad strides do not match bucket view strides")
def test_ddp_without_unused_parameter_search_trains(tmp_path):
    """DDP(find_unused_parameters=False) works because the never-called refinenet4.resConfUnit1 is frozen;
    unfreezing it brings back the classic 'Expected to have finished reduction' failure."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        for unfreeze in (False, True):
            model = build_model(tiny_spec()).train()
            if unfreeze:
                model.depth_head.scratch.refinenet4.resConfUnit1.requires_grad_(True)
            ddp = DistributedDataParallel(model, find_unused_parameters=False)

            def steps():
                for _ in range(2):
                    ddp(torch.randn(2, 3, 28, 28)).mean().backward()

            if unfreeze:
                with pytest.raises(RuntimeError, match="finished reduction"):
                    steps()
            else:
                steps()
    finally:
        dist.destroy_process_group()
