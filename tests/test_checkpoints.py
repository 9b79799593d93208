"""Checkpoint layouts, strict round trips and the errors users see (tiny random models, CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.errors import CheckpointError
from trainer.model import DepthAnythingV2, custom_encoder_config, load_weights, read_checkpoint_spec, save_released
from trainer.model.backbone import EncoderConfig
from trainer.model.depth_anything import convert_hf_state_dict, to_hf_state_dict

TINY = custom_encoder_config(32, 2, 2, 16, [8, 16, 32, 32])
X = torch.randn(1, 3, 28, 42, generator=torch.Generator().manual_seed(0))


def tiny(seed: int = 0, config: EncoderConfig = TINY, **kwargs) -> DepthAnythingV2:
    torch.manual_seed(seed)
    model = DepthAnythingV2("custom", custom=config, **kwargs).eval()
    with torch.no_grad():  # make every tensor distinctive, LayerScale and biases included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------------------------------------------
# Layouts: strict round trips
# --------------------------------------------------------------------------------------------------------------


def test_released_layout_round_trip(tmp_path):
    src, dst = tiny(0), tiny(1)
    path = save_released(src, tmp_path / "model.pth")
    report = load_weights(dst, path)
    assert report.layout == "released" and report.loaded == len(src.state_dict())
    assert not (report.missing or report.unexpected or report.mismatched)
    assert_same_weights(src, dst)
    with torch.no_grad():
        torch.testing.assert_close(src(X), dst(X), rtol=0, atol=0)
    assert set(torch.load(path, weights_only=True)) == set(src.state_dict())


def test_original_training_layout_with_module_prefix(tmp_path):
    src, dst = tiny(0), tiny(1)
    torch.save({
        "model": {f"module.{k}": v for k, v in src.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-6, "params": [0, 1]}]},
        "epoch": 3,
        "previous_best": {"d1": 0.9, "abs_rel": 0.1},
    }, tmp_path / "latest.pth")
    report = load_weights(dst, tmp_path / "latest.pth")
    assert report.layout == "original-training"
    assert_same_weights(src, dst)


def test_flat_state_dict_of_a_ddp_model(tmp_path):
    src, dst = tiny(0), tiny(1)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    assert load_weights(dst, tmp_path / "ddp.pth").layout == "released"
    assert_same_weights(src, dst)


def lightning_checkpoint(model: DepthAnythingV2, spec: dict, extra: dict | None = None) -> dict:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update(extra or {})
    return {
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 2}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/abs_rel'}": {"best_model_score": torch.tensor(0.12),
                                                                    "best_model_path": "results/best.ckpt"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 40, "base_lrs": [1e-5]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"spec": spec},
    }


def test_lightning_checkpoint_and_its_spec(tmp_path):
    src, dst = tiny(0), tiny(1)
    spec = {"model": {"model_type": "MetricDepthAnything", "encoder": "custom"}, "dataset": {"max_depth": 10.0}}
    torch.save(lightning_checkpoint(src, spec, {"loss_fn.dummy": torch.zeros(1)}), tmp_path / "best.ckpt")
    report = load_weights(dst, tmp_path / "best.ckpt")
    assert report.layout == "lightning"
    assert report.spec == spec
    assert report.skipped == ["loss_fn.dummy"]  # parts of the LightningModule outside the network
    assert_same_weights(src, dst)
    assert read_checkpoint_spec(tmp_path / "best.ckpt") == spec


def test_lightning_checkpoint_of_a_compiled_model(tmp_path):
    src, dst = tiny(0), tiny(1)
    state = {f"model._orig_mod.{k}": v for k, v in src.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {}}, tmp_path / "c.ckpt")
    load_weights(dst, tmp_path / "c.ckpt")
    assert_same_weights(src, dst)


def test_read_checkpoint_spec_is_none_without_a_training_spec(tmp_path):
    path = save_released(tiny(), tmp_path / "released.pth")
    assert read_checkpoint_spec(path) is None


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "folder"])
def test_hugging_face_layout(tmp_path, fmt):
    src, dst = tiny(0), tiny(1)
    hf = to_hf_state_dict(src.state_dict())
    assert "backbone.encoder.layer.0.attention.attention.query.weight" in hf
    assert "neck.fusion_stage.layers.0.residual_layer1.convolution1.weight" in hf  # refinenet4's unused unit
    if fmt == "bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save(hf, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
        if fmt == "folder":
            path = tmp_path
    report = load_weights(dst, path)
    assert report.layout == "huggingface"
    assert_same_weights(src, dst)


def test_hugging_face_mapping_names():
    """Spot checks of the mapping against Hugging Face's converter naming (refinenet{1,2,3,4} are
    fusion_stage.layers.{3,2,1,0}; q/k/v split out of qkv; head.conv{1,2,3})."""
    sd = tiny().state_dict()
    hf = to_hf_state_dict(sd)
    pairs = {
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
        "pretrained.blocks.1.ls2.gamma": "backbone.encoder.layer.1.layer_scale2.lambda1",
        "pretrained.blocks.1.attn.proj.bias": "backbone.encoder.layer.1.attention.output.dense.bias",
        "pretrained.norm.weight": "backbone.layernorm.weight",
        "depth_head.projects.3.weight": "neck.reassemble_stage.layers.3.projection.weight",
        "depth_head.resize_layers.0.weight": "neck.reassemble_stage.layers.0.resize.weight",
        "depth_head.scratch.layer2_rn.weight": "neck.convs.1.weight",
        "depth_head.scratch.refinenet1.out_conv.weight": "neck.fusion_stage.layers.3.projection.weight",
        "depth_head.scratch.refinenet4.resConfUnit2.conv2.bias":
            "neck.fusion_stage.layers.0.residual_layer2.convolution2.bias",
        "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
        "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
        "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(sd[ours], hf[theirs]), (ours, theirs)
    qkv = sd["pretrained.blocks.0.attn.qkv.weight"]
    assert torch.equal(hf["backbone.encoder.layer.0.attention.attention.key.weight"], qkv[32:64])
    assert len(hf) == len(sd) + 2 * 4  # qkv weight/bias -> 3 tensors each, 2 blocks


def test_transformers_5_in_memory_names_are_understood():
    """transformers 5 renames Dinov2 weights in memory (attention.q_proj/..., mlp.gate_proj/up_proj/down_proj);
    a state_dict saved from such a model loads too."""
    swiglu = EncoderConfig("custom", 48, 2, 2, (0, 0, 1, 1), 16, (8, 16, 32, 32), swiglu=True)
    src = tiny(0, swiglu)
    hf = to_hf_state_dict(src.state_dict())
    renamed = {}
    for k, v in hf.items():
        m = re.match(r"(backbone\.encoder\.layer\.\d+\.)(attention\.attention\.(query|key|value)|attention\.output\.dense"
                     r"|mlp\.weights_in|mlp\.weights_out)\.(weight|bias)$", k)
        if not m:
            renamed[k] = v
        elif m[2] == "mlp.weights_in":
            gate, up = v.chunk(2, dim=0)
            renamed[f"{m[1]}mlp.gate_proj.{m[4]}"] = gate
            renamed[f"{m[1]}mlp.up_proj.{m[4]}"] = up
        elif m[3]:
            renamed[f"{m[1]}attention.{m[3][0]}_proj.{m[4]}"] = v
        else:
            new = {"attention.output.dense": "attention.o_proj", "mlp.weights_out": "mlp.down_proj"}[m[2]]
            renamed[f"{m[1]}{new}.{m[4]}"] = v
    assert any(".q_proj." in k for k in renamed) and any(".gate_proj." in k for k in renamed)
    back = convert_hf_state_dict(renamed)
    assert back.keys() == src.state_dict().keys()
    for k, v in src.state_dict().items():
        assert torch.equal(back[k], v), k


def test_vitg_style_swiglu_weights_are_saved_and_loaded_with_the_original_names(tmp_path):
    swiglu = EncoderConfig("custom", 48, 2, 2, (0, 0, 1, 1), 16, (8, 16, 32, 32), swiglu=True)
    src, dst = tiny(0, swiglu), tiny(1, swiglu)
    path = save_released(src, tmp_path / "g.pth")
    keys = set(torch.load(path, weights_only=True))
    assert "pretrained.blocks.0.mlp.w12.weight" in keys and "pretrained.blocks.0.mlp.w3.bias" in keys
    assert not any(".mlp.fc1." in k for k in keys)
    load_weights(dst, path)
    assert_same_weights(src, dst)
    hf = to_hf_state_dict(src.state_dict())
    assert "backbone.encoder.layer.0.mlp.weights_in.weight" in hf
    torch.save(hf, tmp_path / "hf.bin")
    other = tiny(2, swiglu)
    load_weights(other, tmp_path / "hf.bin")
    assert_same_weights(src, other)


def test_hugging_face_port_has_no_head_batch_norm():
    with pytest.raises(ValueError, match="batch norm"):
        to_hf_state_dict(tiny(use_bn=True).state_dict())


def test_against_transformers_when_installed(tmp_path):
    """Outputs of Hugging Face's DepthAnythingForDepthEstimation and ours on the same weights (runs only where
    `transformers` is importable; it is not a dependency of this project)."""
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=518, patch_size=14,
        out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False, layerscale_value=1.0,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, patch_size=14, fusion_hidden_size=16,
        neck_hidden_sizes=[8, 16, 32, 32], depth_estimation_type="metric", max_depth=10,
    )
    torch.manual_seed(0)
    hf_model = transformers.DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf_model.save_pretrained(tmp_path)
    ours = DepthAnythingV2("custom", custom=custom_encoder_config(32, 4, 2, 16, [8, 16, 32, 32]),
                           metric=True, max_depth=10.0).eval()
    assert load_weights(ours, tmp_path).layout == "huggingface"
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).predicted_depth
        got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# backbone_only and strict=False
# --------------------------------------------------------------------------------------------------------------


def test_backbone_only_takes_the_backbone_and_leaves_the_head(tmp_path):
    other_head = custom_encoder_config(32, 2, 2, 24, [8, 16, 32, 48])  # same backbone, different head shapes
    src = tiny(0, other_head)
    dst = tiny(1, metric=True, max_depth=10.0)
    head_before = {k: v.clone() for k, v in dst.depth_head.state_dict().items()}
    path = save_released(src, tmp_path / "relative.pth")
    report = load_weights(dst, path, backbone_only=True)
    assert report.backbone_only
    assert report.loaded == len(src.pretrained.state_dict())
    assert report.skipped and all(k.startswith("depth_head.") for k in report.skipped)
    for k, v in src.pretrained.state_dict().items():
        assert torch.equal(dst.pretrained.state_dict()[k], v)
    for k, v in dst.depth_head.state_dict().items():
        assert torch.equal(head_before[k], v)


def test_backbone_only_is_strict_about_backbone_keys(tmp_path):
    sd = tiny(0).state_dict()
    del sd["pretrained.blocks.1.ls1.gamma"]
    sd["pretrained.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny(1), tmp_path / "broken.pth", backbone_only=True)
    text = str(err.value)
    assert "backbone only" in text
    assert "1 keys the model needs are missing" in text and "pretrained.blocks.1.ls1.gamma" in text
    assert "1 keys in the checkpoint are not in the model" in text and "pretrained.extra" in text


def test_non_strict_loading_reports_what_did_not_fit(tmp_path):
    sd = tiny(0).state_dict()
    del sd["depth_head.scratch.output_conv1.bias"]
    sd["depth_head.scratch.layer1_rn.weight"] = torch.zeros(3, 3, 3, 3)
    sd["something.else"] = torch.zeros(2)
    torch.save(sd, tmp_path / "partial.pth")
    report = load_weights(tiny(1), tmp_path / "partial.pth", strict=False)
    assert report.missing == ["depth_head.scratch.output_conv1.bias"]
    assert report.unexpected == ["something.else"]
    assert report.mismatched == ["depth_head.scratch.layer1_rn.weight"]
    assert report.loaded == len(sd) - 2


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed_with_counts(tmp_path):
    sd = tiny(0).state_dict()
    removed = [k for k in sd if k.startswith("pretrained.blocks.1.")]
    for k in removed:
        del sd[k]
    for i in range(12):
        sd[f"extra.{i}"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny(1), tmp_path / "bad.pth")
    text = str(err.value)
    assert str(tmp_path / "bad.pth") in text
    assert f"{len(removed)} keys the model needs are missing" in text
    assert "12 keys in the checkpoint are not in the model" in text
    assert "extra.0" in text and "... and 2 more" in text


def test_wrong_encoder_is_named(tmp_path):
    """A vits-shaped checkpoint loaded into a tiny model: the message names both encoders."""
    sd = {"pretrained.cls_token": torch.zeros(1, 1, 384), "pretrained.pos_embed": torch.zeros(1, 1370, 384)}
    sd.update({f"pretrained.blocks.{i}.norm1.weight": torch.zeros(384) for i in range(12)})
    torch.save(sd, tmp_path / "vits.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny(), tmp_path / "vits.pth")
    text = str(err.value)
    assert "looks like encoder vits (embed_dim 384, 12 blocks)" in text
    assert "the model is custom (embed_dim 32, 2 blocks)" in text
    assert "pretrained.pos_embed: [1, 1370, 384] vs [1, 1370, 32]" in text
    assert "cannot be told from its weights" in text  # relative vs metric: the keys are identical


def test_custom_encoder_mismatch_is_named(tmp_path):
    path = save_released(tiny(0, custom_encoder_config(48, 3, 2, 16, [8, 16, 32, 32])), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"looks like encoder a custom ViT \(embed_dim 48, 3 blocks\)"):
        load_weights(tiny(1), path)


def test_head_option_mismatch_gets_a_hint(tmp_path):
    path = save_released(tiny(0, use_bn=True), tmp_path / "bn.pth")
    with pytest.raises(CheckpointError, match=r"use_bn: true"):
        load_weights(tiny(1), path)
    path = save_released(tiny(0, use_clstoken=True), tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match=r"use_clstoken: true"):
        load_weights(tiny(1), path)


def test_spec_in_a_lightning_checkpoint_is_quoted_on_mismatch(tmp_path):
    spec = {"model": {"model_type": "MetricDepthAnything", "encoder": "custom"}, "dataset": {"max_depth": 80.0}}
    big = tiny(0, custom_encoder_config(48, 3, 2, 16, [8, 16, 32, 32]))
    torch.save(lightning_checkpoint(big, spec), tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match=r"model_type 'MetricDepthAnything'.*max_depth 80\.0"):
        load_weights(tiny(1), tmp_path / "x.ckpt")


def test_unknown_layout_is_refused_with_its_keys(tmp_path):
    torch.save({"weights": [1, 2, 3], "note": "hello"}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: unrecognised checkpoint: top-level entries \['weights', 'note'\]"):
        load_weights(tiny(), tmp_path / "odd.pth")


def test_truncated_file_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = save_released(tiny(), tmp_path / "model.pth")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot read checkpoint, truncated or corrupt"):
        load_weights(tiny(), truncated)
    safet = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in to_hf_state_dict(tiny().state_dict()).items()}, str(safet))
    safet.write_bytes(safet.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors file"):
        load_weights(tiny(), safet)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint file not found"):
        load_weights(tiny(), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=r"is a folder without a weights file"):
        load_weights(tiny(), tmp_path)



def _side_effect(path: str) -> None:
    """What a malicious pickle would do: here, create a file."""
    Path(path).write_text("code ran")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"pretrained.cls_token": torch.zeros(1, 1, 32), "payload": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError) as err:
        load_weights(tiny(), evil)
    assert "evil.pth: refused: not a plain weights file" in str(err.value)
    assert "_side_effect" in str(err.value)  # names what it would have called
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        read_checkpoint_spec(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.read_text() == "code ran"
