"""ONNX export: what the file holds, how it validates, what is refused, and that evaluate/inference through ONNX
Runtime give what PyTorch gives. A tiny custom encoder keeps every export at a few seconds on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trainer.config import build_spec, to_plain
from trainer.errors import UserError
from trainer.deploy.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    inspect_graph,
    resolve_export_source,
    validation_shapes,
)
from trainer.deploy.predictors import OnnxPredictor, run_batched
from trainer.deploy.sidecar import deployed_spec, read_sidecar, sidecar_path
from trainer.model import build_model

H, W = 56, 70
TINY = {"encoder": "custom",
        "custom": {"embed_dim": 32, "depth": 2, "num_heads": 2, "features": 16, "out_channels": [8, 16, 32, 32]}}


def tiny_tree(model_type: str = "MetricDepthAnything", max_depth: float = 10.0) -> dict[str, Any]:
    return {"model": {"model_type": model_type, **TINY},
            "dataset": {"min_depth": 0.001, "max_depth": max_depth,
                        "val_dataset": {"augmentation": {"crop_size": [H, W]}}}}  # evaluation short side 56


def make_checkpoint(path: Path, model_type: str = "MetricDepthAnything", *, max_depth: float = 10.0,
                    layout: str = "lightning", seed: int = 0) -> Path:
    """A checkpoint of a tiny model with non-trivial outputs: our Lightning layout (with the training spec) or the
    released flat state_dict (no spec)."""
    torch.manual_seed(seed)
    spec = build_spec(tiny_tree(model_type, max_depth), check_files=False, notice=lambda _m: None)
    model = build_model(spec)
    with torch.no_grad():
        model.pretrained.pos_embed.normal_(std=0.5)
        model.depth_head.scratch.output_conv2[2].bias.fill_(0.5)  # a relative head outputs > 0 after its ReLU
    if layout == "lightning":
        obj: Any = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                    "hyper_parameters": {"spec": to_plain(spec)}, "epoch": 1}
    else:
        obj = model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def export_spec(tmp: Path, checkpoint: Path, tree: dict[str, Any] | None = None, **export: Any):
    base = dict(tree or {})
    base.setdefault("results_dir", str(tmp / "results"))
    base["export"] = {"checkpoint": str(checkpoint), "onnx_file": str(tmp / "model.onnx"), "input_height": H,
                      "input_width": W, "on_cpu": True, **export}
    return build_spec(base, check_files=False, notice=lambda _m: None)


def notes() -> tuple[list[str], Any]:
    seen: list[str] = []
    return seen, seen.append


@pytest.fixture(scope="module")
def metric_dynamic(tmp_path_factory):
    """Metric model, dynamic batch and height/width."""
    tmp = tmp_path_factory.mktemp("metric_dynamic")
    ckpt = make_checkpoint(tmp / "best.ckpt")
    result = export_onnx(export_spec(tmp, ckpt, dynamic_hw=True), notice=lambda _m: None, progress=False)
    return tmp, ckpt, result


@pytest.fixture(scope="module")
def relative_static(tmp_path_factory):
    """Relative model, fixed batch 2 and fixed size, asked for at TAO's older opset 16."""
    tmp = tmp_path_factory.mktemp("relative_static")
    ckpt = make_checkpoint(tmp / "rel.ckpt", "RelativeDepthAnything")
    seen, notice = notes()
    result = export_onnx(export_spec(tmp, ckpt, batch_size=2, opset_version=16, dynamic_hw=False), notice=notice,
                         progress=False)
    return tmp, ckpt, result, seen


def _torch_model(ckpt: Path):
    from trainer.model import load_weights

    spec = build_spec({"model": (torch.load(ckpt, weights_only=True)["hyper_parameters"]["spec"]["model"]),
                       "dataset": torch.load(ckpt, weights_only=True)["hyper_parameters"]["spec"]["dataset"]},
                      check_files=False, notice=lambda _m: None)
    model = build_model(spec)
    load_weights(model, ckpt)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# The exported file
# --------------------------------------------------------------------------------------------------------------


def test_metric_export_has_dynamic_axes_opset_17_and_layer_norm(metric_dynamic):
    tmp, ckpt, result = metric_dynamic
    meta = read_sidecar(result.onnx_file)
    assert result.passed and meta["validation"]["status"] == "passed" and meta["validation"]["checker"] == "passed"
    assert meta["opset"] >= 17
    assert meta["input"]["name"] == INPUT_NAME and meta["output"]["name"] == OUTPUT_NAME
    shape = meta["input"]["shape"]
    assert shape[1] == 3 and all(isinstance(shape[i], str) for i in (0, 2, 3))  # batch, height, width symbolic
    assert set(meta["dynamic_axes"]["image"]) == {"0", "2", "3"}
    assert set(meta["dynamic_axes"]["depth"]) == {"0", "1", "2"}
    assert meta["graph"]["layer_normalization_nodes"] >= 5  # 2 blocks x 2 norms + the final norm
    assert meta["graph"]["resize_nodes"] > 0 and meta["graph"]["resize_with_scales"] == 0
    assert meta["model"] == {"model_type": "MetricDepthAnything", "encoder": "custom",
                             "custom": meta["model"]["custom"], "is_metric": True, "max_depth": 10.0,
                             "min_depth": 0.001}
    assert meta["training_spec"]["max_depth"] == 10.0 and meta["checkpoint"] == str(ckpt.resolve())
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
    assert meta["preprocessing"]["augmentation"]["crop_size"] == [H, W]  # the training spec's
    checks = meta["validation"]["onnxruntime"]["checks"]
    assert [c["input_shape"] for c in checks] == [[2, 3, H, W], [1, 3, H + 28, W - 28]]
    for c in checks:
        assert c["passed"] and c["max_abs_diff"] < 1e-3 * 10.0 and c["tolerance"] == pytest.approx(1e-2)

    # the graph itself, independently of the sidecar
    proto = onnx.load(str(result.onnx_file))
    onnx.checker.check_model(proto)
    report = inspect_graph(proto)
    assert report.problems == [] and report.opset == meta["opset"]

    # a shape the export never saw: batch 3, 70x98
    model = _torch_model(ckpt)
    x = torch.randn(3, 3, 70, 98)
    got = ort.InferenceSession(str(result.onnx_file), providers=["CPUExecutionProvider"]).run(
        [OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (3, 70, 98)
    assert np.abs(got - ref).max() < 1e-3 * 10.0
    assert float(ref.std()) > 1e-3  # the comparison is not between two constants


def test_relative_static_export_and_opset_16_raised(relative_static):
    tmp, ckpt, result, seen = relative_static
    meta = read_sidecar(result.onnx_file)
    assert any("opset_version 16 raised to 17" in n for n in seen)
    assert meta["requested_opset"] == 16 and meta["opset"] >= 17
    assert meta["input"]["shape"] == [2, 3, H, W] and meta["output"]["shape"] == [2, H, W]
    assert meta["dynamic_axes"] == {"image": {}, "depth": {}} and not meta["dynamic_batch"] and not meta["dynamic_hw"]
    assert meta["model"]["model_type"] == "RelativeDepthAnything" and meta["model"]["max_depth"] is None
    assert meta["output"]["units"].startswith("relative")
    checks = meta["validation"]["onnxruntime"]["checks"]
    assert [c["input_shape"] for c in checks] == [[2, 3, H, W]]  # nothing dynamic: one check
    assert checks[0]["output_max_abs"] > 0 and checks[0]["max_rel_diff"] < 1e-3
    assert "x max|output|" in checks[0]["criterion"]
    assert meta["graph"]["resize_with_scales"] == 0 and meta["graph"]["layer_normalization_nodes"] > 0


def test_validation_shapes():
    assert validation_shapes(518, 518, -1, False) == [(2, 3, 518, 518), (1, 3, 518, 518)]
    assert validation_shapes(518, 518, 4, False) == [(4, 3, 518, 518)]
    assert validation_shapes(56, 70, -1, True) == [(2, 3, 56, 70), (1, 3, 84, 42)]
    assert validation_shapes(28, 28, 1, True) == [(1, 3, 28, 28), (1, 3, 56, 42)]


def _graph(opset: int, *, layer_norm: bool, resize_scales: bool) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 28, 28])
    y = helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["batch", 3, 56, 56])
    inits = [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
             helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, 56, 56]),
             helper.make_tensor("g", TensorProto.FLOAT, [28], [1.0] * 28)]
    nodes = []
    src = "image"
    if layer_norm:
        nodes.append(helper.make_node("LayerNormalization", ["image", "g"], ["n"], axis=-1))
        src = "n"
    if resize_scales:
        nodes.append(helper.make_node("Resize", [src, "", "scales"], ["depth"], mode="linear"))
    else:
        nodes.append(helper.make_node("Resize", [src, "", "", "sizes"], ["depth"], mode="linear"))
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_graph_check_flags_old_opset_decomposed_norms_and_scale_factors():
    good = inspect_graph(_graph(17, layer_norm=True, resize_scales=False))
    assert good.problems == [] and good.layer_normalization == 1 and good.resize == 1
    assert good.dynamic_axes == {"image": {0: "batch"}, "depth": {0: "batch"}}
    bad = inspect_graph(_graph(16, layer_norm=False, resize_scales=True))
    text = "\n".join(bad.problems)
    assert "opset 16 < 17" in text and "no LayerNormalization" in text and "scales input" in text
    assert bad.resize_with_scales == 1


# --------------------------------------------------------------------------------------------------------------
# What is refused
# --------------------------------------------------------------------------------------------------------------


def test_existing_file_is_kept_unless_forced(tmp_path):
    from automl.cli import main

    ckpt = make_checkpoint(tmp_path / "best.ckpt")
    target = tmp_path / "model.onnx"
    target.write_text("an older export")
    with pytest.raises(UserError, match=r"already exists.*--force.*export\.overwrite=true"):
        export_onnx(export_spec(tmp_path, ckpt), notice=lambda _m: None, progress=False)
    assert target.read_text() == "an older export"
    with pytest.raises(UserError, match="contradicts the checkpoint"):  # forced, but refused: the old file stays
        export_onnx(export_spec(tmp_path, ckpt, {"dataset": {"max_depth": 80.0}}, overwrite=True),
                    notice=lambda _m: None, progress=False)
    assert target.read_text() == "an older export"

    spec_file = tmp_path / "export.yaml"
    spec_file.write_text(json.dumps({"results_dir": str(tmp_path / "r"), "export": {
        "checkpoint": str(ckpt), "onnx_file": str(target), "input_height": H, "input_width": W, "on_cpu": True}}))
    assert main(["export", "-e", str(spec_file)]) == 2
    assert target.read_text() == "an older export"
    assert main(["export", "-e", str(spec_file), "--force"]) == 0
    side = read_sidecar(target)
    assert side["validation"]["status"] == "passed"
    # by default height and width are dynamic: non-square images go in at their keep-aspect size
    assert side["dynamic_hw"] and all(isinstance(d, str) for d in side["input"]["shape"][2:])
    assert (tmp_path / "r" / "export" / "status.json").is_file()


def test_export_spec_contradicting_the_checkpoint_is_an_error(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.ckpt", max_depth=10.0)
    with pytest.raises(UserError) as err:
        resolve_export_source(export_spec(tmp_path, ckpt, {"dataset": {"max_depth": 80.0}}), str(ckpt))
    assert "dataset.max_depth" in str(err.value) and "80" in str(err.value) and "10" in str(err.value)
    with pytest.raises(UserError, match=r"model\.encoder: the export spec says 'vits'.*trained as 'custom'"):
        resolve_export_source(export_spec(tmp_path, ckpt, {"model": {"encoder": "vits"}}), str(ckpt))
    with pytest.raises(UserError, match=r"model\.model_type: .*'RelativeDepthAnything'.*'MetricDepthAnything'"):
        resolve_export_source(export_spec(tmp_path, ckpt, {"model": {"model_type": "RelativeDepthAnything"}}),
                              str(ckpt))
    # the same value, or none at all, is fine; defaults only get a notice
    seen, notice = notes()
    used = resolve_export_source(export_spec(tmp_path, ckpt, {"dataset": {"max_depth": 10.0}}), str(ckpt), notice)
    assert used.max_depth == 10.0 and used.spec.model.encoder == "custom"
    assert any("model.encoder: using the checkpoint's 'custom'" in n for n in seen)
    assert resolve_export_source(export_spec(tmp_path, ckpt), str(ckpt), notice).max_depth == 10.0


def test_released_checkpoint_needs_max_depth_for_metric_models(tmp_path):
    ckpt = make_checkpoint(tmp_path / "depth_anything_v2_custom.pth", layout="released")
    tree = {"model": {"model_type": "MetricDepthAnything", **TINY}}
    with pytest.raises(UserError, match=r"dataset\.max_depth: not set.*records no training spec"):
        resolve_export_source(export_spec(tmp_path, ckpt, tree), str(ckpt))
    used = resolve_export_source(export_spec(tmp_path, ckpt, {**tree, "dataset": {"max_depth": 20.0}}), str(ckpt))
    assert used.stored is None and used.max_depth == 20.0
    rel = resolve_export_source(export_spec(tmp_path, ckpt, {"model": {"model_type": "RelativeDepthAnything", **TINY}}),
                                str(ckpt))
    assert rel.max_depth is None


def test_missing_checkpoint_and_bad_file_name(tmp_path):
    with pytest.raises(UserError, match="export.checkpoint: not set"):
        resolve_export_source(export_spec(tmp_path, tmp_path / "x.ckpt"), None)
    with pytest.raises(UserError, match="file not found"):
        export_onnx(export_spec(tmp_path, tmp_path / "missing.ckpt"), progress=False)
    with pytest.raises(UserError, match=r"ending in \.onnx"):
        export_onnx(export_spec(tmp_path, tmp_path / "x.ckpt", onnx_file=str(tmp_path / "model.trt")), progress=False)


# --------------------------------------------------------------------------------------------------------------
# Running the exported file: the same pre/post-processing as PyTorch
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nyu_data(tmp_path_factory):
    from trainer.data.synth import generate_dataset

    tmp = tmp_path_factory.mktemp("nyu")
    res = generate_dataset(tmp, 8, size=(H, W), layout="nyu", progress=False)
    return res.train_file


def _run_spec(tmp: Path, data_file: Path, section: str, **values: Any):
    """Evaluation/inference on the synthetic frames; the augmentation (so the network input size) is the
    training spec's, stored in the checkpoint and in the ONNX sidecar: crop 56x70 -> the frames' own 56x70."""
    tree = {"results_dir": str(tmp / "results"), "dataset": {
        "test_dataset": {"data_sources": [{"data_file": str(data_file), "dataset_name": "NYUDV2"}],
                         "batch_size": 3, "workers": 0, "pin_memory": False},
        "infer_dataset": {"data_root": str(Path(data_file).parent), "batch_size": 3, "workers": 0,
                          "pin_memory": False}},
        section: {"results_dir": str(tmp / section / values.pop("name")), **values}}
    return build_spec(tree, check_files=False, notice=lambda _m: None)


def test_evaluate_and_inference_through_onnxruntime_match_pytorch(metric_dynamic, nyu_data, tmp_path):
    from trainer.evaluate import evaluate
    from trainer.infer import inference

    _tmp, ckpt, result = metric_dynamic
    torch_eval = evaluate(_run_spec(tmp_path, nyu_data, "evaluate", name="pt", checkpoint=str(ckpt)), progress=False)
    onnx_eval = evaluate(_run_spec(tmp_path, nyu_data, "evaluate", name="onnx", onnx_file=str(result.onnx_file)),
                         progress=False)
    assert onnx_eval["model"].startswith("onnxruntime (CPUExecutionProvider)")
    assert onnx_eval["num_images"] == torch_eval["num_images"] == 8
    assert onnx_eval["model_type"] == "MetricDepthAnything"
    for k, v in torch_eval["metrics"].items():
        assert onnx_eval["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k

    torch_inf = inference(_run_spec(tmp_path, nyu_data, "inference", name="pt", checkpoint=str(ckpt)), progress=False)
    onnx_inf = inference(_run_spec(tmp_path, nyu_data, "inference", name="onnx", onnx_file=str(result.onnx_file)),
                         progress=False)
    assert len(onnx_inf["images"]) == len(torch_inf["images"]) == 8
    for a, b in zip(torch_inf["images"], onnx_inf["images"]):
        pa, pb = np.load(a["raw"]), np.load(b["raw"])
        assert pa.shape == pb.shape == (H, W)
        assert np.abs(pa - pb).max() < 1e-3 * 10.0


def test_fixed_size_file_sets_the_evaluation_size_and_pads_fixed_batches(relative_static, nyu_data, tmp_path):
    from trainer.evaluate import evaluate

    _tmp, ckpt, result, _seen = relative_static
    spec = _run_spec(tmp_path, nyu_data, "evaluate", name="fixed", onnx_file=str(result.onnx_file))
    spec.dataset.test_dataset.augmentation.crop_size = [280, 280]  # would give 280x350 without the fixed size
    pred, used = OnnxPredictor.from_spec(spec, str(result.onnx_file))
    assert (used.evaluate.input_height, used.evaluate.input_width) == (H, W)
    assert (used.inference.input_height, used.inference.input_width) == (H, W)
    assert used.model.model_type == "RelativeDepthAnything" and not pred.is_metric
    assert (pred.min_batch, pred.max_batch) == (2, 2)
    x = torch.randn(3, 3, H, W)  # fixed batch 2: chunks of 2, the last one padded
    out = pred(x)
    model = _torch_model(ckpt)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == (3, H, W) and torch.allclose(out, ref, atol=1e-3 * float(ref.abs().max()))
    with pytest.raises(UserError, match="outside what"):
        pred(torch.randn(2, 3, 70, 70))
    metrics = evaluate(spec, progress=False)
    assert metrics["num_images"] == 8 and metrics["model_type"] == "RelativeDepthAnything"

    conflicting = _run_spec(tmp_path, nyu_data, "evaluate", name="c", onnx_file=str(result.onnx_file),
                            input_height=70, input_width=70)
    with pytest.raises(UserError, match=r"evaluate\.input_height: found 70.*takes only 56x70"):
        OnnxPredictor.from_spec(conflicting, str(result.onnx_file))


def test_predictor_needs_the_sidecar(relative_static, tmp_path):
    _tmp, _ckpt, result, _seen = relative_static
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(Path(result.onnx_file).read_bytes())
    spec = build_spec({"evaluate": {"onnx_file": str(lone)}}, check_files=False, notice=lambda _m: None)
    with pytest.raises(UserError, match=r"lone\.onnx\.json: sidecar .* not found"):
        OnnxPredictor.from_spec(spec, str(lone))


def test_deployed_spec_takes_model_and_range_from_the_sidecar():
    meta = {"model": {"model_type": "MetricDepthAnything", "encoder": "vits", "custom": None, "max_depth": 20.0,
                      "min_depth": 0.001, "is_metric": True}}
    spec = build_spec({}, check_files=False, notice=lambda _m: None)
    used = deployed_spec(spec, meta, "m.onnx", fixed_size=None)
    assert used.model.encoder == "vits" and used.dataset.max_depth == 20.0
    assert used.evaluate.input_height is None
    seen, notice = notes()
    other = build_spec({"dataset": {"max_depth": 10.0}}, check_files=False, notice=lambda _m: None)
    assert deployed_spec(other, meta, "m.onnx", fixed_size=(518, 518), notice=notice).evaluate.input_width == 518
    assert any("masks the ground truth" in n for n in seen)
    assert any("without keeping its aspect ratio" in n for n in seen)  # a fixed-size file squashes photos


def test_deployed_spec_takes_the_training_preprocessing_unless_the_spec_sets_its_own():
    trained = {"crop_size": [112, 154], "input_mean": [0.5, 0.5, 0.5], "input_std": [0.25, 0.25, 0.25]}
    meta = {"model": {"model_type": "RelativeDepthAnything", "encoder": "vits", "is_metric": False,
                      "max_depth": None}, "preprocessing": {"augmentation": trained}}
    used = deployed_spec(build_spec({}, check_files=False, notice=lambda _m: None), meta, "m.onnx", fixed_size=None)
    for split in ("test_dataset", "infer_dataset"):
        aug = used.dataset[split].augmentation
        assert list(aug.crop_size) == [112, 154] and list(aug.input_mean) == [0.5, 0.5, 0.5]
    own = build_spec({"dataset": {"test_dataset": {"augmentation": {"crop_size": [56, 70]}}}}, check_files=False,
                     notice=lambda _m: None)
    used = deployed_spec(own, meta, "m.onnx", fixed_size=None)
    assert list(used.dataset.test_dataset.augmentation.crop_size) == [56, 70]
    assert list(used.dataset.infer_dataset.augmentation.crop_size) == [112, 154]


def test_run_batched_chunks_and_pads():
    calls: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x[:, 0] * 2

    x = torch.randn(5, 3, 4, 4)
    out = run_batched(run, x, min_batch=2, max_batch=2)
    assert calls == [2, 2, 2] and torch.equal(out, x[:, 0] * 2)
    calls.clear()
    run_batched(run, x)
    assert calls == [5]
    calls.clear()
    run_batched(run, x[:1], min_batch=4, max_batch=8)
    assert calls == [4]


def test_sidecar_path():
    assert sidecar_path("a/model.onnx") == Path("a/model.onnx.json")


# --------------------------------------------------------------------------------------------------------------
# After a search: the winner's export (automl.export)
# --------------------------------------------------------------------------------------------------------------


class _FakeSkill:
    def __init__(self, fail_engine: bool = False, engine: tuple[bool, str] = (False, "no tensorrt for the test")):
        self.calls: list[str] = []
        self.fail_engine = fail_engine
        self.engine = engine

    def engine_available(self) -> tuple[bool, str]:
        return self.engine

    def validated_input_size(self, spec: Any) -> dict[str, Any]:
        return {"export.input_height": 112, "export.input_width": 154}

    def with_overrides(self, spec: Any, values: dict[str, Any]) -> dict[str, Any]:
        return {**spec, **values}

    def export(self, spec: dict[str, Any]) -> None:
        self.calls.append("export")
        assert spec["export.overwrite"] is True
        Path(spec["export.onnx_file"]).write_text("onnx")

    def gen_trt_engine(self, spec: dict[str, Any]) -> Any:
        self.calls.append("engine")
        if self.fail_engine:
            raise UserError("no TensorRT here")
        return type("R", (), {"engine_file": Path("e.engine"), "sidecar": Path("e.engine.json")})()


def test_winner_export_modes(tmp_path, monkeypatch):
    from automl.search import winner

    skill = _FakeSkill()
    none = winner.export_winner(skill, {}, tmp_path / "m.ckpt", tmp_path, "none")
    assert skill.calls == [] and none["status"].startswith("skipped")

    auto = winner.export_winner(skill, {}, tmp_path / "m.ckpt", tmp_path, "auto")
    assert skill.calls == ["export"] and auto["status"] == "exported"
    assert auto["onnx_file"] == str(tmp_path / "model.onnx") and auto["engine_skipped"] == "no tensorrt for the test"
    assert "engine" not in auto

    skill = _FakeSkill(engine=(True, "TensorRT 10"))
    both = winner.export_winner(skill, {}, tmp_path / "m.ckpt", tmp_path, "auto")
    assert skill.calls == ["export", "engine"] and both["engine"] == "e.engine"

    skill = _FakeSkill(fail_engine=True)
    failed = winner.export_winner(skill, {}, tmp_path / "m.ckpt", tmp_path, "engine")
    assert failed["status"] == "failed" and "no TensorRT here" in failed["error"] and failed["onnx_file"]


# --------------------------------------------------------------------------------------------------------------
# bf16 fidelity benchmark (make bench)
# --------------------------------------------------------------------------------------------------------------


def test_bf16_fidelity_benchmark_smoke(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_fidelity.py"
    spec = importlib.util.spec_from_file_location("bf16_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bf16.json"
    assert module.main(["--smoke", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bf16 autocast vs fp32" in printed and "abs_rel" in printed and "d1" in printed
    data = json.loads(out.read_text())
    assert data["finite_bf16"] and data["scenes"] == 4
    assert 0 < data["relative_error"]["mean"] < 0.05  # bf16 keeps ~3 significant digits
    assert set(data["metric_change"]) >= {"d1", "abs_rel"}
