"""Facts of the Depth Anything V2 model family that several layers need: one place for each."""

from __future__ import annotations

PATCH_SIZE = 14  # ViT patch: network inputs are multiples of it
METRIC = "MetricDepthAnything"  # depth in metres: sigmoid * max_depth
RELATIVE = "RelativeDepthAnything"  # affine-invariant disparity (ReLU)
MODEL_TYPES = (METRIC, RELATIVE)
