"""`check_before_training(spec)`: what every training run would find wrong in its inputs, found once, up front.

A search runs this in the driver before any trial starts, so that a problem no retry can fix (a missing or empty
annotation file, unreadable ground truth, a checkpoint that does not load into the model, an unwritable results
folder) stops the search in seconds with the file named, instead of failing every trial. Raises the same
`UserError` subclasses `fit` would (`DataError`, `CheckpointError`, `SpecError`); returns a short description of
what was checked.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from trainer.errors import CheckpointError


def check_before_training(spec: DictConfig) -> list[str]:
    """Read what `fit(spec)` reads before its first step (datasets, initial weights, results folder); raise
    the error `fit` would raise. Returns one line per check that passed."""
    from trainer.data.datasets import build_dataset
    from trainer.disk import results_dir_of
    from trainer.records import check_writable

    checked: list[str] = []
    out = results_dir_of(spec)
    check_writable(out)
    checked.append(f"results folder writable: {out}")
    for split in ("train_dataset", "val_dataset"):
        if split == "val_dataset" and not spec.dataset.val_dataset.data_sources:
            continue
        n = len(build_dataset(spec, split, train=split == "train_dataset"))
        checked.append(f"dataset.{split}: {n} samples")
    checked += _check_initial_weights(spec)
    return checked


def _check_initial_weights(spec: DictConfig) -> list[str]:
    """Load the initial weights the spec names into a model of the spec's shape (as `fit` does)."""
    from trainer.model import build_model, load_weights

    full = spec.train.pretrained_model_path
    backbone = spec.model.mono_backbone.pretrained_path
    resume = spec.train.resume_training_checkpoint_path
    if resume and not Path(resume).is_file():
        raise CheckpointError(f"train.resume_training_checkpoint_path: file not found: {resume}")
    if not (full or backbone):
        return []
    model = build_model(spec)
    if full:
        load_weights(model, full, strict=True)
        return [f"train.pretrained_model_path loads: {full}"]
    load_weights(model, backbone, strict=True, backbone_only=True)
    return [f"model.mono_backbone.pretrained_path loads: {backbone}"]


def input_paths(spec: DictConfig) -> dict[str, str]:
    """The files a training run of `spec` reads, keyed by what they are: each training/validation annotation file
    (by its spec key), the first image each one lists, and the initial weights. Every node of a cluster must see
    them at the same paths."""
    from trainer.data.annotations import read_annotation_file

    out: dict[str, str] = {}
    for split in ("train_dataset", "val_dataset"):
        for i, src in enumerate(spec.dataset[split].data_sources):
            out[f"dataset.{split}.data_sources.{i}.data_file"] = str(src.data_file)
            samples = read_annotation_file(src.data_file, check_files=False)
            if samples:
                out[f"first image of {src.data_file}"] = str(samples[0].image)
    for key, value in (("train.pretrained_model_path", spec.train.pretrained_model_path),
                       ("model.mono_backbone.pretrained_path", spec.model.mono_backbone.pretrained_path)):
        if value:
            out[key] = str(value)
    return out
