"""Depth Anything V2 model layer: timm DINOv2 backbone, DPT head, relative/metric model, checkpoint layouts."""

from trainer.model.backbone import ENCODER_CONFIGS, DinoV2Backbone, EncoderConfig, custom_encoder_config
from trainer.model.checkpoints import LoadReport, load_weights, read_checkpoint_spec, save_released
from trainer.model.depth_anything import DepthAnythingV2, ParamGroups, build_model
from trainer.model.dpt import DPTHead

__all__ = [
    "ENCODER_CONFIGS",
    "DPTHead",
    "DepthAnythingV2",
    "DinoV2Backbone",
    "EncoderConfig",
    "LoadReport",
    "ParamGroups",
    "build_model",
    "custom_encoder_config",
    "load_weights",
    "read_checkpoint_spec",
    "save_released",
]
