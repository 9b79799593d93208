"""The benchmark scripts' CPU smoke modes (so that they cannot rot; `make bench` runs the tests named
*benchmark_smoke*), and the trainer's fast path that the benchmarks measure (docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


# ---- benchmark smoke modes ------------------------------------------------------------------------------------

def test_train_throughput_benchmark_smoke(tmp_path):
    import train_throughput

    out = tmp_path / "tp.json"
    result = train_throughput.main(["--smoke", "--plan", "smoke:ref,fast", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["encoders"]["smoke"]["runs"].keys() == result["encoders"]["smoke"]["runs"].keys()
    runs = result["encoders"]["smoke"]["runs"]
    for name in ("ref", "fast"):
        assert "error" not in runs[name], runs[name].get("error")
        assert runs[name]["img_s"] > 0 and runs[name]["steps"] == 6
    assert runs["fast"]["speedup_vs_ref"] > 0
    flops = result["encoders"]["smoke"]["flops"]
    assert flops["train_flops_per_image"] > 2 * flops["forward_flops_per_image"] > 0
    conv = result["encoders"]["smoke"]["convergence"]
    # on the CPU both run in fp32 from the same weights on the same batches: the same losses
    assert conv["steps"] == 6
    assert conv["first_loss_ours"] == pytest.approx(conv["first_loss_ref"], rel=1e-4)
    assert abs(conv["relative_difference"]) < 1e-3
    assert result["env"]["device"] == "cpu" and "date" in result["env"]


def test_dataloader_benchmark_smoke(tmp_path):
    import dataloader

    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"env": {"gpu": "test"}, "encoders": {"vits": {"runs": {"fast": {"img_s": 10.0}}}}}))
    result = dataloader.main(["--smoke", "--gpu-json", str(gpu), "--out", str(tmp_path / "dl.json")])
    assert [r["workers"] for r in result["runs"]] == [0, 1]
    assert all(r["samples_per_s"] > 0 for r in result["runs"])
    assert result["gpu_consumption"]["vits"]["loader_over_gpu"] == pytest.approx(result["best_samples_per_s"] / 10.0)


def test_search_overhead_benchmark_smoke(tmp_path):
    import search_overhead

    result = search_overhead.main(["--smoke", "--out", str(tmp_path / "so.json")])
    cold, pack = result["phases"]["cold"], result["phases"]["pack2"]
    assert not cold["errors"] and not pack["errors"], (cold["errors"], pack["errors"])
    trial = cold["per_trial"][0]
    assert trial["steps"] == 3 and 0 < trial["gpu_busy_share"] < 1
    assert 0 < trial["process_to_import_s"] < trial["process_to_first_step_s"] < trial["wall_s"]
    assert trial["fast_path"] == {"precision": "fp32", "compile": False, "channels_last": False,
                                  "matmul_upsample": False}
    assert len(pack["per_trial"]) == 2 and pack["aggregate_img_s"] > 0
    assert json.loads((tmp_path / "so.json").read_text())["phases"].keys() == result["phases"].keys()


@pytest.mark.slow
def test_search_gpu_busy_benchmark_smoke(tmp_path):
    """A real `automl run` (3 trials, 2 at a time, CPU): the first trials start on processes Ray preloaded with the
    trainer stack, the third runs in the warm worker of an earlier one; every trial that trained all its epochs
    says SUCCESS."""
    import search_gpu_busy

    result = search_gpu_busy.main(["--smoke", "--label", "smoke", "--out", str(tmp_path)])
    a = result["analysis"]
    assert result["run"]["rc"] == 0, (tmp_path / "work_smoke" / "automl_run.log").read_text()[-3000:]
    # at most one process per concurrent trial: the third trial (or, when Tune ran the first two one after the
    # other, the second too) reused a worker
    assert a["trials"] == 3 and 1 <= a["worker_processes"] <= 2, a["per_trial"]
    assert a["startup_warm_s"]["n"] >= 1 and a["startup_cold_s"]["n"] == a["worker_processes"]
    cold = [t for t in a["per_trial"] if t.get("worker_trial") == 0]
    assert cold and all(t.get("preloaded") for t in cold), a["per_trial"]  # no imports of their own
    assert a["epochs"] >= 4 and a["trials_all_epochs"] >= 1 and not a["trials_all_epochs_not_success"]
    assert not a["fatal_python_error_in"]
    assert 0 < a["first_trial_step_s"] < a["search_wall_s"] <= a["cli_exit_s"]
    assert a["gpu_busy"]["samples"] == 0  # no NVML in the smoke mode
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["analysis"]["trials"] == 3 and (tmp_path / "smoke.png").is_file()


def test_loader_transfer_benchmark_smoke(tmp_path):
    import loader_transfer

    result = loader_transfer.main(["--size", "16x20", "--batches", "5", "--repeats", "1",
                                   "--out", str(tmp_path / "lt.json")])
    assert set(result["median"]) == {"trainer", "stack"} and all(v > 0 for v in result["median"].values())
    assert json.loads((tmp_path / "lt.json").read_text())["batches_per_run"] == 5


def test_multi_gpu_benchmark_smoke(tmp_path):
    import multi_gpu

    result = multi_gpu.main(["--smoke", "--out", str(tmp_path / "mg.json")])
    one, nan = result["runs"]["1 GPU"], result["runs"]["nan on one rank"]
    assert one["outcomes"] == ["finished"] and one["steps_timed"] == 4 and one["img_s"] > 0
    # the NaN written into a weight at step 3 stops training at that step, reported by the guard, not a hang
    assert nan["agreed"] and nan["non_finite"] == [{"rank": 0, "what": "training loss", "step": 3}]
    assert json.loads((tmp_path / "mg.json").read_text())["runs"].keys() == result["runs"].keys()


# ---- the fast path ---------------------------------------------------------------------------------------------

def test_fast_path_defaults_resolve_per_machine(tiny_spec):
    from trainer.fit import fast_path, resolve_precision

    spec = tiny_spec()
    assert spec.train.precision == "auto" and spec.train.compile is None and spec.train.channels_last is None
    assert spec.train.cudnn.benchmark is True and spec.train.cudnn.deterministic is False
    cpu = fast_path(spec, on_gpu=False)
    assert (cpu.precision, cpu.compile, cpu.channels_last) == ("fp32", False, False)
    spec.train.compile, spec.train.channels_last = False, True
    gpu = fast_path(spec, on_gpu=True)
    assert (gpu.compile, gpu.channels_last) == (False, True)
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, on_gpu=False) == explicit


def test_regional_compile_keeps_weight_names_and_evaluates_eagerly():
    from trainer.model import DepthAnythingV2, custom_encoder_config

    cfg = custom_encoder_config(embed_dim=32, depth=2, num_heads=2, features=16, out_channels=[8, 16, 32, 32])
    model = DepthAnythingV2("custom", custom=cfg, metric=True, max_depth=10.0).eval()
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        before = model(x)
    model.compile_regions()
    assert list(model.state_dict()) == keys and model.head_compiled and model.pretrained.blocks_compiled
    with torch.no_grad():  # eval runs the same modules eagerly: nothing to compile, same numbers
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def _module_with_fused_adamw(tiny_spec):
    from trainer.config import to_plain
    from trainer.module import DepthModule

    module = DepthModule(to_plain(tiny_spec(extra={"train": {"clip_grad_norm": 0.0}})))
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)  # fused, as configure_optimizers makes it on a GPU
    return module, params, opt


def test_nonfinite_step_is_skipped_on_device_and_raised_at_the_next_step(tiny_spec):
    from trainer.errors import NonFiniteLossError

    module, params, opt = _module_with_fused_adamw(tiny_spec)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    module._loss_finite = torch.tensor(True)
    module._last_paths = ["bad.jpg"]
    module.configure_gradient_clipping(opt)  # no host sync, no raise: the flag goes to the optimizer
    assert float(opt.found_inf) == 1.0
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, params)), "a non-finite step must not touch the weights"
    with pytest.raises(NonFiniteLossError) as exc:  # the next step (or validation, or the epoch end) raises
        module.configure_gradient_clipping(opt)
    assert exc.value.step == 0 and exc.value.samples == ["bad.jpg"] and exc.value.what == "gradient norm"


def test_finite_steps_update_and_leave_nothing_pending(tiny_spec):
    module, params, opt = _module_with_fused_adamw(tiny_spec)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    module._loss_finite = torch.tensor(True)
    module.configure_gradient_clipping(opt)
    assert float(opt.found_inf) == 0.0
    opt.step()
    assert not any(torch.equal(a, p) for a, p in zip(before, params))
    module.raise_pending_nonfinite()  # nothing raised
    assert module._pending_nonfinite is None
