"""The depth_net mono spec: typed dataclasses with TAO depth_net's section names, key names and defaults.

A TAO depth_net spec file loads unchanged. Keys TAO has but this project does not use (stereo settings,
wandb, tiling, ...) are part of the schema so that such files load; `UNUSED_KEYS` lists them and the loader
prints a one-line notice for each one a spec sets. Keys this project adds are marked "(ours)".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from trainer.constants import METRIC

# --------------------------------------------------------------------------------------------------------------
# Value sets (validation lists them in messages)
# --------------------------------------------------------------------------------------------------------------

TAO_STEREO_MODEL_TYPES = ("FoundationStereo", "FastFoundationStereo")
ENCODERS = ("vits", "vitb", "vitl", "vitg", "custom")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto (ours): bf16 mixed precision on a GPU with bf16, else fp32
OPTIMIZERS = ("AdamW", "SGD")
LR_SCHEDULERS = (
    "MultiStepLR", "MultiStep", "CustomMultiStepLRScheduler", "StepLR", "LambdaLR", "PolynomialLR",
    "CosineAnnealingLR", "OneCycleLR", "Constant",
)
# TAO spells the monitored metric val_loss / train_loss; any logged validation metric may be monitored too
MONITOR_NAMES = ("val_loss", "train_loss", "val/loss", "val/d1", "val/d2", "val/d3", "val/abs_rel", "val/sq_rel",
                 "val/rmse", "val/rmse_log", "val/log10", "val/silog")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")
# TAO's relative mono dataset classes named after their sources (trainer/data/datasets.py says what each reads)
TAO_RELATIVE_DATASET_NAMES = ("NvCLIP", "Middlebury", "ThreeDVLM", "FSD", "IssacStereo", "Crestereo")
MONO_DATASET_NAMES = ("RelativeMonoDataset", "MetricMonoDataset", "NYUDV2", "NYUDV2Relative") \
    + TAO_RELATIVE_DATASET_NAMES
AUGMENT_PIPELINES = ("tao", "full")  # (ours) dataset.<split>.augmentation.pipeline
BAD_SAMPLE_POLICIES = ("error", "skip")
GT_TYPES = ("depth", "disparity")
TRT_DATA_TYPES = ("BF16", "FP32", "FP16")
AUTOML_POLICIES = ("auto", "off")
SCHEDULERS = ("asha", "hyperband", "median", "none")
SAMPLERS = ("tpe", "random", "gp", "grid")
AUTOML_EXPORT = ("auto", "engine", "onnx", "none")


# --------------------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MonoBackboneConfig:
    pretrained_path: Optional[str] = None  # backbone-only initialisation (only `pretrained.*` keys are taken)
    use_bn: bool = False
    use_clstoken: bool = False


@dataclass
class StereoBackboneConfig:  # TAO stereo; accepted, unused
    depth_anything_v2_pretrained_path: Optional[str] = None
    edgenext_pretrained_path: Optional[str] = None
    use_bn: bool = False
    use_clstoken: bool = False


@dataclass
class CustomEncoderConfig:
    """(ours) A small ViT for tests and the CPU demo, used when `model.encoder: custom`."""

    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 2
    features: int = 32  # DPT `features`
    out_channels: List[int] = field(default_factory=lambda: [16, 32, 64, 64])
    intermediate_layers: Optional[List[int]] = None  # default: evenly spaced, last layer included


@dataclass
class ModelConfig:
    model_type: str = METRIC
    encoder: str = "vitl"
    mono_backbone: MonoBackboneConfig = field(default_factory=MonoBackboneConfig)
    custom: CustomEncoderConfig = field(default_factory=CustomEncoderConfig)  # (ours)
    # TAO stereo-only keys: accepted, unused
    stereo_backbone: StereoBackboneConfig = field(default_factory=StereoBackboneConfig)
    hidden_dims: List[int] = field(default_factory=lambda: [128, 128, 128])
    corr_radius: int = 4
    cv_group: int = 8
    train_iters: int = 22
    valid_iters: int = 22
    volume_dim: int = 32
    low_memory: int = 0
    mixed_precision: bool = False
    gwc_feature_normalize: bool = True
    n_gru_layers: int = 3
    corr_levels: int = 2
    n_downsample: int = 2
    max_disparity: int = 416
    concat_channel: int = 24
    motion_encoder_widths: List[int] = field(default_factory=lambda: [256, 256, 64, 64])
    motion_encoder_final: Optional[int] = None
    gru_hidden: Optional[int] = None
    gru_gating_conv_widths: Optional[List[int]] = None
    disp_head_input_dim: Optional[int] = None
    disp_head_intermediate: Optional[int] = None
    disp_head_pwconv1_widths: Optional[List[int]] = None
    mask_widths: List[int] = field(default_factory=lambda: [64, 32])
    stem_2_widths: List[int] = field(default_factory=lambda: [32, 32])
    spx_2_gru_widths: List[int] = field(default_factory=lambda: [32, 32, 32, 32])
    spx_gru_out: int = 9
    classifier_mid: Optional[int] = None
    cnet_conv04_widths: Optional[List[int]] = None
    cam_mid_channels: Optional[int] = None
    cost_agg_conv_patch_padding: Optional[List[int]] = None


# --------------------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DataSourceConfig:
    data_file: str = ""
    dataset_name: str = ""
    depth_scale: Optional[float] = None  # (ours) generic datasets: metres = stored value * depth_scale
    gt_type: str = "depth"  # (ours) what the ground-truth files hold: depth or disparity (relative only)


@dataclass
class AugmentationConfig:
    # (ours) tao: what TAO's mono pipeline applies (keep-aspect resize covering crop_size, random crop,
    # normalisation); full: also h_flip_prob, color_aug_* and min_scale/max_scale below
    pipeline: str = "tao"
    input_mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    input_std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    crop_size: List[int] = field(default_factory=lambda: [518, 518])  # [height, width], multiples of 14
    # scale jitter: the short side is resized to crop * 2**U(min_scale, max_scale) before cropping
    min_scale: float = 0.0
    max_scale: float = 0.0
    h_flip_prob: float = 0.5
    color_aug_prob: float = 0.2
    color_aug_brightness: float = 0.4
    color_aug_contrast: float = 0.4
    color_aug_saturation: List[float] = field(default_factory=lambda: [0.0, 1.4])
    color_aug_hue_range: List[float] = field(default_factory=lambda: [-5 / 180.0, 5 / 180.0])
    # TAO stereo-only keys: accepted, unused
    do_flip: Any = False  # TAO declares a bool but its stereo pipeline reads 'h' | 'hf' | 'v'

    yjitter_prob: float = 1.0
    gamma: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    eraser_aug_prob: float = 0.5
    spatial_aug_prob: float = 1.0
    stretch_prob: float = 0.8
    max_stretch: float = 0.2
    v_flip_prob: float = 0.5
    hshift_prob: float = 0.5
    crop_min_valid_disp_ratio: float = 0.0


@dataclass
class DatasetSplitConfig:
    data_sources: List[DataSourceConfig] = field(default_factory=list)
    data_root: Optional[str] = None  # TAO deploy; a folder of images for inference (ours)
    batch_size: int = 1
    workers: int = 8
    pin_memory: bool = True
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class QuantCalibrationDatasetConfig:  # TAO quantize; accepted, unused
    images_dir: Optional[str] = None


@dataclass
class DatasetConfig:
    dataset_name: str = "MonoDataset"
    normalize_depth: bool = False
    min_depth: Optional[float] = None
    max_depth: Optional[float] = None
    on_bad_sample: str = "error"  # (ours) error | skip (skipped samples are counted and reported)
    min_valid_pixels: int = 10  # (ours) a sample with fewer valid depth pixels is skipped and counted
    frame_cache_dir: Optional[str] = None  # (ours) decoded frames cached here, shared by the runs of a node
    frame_cache_max_gib: float = 32.0  # (ours) a split's source larger than this is read from its files
    train_dataset: DatasetSplitConfig = field(default_factory=DatasetSplitConfig)
    val_dataset: DatasetSplitConfig = field(default_factory=DatasetSplitConfig)
    test_dataset: DatasetSplitConfig = field(default_factory=DatasetSplitConfig)
    infer_dataset: DatasetSplitConfig = field(default_factory=DatasetSplitConfig)
    # TAO stereo-only keys: accepted, unused
    max_disparity: int = 416
    baseline: float = 0.193001
    focal_x: float = 1998.842
    quant_calibration_dataset: QuantCalibrationDatasetConfig = field(
        default_factory=QuantCalibrationDatasetConfig)


# --------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    optimizer: str = "AdamW"
    monitor_name: str = "val_loss"  # the metric that picks checkpoints/best.ckpt
    lr: float = 1e-4  # backbone learning rate; the head trains at lr * head_lr_multiplier
    head_lr_multiplier: float = 10.0  # (ours) the original recipe trains the DPT head at 10x
    momentum: float = 0.9  # SGD momentum; AdamW uses betas
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # (ours)
    weight_decay: float = 1e-4
    lr_scheduler: str = "MultiStepLR"
    lr_steps: List[int] = field(default_factory=lambda: [1000])  # optimizer steps (MultiStepLR)
    lr_step_size: int = 1000  # optimizer steps (StepLR)
    lr_decay: float = 0.1
    min_lr: float = 1e-7
    warmup_steps: int = 20
    poly_power: float = 0.9  # (ours) LambdaLR / PolynomialLR: lr * (1 - step/total) ** poly_power


@dataclass
class CuDNNConfig:
    # fast path (docs/benchmarks.md): training crops have one size, so cuDNN picks its fastest algorithms once
    # (TAO's defaults were benchmark false, deterministic true)
    benchmark: bool = True
    deterministic: bool = False


@dataclass
class TrainConfig:
    num_gpus: int = 1
    gpu_ids: List[int] = field(default_factory=lambda: [0])
    num_nodes: int = 1
    seed: int = 1234
    cudnn: CuDNNConfig = field(default_factory=CuDNNConfig)
    num_epochs: int = 10
    checkpoint_interval: int = 1
    checkpoint_interval_unit: str = "epoch"  # epoch | step (TAO): the unit of checkpoint_interval
    checkpoint_interval_steps: Optional[int] = None
    validation_interval: int = 1
    resume_training_checkpoint_path: Optional[str] = None
    results_dir: Optional[str] = None
    pretrained_model_path: Optional[str] = None  # full model (backbone + head) initialisation
    clip_grad_norm: float = 0.1  # L2 norm; 0 disables clipping
    precision: str = "auto"  # auto (ours): bf16 mixed precision on a GPU with bf16, fp32 elsewhere (docs/benchmarks.md)
    distributed_strategy: str = "ddp"
    activation_checkpoint: bool = False
    log_every_n_steps: int = 50
    verbose: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    # (ours)
    accumulate_grad_batches: int = 1
    max_steps_per_epoch: Optional[int] = None  # cap on optimizer steps per epoch (quick runs)
    num_threads: Optional[int] = None  # (ours) torch CPU threads; null: torch's default (1 suits small CPU boxes)
    initial_validation: bool = False  # validate once before training (recorded as epoch -1: the starting point)
    # fast path (docs/benchmarks.md); None = on when training on a GPU, off on the CPU
    compile: Optional[bool] = None  # torch.compile the backbone blocks and the DPT head for training (regional)
    channels_last: Optional[bool] = None  # channels_last memory format for the DPT head convolutions
    # TAO keys accepted, unused
    dataloader_visualize: bool = False
    vis_step_interval: int = 10
    is_dry_run: bool = False
    inference_tile: bool = False
    tile_wtype: str = "gaussian"
    tile_min_overlap: List[int] = field(default_factory=lambda: [16, 16])


# --------------------------------------------------------------------------------------------------------------
# evaluate / inference / export / gen_trt_engine
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluateConfig:
    num_gpus: int = 1
    gpu_ids: List[int] = field(default_factory=lambda: [0])
    num_nodes: int = 1
    checkpoint: Optional[str] = None
    trt_engine: Optional[str] = None
    onnx_file: Optional[str] = None  # (ours) evaluate through onnxruntime
    results_dir: Optional[str] = None
    input_width: Optional[int] = None  # network input size; default: the data's size rounded to 14
    input_height: Optional[int] = None
    batch_size: Optional[int] = None  # default (TAO: -1): dataset.test_dataset.batch_size
    native_padded: bool = False  # TAO (stereo engines); accepted, unused


@dataclass
class InferenceConfig:
    num_gpus: int = 1
    gpu_ids: List[int] = field(default_factory=lambda: [0])
    num_nodes: int = 1
    checkpoint: Optional[str] = None
    trt_engine: Optional[str] = None
    onnx_file: Optional[str] = None  # (ours)
    results_dir: Optional[str] = None
    input_width: Optional[int] = None
    input_height: Optional[int] = None
    batch_size: Optional[int] = None
    save_raw_pfm: bool = False
    save_raw_npy: bool = False  # TAO (stereo disparity .npy); accepted, unused
    conf_threshold: float = 0.5  # TAO; accepted, unused


@dataclass
class ExportConfig:
    results_dir: Optional[str] = None
    gpu_id: int = 0
    checkpoint: Optional[str] = None
    onnx_file: Optional[str] = None
    on_cpu: bool = False
    input_channel: int = 3
    input_width: int = 518
    input_height: int = 518
    opset_version: int = 17
    batch_size: int = -1  # -1: dynamic batch
    verbose: bool = False
    dynamic_hw: bool = True  # (ours) dynamic height/width axes (keep-aspect inputs); false: fixed input_height/width
    overwrite: bool = False  # (ours) replace an existing onnx_file
    format: str = "onnx"  # TAO; only onnx
    valid_iters: int = 22  # TAO stereo GRU iterations; accepted, unused


@dataclass
class TensorRTConfig:
    data_type: str = "BF16"
    workspace_size: int = 4096  # MiB
    min_batch_size: int = 1
    opt_batch_size: int = 1
    max_batch_size: int = 1
    layers_precision: List[str] = field(default_factory=list)
    height: int = -1  # -1: take the ONNX file's height (or export.input_height for dynamic files)
    width: int = -1
    # (ours) shape range when the ONNX file has dynamic height/width; -1: height/width above
    min_height: int = -1
    max_height: int = -1
    min_width: int = -1
    max_width: int = -1


@dataclass
class GenTrtEngineConfig:
    results_dir: Optional[str] = None
    gpu_id: int = 0
    onnx_file: Optional[str] = None
    trt_engine: Optional[str] = None
    timing_cache: Optional[str] = None
    batch_size: int = -1
    verbose: bool = False
    overwrite: bool = False  # (ours)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    # TAO's dynamic-shape range; mapped at load time onto tensorrt.min_*/height|width/max_* (trainer.config.tao)
    min_height: Optional[int] = None
    opt_height: Optional[int] = None
    max_height: Optional[int] = None
    min_width: Optional[int] = None
    opt_width: Optional[int] = None
    max_width: Optional[int] = None


# --------------------------------------------------------------------------------------------------------------
# automl (ours)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AutoMLConfig:
    policy: str = "auto"  # auto: `automl train` searches; off: plain training
    search_space: Optional[str] = None  # YAML file; default: search_spaces/<skill>.yaml
    objective: Optional[str] = None  # overrides the search space's objective, e.g. "val/d1"
    mode: Optional[str] = None  # min | max; inferred from the objective when not given
    num_trials: int = 8
    max_concurrent: Optional[int] = None  # default: as many as the cluster's resources hold
    gpus_per_trial: Optional[float] = None  # default: chosen by a probe when GPUs exist (--gpus-per-trial auto), else 0
    cpus_per_trial: float = 1.0
    scheduler: str = "asha"
    sampler: str = "tpe"  # tpe | random | gp (Bayesian, Gaussian process) | grid (every combination of choices)
    budget_epochs: Optional[int] = None  # stop the search once trials have trained this many epochs in total
    grace_period: int = 1  # epochs before ASHA/median may stop a trial
    reduction_factor: int = 3
    max_failures: int = 1  # retries of a trial whose worker crashed (from its last checkpoint)
    seed: int = 0
    address: Optional[str] = None  # Ray cluster address: auto | HOST:PORT; default: a local Ray
    storage_path: Optional[str] = None  # default: <results_dir>/ray
    tracking_uri: Optional[str] = None  # MLflow; default: sqlite:///<results_dir>/mlflow.db
    experiment_name: str = "depth_net_mono"
    export: str = "auto"  # after the search: engine if TensorRT imports, else onnx; or onnx | engine | none


# --------------------------------------------------------------------------------------------------------------
# TAO extras accepted, unused
# --------------------------------------------------------------------------------------------------------------


@dataclass
class WandBConfig:
    enable: bool = False
    project: str = "TAO Toolkit"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    reinit: bool = False
    sync_tensorboard: bool = False
    save_code: bool = False
    name: str = ""
    run_id: str = ""


@dataclass
class QuantizerSettings:  # TAO quantize: weights/activations of one layer pattern
    dtype: str = ""
    observer_or_fake_quant: str = ""
    quant_axis: Optional[int] = None
    observer_or_fake_quant_kwargs: Optional[Any] = None


@dataclass
class QuantizeLayerConfig:
    module_name: str = ""
    weights: Optional[QuantizerSettings] = None
    activations: Optional[QuantizerSettings] = None


@dataclass
class QuantizeConfig:  # TAO quantize (not provided here); accepted, unused
    backend: Optional[str] = "torchao"
    mode: Optional[str] = "weight_only_ptq"
    algorithm: Optional[str] = "minmax"
    layers: List[QuantizeLayerConfig] = field(default_factory=list)
    skip_names: List[str] = field(default_factory=list)
    model_path: Optional[str] = None
    results_dir: Optional[str] = None
    backend_kwargs: Optional[Any] = None
    device: str = "cuda"


@dataclass
class ExperimentConfig:
    results_dir: str = "results"
    model_name: Optional[str] = None
    encryption_key: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    gen_trt_engine: GenTrtEngineConfig = field(default_factory=GenTrtEngineConfig)
    automl: AutoMLConfig = field(default_factory=AutoMLConfig)
    wandb: WandBConfig = field(default_factory=WandBConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)


# Dotted paths (with `*` for list items / any split) that are accepted for TAO compatibility but not used.
UNUSED_KEYS: tuple[str, ...] = (
    "model_name",
    "encryption_key",
    "wandb",
    "model.stereo_backbone",
    "model.hidden_dims", "model.corr_radius", "model.cv_group", "model.train_iters", "model.valid_iters",
    "model.volume_dim", "model.low_memory", "model.mixed_precision", "model.gwc_feature_normalize",
    "model.n_gru_layers", "model.corr_levels", "model.n_downsample", "model.max_disparity",
    "model.concat_channel", "model.motion_encoder_widths", "model.motion_encoder_final", "model.gru_hidden",
    "model.gru_gating_conv_widths", "model.disp_head_input_dim", "model.disp_head_intermediate",
    "model.disp_head_pwconv1_widths", "model.mask_widths", "model.stem_2_widths", "model.spx_2_gru_widths",
    "model.spx_gru_out", "model.classifier_mid", "model.cnet_conv04_widths", "model.cam_mid_channels",
    "model.cost_agg_conv_patch_padding",
    "quantize", "dataset.quant_calibration_dataset",
    "dataset.dataset_name", "dataset.normalize_depth",
    "dataset.max_disparity", "dataset.baseline", "dataset.focal_x",
    "dataset.*.augmentation.do_flip", "dataset.*.augmentation.yjitter_prob", "dataset.*.augmentation.gamma",
    "dataset.*.augmentation.eraser_aug_prob", "dataset.*.augmentation.spatial_aug_prob",
    "dataset.*.augmentation.stretch_prob", "dataset.*.augmentation.max_stretch",
    "dataset.*.augmentation.v_flip_prob", "dataset.*.augmentation.hshift_prob",
    "dataset.*.augmentation.crop_min_valid_disp_ratio",
    "train.dataloader_visualize", "train.vis_step_interval", "train.is_dry_run",
    "train.inference_tile", "train.tile_wtype", "train.tile_min_overlap",
    "inference.conf_threshold", "inference.save_raw_npy", "evaluate.native_padded", "export.valid_iters",
    "export.input_channel", "export.format", "export.verbose", "evaluate.num_gpus", "inference.num_gpus",
    "train.checkpoint_interval_steps",
    "evaluate.num_nodes", "inference.num_nodes",
)

# TAO spellings that map onto this project's keys: {old dotted path: new dotted path}.
KEY_ALIASES: dict[str, str] = {
    "automl_policy": "automl.policy",
    "automl_enabled": "automl.policy",  # true -> auto, false -> off
}


def default_spec() -> Any:
    """A fresh structured default spec (an OmegaConf DictConfig typed by ExperimentConfig)."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(ExperimentConfig)
