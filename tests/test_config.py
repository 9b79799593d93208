"""The spec system: TAO files load unchanged, overrides are typed, every mistake is reported with key and fix."""

from __future__ import annotations

import os

import textwrap
from pathlib import Path

import pytest

from trainer.config import build_spec, known_key, load_spec, parse_overrides, with_overrides
from trainer.errors import SpecError

# The mono metric spec as TAO ships it (keys and values of NVIDIA's experiment_mono_metric.yaml).
TAO_METRIC_SPEC = """
results_dir: /results/metric_depth_anything/
dataset:
  dataset_name: MonoDataset
  min_depth: 0.001
  max_depth: 10
  train_dataset:
    data_sources:
      - dataset_name: NYUDV2
        data_file: /data/splits/nyu_depth_v2_splits/train_files_with_gt.txt
    batch_size: 8
    augmentation:
      crop_size: [518, 518]
  val_dataset:
    data_sources:
      - dataset_name: NYUDV2
        data_file: /data/splits/nyu_depth_v2_splits/test_files_with_gt.txt
    batch_size: 1
    augmentation:
      crop_size: [518, 518]
  test_dataset:
    data_sources:
      - dataset_name: NYUDV2
        data_file: /data/splits/nyu_depth_v2_splits/test_files_with_gt.txt
    batch_size: 1
  infer_dataset:
    data_sources:
      - dataset_name: NYUDV2
        data_file: /data/splits/nyu_depth_v2_splits/test_files_with_gt.txt
    batch_size: 10
train:
  log_every_n_steps: 100
  vis_step_interval: 100
  dataloader_visualize: True
  num_gpus: 1
  num_nodes: 1
  num_epochs: 8
  activation_checkpoint: False
  optim:
    lr: 0.000005
    lr_scheduler: LambdaLR
model:
  model_type: MetricDepthAnything
  encoder: vitl
  mono_backbone:
    pretrained_path: /models/nv_releative_depth_anything_v1.pth
    use_bn: False
    use_clstoken: False
evaluate:
  num_gpus: 1
  checkpoint: /results/metric_depth_anything/train/dn_model_latest.pth
inference:
  num_gpus: 1
  checkpoint: /results/metric_depth_anything/train/dn_model_latest.pth
  save_raw_pfm: False
export:
  gpu_id: 0
  checkpoint: /results/metric_depth_anything/train/dn_model_latest.pth
  onnx_file: /results/metric_depth_anything/export/dn_model_latest.onnx
  input_channel: 3
  input_width: 924
  input_height: 518
  opset_version: 16
  on_cpu: False
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems_of(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value)


def test_tao_spec_loads_unchanged_with_notices_for_unused_keys(tmp_path, capsys):
    notices: list[str] = []
    spec = load_spec(write(tmp_path, TAO_METRIC_SPEC), check_files=False, notice=notices.append)
    assert spec.model.encoder == "vitl"
    assert spec.train.optim.lr == pytest.approx(5e-6)
    assert spec.dataset.train_dataset.data_sources[0].dataset_name == "NYUDV2"
    assert spec.export.input_width == 924
    # TAO keys this project does not use are announced, one line each, not silently dropped
    joined = "\n".join(notices)
    assert "train.vis_step_interval" in joined and "train.dataloader_visualize" in joined
    assert "dataset.dataset_name" in joined
    assert all("\n" not in n for n in notices)


def test_overrides_are_typed_and_yaml_exponents_are_numbers():
    spec = build_spec({}, ["train.optim.lr=5e-6", "dataset.train_dataset.batch_size=4",
                           "dataset.train_dataset.augmentation.crop_size=[280,364]", "train.precision=BF16"],
                      check_files=False)
    assert spec.train.optim.lr == pytest.approx(5e-6) and isinstance(spec.train.optim.lr, float)
    assert spec.dataset.train_dataset.batch_size == 4
    assert list(spec.dataset.train_dataset.augmentation.crop_size) == [280, 364]
    assert spec.train.precision == "bf16"


def test_override_list_index_and_aliases():
    spec = build_spec({}, ["dataset.train_dataset.data_sources.0.data_file=a.txt",
                           "dataset.train_dataset.data_sources.0.dataset_name=nyudv2relative",
                           "model.model_type=RelativeDepthAnything", "automl_policy=off"], check_files=False)
    src = spec.dataset.train_dataset.data_sources[0]
    assert src.data_file == os.path.join(os.getcwd(), "a.txt")  # relative to where the command ran
    assert src.dataset_name == "NYUDV2Relative"  # case-insensitive, canonical
    assert spec.automl.policy == "off"


def test_override_without_equals_sign():
    with pytest.raises(SpecError) as exc:
        parse_overrides(["train.optim.lr"])
    assert "train.optim.lr" in problems_of(exc) and "no '='" in problems_of(exc)


def test_unknown_key_suggests_the_nearest_valid_key(tmp_path):
    p = write(tmp_path, """
        model:
          mono_backbone:
            encoder: vitl
        train:
          optim:
            lrr: 0.1
        """)
    with pytest.raises(SpecError) as exc:
        load_spec(p, check_files=False)
    msg = problems_of(exc)
    assert "model.mono_backbone.encoder" in msg and "did you mean 'model.encoder'" in msg
    assert "train.optim.lrr" in msg and "did you mean 'train.optim.lr'" in msg
    assert str(p) in msg


def test_all_mistakes_reported_at_once_with_found_and_expected(tmp_path):
    p = write(tmp_path, """
        model: {model_type: MetricDepthAnything, encoder: vitq}
        dataset:
          min_depth: 5
          max_depth: 1
          train_dataset:
            data_sources: [{data_file: missing.txt, dataset_name: NYUDV3}]
            augmentation: {crop_size: [0, 518]}
        train:
          num_epochs: ten
          optim: {lr: -1}
        """)
    with pytest.raises(SpecError) as exc:
        load_spec(p, ["automl.scheduler=ashaa"], action="train")
    msg = problems_of(exc)
    expected = [
        ("model.encoder", "'vitq'", "vits, vitb, vitl, vitg"),
        ("dataset.max_depth", "max_depth 1.0 <= min_depth 5.0", "expected max_depth > min_depth"),
        ("dataset.train_dataset.augmentation.crop_size", "[0, 518]", "two positive integers"),
        ("dataset.train_dataset.data_sources.0.dataset_name", "'NYUDV3'", "did you mean 'NYUDV2'"),
        ("dataset.train_dataset.data_sources.0.data_file", "missing.txt", "not found"),
        ("train.num_epochs", "'ten'", "an integer"),
        ("train.optim.lr", "-1", "> 0"),
        ("automl.scheduler", "'ashaa'", "asha, hyperband, median, none"),
    ]
    for key, found, wanted in expected:
        line = next((l for l in msg.splitlines() if l.strip().startswith(f"- {key} ")), None)
        assert line is not None, f"{key} not reported in:\n{msg}"
        assert found in line and wanted in line, line
    assert "command-line override" in next(l for l in msg.splitlines() if "automl.scheduler" in l)
    assert f"{len(expected)} problems" in msg


def test_metric_training_needs_depth_range_relative_ignores_it():
    with pytest.raises(SpecError) as exc:
        build_spec({}, ["model.model_type=MetricDepthAnything"], action="train", check_files=False)
    assert "dataset.min_depth" in str(exc.value) and "dataset.max_depth" in str(exc.value)
    notices: list[str] = []
    spec = build_spec({"dataset": {"min_depth": 0.1, "max_depth": 5}},
                      ["model.model_type=RelativeDepthAnything"], action="train", check_files=False,
                      notice=notices.append)
    assert spec.model.model_type == "RelativeDepthAnything"
    assert any("dataset.min_depth" in n and "ignored" in n for n in notices)


def test_metric_model_refuses_relative_dataset_with_the_fix():
    with pytest.raises(SpecError) as exc:
        build_spec({"dataset": {"min_depth": 0.001, "max_depth": 10, "train_dataset": {
            "data_sources": [{"data_file": "a.txt", "dataset_name": "NYUDV2Relative"}]}}},
            action="train", check_files=False)
    assert "use NYUDV2" in str(exc.value)


def test_stereo_names_are_recognised_and_refused():
    with pytest.raises(SpecError) as exc:
        build_spec({"model": {"model_type": "FoundationStereo"}}, check_files=False)
    assert "stereo" in str(exc.value)


def test_with_overrides_revalidates_and_keeps_the_rest():
    base = build_spec({"dataset": {"min_depth": 0.001, "max_depth": 10}}, ["train.num_epochs=3"],
                      check_files=False)
    trial = with_overrides(base, {"train.optim.lr": 3e-5, "train.optim.weight_decay": 0.02})
    assert trial.train.optim.lr == pytest.approx(3e-5) and trial.train.num_epochs == 3
    assert base.train.optim.lr == pytest.approx(1e-4)  # the base spec is untouched
    with pytest.raises(SpecError) as exc:
        with_overrides(base, {"train.optim.learning_rate": 1e-3})
    assert "did you mean 'train.optim.lr'" in str(exc.value)


def test_known_key():
    assert known_key("train.optim.lr")
    assert known_key("dataset.train_dataset.data_sources.0.data_file")
    assert not known_key("train.optim.learning_rate")


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "train:\n  optim: {lr: 1e-4\n")
    with pytest.raises(SpecError) as exc:
        load_spec(p)
    assert "line" in str(exc.value) and str(p) in str(exc.value)
