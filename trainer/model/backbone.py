"""DINOv2 ViT backbone on timm's `VisionTransformer`, laid out like the released Depth Anything V2 weights.

The module's parameter names are those of the released checkpoints (below the `pretrained.` prefix):
`cls_token`, `pos_embed`, `mask_token`, `patch_embed.proj.*`, `blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
mlp.fc1,mlp.fc2,ls2.gamma}`, `norm.*`. vitg's fused SwiGLU FFN is timm's packed form (`mlp.fc1` = original `w12`,
`mlp.fc2` = original `w3`); `trainer.model.depth_anything.convert_original_state_dict` renames those keys.

Numerics follow the original DINOv2 used by Depth Anything V2: patch 14, 518x518 training size (37x37 patches),
LayerNorm eps 1e-6, LayerScale, and position embeddings resized bicubically with the original's scale factor
(`(grid + 0.1) / 37`, no antialias) for any other grid, so outputs agree with the original at every input size
that is a multiple of 14.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

from trainer.constants import PATCH_SIZE

IMG_SIZE = 518  # 37 x 37 patches: the grid the position embeddings were trained on
POS_EMBED_OFFSET = 0.1  # the original adds 0.1 to the target grid before computing the bicubic scale factor
CUBIC_A = -0.75  # PyTorch's bicubic kernel coefficient

# One tapped layer: (patch tokens [B, N, D], class token [B, D]), both after the final norm.
TokenFeatures = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of one encoder and of the DPT head that goes with it."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    intermediate_layers: tuple[int, int, int, int]  # 0-based block indices tapped for the DPT head
    features: int  # DPT `features`
    out_channels: tuple[int, int, int, int]  # DPT `out_channels`
    swiglu: bool = False  # fused SwiGLU FFN (vitg) instead of the GELU MLP


ENCODER_CONFIGS: dict[str, EncoderConfig] = {
    "vits": EncoderConfig("vits", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": EncoderConfig("vitb", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": EncoderConfig("vitl", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "vitg": EncoderConfig("vitg", 1536, 40, 24, (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536), swiglu=True),
}


def default_intermediate_layers(depth: int) -> tuple[int, int, int, int]:
    """Four block indices evenly spaced over `depth` blocks, the last one included.

    `ceil((k + 1) * depth / 4) - 1` for k = 0..3: depth 4 -> (0, 1, 2, 3), 12 -> (2, 5, 8, 11), 40 -> (9, 19, 29, 39).
    Shallow models repeat indices (depth 2 -> (0, 0, 1, 1)).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, found {depth}")
    return tuple(math.ceil((k + 1) * depth / 4) - 1 for k in range(4))  # type: ignore[return-value]


def custom_encoder_config(
    embed_dim: int,
    depth: int,
    num_heads: int,
    features: int,
    out_channels: Sequence[int],
    intermediate_layers: Optional[Sequence[int]] = None,
) -> EncoderConfig:
    """An `EncoderConfig` for `model.encoder: custom` (`spec.model.custom`), checked."""
    if embed_dim <= 0 or depth <= 0 or num_heads <= 0 or embed_dim % num_heads:
        raise ValueError(
            f"model.custom: expected positive embed_dim/depth/num_heads with embed_dim divisible by num_heads, "
            f"found embed_dim={embed_dim}, depth={depth}, num_heads={num_heads}"
        )
    out = tuple(int(c) for c in out_channels)
    if len(out) != 4 or any(c <= 0 for c in out):
        raise ValueError(f"model.custom.out_channels: expected 4 positive integers, found {list(out_channels)}")
    if features <= 0:
        raise ValueError(f"model.custom.features: expected a positive integer, found {features}")
    layers = default_intermediate_layers(depth) if intermediate_layers is None else tuple(int(i) for i in intermediate_layers)
    if len(layers) != 4 or any(not 0 <= i < depth for i in layers):
        raise ValueError(
            f"model.custom.intermediate_layers: expected 4 block indices in [0, {depth - 1}], found {list(layers)}"
        )
    return EncoderConfig("custom", embed_dim, depth, num_heads, layers, features, out)  # type: ignore[arg-type]


def swiglu_hidden(embed_dim: int) -> int:
    """Hidden width of the original DINOv2 fused SwiGLU FFN (mlp_ratio 4): 4096 for embed_dim 1536."""
    return (int(embed_dim * 4 * 2 / 3) + 7) // 8 * 8


def _cubic_near(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel (A = -0.75, as PyTorch's bicubic) for |x| <= 1."""
    return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1


def _cubic_far(x: torch.Tensor) -> torch.Tensor:
    """The same kernel for 1 < |x| < 2."""
    return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A


def _eye_rows(n: int, m: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(n, device=device)[:, None] == torch.arange(m, device=device)[None, :]).float()


def bicubic_resize_matrix(out_size: int, in_size: int, *, offset: float = POS_EMBED_OFFSET,
                          device: Optional[torch.device] = None) -> torch.Tensor:
    """[out_size, in_size] matrix M such that `M @ v` is PyTorch's 1-D bicubic resize of v (align_corners=False,
    A = -0.75, border samples clamped) with scale factor `(out_size + offset) / in_size`, the factor the original
    DINOv2 passes to `F.interpolate`. 2-D resizes are separable: `M_h @ grid @ M_w.T`. float32, traceable with a
    symbolic `out_size`."""
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    src = (dst + 0.5) * (in_size / (out_size + offset)) - 0.5
    base = torch.floor(src)
    t = src - base
    weights = (_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t))
    columns = torch.arange(in_size, device=device)
    matrix = torch.zeros(out_size, in_size, device=device)
    for k, w in enumerate(weights):
        index = (base.long() + (k - 1)).clamp(0, in_size - 1)
        matrix = matrix + w[:, None] * (index[:, None] == columns[None, :]).float()
    return matrix


class DinoV2Backbone(VisionTransformer):
    """timm ViT configured as Depth Anything V2's DINOv2 encoder; `forward` returns the four tapped layers.

    Args:
        config: encoder shape (see `ENCODER_CONFIGS` / `custom_encoder_config`).
        activation_checkpoint: recompute each block in the backward pass (`torch.utils.checkpoint`, non-reentrant)
            to trade compute for activation memory.
        drop_path_rate: stochastic depth (0 in the original recipe).
    """

    def __init__(self, config: EncoderConfig, *, activation_checkpoint: bool = False, drop_path_rate: float = 0.0):
        ffn: dict = {"mlp_ratio": 4.0}
        if config.swiglu:
            # As timm's vit_giant_patch14_dinov2: packed SwiGLU (fc1 = [gate; value]) whose hidden width is twice
            # the original's `(int(4 * D * 2 / 3) + 7) // 8 * 8` (2 * 4096 for D = 1536).
            ffn = dict(mlp_ratio=2 * swiglu_hidden(config.embed_dim) / config.embed_dim, mlp_layer=SwiGLUPacked,
                       act_layer=nn.SiLU)
        super().__init__(
            img_size=IMG_SIZE,
            patch_size=PATCH_SIZE,
            num_classes=0,
            global_pool="token",
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            qkv_bias=True,
            init_values=1.0,  # LayerScale, as the original constructs it (released weights overwrite it)
            class_token=True,
            reg_tokens=0,
            dynamic_img_size=True,  # patch_embed accepts any multiple of 14 and returns NHWC
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            drop_path_rate=drop_path_rate,
            **ffn,
        )
        if config.swiglu and self.blocks[0].mlp.fc1.out_features != 2 * swiglu_hidden(config.embed_dim):
            raise RuntimeError(f"SwiGLU width {self.blocks[0].mlp.fc1.out_features} differs from the original's "
                               f"{2 * swiglu_hidden(config.embed_dim)}")  # float rounding of mlp_ratio: never seen
        # Present in the released weights (DINOv2's masked-image-modelling token); unused here, never trained.
        self.mask_token = nn.Parameter(torch.zeros(1, config.embed_dim), requires_grad=False)
        for block in self.blocks:
            block.attn.fused_attn = True  # F.scaled_dot_product_attention
        self.config = config
        self.patch_size = PATCH_SIZE
        self.intermediate_layers = tuple(config.intermediate_layers)
        self.grad_checkpointing = activation_checkpoint
        self.blocks_compiled = False

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile each transformer block in place (regional compilation): the blocks share one compiled
        graph, so compiling costs seconds instead of a whole-model compile; parameter names are unchanged."""
        for block in self.blocks:
            block.compile(**compile_kwargs)
        self.blocks_compiled = True

    @property
    def last_used_block(self) -> int:
        """Index of the deepest block whose output is used; later blocks never receive gradients."""
        return max(self.intermediate_layers)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + grid_h * grid_w, D) for a grid of patches, as the original computes them.

        The 37x37 table is returned unchanged for a 37x37 grid; otherwise its patch part is resized bicubically
        (no antialias) with scale factors `(grid + 0.1) / 37`, in float32: in eager mode with the very
        `F.interpolate` call of the original; while exporting or tracing (torch.export, ONNX) with the same
        resize written as two matrix products (`bicubic_resize_matrix`), which keeps H and W symbolic, so an
        export with dynamic height/width is right at every size (agreement with the eager path: ~1e-6 relative).
        """
        if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._interpolate_pos_encoding_traceable(grid_h, grid_w)
        n_table = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == n_table and grid_h == grid_w:
            return self.pos_embed
        side_f = math.sqrt(n_table)
        side = int(side_f)
        dim = self.pos_embed.shape[-1]
        table = self.pos_embed.float()
        cls_pos, patch_pos = table[:, :1], table[:, 1:]
        scale = ((grid_h + POS_EMBED_OFFSET) / side_f, (grid_w + POS_EMBED_OFFSET) / side_f)
        patch_pos = F.interpolate(
            patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=scale,
            mode="bicubic",
            antialias=False,
        )
        if tuple(patch_pos.shape[-2:]) != (grid_h, grid_w):  # the 0.1 offset guarantees this; keep it loud
            raise RuntimeError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def _interpolate_pos_encoding_traceable(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """`interpolate_pos_encoding` without shape-dependent Python branches or float scale factors."""
        n_table = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n_table))
        dim = self.pos_embed.shape[-1]
        device = self.pos_embed.device
        table = self.pos_embed.float()
        cls_pos, grid = table[:, :1], table[0, 1:].reshape(side, side, dim).permute(2, 0, 1)  # [D, 37, 37]
        rows = bicubic_resize_matrix(grid_h, side, device=device)
        cols = bicubic_resize_matrix(grid_w, side, device=device)
        # the original keeps the table as is on its own 37x37 grid: select identity matrices there (no branch)
        native = (torch.full((), grid_h, device=device) == side) & (torch.full((), grid_w, device=device) == side)
        rows = torch.where(native, _eye_rows(grid_h, side, device), rows)
        cols = torch.where(native, _eye_rows(grid_w, side, device), cols)
        patch_pos = (rows @ grid @ cols.transpose(0, 1)).permute(1, 2, 0).reshape(1, grid_h * grid_w, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + position embedding: [B, 3, H, W] -> [B, 1 + N, D]."""
        b, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input height and width must be multiples of {self.patch_size}, found {h}x{w}")
        grid_h, grid_w = h // self.patch_size, w // self.patch_size
        tokens = self.patch_embed(x).reshape(b, grid_h * grid_w, -1)  # NHWC -> NLC, row-major patches
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid_h, grid_w)
        return self.norm_pre(self.patch_drop(self.pos_drop(tokens)))

    def forward(self, x: torch.Tensor) -> list[TokenFeatures]:  # type: ignore[override]
        """[B, 3, H, W] (H, W multiples of 14) -> for each tapped layer, in `intermediate_layers` order,
        (patch tokens [B, H/14 * W/14, D], class token [B, D]), both passed through the final `norm`."""
        tokens = self.embed(x)
        wanted = set(self.intermediate_layers)
        taken: dict[int, torch.Tensor] = {}
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        # compiled blocks (`compile_blocks`) serve training; evaluation runs them eagerly (no extra graphs to compile)
        eager = self.blocks_compiled and not self.training
        for i, block in enumerate(self.blocks[: self.last_used_block + 1]):
            if checkpointing:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block.forward(tokens) if eager else block(tokens)
            if i in wanted:
                taken[i] = tokens
        outputs: list[TokenFeatures] = []
        for i in self.intermediate_layers:
            normed = self.norm(taken[i])
            outputs.append((normed[:, 1:], normed[:, 0]))
        return outputs
