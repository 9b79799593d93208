"""TensorRT engines. The pure-Python parts (profiles, precision rules, sidecars, the message where TensorRT is
missing) run everywhere; building and running a real engine runs only where `tensorrt` imports and a GPU is seen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest
import torch

from trainer.config import build_spec
from trainer.deploy.predictors import TensorRTPredictor
from trainer.deploy.sidecar import sidecar_path
from trainer.deploy.tensorrt import (
    ShapeProfile,
    TensorRTUnavailableError,
    build_engine,
    check_precision,
    default_engine_path,
    engine_profile,
    engine_sidecar,
    parse_layer_precisions,
    tensorrt_status,
    tensorrt_unavailable_message,
)
from trainer.errors import SpecError, UserError

TRT_AVAILABLE, TRT_REASON = tensorrt_status()
needs_no_tensorrt = pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT is available here: the message is not shown")


def onnx_meta(*, batch: int = -1, dynamic_hw: bool = False, h: int = 518, w: int = 518, encoder: str = "vits",
              status: str = "passed", onnx_file: str = "model.onnx") -> dict[str, Any]:
    return {
        "onnx_file": onnx_file, "batch_size": batch, "dynamic_batch": batch == -1, "dynamic_hw": dynamic_hw,
        "input_height": h, "input_width": w, "opset": 17,
        "input": {"name": "image", "shape": ["batch", 3, h, w], "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225]},
        "output": {"name": "depth", "shape": ["batch", h, w], "units": "metres"},
        "model": {"model_type": "MetricDepthAnything", "encoder": encoder, "custom": None, "is_metric": True,
                  "max_depth": 20.0, "min_depth": 0.001},
        "checkpoint": "/ckpt/best.ckpt",
        "validation": {"status": status, "problems": [], "onnxruntime": {"checks": [
            {"input_shape": [2, 3, h, w], "max_abs_diff": 2.5e-6, "tolerance": 0.02, "passed": True}]}},
    }


def gen_spec(**values: Any):
    tree: dict[str, Any] = {"gen_trt_engine": {"tensorrt": {}}}
    for key, value in values.items():
        node = tree["gen_trt_engine"]
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return build_spec(tree, check_files=False, notice=lambda _m: None)


def fake_export(tmp: Path, **meta: Any) -> Path:
    """An ONNX path with a sidecar: what build_engine checks before it needs TensorRT."""
    onnx_file = tmp / "model.onnx"
    onnx_file.write_bytes(b"not parsed before TensorRT is needed")
    sidecar_path(onnx_file).write_text(json.dumps(onnx_meta(onnx_file=str(onnx_file), **meta)))
    return onnx_file


# --------------------------------------------------------------------------------------------------------------
# Optimization profile
# --------------------------------------------------------------------------------------------------------------


def test_profile_of_a_dynamic_batch_fixed_size_file():
    g = gen_spec().gen_trt_engine
    assert engine_profile(g, onnx_meta()) == ShapeProfile((1, 3, 518, 518), (1, 3, 518, 518), (1, 3, 518, 518))
    g = gen_spec(tensorrt__min_batch_size=1, tensorrt__opt_batch_size=4, tensorrt__max_batch_size=8).gen_trt_engine
    p = engine_profile(g, onnx_meta())
    assert (p.min[0], p.opt[0], p.max[0]) == (1, 4, 8) and p.fixed_hw == (518, 518)
    assert engine_profile(gen_spec(batch_size=2).gen_trt_engine, onnx_meta()).as_dict() == {
        "min": [2, 3, 518, 518], "opt": [2, 3, 518, 518], "max": [2, 3, 518, 518]}


def test_profile_of_a_fixed_batch_file():
    assert engine_profile(gen_spec().gen_trt_engine, onnx_meta(batch=4)).min == (4, 3, 518, 518)
    g = gen_spec(tensorrt__min_batch_size=1, tensorrt__opt_batch_size=4, tensorrt__max_batch_size=8).gen_trt_engine
    with pytest.raises(SpecError, match=r"tensorrt: min/opt/max_batch_size found 1/4/8.*fixed batch of 2"):
        engine_profile(g, onnx_meta(batch=2))


def test_profile_of_a_dynamic_size_file():
    g = gen_spec(tensorrt__min_height=280, tensorrt__max_height=770, tensorrt__min_width=280,
                 tensorrt__max_width=1022).gen_trt_engine
    p = engine_profile(g, onnx_meta(dynamic_hw=True, h=518, w=686))
    assert p == ShapeProfile((1, 3, 280, 280), (1, 3, 518, 686), (1, 3, 770, 1022)) and p.fixed_hw is None
    assert p.trtexec_args() == ("--minShapes=image:1x3x280x280 --optShapes=image:1x3x518x686 "
                                "--maxShapes=image:1x3x770x1022")
    # opt from tensorrt.height/width, the default range widened to include it
    p = engine_profile(gen_spec(tensorrt__height=364, tensorrt__width=504).gen_trt_engine, onnx_meta(dynamic_hw=True))
    assert (p.min, p.opt, p.max) == ((1, 3, 364, 504), (1, 3, 364, 504), (1, 3, 1036, 1036))
    with pytest.raises(SpecError) as err:
        engine_profile(gen_spec(tensorrt__min_height=300, tensorrt__max_height=200).gen_trt_engine,
                       onnx_meta(dynamic_hw=True))
    text = str(err.value)
    assert "gen_trt_engine.tensorrt.min_height: found 300, expected a positive multiple of 14" in text
    assert "expected min_height <= height <= max_height, found 300, 518, 200" in text


def test_default_profile_of_a_dynamic_size_file_takes_keep_aspect_photos():
    """The keep-aspect pre-processing gives 518x686 for a 480x640 photo and 686x518 for a portrait one; the default
    profile covers aspect ratios up to 2:1 either way, so a TensorRT engine never squashes a photo."""
    from trainer.data import eval_input_size

    p = engine_profile(gen_spec().gen_trt_engine, onnx_meta(dynamic_hw=True))
    assert (p.min, p.opt, p.max) == ((1, 3, 518, 518), (1, 3, 518, 518), (1, 3, 1036, 1036)) and p.fixed_hw is None
    for hw in ((480, 640), (640, 480), (1080, 1920), (518, 1036)):
        h, w = eval_input_size(hw, 518)
        assert p.min[2] <= h <= p.max[2] and p.min[3] <= w <= p.max[3], hw
    meta = onnx_meta(dynamic_hw=True)
    meta["preprocessing"] = {"augmentation": {"crop_size": [266, 350]}}  # the training crop's short side wins
    assert engine_profile(gen_spec().gen_trt_engine, meta).min == (1, 3, 266, 266)


def test_profile_refuses_other_sizes_for_a_fixed_size_file():
    with pytest.raises(SpecError, match=r"tensorrt\.height: found 364, but .* fixed height of 518"):
        engine_profile(gen_spec(tensorrt__height=364).gen_trt_engine, onnx_meta())


# --------------------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------------------


def test_fp16_is_refused_for_vitl_with_the_reason():
    with pytest.raises(UserError, match=r"FP16 is refused .*encoder vitl.*FP16 overflows in DINOv2 ViT-L.*BF16"):
        check_precision("FP16", "vitl", "model.onnx")
    seen: list[str] = []
    assert check_precision("fp16", "vits", "model.onnx", seen.append) == "FP16" and "overflow" in seen[0]
    assert check_precision("bf16", "vitl", "model.onnx") == "BF16"
    assert check_precision("FP32", "vitl", "model.onnx") == "FP32"
    with pytest.raises(SpecError, match="INT8"):
        check_precision("INT8", "vits", "model.onnx")


def test_build_engine_reads_the_encoder_from_the_onnx_sidecar(tmp_path):
    onnx_file = fake_export(tmp_path, encoder="vitl")
    spec = gen_spec(onnx_file=str(onnx_file), tensorrt__data_type="FP16")
    with pytest.raises(UserError, match="FP16 overflows in DINOv2 ViT-L"):
        build_engine(spec, progress=False)


def test_layer_precisions():
    assert parse_layer_precisions(["*LayerNormalization*:FP32", "/head/*:bf16"]) == [
        ("*LayerNormalization*", "fp32"), ("/head/*", "bf16")]
    with pytest.raises(SpecError, match=r"layers_precision\.1: found 'norm'"):
        parse_layer_precisions(["a:fp32", "norm"])


# --------------------------------------------------------------------------------------------------------------
# Files and messages
# --------------------------------------------------------------------------------------------------------------


def test_engine_sidecar(tmp_path):
    meta = onnx_meta()
    profile = ShapeProfile((1, 3, 518, 518), (4, 3, 518, 518), (8, 3, 518, 518))
    side = engine_sidecar(meta, onnx_file=tmp_path / "model.onnx", engine_file=tmp_path / "model.bf16.engine",
                          data_type="BF16", profile=profile, tensorrt_version="10.9.0", gpu_name="NVIDIA H100",
                          compute_capability="90", build_seconds=61.234, workspace_mib=4096,
                          timing_cache=tmp_path / "timing.cache", timing_cache_loaded=True,
                          layer_precisions=[("*norm*", "fp32")], parity={"max_abs_diff": 0.01})
    assert side["precision"] == "BF16" and side["profile"]["opt"] == [4, 3, 518, 518]
    assert side["fixed_hw"] == [518, 518] and side["model"] == meta["model"]
    assert side["source_onnx"].endswith("model.onnx") and side["source_onnx_validation"] == "passed"
    assert side["tensorrt_version"] == "10.9.0" and side["gpu"] == "NVIDIA H100" and side["build_seconds"] == 61.23
    assert side["layer_precisions"] == ["*norm*:fp32"] and side["timing_cache_loaded"] is True
    json.dumps(side)  # plain JSON
    assert ShapeProfile.from_dict(side["profile"]) == profile


def test_default_engine_path(tmp_path):
    onnx_file = tmp_path / "export" / "model.onnx"
    assert default_engine_path(gen_spec(), onnx_file, "BF16") == tmp_path / "export" / "model.bf16.engine"
    assert default_engine_path(gen_spec(trt_engine="x.plan"), onnx_file, "BF16") == Path.cwd() / "x.plan"
    assert default_engine_path(gen_spec(results_dir=str(tmp_path / "e")), onnx_file, "FP32") == \
        tmp_path / "e" / "model.fp32.engine"


def test_unavailable_message_names_the_onnx_file_and_the_way_out():
    profile = ShapeProfile((1, 3, 518, 518), (4, 3, 518, 518), (8, 3, 518, 518))
    text = tensorrt_unavailable_message("the tensorrt Python package does not import here", Path("r/model.onnx"),
                                        onnx_meta(), profile, "BF16", Path("r/model.bf16.engine"))
    assert "The ONNX file is ready: r/model.onnx (validation passed (onnxruntime vs PyTorch max |diff| 2.5e-06" in text
    assert "pip install tensorrt" in text and "nvcr.io/nvidia" in text
    assert "trtexec --onnx=r/model.onnx --saveEngine=r/model.bf16.engine --bf16 --minShapes=image:1x3x518x518" in text
    assert "evaluate.onnx_file=r/model.onnx" in text


def test_refusals_before_tensorrt_is_needed(tmp_path):
    missing = gen_spec(onnx_file=str(tmp_path / "none.onnx"))
    with pytest.raises(UserError, match=r"gen_trt_engine\.onnx_file: file not found.*automl export"):
        build_engine(missing, progress=False)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"x")
    with pytest.raises(UserError, match=r"bare\.onnx\.json: sidecar"):
        build_engine(gen_spec(onnx_file=str(bare)), progress=False)
    failed = fake_export(tmp_path, status="failed")
    with pytest.raises(UserError, match="validation did not pass"):
        build_engine(gen_spec(onnx_file=str(failed)), progress=False)
    ok = fake_export(tmp_path)
    (tmp_path / "model.bf16.engine").write_bytes(b"an older engine")
    with pytest.raises(UserError, match=r"already exists.*--force"):
        build_engine(gen_spec(onnx_file=str(ok)), progress=False)


@needs_no_tensorrt
def test_gen_trt_engine_without_tensorrt_exits_2_with_the_message(tmp_path, capsys):
    from automl.cli import main

    onnx_file = fake_export(tmp_path)
    spec_file = tmp_path / "gen.yaml"
    spec_file.write_text(json.dumps({"results_dir": str(tmp_path), "gen_trt_engine": {
        "onnx_file": str(onnx_file), "tensorrt": {"opt_batch_size": 2, "max_batch_size": 4}}}))
    assert main(["gen_trt_engine", "-e", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "error: cannot build the TensorRT engine:" in err and "tensorrt" in err
    assert f"The ONNX file is ready: {onnx_file} (validation passed" in err
    assert "pip install tensorrt" in err and "--maxShapes=image:4x3x518x518" in err
    assert not (tmp_path / "model.bf16.engine").exists()


@needs_no_tensorrt
def test_engine_predictor_without_tensorrt_points_at_the_onnx_file(tmp_path):
    engine = tmp_path / "model.bf16.engine"
    engine.write_bytes(b"plan")
    profile = ShapeProfile((1, 3, 518, 518), (1, 3, 518, 518), (1, 3, 518, 518))
    sidecar_path(engine).write_text(json.dumps(engine_sidecar(
        onnx_meta(), onnx_file=tmp_path / "model.onnx", engine_file=engine, data_type="BF16", profile=profile,
        tensorrt_version="10", gpu_name="gpu", compute_capability="90", build_seconds=1, workspace_mib=1,
        timing_cache=None, timing_cache_loaded=False, layer_precisions=[])))
    spec = build_spec({"evaluate": {"trt_engine": str(engine)}}, check_files=False, notice=lambda _m: None)
    with pytest.raises(TensorRTUnavailableError, match=r"evaluate\.onnx_file=.*model\.onnx"):
        TensorRTPredictor.from_spec(spec, str(engine))


def test_engine_predictor_batches_within_the_profile():
    calls: list[tuple[int, ...]] = []

    def runner(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x[:, 0]

    profile = ShapeProfile((2, 3, 28, 28), (2, 3, 28, 42), (4, 3, 56, 56))
    pred = TensorRTPredictor(runner=runner, is_metric=True, description="fake", profile=profile, source="e.engine")
    out = pred(torch.randn(5, 3, 28, 42))
    assert out.shape == (5, 28, 42) and calls == [(4, 3, 28, 42), (2, 3, 28, 42)]  # the last one padded to 2
    with pytest.raises(UserError, match=r"outside what e\.engine accepts \(28x28 \.\. 56x56\)"):
        pred(torch.randn(1, 3, 70, 28))


# --------------------------------------------------------------------------------------------------------------
# A real engine (only where TensorRT and a GPU are available)
# --------------------------------------------------------------------------------------------------------------


def test_engine_build_and_run_match_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (pip install tensorrt / NGC container)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    import numpy as np
    import onnxruntime as ort

    from test_export import export_spec, make_checkpoint
    from trainer.deploy.onnx import export_onnx

    ckpt = make_checkpoint(tmp_path / "best.ckpt")
    exported = export_onnx(export_spec(tmp_path, ckpt, dynamic_hw=True), progress=False)
    session = ort.InferenceSession(str(exported.onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 56, 70)
    ref = session.run(["depth"], {"image": x.numpy()})[0]
    for data_type, tolerance in (("FP32", 1e-2), ("BF16", 0.25)):  # metres, max_depth 10
        spec = build_spec({"results_dir": str(tmp_path), "gen_trt_engine": {
            "onnx_file": str(exported.onnx_file), "tensorrt": {
                "data_type": data_type, "min_batch_size": 1, "opt_batch_size": 2, "max_batch_size": 4,
                "min_height": 42, "max_height": 84, "min_width": 42, "max_width": 98}}},
            check_files=False, notice=lambda _m: None)
        result = build_engine(spec, progress=False)
        assert result.meta["precision"] == data_type and (tmp_path / "timing.cache").is_file()
        pred, used = TensorRTPredictor.from_spec(
            build_spec({"evaluate": {"trt_engine": str(result.engine_file)}}, check_files=False,
                       notice=lambda _m: None), str(result.engine_file))
        assert used.model.model_type == "MetricDepthAnything" and used.evaluate.input_height is None
        got = pred(x).numpy()
        assert got.shape == ref.shape and np.abs(got - ref).max() < tolerance
    spec.gen_trt_engine.overwrite = True  # a second build of the same network reuses the timing cache
    assert build_engine(spec, progress=False).meta["timing_cache_loaded"] is True


# --------------------------------------------------------------------------------------------------------------
# The TensorRT calls themselves, against a strict stand-in (only the TensorRT 10 names the build uses exist)
# --------------------------------------------------------------------------------------------------------------


def fake_tensorrt(calls: dict[str, Any], *, parse_ok: bool = True, build_ok: bool = True):
    import types

    class Severity:
        VERBOSE, WARNING = "verbose", "warning"

    class Logger:
        VERBOSE, WARNING = "verbose", "warning"

        def __init__(self, severity: str):
            self.min_severity = severity

    Logger.Severity = Severity  # type: ignore[attr-defined]

    class DataType:
        FLOAT, HALF, BF16, INT32 = "float", "half", "bf16", "int32"

    class Tensor:
        def __init__(self, name: str, dtype: str = "float"):
            self.name, self.dtype = name, dtype

    class Layer:
        def __init__(self, name: str):
            self.name, self.precision, self.num_outputs = name, None, 1
            self.outputs, self.output_types = [Tensor(name + ":0")], {}

        def get_output(self, j: int) -> Tensor:
            return self.outputs[j]

        def set_output_type(self, j: int, dtype: str) -> None:
            self.output_types[j] = dtype

    class Network:
        def __init__(self):
            self.layers = [Layer("/pretrained/blocks.0/norm1/LayerNormalization"), Layer("/depth_head/Conv_3")]
            self.inputs = [Tensor("image")]
            calls["network"] = self

        num_layers = property(lambda self: len(self.layers))
        num_inputs = property(lambda self: len(self.inputs))

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"] = path
            return parse_ok

        num_errors = property(lambda self: 0 if parse_ok else 1)

        def get_error(self, i: int) -> str:
            return "In node 12 (Foo): No importer registered for op: Foo"

    class TimingCache:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self) -> bytes:
            return self.blob + b"+timings"

    class Profile:
        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            calls["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.cache = None
            calls["flags"] = []

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls["pool"] = (pool, size)

        def set_flag(self, flag: str) -> None:
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            calls["cache_in"] = bytes(blob)
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger):
            pass

        def create_network(self, flags: int) -> Network:
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            return b"PLAN" if build_ok else None

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"
    trt.Logger, trt.Builder, trt.OnnxParser, trt.DataType = Logger, Builder, OnnxParser, DataType
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(BF16="BF16", FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    return trt


def test_build_plan_drives_the_tensorrt_api(tmp_path, monkeypatch):
    import trainer.deploy.tensorrt as engine

    monkeypatch.setattr(engine, "_LOGGER", None)
    calls: dict[str, Any] = {}
    trt = fake_tensorrt(calls)
    profile = ShapeProfile((1, 3, 518, 518), (4, 3, 518, 518), (8, 3, 518, 518))
    plan, cache, notes = engine._build_plan(
        trt, tmp_path / "model.onnx", profile=profile, data_type="BF16", workspace_mib=4096,
        timing_cache=b"old", layer_precisions=[("*LayerNormalization*", "fp32")], verbose=False)
    assert plan == b"PLAN" and cache == b"old+timings" and notes["pinned_layers"] == 1
    assert calls["network_flags"] == 0  # TensorRT 10: explicit batch is the only mode
    assert calls["parsed"] == str(tmp_path / "model.onnx")
    assert calls["pool"] == ("workspace", 4096 << 20)
    assert calls["flags"] == ["BF16", "OBEY"]
    assert calls["profile"] == ("image", (1, 3, 518, 518), (4, 3, 518, 518), (8, 3, 518, 518))
    norm, conv = calls["network"].layers
    assert norm.precision == "float" and norm.output_types == {0: "float"} and conv.precision is None

    calls.clear()
    engine._build_plan(fake_tensorrt(calls), tmp_path / "m.onnx", profile=profile, data_type="FP32",
                       workspace_mib=1, timing_cache=b"", layer_precisions=[], verbose=True)
    assert calls["flags"] == [] and calls["cache_in"] == b""

    with pytest.raises(UserError, match=r"ONNX parser failed:\n  - In node 12 \(Foo\)"):
        engine._build_plan(fake_tensorrt({}, parse_ok=False), tmp_path / "m.onnx", profile=profile,
                           data_type="BF16", workspace_mib=1, timing_cache=b"", layer_precisions=[], verbose=False)
    with pytest.raises(UserError, match="built no engine.*workspace_size"):
        engine._build_plan(fake_tensorrt({}, build_ok=False), tmp_path / "m.onnx", profile=profile,
                           data_type="BF16", workspace_mib=1, timing_cache=b"", layer_precisions=[], verbose=False)


# --------------------------------------------------------------------------------------------------------------
# A new runtime needs only what docs/internals.md lists: the shared from_spec, batching and size checks come along
# --------------------------------------------------------------------------------------------------------------


def test_a_new_runtime_gets_sidecar_spec_batching_and_size_checks_from_the_base_class(tmp_path):
    from dataclasses import dataclass

    from trainer.deploy.predictors import ExportedPredictor

    @dataclass
    class EchoPredictor(ExportedPredictor):
        key: ClassVar[str] = "onnx_file"
        what: ClassVar[str] = "ONNX file"
        is_metric: bool
        description: str
        source: str
        seen: list

        @classmethod
        def _open(cls, path, meta, gpu, notice):
            return cls(is_metric=bool(meta["model"]["is_metric"]), description=f"echo {path}", source=str(path),
                       seen=[])

        @property
        def batch_range(self) -> tuple[int, Optional[int]]:
            return 2, 2

        @property
        def hw_range(self):
            return (28, 42), (28, 42)

        def _run(self, images):
            self.seen.append(tuple(images.shape))
            return images[:, 0]

    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"graph")
    sidecar_path(model_file).write_text(json.dumps(onnx_meta(batch=2, h=28, w=42, encoder="vitb")))
    spec = build_spec({"inference": {"onnx_file": str(model_file)}}, check_files=False, notice=lambda _m: None)
    notes: list[str] = []
    pred, used = EchoPredictor.from_spec(spec, str(model_file), notice=notes.append)
    assert used.model.encoder == "vitb" and (used.inference.input_height, used.inference.input_width) == (28, 42)
    assert any("takes only 28x42" in n for n in notes)
    depth = pred.predict([torch.randn(3, 28, 42)] * 3)  # a list: one image at a time, each padded to batch 2
    assert [tuple(d.shape) for d in depth] == [(28, 42)] * 3 and pred.seen == [(2, 3, 28, 42)] * 3
    with pytest.raises(UserError, match=r"outside what .*m\.onnx accepts \(28x42 \.\. 28x42\)"):
        pred(torch.randn(1, 3, 42, 28))
    with pytest.raises(UserError, match=r"onnx_file: file not found"):
        EchoPredictor.from_spec(spec, str(tmp_path / "other.onnx"))
