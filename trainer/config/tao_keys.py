"""TAO depth_net's full spec schema as data: every key with the value TAO writes into a spec dump.

Taken from TAO's published depth_net config dataclasses (`nvidia_tao_pytorch/config/depth_net/*.py`,
`config/common/common_config.py`, `config/common/mlops.py` and `config/common/quantization`): the experiment
config with its `dataset`, `model`, `train`, `evaluate`, `inference`, `export`, `gen_trt_engine`, `quantize` and
`wandb` sections, stereo and quantization keys included. Values are TAO's defaults as a spec dump shows them
(`???` where TAO leaves a required path unset; TAO's UI default sizes for evaluate). `tests/test_tao_specs.py`
walks `TAO_KEYS` and loads each one; docs/migrating-from-tao.md lists what this project does with each.
"""

from __future__ import annotations

from typing import Any

from trainer.config.tree import flatten

MISSING = "???"  # how OmegaConf/Hydra write a required value that was not given

_AUGMENTATION: dict[str, Any] = {
    "input_mean": [0.485, 0.456, 0.406], "input_std": [0.229, 0.224, 0.225], "crop_size": [518, 518],
    "min_scale": -0.2, "max_scale": 0.4, "do_flip": False, "yjitter_prob": 1.0, "gamma": [1, 1, 1, 1],
    "color_aug_prob": 0.2, "color_aug_brightness": 0.4, "color_aug_contrast": 0.4,
    "color_aug_saturation": [0.0, 1.4], "color_aug_hue_range": [-5 / 180.0, 5 / 180.0], "eraser_aug_prob": 0.5,
    "spatial_aug_prob": 1.0, "stretch_prob": 0.8, "max_stretch": 0.2, "h_flip_prob": 0.5, "v_flip_prob": 0.5,
    "hshift_prob": 0.5, "crop_min_valid_disp_ratio": 0.0,
}


def _split() -> dict[str, Any]:
    return {"data_sources": [{"dataset_name": "", "data_file": ""}], "batch_size": 1, "workers": 8,
            "pin_memory": True, "augmentation": dict(_AUGMENTATION)}


TAO_DEFAULTS: dict[str, Any] = {
    "model_name": "depth_net",
    "encryption_key": None,
    "results_dir": "/results",
    "wandb": {"enable": True, "project": "TAO Toolkit", "entity": "", "group": "", "tags": ["training", "tao-toolkit"],
              "reinit": False, "sync_tensorboard": False, "save_code": False,
              "name": "TAO Toolkit training experiment", "run_id": ""},
    "dataset": {
        "dataset_name": "MonoDataset", "normalize_depth": False, "max_depth": None, "min_depth": None,
        "max_disparity": 416, "baseline": 0.193001, "focal_x": 1998.842,
        "train_dataset": _split(), "val_dataset": _split(), "test_dataset": _split(), "infer_dataset": _split(),
        "quant_calibration_dataset": {"images_dir": ""},
    },
    "model": {
        "model_type": "MetricDepthAnything",
        "mono_backbone": {"pretrained_path": None, "use_bn": False, "use_clstoken": False},
        "stereo_backbone": {"depth_anything_v2_pretrained_path": "", "edgenext_pretrained_path": "",
                            "use_bn": False, "use_clstoken": False},
        "hidden_dims": [128, 128, 128], "corr_radius": 4, "cv_group": 8, "train_iters": 22, "valid_iters": 22,
        "volume_dim": 32, "low_memory": 0, "mixed_precision": False, "gwc_feature_normalize": True,
        "n_gru_layers": 3, "corr_levels": 2, "n_downsample": 2, "motion_encoder_widths": [256, 256, 64, 64],
        "motion_encoder_final": None, "gru_hidden": None, "gru_gating_conv_widths": None,
        "disp_head_input_dim": None, "disp_head_intermediate": None, "disp_head_pwconv1_widths": None,
        "mask_widths": [64, 32], "stem_2_widths": [32, 32], "spx_2_gru_widths": [32, 32, 32, 32], "spx_gru_out": 9,
        "classifier_mid": None, "cnet_conv04_widths": None, "cam_mid_channels": None,
        "cost_agg_conv_patch_padding": None, "concat_channel": 24, "encoder": "vitl", "max_disparity": 416,
    },
    "train": {
        "num_gpus": 1, "gpu_ids": [0], "num_nodes": 1, "seed": 1234,
        "cudnn": {"benchmark": False, "deterministic": True},
        "num_epochs": 10, "checkpoint_interval": 1, "checkpoint_interval_unit": "epoch", "validation_interval": 1,
        "resume_training_checkpoint_path": None, "results_dir": None, "checkpoint_interval_steps": None,
        "pretrained_model_path": None, "clip_grad_norm": 0.1, "dataloader_visualize": False,
        "vis_step_interval": 10, "is_dry_run": False,
        "optim": {"optimizer": "AdamW", "monitor_name": "val_loss", "lr": 1e-4, "momentum": 0.9,
                  "weight_decay": 1e-4, "lr_scheduler": "MultiStepLR", "lr_steps": [1000], "lr_step_size": 1000,
                  "lr_decay": 0.1, "min_lr": 1e-7, "warmup_steps": 20},
        "precision": "fp32", "distributed_strategy": "ddp", "activation_checkpoint": False,
        "inference_tile": False, "tile_wtype": "gaussian", "tile_min_overlap": [16, 16], "log_every_n_steps": 500,
    },
    "evaluate": {"num_gpus": 1, "gpu_ids": [0], "num_nodes": 1, "checkpoint": MISSING, "trt_engine": None,
                 "results_dir": None, "batch_size": -1, "input_width": 736, "input_height": 320,
                 "native_padded": False},
    "inference": {"num_gpus": 1, "gpu_ids": [0], "num_nodes": 1, "checkpoint": MISSING, "trt_engine": None,
                  "results_dir": None, "batch_size": -1, "conf_threshold": 0.5, "input_width": None,
                  "input_height": None, "save_raw_pfm": False, "save_raw_npy": False},
    "export": {"results_dir": None, "gpu_id": 0, "checkpoint": MISSING, "onnx_file": MISSING, "on_cpu": False,
               "input_channel": 3, "input_width": 960, "input_height": 544, "opset_version": 17, "batch_size": -1,
               "verbose": False, "format": "onnx", "valid_iters": 22, "dynamic_hw": False},
    "gen_trt_engine": {
        "results_dir": None, "gpu_id": 0, "onnx_file": MISSING, "trt_engine": MISSING, "timing_cache": None,
        "batch_size": -1, "verbose": False,
        "tensorrt": {"workspace_size": 1024, "min_batch_size": 1, "opt_batch_size": 1, "max_batch_size": 1,
                     "layers_precision": [], "data_type": "FP32"},
        "min_height": None, "opt_height": None, "max_height": None,
        "min_width": None, "opt_width": None, "max_width": None,
    },
    "quantize": {"backend": "torchao", "mode": "weight_only_ptq", "algorithm": "minmax", "layers": [],
                 "skip_names": [], "model_path": "", "results_dir": "", "backend_kwargs": {}, "device": "cuda"},
}

# Keys of list items that TAO's schema also declares (they are not in TAO_DEFAULTS because the lists are empty)
TAO_ITEM_KEYS: tuple[str, ...] = (
    "dataset.*.data_sources.*.dataset_name", "dataset.*.data_sources.*.data_file",
    "quantize.layers.*.module_name", "quantize.layers.*.weights.dtype",
    "quantize.layers.*.weights.observer_or_fake_quant", "quantize.layers.*.weights.quant_axis",
    "quantize.layers.*.weights.observer_or_fake_quant_kwargs", "quantize.layers.*.activations.dtype",
    "quantize.layers.*.activations.observer_or_fake_quant", "quantize.layers.*.activations.quant_axis",
    "quantize.layers.*.activations.observer_or_fake_quant_kwargs",
    # the older TAO tensorrt block named the engine's fixed size
    "gen_trt_engine.tensorrt.height", "gen_trt_engine.tensorrt.width",
)


# every leaf key of TAO's schema with its dump value: {"train.optim.lr": 1e-4, ...}
TAO_KEYS: dict[str, Any] = flatten(TAO_DEFAULTS, whole=("backend_kwargs",))
