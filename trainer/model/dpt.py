"""DPT head of Depth Anything V2, with the released checkpoints' parameter names.

Layout (below `depth_head.`): `projects.{0..3}` (1x1 convs), `resize_layers.{0..3}` (ConvTranspose k4 s4,
ConvTranspose k2 s2, Identity, Conv3x3 s2), optional `readout_projects.{0..3}` (use_clstoken),
`scratch.layer{1..4}_rn` (3x3, no bias), `scratch.refinenet{1..4}` (fusion blocks: `out_conv`, `resConfUnit1`,
`resConfUnit2`, each unit `conv1`, `conv2` and with use_bn `bn1`, `bn2`), `scratch.output_conv1` and
`scratch.output_conv2.{0,2}` (Conv -> ReLU -> Conv(32 -> 1) -> final activation).

Every resize uses an explicit `size=` (no float scale factors), so a static-size ONNX export has fixed shapes.

`scratch.refinenet4.resConfUnit1` is part of the weights but never called (refinenet4 has no skip input). It is
registered so checkpoints load strictly, and frozen (`requires_grad=False`) so DDP does not wait for its gradient:
`find_unused_parameters=False` works as long as nothing turns its `requires_grad` back on (if something does,
use `find_unused_parameters=True`). `DPTHead.unused_parameter_names()` lists it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model.backbone import PATCH_SIZE, TokenFeatures

HEAD_HIDDEN = 32  # channels between the two convs of `output_conv2`


def _upsample(x: torch.Tensor, size: Sequence[int], as_matmul: bool = False) -> torch.Tensor:
    """Bilinear resize with align_corners=True to an explicit size (as every DPT resize in the original).

    `as_matmul`: the same resize as two products with interpolation matrices, `A_h @ x @ A_w^T` (training: its
    backward is two more products, where `F.interpolate`'s backward scatters with atomic adds, the slowest kernels
    of a GPU training step; under bf16 autocast the coefficients round to bf16, an error of the size of the bf16
    rounding of the output itself). Evaluation and export use `F.interpolate`.
    """
    if not as_matmul:
        return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=True)
    rows = bilinear_matrix(int(size[0]), x.shape[-2], x.device)
    cols = bilinear_matrix(int(size[1]), x.shape[-1], x.device)
    out = torch.matmul(rows, torch.matmul(x.contiguous(), cols.transpose(0, 1)))
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else out


def bilinear_matrix(out_size: int, in_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """[out_size, in_size] float32 matrix M with `M @ v` = PyTorch's 1-D linear resize of v, align_corners=True
    (source position `dst * (in - 1) / (out - 1)`, two taps per output)."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = torch.arange(out_size, device=device, dtype=torch.float32) * scale
    lo = src.floor().clamp(0, in_size - 1)
    frac = src - lo
    lo_i = lo.long()
    hi_i = (lo_i + 1).clamp(max=in_size - 1)
    matrix = torch.zeros(out_size, in_size, device=device)
    r = torch.arange(out_size, device=device)
    matrix.index_put_((r, lo_i), 1.0 - frac, accumulate=True)
    matrix.index_put_((r, hi_i), frac, accumulate=True)
    return matrix


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + conv2(relu(bn1(conv1(relu(x))))) (bn only with use_bn)."""

    def __init__(self, features: int, use_bn: bool = False):
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)
        self.activation = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation(x))
        if self.use_bn:
            out = self.bn1(out)
        out = self.conv2(self.activation(out))
        if self.use_bn:
            out = self.bn2(out)
        return out + x


class FeatureFusionBlock(nn.Module):
    """Fuses a coarser path with a skip feature map, then upsamples to `size` and projects (1x1 `out_conv`)."""

    def __init__(self, features: int, use_bn: bool = False):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)  # applied to the skip input
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None, *, size: Sequence[int],
                as_matmul: bool = False) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return self.out_conv(_upsample(x, size, as_matmul))


class DPTScratch(nn.Module):
    """The `scratch` part of the head: per-level 3x3 convs to `features`, fusion blocks, output convs."""

    def __init__(self, out_channels: Sequence[int], features: int, use_bn: bool, final_activation: nn.Module):
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.refinenet1 = FeatureFusionBlock(features, use_bn)
        self.refinenet2 = FeatureFusionBlock(features, use_bn)
        self.refinenet3 = FeatureFusionBlock(features, use_bn)
        self.refinenet4 = FeatureFusionBlock(features, use_bn)
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(HEAD_HIDDEN, 1, kernel_size=1, stride=1, padding=0),
            final_activation,
            nn.Identity(),
        )


class DPTHead(nn.Module):
    """DPT decoder: four token maps -> one-channel map at (14 * patch_h, 14 * patch_w).

    Args:
        in_channels: backbone embed_dim.
        features: fusion width (64 / 128 / 256 / 384 for vits / vitb / vitl / vitg).
        out_channels: per-level projection widths.
        use_bn: batch norm inside the residual units.
        use_clstoken: concatenate the class token to every patch token and project back (readout projection).
        metric: final activation Sigmoid (metric models; the caller multiplies by max_depth) instead of ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        *,
        use_bn: bool = False,
        use_clstoken: bool = False,
        metric: bool = False,
    ):
        super().__init__()
        if len(out_channels) != 4:
            raise ValueError(f"out_channels: expected 4 values, found {list(out_channels)}")
        self.use_clstoken = use_clstoken
        self.metric = metric
        self.channels_last = False
        self.matmul_upsample = False  # training only: bilinear upsampling as matrix products (see _upsample)
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, kernel_size=1, stride=1, padding=0) for c in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        if use_clstoken:
            self.readout_projects = nn.ModuleList(
                [nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU()) for _ in out_channels]
            )
        final = nn.Sigmoid() if metric else nn.ReLU(inplace=True)
        self.scratch = DPTScratch(out_channels, features, use_bn, final)
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)  # never called: see module docstring

    @staticmethod
    def unused_parameter_names() -> list[str]:
        """Names (relative to the head) of parameters that are in the weights but never used in forward."""
        return ["scratch.refinenet4.resConfUnit1"]

    def set_channels_last(self, enabled: bool = True) -> None:
        """Run the head's convolutions in channels_last memory format (weights and feature maps)."""
        self.channels_last = enabled
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def _token_map(self, i: int, feature: TokenFeatures, patch_h: int, patch_w: int) -> torch.Tensor:
        tokens, cls_token = feature
        if self.use_clstoken:
            readout = cls_token.unsqueeze(1).expand_as(tokens)
            tokens = self.readout_projects[i](torch.cat((tokens, readout), dim=-1))
        x = tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], patch_h, patch_w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.resize_layers[i](self.projects[i](x))

    def forward(self, features: Sequence[TokenFeatures], patch_h: int, patch_w: int) -> torch.Tensor:
        """features: 4 x (patch tokens [B, patch_h * patch_w, D], class token [B, D]) -> [B, 1, 14*patch_h, 14*patch_w]
        after the final activation (ReLU, or Sigmoid for metric heads)."""
        layer_1, layer_2, layer_3, layer_4 = (self._token_map(i, f, patch_h, patch_w) for i, f in enumerate(features))
        s = self.scratch
        layer_1_rn = s.layer1_rn(layer_1)
        layer_2_rn = s.layer2_rn(layer_2)
        layer_3_rn = s.layer3_rn(layer_3)
        layer_4_rn = s.layer4_rn(layer_4)
        mm = self.matmul_upsample and self.training  # see _upsample
        path_4 = s.refinenet4(layer_4_rn, size=layer_3_rn.shape[2:], as_matmul=mm)
        path_3 = s.refinenet3(path_4, layer_3_rn, size=layer_2_rn.shape[2:], as_matmul=mm)
        path_2 = s.refinenet2(path_3, layer_2_rn, size=layer_1_rn.shape[2:], as_matmul=mm)
        path_1 = s.refinenet1(path_2, layer_1_rn, size=(2 * layer_1_rn.shape[2], 2 * layer_1_rn.shape[3]),
                              as_matmul=mm)
        out = s.output_conv1(path_1)
        out = _upsample(out, (patch_h * PATCH_SIZE, patch_w * PATCH_SIZE), mm)
        return s.output_conv2(out)
