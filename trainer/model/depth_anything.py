"""Depth Anything V2 (relative or metric): DINOv2 backbone + DPT head, plus the weight-layout mappings.

`model.state_dict()` has the released checkpoints' keys (`pretrained.*`, `depth_head.*`); the one exception is vitg,
whose fused SwiGLU FFN is named as timm names it (`mlp.fc1`/`mlp.fc2` for the original `mlp.w12`/`mlp.w3`):
`convert_original_state_dict` / `to_original_state_dict` translate. `convert_hf_state_dict` / `to_hf_state_dict`
translate Hugging Face's port (`DepthAnythingForDepthEstimation`). The mappings live here, next to the model whose
names they target, as timm keeps its `checkpoint_filter_fn`s.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn as nn

from trainer.errors import SpecError, SpecProblem
from trainer.model.backbone import (
    ENCODER_CONFIGS,
    PATCH_SIZE,
    DinoV2Backbone,
    EncoderConfig,
    custom_encoder_config,
)
from trainer.model.dpt import DPTHead
from trainer.constants import METRIC, RELATIVE

__all__ = [
    "ENCODER_CONFIGS",
    "DepthAnythingV2",
    "ParamGroups",
    "build_model",
    "convert_hf_state_dict",
    "convert_original_state_dict",
    "to_hf_state_dict",
    "to_original_state_dict",
]



class ParamGroups(NamedTuple):
    """Trainable parameters split for the optimizer (the head trains at a multiple of the backbone lr)."""

    backbone: list[nn.Parameter]
    head: list[nn.Parameter]


class DepthAnythingV2(nn.Module):
    """Monocular depth network: `forward(x [B, 3, H, W]) -> [B, H, W]`, H and W multiples of 14.

    Relative models end in ReLU (affine-invariant disparity-like output); metric models end in Sigmoid and are
    multiplied by `max_depth` (metres in (0, max_depth)). Both have identical parameters.

    Args:
        encoder: vits | vitb | vitl | vitg | custom.
        metric: metric head (Sigmoid * max_depth) instead of relative (ReLU).
        max_depth: required for metric models.
        use_bn, use_clstoken: DPT head options (both false in the released models).
        custom: encoder shape when encoder == "custom" (see `trainer.model.backbone.custom_encoder_config`).
        activation_checkpoint: recompute backbone blocks in backward.
        drop_path_rate: stochastic depth in the backbone.
    """

    def __init__(
        self,
        encoder: str = "vitl",
        *,
        metric: bool = False,
        max_depth: Optional[float] = None,
        use_bn: bool = False,
        use_clstoken: bool = False,
        custom: Optional[EncoderConfig] = None,
        activation_checkpoint: bool = False,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if encoder == "custom":
            if custom is None:
                raise ValueError("encoder 'custom' needs `custom` (an EncoderConfig from custom_encoder_config)")
            config = custom
        elif encoder in ENCODER_CONFIGS:
            config = ENCODER_CONFIGS[encoder]
        else:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {[*ENCODER_CONFIGS, 'custom']}")
        if metric and (max_depth is None or not max_depth > 0):
            raise ValueError(f"a metric model needs max_depth > 0, found {max_depth!r}")
        self.encoder = encoder
        self.encoder_config = config
        self.is_metric = metric
        self.max_depth = float(max_depth) if metric else None
        self.patch_size = PATCH_SIZE
        self.pretrained = DinoV2Backbone(
            config, activation_checkpoint=activation_checkpoint, drop_path_rate=drop_path_rate
        )
        self.depth_head = DPTHead(
            config.embed_dim,
            config.features,
            config.out_channels,
            use_bn=use_bn,
            use_clstoken=use_clstoken,
            metric=metric,
        )
        self.head_compiled = False
        # Blocks after the deepest tapped one never influence the output (custom encoders only): freeze them so
        # that DDP without find_unused_parameters works, like the head's unused refinenet4.resConfUnit1.
        for block in self.pretrained.blocks[self.pretrained.last_used_block + 1:]:
            block.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], found shape {tuple(x.shape)}")
        patch_h, patch_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        features = self.pretrained(x)
        # a compiled head (`compile_regions`) serves training; evaluation calls it eagerly
        head = self.depth_head.forward if self.head_compiled and not self.training else self.depth_head
        depth = head(features, patch_h, patch_w)
        if self.is_metric:
            depth = depth * self.max_depth
        return depth.squeeze(1)

    def param_groups(self) -> ParamGroups:
        """Trainable (requires_grad) parameters of the backbone and of the head, separately."""
        return ParamGroups(
            backbone=[p for p in self.pretrained.parameters() if p.requires_grad],
            head=[p for p in self.depth_head.parameters() if p.requires_grad],
        )

    def frozen_parameter_names(self) -> list[str]:
        """Parameters that never train: `pretrained.mask_token`, `depth_head.scratch.refinenet4.resConfUnit1.*`
        (in the weights, never used in forward), and blocks after the deepest tapped one (custom encoders)."""
        return [name for name, p in self.named_parameters() if not p.requires_grad]

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute backbone blocks during backward (saves activation memory, costs ~1 extra forward)."""
        self.pretrained.grad_checkpointing = enabled

    def set_channels_last(self, enabled: bool = True) -> None:
        """channels_last memory format for the DPT head's convolutions."""
        self.depth_head.set_channels_last(enabled)

    def compile_regions(self, **compile_kwargs) -> None:
        """torch.compile the training path region by region: every backbone block (one shared graph) and the DPT
        head. Training steps run compiled; evaluation (`model.eval()`) runs the same modules eagerly, so validation
        at other sizes compiles nothing. Parameter names and state_dict keys are unchanged."""
        self.pretrained.compile_blocks(**compile_kwargs)
        self.depth_head.compile(**compile_kwargs)
        self.head_compiled = True


# --------------------------------------------------------------------------------------------------------------
# Building from a spec
# --------------------------------------------------------------------------------------------------------------


def _select(spec: Any, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(spec, key, default=default)
    return default if value is None else value


def build_model(
    spec: Any,
    *,
    activation_checkpoint: Optional[bool] = None,
    channels_last: Optional[bool] = None,
) -> DepthAnythingV2:
    """The network a spec describes (weights randomly initialised; see `trainer.model.load_weights`).

    Reads `model.model_type`, `model.encoder`, `model.custom` (encoder custom), `model.mono_backbone.use_bn` /
    `use_clstoken`, `dataset.max_depth` (required for MetricDepthAnything) and, unless given here,
    `train.activation_checkpoint` / `train.channels_last`. `spec` is the validated DictConfig or a plain dict
    (e.g. the one `read_checkpoint_spec` returns).
    """
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(spec, DictConfig):
        spec = OmegaConf.create(dict(spec))
    model_type = _select(spec, "model.model_type", METRIC)
    if model_type not in (METRIC, RELATIVE):
        raise SpecError([SpecProblem("model.model_type", f"found {model_type!r}, expected {METRIC} or {RELATIVE}")])
    metric = model_type == METRIC
    max_depth = _select(spec, "dataset.max_depth")
    if metric and (max_depth is None or not float(max_depth) > 0):
        raise SpecError([SpecProblem(
            "dataset.max_depth",
            f"found {max_depth!r}; MetricDepthAnything needs max_depth > 0 (the output is sigmoid * max_depth), "
            f"e.g. 10 or 20 indoors, 80 for driving scenes",
        )])
    encoder = _select(spec, "model.encoder", "vitl")
    custom: Optional[EncoderConfig] = None
    if encoder == "custom":
        c = _select(spec, "model.custom", {})
        try:
            custom = custom_encoder_config(
                embed_dim=int(c.get("embed_dim", 64)),
                depth=int(c.get("depth", 4)),
                num_heads=int(c.get("num_heads", 2)),
                features=int(c.get("features", 32)),
                out_channels=list(c.get("out_channels", [16, 32, 64, 64])),
                intermediate_layers=None if c.get("intermediate_layers") is None else list(c.get("intermediate_layers")),
            )
        except ValueError as e:
            raise SpecError([SpecProblem("model.custom", str(e))]) from None
    elif encoder not in ENCODER_CONFIGS:
        raise SpecError([SpecProblem("model.encoder", f"found {encoder!r}, expected one of {[*ENCODER_CONFIGS, 'custom']}")])
    if activation_checkpoint is None:
        activation_checkpoint = bool(_select(spec, "train.activation_checkpoint", False))
    model = DepthAnythingV2(
        encoder,
        metric=metric,
        max_depth=float(max_depth) if metric else None,
        use_bn=bool(_select(spec, "model.mono_backbone.use_bn", False)),
        use_clstoken=bool(_select(spec, "model.mono_backbone.use_clstoken", False)),
        custom=custom,
        activation_checkpoint=activation_checkpoint,
    )
    if channels_last is None:
        channels_last = bool(_select(spec, "train.channels_last", False))
    if channels_last:
        model.set_channels_last(True)
    return model


# --------------------------------------------------------------------------------------------------------------
# Weight layouts
# --------------------------------------------------------------------------------------------------------------

StateDict = dict[str, torch.Tensor]

_ORIG_SWIGLU = re.compile(r"^(pretrained\.blocks\.\d+\.mlp\.)(w12|w3)\.")
_TIMM_SWIGLU = {"w12": "fc1", "w3": "fc2"}


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Original (released) keys -> this model's keys: vitg's `mlp.w12`/`mlp.w3` become `mlp.fc1`/`mlp.fc2`
    (same packed [gate; value] order, so tensors are unchanged). Other keys pass through."""
    return {_ORIG_SWIGLU.sub(lambda m: m[1] + _TIMM_SWIGLU[m[2]] + ".", k): v for k, v in state_dict.items()}


def _is_swiglu(state_dict: Mapping[str, torch.Tensor]) -> bool:
    fc1, fc2 = state_dict.get("pretrained.blocks.0.mlp.fc1.weight"), state_dict.get("pretrained.blocks.0.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def to_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """This model's keys -> the released layout (vitg's packed SwiGLU back to `mlp.w12`/`mlp.w3`)."""
    if not _is_swiglu(state_dict):
        return dict(state_dict)
    back = {"fc1": "w12", "fc2": "w3"}
    pattern = re.compile(r"^(pretrained\.blocks\.\d+\.mlp\.)(fc1|fc2)\.")
    return {pattern.sub(lambda m: m[1] + back[m[2]] + ".", k): v for k, v in state_dict.items()}


_Repl = Union[str, Callable[["re.Match[str]"], str]]

# Hugging Face name (regex on the key prefix) -> released name. Both Hub files (legacy names: attention.attention.
# query/key/value, attention.output.dense, mlp.weights_in/weights_out) and transformers 5 in-memory names
# (attention.q_proj/k_proj/v_proj/o_proj, mlp.gate_proj/up_proj/down_proj) are understood.
_HF_RENAMES: list[tuple[re.Pattern[str], _Repl]] = [
    (re.compile(r"^backbone\.embeddings\.cls_token$"), "pretrained.cls_token"),
    (re.compile(r"^backbone\.embeddings\.mask_token$"), "pretrained.mask_token"),
    (re.compile(r"^backbone\.embeddings\.position_embeddings$"), "pretrained.pos_embed"),
    (re.compile(r"^backbone\.embeddings\.patch_embeddings\.projection\."), "pretrained.patch_embed.proj."),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.norm([12])\."), r"pretrained.blocks.\1.norm\2."),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$"), r"pretrained.blocks.\1.ls\2.gamma"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\."), r"pretrained.blocks.\1.attn.proj."),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(?:fc1|weights_in)\."), r"pretrained.blocks.\1.mlp.fc1."),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(?:fc2|weights_out|down_proj)\."), r"pretrained.blocks.\1.mlp.fc2."),
    (re.compile(r"^backbone\.layernorm\."), "pretrained.norm."),
    (re.compile(r"^neck\.reassemble_stage\.layers\.(\d)\.projection\."), r"depth_head.projects.\1."),
    (re.compile(r"^neck\.reassemble_stage\.layers\.(\d)\.resize\."), r"depth_head.resize_layers.\1."),
    (re.compile(r"^neck\.convs\.(\d)\."), lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn."),
    # fusion_stage.layers.{0,1,2,3} run coarse to fine: refinenet{4,3,2,1}
    (re.compile(r"^neck\.fusion_stage\.layers\.(\d)\.projection\."),
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.out_conv."),
    (re.compile(r"^neck\.fusion_stage\.layers\.(\d)\.residual_layer([12])\.convolution([12])\."),
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
    (re.compile(r"^head\.conv1\."), "depth_head.scratch.output_conv1."),
    (re.compile(r"^head\.conv2\."), "depth_head.scratch.output_conv2.0."),
    (re.compile(r"^head\.conv3\."), "depth_head.scratch.output_conv2.2."),
]
# Split tensors that the released layout keeps fused: (pattern, target template, part name -> position).
_HF_FUSED: list[tuple[re.Pattern[str], str, dict[str, int]]] = [
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"),
     "pretrained.blocks.{0}.attn.qkv.{2}", {"query": 0, "key": 1, "value": 2}),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.(q_proj|k_proj|v_proj)\.(weight|bias)$"),
     "pretrained.blocks.{0}.attn.qkv.{2}", {"q_proj": 0, "k_proj": 1, "v_proj": 2}),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)$"),
     "pretrained.blocks.{0}.mlp.fc1.{2}", {"gate_proj": 0, "up_proj": 1}),
]


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether keys look like Hugging Face's `DepthAnythingForDepthEstimation`."""
    return any(k.startswith(("backbone.embeddings.", "backbone.encoder.layer.", "neck.reassemble_stage.",
                             "neck.fusion_stage.")) for k in state_dict)


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face `DepthAnythingForDepthEstimation` weights -> this model's (released) keys.

    Query/key/value projections are concatenated into `attn.qkv` (in that order), SwiGLU gate/up halves into
    `mlp.fc1`. Keys that match no rule keep their Hugging Face name (so a strict load reports them), and so do the
    parts of an incomplete q/k/v group.
    """
    out: StateDict = {}
    groups: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    sizes: dict[str, int] = {}
    for key, value in state_dict.items():
        for pattern, template, order in _HF_FUSED:
            m = pattern.match(key)
            if m:
                target = template.format(*m.groups())
                groups.setdefault(target, {})[order[m[2]]] = (key, value)
                sizes[target] = len(order)
                break
        else:
            for pattern, repl in _HF_RENAMES:
                new_key, n = pattern.subn(repl, key)
                if n:
                    out[new_key] = value
                    break
            else:
                out[key] = value
    for target, parts in groups.items():
        if len(parts) == sizes[target]:
            out[target] = torch.cat([parts[i][1] for i in range(sizes[target])], dim=0)
        else:
            out.update({k: v for k, v in parts.values()})
    return out


def to_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """This model's keys -> Hugging Face's (the names of the files on the Hub: `attention.attention.query`, ...,
    `mlp.weights_in`/`weights_out` for SwiGLU). Raises ValueError for head options Hugging Face's port does not
    have (use_bn, use_clstoken)."""
    unsupported = [k for k in state_dict if ".bn1." in k or ".bn2." in k or k.startswith("depth_head.readout_projects.")]
    if unsupported:
        raise ValueError(
            f"Hugging Face's Depth Anything has no batch norm / readout projection in the head; "
            f"cannot map {len(unsupported)} keys such as {unsupported[:3]}"
        )
    state_dict = convert_original_state_dict(state_dict)
    swiglu = _is_swiglu(state_dict)
    inverse: list[tuple[re.Pattern[str], _Repl]] = [
        (re.compile(r"^pretrained\.cls_token$"), "backbone.embeddings.cls_token"),
        (re.compile(r"^pretrained\.mask_token$"), "backbone.embeddings.mask_token"),
        (re.compile(r"^pretrained\.pos_embed$"), "backbone.embeddings.position_embeddings"),
        (re.compile(r"^pretrained\.patch_embed\.proj\."), "backbone.embeddings.patch_embeddings.projection."),
        (re.compile(r"^pretrained\.blocks\.(\d+)\.norm([12])\."), r"backbone.encoder.layer.\1.norm\2."),
        (re.compile(r"^pretrained\.blocks\.(\d+)\.ls([12])\.gamma$"), r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
        (re.compile(r"^pretrained\.blocks\.(\d+)\.attn\.proj\."), r"backbone.encoder.layer.\1.attention.output.dense."),
        (re.compile(r"^pretrained\.blocks\.(\d+)\.mlp\.fc1\."),
         r"backbone.encoder.layer.\1.mlp.weights_in." if swiglu else r"backbone.encoder.layer.\1.mlp.fc1."),
        (re.compile(r"^pretrained\.blocks\.(\d+)\.mlp\.fc2\."),
         r"backbone.encoder.layer.\1.mlp.weights_out." if swiglu else r"backbone.encoder.layer.\1.mlp.fc2."),
        (re.compile(r"^pretrained\.norm\."), "backbone.layernorm."),
        (re.compile(r"^depth_head\.projects\.(\d)\."), r"neck.reassemble_stage.layers.\1.projection."),
        (re.compile(r"^depth_head\.resize_layers\.(\d)\."), r"neck.reassemble_stage.layers.\1.resize."),
        (re.compile(r"^depth_head\.scratch\.layer(\d)_rn\."), lambda m: f"neck.convs.{int(m[1]) - 1}."),
        (re.compile(r"^depth_head\.scratch\.refinenet(\d)\.out_conv\."),
         lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
        (re.compile(r"^depth_head\.scratch\.refinenet(\d)\.resConfUnit([12])\.conv([12])\."),
         lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}."),
        (re.compile(r"^depth_head\.scratch\.output_conv1\."), "head.conv1."),
        (re.compile(r"^depth_head\.scratch\.output_conv2\.0\."), "head.conv2."),
        (re.compile(r"^depth_head\.scratch\.output_conv2\.2\."), "head.conv3."),
    ]
    qkv = re.compile(r"^pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
    out: StateDict = {}
    for key, value in state_dict.items():
        m = qkv.match(key)
        if m:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"backbone.encoder.layer.{m[1]}.attention.attention.{name}.{m[2]}"] = part.clone()
            continue
        for pattern, repl in inverse:
            new_key, n = pattern.subn(repl, key)
            if n:
                out[new_key] = value
                break
        else:
            raise ValueError(f"no Hugging Face name for key {key!r}")
    return out
