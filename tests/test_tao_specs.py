"""TAO spec files run here unchanged: TAO's full schema, full spec dumps per action, the TAO Deploy spec (no
`model`), TAO's value conventions (-1 batch sizes, sizes off the 14 grid, empty paths, engine shape keys), raw
DINOv2 backbone files, TAO's relative dataset names, TAO's augmentation and TAO's convert semantics."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from automl.cli import main as cli_main
from trainer.config import build_spec, known_key, load_spec
from trainer.config.schema import TAO_RELATIVE_DATASET_NAMES, UNUSED_KEYS
from trainer.config.tao import round14
from trainer.config.tao_keys import TAO_DEFAULTS, TAO_ITEM_KEYS, TAO_KEYS
from trainer.data.annotations import read_annotation_file
from trainer.data.convert import convert
from trainer.data.datasets import build_dataset
from trainer.errors import SpecError
from trainer.model import build_model, load_weights

DUMPS = Path(__file__).parent / "data" / "tao"
ACTION_DUMPS = ["train", "evaluate", "inference", "export", "gen_trt_engine"]


def tao_dump() -> dict:
    return copy.deepcopy(TAO_DEFAULTS)


def quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------------
# TAO's schema
# ---------------------------------------------------------------------------------------------------------------


def test_every_key_of_taos_schema_is_a_key_here() -> None:
    keys = [k.replace("dataset.*", "dataset.train_dataset").replace("*", "0")
            for k in list(TAO_KEYS) + list(TAO_ITEM_KEYS)]
    assert len(keys) > 200
    assert [k for k in keys if not known_key(k)] == []


def test_the_full_schema_loads_and_each_unused_key_gets_one_line() -> None:
    notices: list[str] = []
    spec = build_spec(tao_dump(), check_files=False, notice=notices.append)
    unused = [n for n in notices if n.startswith("accepted, not used: ")]
    assert len(unused) == len(set(unused)), "one line per key"
    for key in ("wandb", "quantize", "dataset.quant_calibration_dataset", "train.checkpoint_interval_steps",
                "export.valid_iters", "inference.save_raw_npy", "evaluate.native_padded", "model.stereo_backbone",
                "model.cost_agg_conv_patch_padding"):
        assert f"accepted, not used: {key}" in notices, key
    # every unused TAO key set by the dump is announced (sections once)
    for key in TAO_KEYS:
        norm = key.replace("train_dataset", "*").replace("val_dataset", "*")
        for pattern in UNUSED_KEYS:
            if norm == pattern or norm.startswith(pattern + "."):
                assert any(pattern.split(".")[-1] in n for n in unused), (key, pattern)
    assert spec.model.model_type == "MetricDepthAnything"


@pytest.mark.parametrize("action", ACTION_DUMPS)
def test_full_spec_dumps_load_for_their_action(action: str) -> None:
    notices: list[str] = []
    spec = load_spec(DUMPS / f"{action}_dump.yaml", action=action, check_files=False, notice=notices.append)
    assert (spec.export.input_height, spec.export.input_width) == (546, 966)  # TAO's 544x960 on the 14 grid
    assert (spec.evaluate.input_height, spec.evaluate.input_width) == (322, 742)  # TAO's 320x736
    assert spec.evaluate.batch_size is None and spec.inference.batch_size is None  # TAO's -1
    assert any("export.input_height=544" in n and "546" in n for n in notices)
    assert all(not s.data_sources or s.data_sources[0].data_file
               for s in (spec.dataset.train_dataset, spec.dataset.test_dataset))  # placeholders dropped


def test_round14_is_taos_constrain_to_multiple_of() -> None:
    assert [round14(v) for v in (544, 960, 320, 736, 518, 5, 21, 35)] == [546, 966, 322, 742, 518, 14, 28, 28]


# ---------------------------------------------------------------------------------------------------------------
# Value conventions
# ---------------------------------------------------------------------------------------------------------------


def test_batch_size_minus_one_is_the_splits_batch_and_zero_is_refused() -> None:
    spec = build_spec({"evaluate": {"batch_size": -1}, "inference": {"batch_size": -1}}, check_files=False,
                      notice=quiet)
    assert spec.evaluate.batch_size is None and spec.inference.batch_size is None
    with pytest.raises(SpecError) as exc:
        build_spec({"evaluate": {"batch_size": 0}}, check_files=False, notice=quiet)
    assert "evaluate.batch_size" in str(exc.value) and "-1" in str(exc.value)


def test_empty_strings_and_missing_markers_mean_no_path() -> None:
    tree = tao_dump()
    tree["model"]["mono_backbone"]["pretrained_path"] = ""
    tree["train"]["pretrained_model_path"] = ""
    spec = build_spec(tree, check_files=False, notice=quiet)
    assert spec.model.mono_backbone.pretrained_path is None and spec.train.pretrained_model_path is None
    assert spec.export.checkpoint is None and spec.gen_trt_engine.trt_engine is None  # TAO's ???
    assert spec.results_dir == "/results"


def test_engine_shape_keys_map_onto_tensorrt_and_contradictions_are_named() -> None:
    notices: list[str] = []
    spec = load_spec(DUMPS / "gen_trt_engine_dump.yaml", action="gen_trt_engine", check_files=False,
                     notice=notices.append)
    t = spec.gen_trt_engine.tensorrt
    assert (t.min_height, t.height, t.max_height) == (518, 546, 700)
    assert (t.min_width, t.width, t.max_width) == (518, 966, 994)
    assert any("gen_trt_engine.max_width=1000" in n and "994" in n for n in notices)
    with pytest.raises(SpecError) as exc:
        build_spec({"gen_trt_engine": {"min_height": 518, "tensorrt": {"min_height": 266}}}, check_files=False,
                   notice=quiet)
    assert "gen_trt_engine.min_height" in str(exc.value) and "tensorrt.min_height is 266" in str(exc.value)


def test_augmentation_follows_taos_mono_pipeline_unless_the_spec_opts_in() -> None:
    notices: list[str] = []
    spec = load_spec(DUMPS / "train_dump.yaml", action="train", check_files=False, notice=notices.append)
    a = spec.dataset.train_dataset.augmentation
    assert (a.h_flip_prob, a.color_aug_prob, a.min_scale, a.max_scale) == (0.0, 0.0, 0.0, 0.0)
    assert "accepted, not used: dataset.{train,val,test,infer}_dataset.augmentation.h_flip_prob" in notices
    spec = load_spec(DUMPS / "train_dump.yaml", ["dataset.train_dataset.augmentation.pipeline=full"],
                     action="train", check_files=False, notice=quiet)
    a = spec.dataset.train_dataset.augmentation
    assert (a.h_flip_prob, a.color_aug_prob, a.min_scale, a.max_scale) == (0.5, 0.2, -0.2, 0.4)


# ---------------------------------------------------------------------------------------------------------------
# A spec without `model` (TAO Deploy)
# ---------------------------------------------------------------------------------------------------------------


def _deploy(tmp_path: Path, sidecar_model: dict | None) -> dict:
    onnx = tmp_path / "dn_model.onnx"
    onnx.write_bytes(b"onnx")
    if sidecar_model is not None:
        (tmp_path / "dn_model.onnx.json").write_text(json.dumps({"model": sidecar_model}))
    tree = yaml.safe_load((DUMPS / "deploy_spec.yaml").read_text())
    tree["evaluate"] = {"onnx_file": str(onnx), "batch_size": -1}
    tree["dataset"]["test_dataset"]["data_sources"][0]["data_file"] = str(tmp_path / "test.txt")
    (tmp_path / "test.txt").write_text("")
    return tree


def test_deploy_spec_takes_the_model_from_the_sidecar(tmp_path: Path) -> None:
    notices: list[str] = []
    spec = build_spec(_deploy(tmp_path, {"model_type": "RelativeDepthAnything", "encoder": "vits"}),
                      action="evaluate", notice=notices.append)
    assert (spec.model.model_type, spec.model.encoder) == ("RelativeDepthAnything", "vits")
    assert any("no model section" in n and "dn_model.onnx" in n for n in notices)


def test_deploy_spec_without_a_model_source_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        build_spec(_deploy(tmp_path, None), action="evaluate", notice=quiet)
    msg = str(exc.value)
    assert "no model section" in msg and "model_type" in msg and "records no model type" in msg
    # gen_trt_engine reads the model from the ONNX sidecar at run time: no refusal, no metric/relative clash
    build_spec(yaml.safe_load((DUMPS / "deploy_spec.yaml").read_text()), action="gen_trt_engine",
               check_files=False, notice=quiet)


# ---------------------------------------------------------------------------------------------------------------
# Weights and datasets
# ---------------------------------------------------------------------------------------------------------------


def _custom_spec(model_type: str = "RelativeDepthAnything"):
    return build_spec({"model": {"encoder": "custom", "model_type": model_type}}, check_files=False, notice=quiet)


def test_raw_dinov2_state_dict_initialises_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model(_custom_spec())
    raw = {k[len("pretrained."):]: v for k, v in source.state_dict().items() if k.startswith("pretrained.")}
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(raw, path)
    torch.manual_seed(1)
    target = build_model(_custom_spec())
    report = load_weights(target, path, strict=True, backbone_only=True)
    assert report.layout == "dinov2" and report.loaded == len(raw)
    for k, v in raw.items():
        assert torch.equal(target.state_dict()[f"pretrained.{k}"], v), k


def _disparity_sample(tmp_path: Path) -> Path:
    img = tmp_path / "left.png"
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(img)
    disp = np.full((28, 28), 5.0, np.float32)
    disp[:, :7] = 2000.0  # above TAO's 1000 limit: invalid
    disp[:, 7:14] = np.inf
    np.save(tmp_path / "disp.npy", disp)
    ann = tmp_path / "list.txt"
    ann.write_text(f"{img} {tmp_path / 'disp.npy'}\n")
    return ann


@pytest.mark.parametrize("name", TAO_RELATIVE_DATASET_NAMES)
def test_taos_relative_dataset_names_read_disparity_as_tao(name: str, tmp_path: Path) -> None:
    ann = _disparity_sample(tmp_path)
    spec = build_spec({"model": {"model_type": "RelativeDepthAnything", "encoder": "custom"},
                       "dataset": {"min_valid_pixels": 1, "test_dataset": {"data_sources": [
                           {"dataset_name": name.lower(), "data_file": str(ann)}]}}},
                      action="evaluate", check_files=False, notice=quiet)
    assert spec.dataset.test_dataset.data_sources[0].dataset_name == name
    part = build_dataset(spec, "test_dataset", train=False).datasets[0]
    target, valid, _ = part.read_target(part.samples[0], (28, 28))
    assert valid[:, :14].sum() == 0 and valid[:, 14:].all()
    assert np.allclose(target[:, 14:], 5.0)  # disparity as stored
    with pytest.raises(SpecError) as exc:
        build_spec({"dataset": {"min_depth": 0.1, "max_depth": 10, "train_dataset": {"data_sources": [
            {"dataset_name": name, "data_file": "x.txt"}]}}}, action="train", check_files=False, notice=quiet)
    assert "model.model_type=RelativeDepthAnything" in str(exc.value)


# ---------------------------------------------------------------------------------------------------------------
# convert and validate
# ---------------------------------------------------------------------------------------------------------------


def test_kitti_style_convert_with_taos_semantics(tmp_path: Path) -> None:
    root = tmp_path / "kitti"
    for i in range(6):
        for folder in ("image_2", "disp_noc_0"):
            p = root / "training" / folder / f"{i:06d}_10.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
        (root / "training" / "image_2" / f"{i:06d}_11.png").write_bytes(b"x")  # the other frame: not listed
    res = convert({"data_root": str(root), "results_dir": str(tmp_path / "out"), "split_ratio": 0.8,
                   "image_dir_pattern": ["training", "image_2"], "depth_dir_pattern": ["training", "disp_noc_0"],
                   "image_extension": "_10.png", "depth_extension": "_10.png"}, log=quiet)
    assert res.counts == {"train": 4, "val": 2}  # TAO: int(6 * 0.8) = 4
    for split in ("train", "val"):
        for s in read_annotation_file(res.files[split], require_depth=True):
            assert s.image.parent.name == "image_2" and s.depth.parent.name == "disp_noc_0"
            assert s.image.name == s.depth.name and s.image.name.endswith("_10.png")


def test_validate_reports_every_problem_at_once_and_exits_zero_when_it_would_run(tmp_path: Path, capsys) -> None:
    tree = yaml.safe_load((DUMPS / "evaluate_dump.yaml").read_text())
    tree["evaluate"]["checkpoint"] = str(tmp_path / "missing.ckpt")
    tree["evaluate"]["batch_size"] = 0
    tree["dataset"]["test_dataset"]["data_sources"][0]["data_file"] = str(tmp_path / "test.txt")
    (tmp_path / "test.txt").write_text(f"{tmp_path / 'a.png'} {tmp_path / 'a_depth.png'}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tree))
    assert cli_main(["validate", "-e", str(spec), "--action", "evaluate"]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s) for `evaluate`" in err
    assert "evaluate.batch_size" in err and "missing.ckpt" in err and "a.png" in err
    # the same spec for export: nothing it reads is missing except what it names
    tree["export"]["checkpoint"] = str(tmp_path / "test.txt")
    spec.write_text(yaml.safe_dump(tree))
    assert cli_main(["validate", "-e", str(spec), "--action", "export", "evaluate.batch_size=-1"]) == 0
    assert "valid for `export`" in capsys.readouterr().out


def test_the_migration_guide_lists_every_key_of_taos_schema() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "migrating-from-tao.md").read_text()
    splits = ("train_dataset", "val_dataset", "test_dataset", "infer_dataset")
    keys = {".".join("*" if p in splits or p.isdigit() else p for p in k.split("."))
            for k in list(TAO_KEYS) + list(TAO_ITEM_KEYS)}
    assert [k for k in sorted(keys) if f"| `{k}` |" not in guide] == []
