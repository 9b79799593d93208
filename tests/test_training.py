"""Plain training (`trainer.fit`, `automl off`): it learns, it records, it resumes, and a diverging run can never
report success."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import status_lines, tiny_spec_tree, write_yaml
from trainer.errors import NonFiniteLossError
from trainer.fit import fit
from trainer.tracking import TrackingConfig


def mlflow_runs(results: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("depth_net_mono")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_short_training_lowers_validation_loss_and_records_everything(tiny_spec, tmp_path):
    spec = tiny_spec(epochs=4, lr=2e-3, results_dir=tmp_path / "run", extra={"train": {"initial_validation": True}})
    result = fit(spec, progress=False)
    out = tmp_path / "run"

    losses = [h["val/loss"] for h in result.history]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert result.initial_metrics["val/loss"] > min(losses)  # better than the untrained model
    assert min(losses[1:]) < losses[0]
    for key in ("val/d1", "val/abs_rel", "val/rmse", "train_loss"):
        assert key in result.history[-1]

    # files a user reads
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert result.best_value == pytest.approx(min(losses), rel=1e-6)
    assert (out / "spec.yaml").is_file()
    assert json.loads((out / "fit.json").read_text())["epochs_completed"] == 4
    lines = status_lines(out)
    assert lines[0]["status"] == "STARTED" and lines[-1]["status"] == "SUCCESS"
    running = [l for l in lines if l["status"] == "RUNNING" and l.get("epoch", -1) >= 0]
    assert len(running) == 4 and {"val/loss", "val/d1", "train_loss"} <= set(running[-1]["kpi"])

    # MLflow: one run with the spec's params and one point per epoch, never the deprecated file store
    client, runs = mlflow_runs(out)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.optim.lr"] == "0.002"
    assert len(client.get_metric_history(runs[0].info.run_id, "val/loss")) == 4
    assert not (Path.cwd() / "mlruns").exists()


def test_absurd_learning_rate_is_stopped_within_one_step(tiny_spec, tmp_path):
    out = tmp_path / "diverge"
    spec = tiny_spec(epochs=3, lr=1e6, results_dir=out, extra={"train": {"clip_grad_norm": 0.0}})
    with pytest.raises(NonFiniteLossError) as exc:
        fit(spec, progress=False)
    err = exc.value
    assert err.step <= 1, "the run must stop at the first non-finite step"
    assert err.samples and all(s.endswith(".jpg") for s in err.samples)  # names the batch's samples
    lines = status_lines(out)
    assert lines[-1]["status"] == "FAILURE" and lines[-1]["reason"] == "non_finite_loss"
    assert lines[-1]["step"] == err.step
    assert not any(l["status"] == "SUCCESS" for l in lines)
    _, runs = mlflow_runs(out)
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["failure_reason"] == "non_finite_loss"


def test_automl_off_exits_non_zero_on_divergence(synth_data, tmp_path, capsys):
    from automl.cli import EXIT_DIVERGED, main

    tree = tiny_spec_tree(synth_data, tmp_path / "cli", lr=1e6, extra={"train": {"clip_grad_norm": 0.0}})
    rc = main(["off", "-e", str(write_yaml(tmp_path / "spec.yaml", tree))])
    assert rc == EXIT_DIVERGED
    assert "training diverged" in capsys.readouterr().err


def test_resume_continues_from_the_last_checkpoint(tiny_spec, tmp_path):
    out = tmp_path / "resume"
    first = fit(tiny_spec(epochs=2, results_dir=out), progress=False)
    assert first.epochs_completed == 2
    spec = tiny_spec(epochs=3, results_dir=out,
                     extra={"train": {"resume_training_checkpoint_path": first.last_checkpoint}})
    second = fit(spec, progress=False)
    assert [int(h["epoch"]) for h in second.history] == [0, 1, 2]  # two restored, one new
    assert second.mlflow_run_id == first.mlflow_run_id  # the same MLflow run continues
    assert any("resumed at epoch 2" in l["message"] for l in status_lines(out))
    client, runs = mlflow_runs(out)
    assert len(runs) == 1
    assert len(client.get_metric_history(runs[0].info.run_id, "val/loss")) == 3


def test_evaluate_matches_validation_and_inference_writes_maps(tiny_spec, synth_data, tmp_path):
    from trainer.config import build_spec
    from trainer.evaluate import evaluate
    from trainer.infer import inference

    out = tmp_path / "ev"
    result = fit(tiny_spec(epochs=1, results_dir=out), progress=False)
    spec = build_spec({
        "results_dir": str(out),
        "evaluate": {"checkpoint": result.best_checkpoint},
        "inference": {"checkpoint": result.best_checkpoint, "save_raw_pfm": True},
        "dataset": {"test_dataset": {"data_sources": [{"data_file": str(synth_data / "val.txt"),
                                                        "dataset_name": "NYUDV2"}], "batch_size": 4, "workers": 0},
                    "infer_dataset": {"data_root": str(synth_data / "scene_000"), "batch_size": 2, "workers": 0}},
    }, action="evaluate", notice=lambda _m: None)
    ev = evaluate(spec, progress=False)
    # same model, same pre-processing (taken from the checkpoint), same metrics as training's validation
    for key in ("d1", "abs_rel", "rmse"):
        assert ev["metrics"][key] == pytest.approx(result.history[-1][f"val/{key}"], abs=1e-4)
    saved = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert saved["num_images"] == ev["num_images"] > 0

    inf = inference(spec, progress=False)
    assert inf["images"], "no image was processed"
    from PIL import Image

    from trainer.data.depth_io import read_pfm

    for item in inf["images"]:
        assert Image.open(item["depth_png"]).size == (80, 64)  # the input image's own size
        depth, _ = read_pfm(item["raw"])
        assert depth.shape == (64, 80) and (depth > 0).all() and (depth < 10.0).all()


def test_relative_model_trains_and_scores(tiny_spec, tmp_path):
    result = fit(tiny_spec(epochs=1, model_type="RelativeDepthAnything", results_dir=tmp_path / "rel"),
                 progress=False)
    last = result.history[-1]
    assert math.isfinite(last["val/loss"]) and 0.0 <= last["val/d1"] <= 1.0


def test_warmup_is_applied_and_schedules_decay():
    from omegaconf import OmegaConf

    from trainer.config.schema import OptimConfig
    from trainer.schedules import lr_factor_fn

    optim = OmegaConf.structured(OptimConfig(lr=1e-4, warmup_steps=10, lr_scheduler="LambdaLR", min_lr=1e-7))
    f = lr_factor_fn(optim, total_steps=100)
    assert f(0) == pytest.approx(0.1 * (1 - 0 / 100) ** 0.9)
    assert f(4) == pytest.approx(0.5 * (1 - 4 / 100) ** 0.9)
    assert f(50) == pytest.approx((1 - 50 / 100) ** 0.9)
    assert f(100) == pytest.approx(1e-3)  # floored at min_lr / lr
    optim.lr_scheduler, optim.lr_steps, optim.warmup_steps = "MultiStepLR", [30, 60], 0
    f = lr_factor_fn(optim, total_steps=100)
    assert (f(29), f(30), f(60)) == (pytest.approx(1.0), pytest.approx(0.1), pytest.approx(0.01))


def test_gradients_are_clipped_by_l2_norm(tiny_spec, tmp_path):
    from trainer.config import to_plain
    from trainer.module import DepthModule

    module = DepthModule(to_plain(tiny_spec(extra={"train": {"clip_grad_norm": 0.5}})))
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for p in module.parameters():
        p.grad = torch.full_like(p, 3.0) if p.requires_grad else None
    module._loss_finite = torch.tensor(True)
    module.configure_gradient_clipping(opt)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in module.parameters() if p.grad is not None))
    assert total.item() == pytest.approx(0.5, rel=1e-4)


def test_gradient_accumulation_halves_optimizer_steps(tiny_spec, tmp_path):
    one = fit(tiny_spec(epochs=1, results_dir=tmp_path / "a"), progress=False)
    two = fit(tiny_spec(epochs=1, results_dir=tmp_path / "b", extra={"train": {"accumulate_grad_batches": 2}}),
              progress=False)
    steps = lambda r: torch.load(r.last_checkpoint, weights_only=True)["global_step"]  # noqa: E731
    assert steps(two) == math.ceil(steps(one) / 2)  # the last partial accumulation still steps


def test_unwritable_results_dir_fails_before_training(tiny_spec, tmp_path):
    from trainer.errors import UserError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as exc:
        fit(tiny_spec(results_dir=blocker / "sub"), progress=False)
    assert f"{blocker} is a file, not a folder" in str(exc.value) and "results_dir" in str(exc.value)
