"""Data: annotation files, depth I/O, datasets by `dataset_name`, transforms, synthetic scenes, convert.

The dataset item format is the contract in docs/internals.md.
"""

from trainer.data.annotations import Sample, read_annotation_file, write_annotation_file
from trainer.data.convert import ConvertConfig, ConvertResult, convert, load_convert_spec
from trainer.data.datasets import (
    DATASETS,
    ConcatDepthDataset,
    InferDataset,
    MetricMonoDataset,
    MonoDataset,
    NYUDV2,
    NYUDV2Relative,
    RelativeMonoDataset,
    build_dataloader,
    build_dataset,
    build_infer_dataloader,
    build_infer_dataset,
    collate_depth_batch,
    count_skipped,
    dataset_class,
    eigen_crop_mask,
    register_dataset,
)
from trainer.data.depth_io import read_depth, read_image, read_pfm, write_pfm
from trainer.data.synth import SynthResult, generate_dataset, render_frame
from trainer.data.transforms import EvalTransform, TrainTransform, eval_input_size

__all__ = [
    "DATASETS",
    "ConcatDepthDataset",
    "ConvertConfig",
    "ConvertResult",
    "EvalTransform",
    "InferDataset",
    "MetricMonoDataset",
    "MonoDataset",
    "NYUDV2",
    "NYUDV2Relative",
    "RelativeMonoDataset",
    "Sample",
    "SynthResult",
    "TrainTransform",
    "build_dataloader",
    "build_dataset",
    "build_infer_dataloader",
    "build_infer_dataset",
    "collate_depth_batch",
    "convert",
    "count_skipped",
    "dataset_class",
    "eigen_crop_mask",
    "eval_input_size",
    "generate_dataset",
    "load_convert_spec",
    "read_annotation_file",
    "read_depth",
    "read_image",
    "read_pfm",
    "register_dataset",
    "render_frame",
    "write_annotation_file",
    "write_pfm",
]
