"""The depth_net_mono skill: Depth Anything V2 (relative or metric) through `trainer/`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig

from automl.skills.base import Reporter, Skill

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

# The embedded default: a tiny ViT + DPT trained from scratch on synthetic NYU-style rooms, sized so that the
# demo runs on a 2-core CPU in minutes. Everything else keeps the spec defaults (TAO's).
DEMO_DATA = {"num": 480, "size": (120, 160), "seed": 0, "layout": "nyu"}


def demo_spec_tree(results_dir: str = "results/demo") -> dict[str, Any]:
    data = Path(results_dir) / "data"
    aug = {"crop_size": [112, 154], "color_aug_prob": 0.5, "pipeline": "full"}  # full: flips, colour and scale jitter
    return {
        "results_dir": results_dir,
        "model": {
            "model_type": "MetricDepthAnything",
            "encoder": "custom",
            "custom": {"embed_dim": 96, "depth": 4, "num_heads": 3, "features": 32, "out_channels": [24, 48, 96, 96]},
        },
        "dataset": {
            "min_depth": 0.001,
            "max_depth": 10.0,
            "train_dataset": {"data_sources": [{"data_file": str(data / "train.txt"), "dataset_name": "NYUDV2"}],
                              "batch_size": 8, "workers": 1, "pin_memory": False, "augmentation": aug},
            "val_dataset": {"data_sources": [{"data_file": str(data / "val.txt"), "dataset_name": "NYUDV2"}],
                            "batch_size": 8, "workers": 0, "pin_memory": False, "augmentation": aug},
        },
        "train": {
            "num_epochs": 12,
            "num_threads": 1,  # a 2-core CPU: one thread for the model, one for the data loader
            "seed": 0,
            "checkpoint_interval": 1,
            "initial_validation": True,
            "clip_grad_norm": 1.0,
            "optim": {"lr": 1e-3, "head_lr_multiplier": 2.0, "weight_decay": 0.01, "lr_scheduler": "LambdaLR",
                      "warmup_steps": 20},
        },
        "automl": {"num_trials": 6, "max_concurrent": 2, "cpus_per_trial": 1, "scheduler": "asha",
                   "grace_period": 2},
    }


def ensure_demo_data(results_dir: str) -> Path:
    """Generate the demo's synthetic scenes once (deterministic by seed) under RESULTS_DIR/data."""
    from trainer.data.synth import generate_dataset

    data = Path(results_dir) / "data"
    if (data / "train.txt").is_file() and (data / "val.txt").is_file():
        return data
    log.info(f"generating {DEMO_DATA['num']} synthetic RGB-D frames in {data} (once)")
    generate_dataset(str(data), DEMO_DATA["num"], size=DEMO_DATA["size"], seed=DEMO_DATA["seed"],
                     layout=DEMO_DATA["layout"], progress=True)
    return data


def _results_dir_override(overrides: Sequence[str]) -> Optional[str]:
    for item in overrides:
        if item.startswith("results_dir="):
            return item.split("=", 1)[1]
    return None


class DepthNetMono(Skill):
    name = "depth_net_mono"
    summary = "Depth Anything V2 monocular depth (RelativeDepthAnything / MetricDepthAnything)"

    def load_spec(self, path: Optional[str], overrides: Sequence[str], action: str) -> DictConfig:
        from trainer.config import load_spec

        if path is None:
            results_dir = _results_dir_override(overrides) or "results/demo"
            ensure_demo_data(results_dir)
            return load_spec(None, overrides, action=action, base=demo_spec_tree(results_dir))
        return load_spec(path, overrides, action=action)

    def with_overrides(self, spec: DictConfig, values: Mapping[str, Any], *,
                       base_dir: Optional[str] = None) -> DictConfig:
        from trainer.config import with_overrides

        return with_overrides(spec, values, action="train", base_dir=base_dir)

    def known_key(self, dotted: str) -> bool:
        from trainer.config import known_key

        return known_key(dotted)

    def nearest_key(self, dotted: str) -> Optional[str]:
        from trainer.config import nearest_key

        return nearest_key(dotted)

    def default_search_space(self) -> Path:
        return REPO_ROOT / "search_spaces" / "depth_net_mono.yaml"

    # ---- actions ------------------------------------------------------------------------------------------
    def preflight(self, spec: DictConfig) -> list[str]:
        from trainer.preflight import check_before_training

        return check_before_training(spec)

    def input_paths(self, spec: DictConfig) -> dict[str, str]:
        from trainer.preflight import input_paths

        return input_paths(spec)

    def fit(self, spec: DictConfig, reporter: Optional[Reporter] = None, *, tracking: Any = None,
            tracking_uri: Optional[str] = None, progress: Optional[bool] = None, quiet: bool = False,
            callbacks: Sequence[Any] = (), ranks: int = 0, timings: Optional[dict[str, Any]] = None) -> Any:
        from trainer.fit import fit
        from trainer.tracking import TrackingConfig

        if tracking is None:
            tracking = TrackingConfig(uri=tracking_uri, experiment_name=spec.automl.experiment_name)
        return fit(spec, reporter, tracking=tracking, progress=progress, quiet=quiet, callbacks=callbacks,
                   ranks=ranks, timings=timings)

    def storage_needed(self, spec: DictConfig, runs: int = 1) -> tuple[int, str]:
        from trainer.disk import run_bytes

        return run_bytes(spec, runs=runs)

    def curated_params(self, spec: DictConfig) -> dict[str, Any]:
        from trainer.tracking import curated_params

        return curated_params(spec)

    def fault_callbacks(self, hooks: Sequence[Any], trial_index: int, trial_dir: str | Path) -> list[Any]:
        from automl.skills.lightning_faults import fault_callbacks

        return fault_callbacks(hooks, trial_index, trial_dir)

    def predict_samples(self, spec_file: str | Path, checkpoint: str | Path, num_images: int) -> Any:
        from trainer.samples import predict_samples

        return predict_samples(spec_file, checkpoint, num_images)

    def warm_imports(self) -> tuple[str, ...]:
        return ("pytorch_lightning", "timm", "trainer.fit", "trainer.module", "trainer.model", "trainer.data")

    def probe_training(self, spec: DictConfig, steps: int, warmup: int) -> Optional[Mapping[str, Any]]:
        from trainer.probe import measure_training

        return measure_training(spec, steps=steps, warmup=warmup).to_dict()

    def print_fit_summary(self, spec: DictConfig, result: Any) -> None:
        last = result.history[-1] if result.history else {}
        shown = "  ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("epoch", "lr"))
        log.info(f"\ntraining finished: {result.epochs_completed} epochs in {result.wall_time_s:.0f} s")
        if result.initial_metrics:
            before = "  ".join(f"{k}={v:.4g}" for k, v in result.initial_metrics.items())
            log.info(f"  before training:  {before}")
        if shown:
            log.info(f"  final:            {shown}")
        if result.best_value is not None:
            log.info(f"  best {result.monitor}:   {result.best_value:.4g} (epoch {result.best_epoch})")
        log.info(f"  best checkpoint:  {result.best_checkpoint}")
        log.info(f"  last checkpoint:  {result.last_checkpoint}")
        log.info(f"  status:           {Path(result.results_dir) / 'status.json'}")
        if result.tracking_uri:
            log.info(f"  MLflow run:       {result.mlflow_run_id} in {result.tracking_uri}")
        if result.tracking_failures:
            log.info(f"  MLflow problems:  {len(result.tracking_failures)} (first: {result.tracking_failures[0]})")
        if result.skipped_samples:
            log.info(f"  skipped samples:  {result.skipped_samples}")

    def evaluate(self, spec: DictConfig) -> Mapping[str, float]:
        from trainer.evaluate import evaluate

        return evaluate(spec)

    def inference(self, spec: DictConfig) -> Any:
        from trainer.infer import inference

        return inference(spec)

    def export(self, spec: DictConfig) -> Any:
        from trainer.deploy.onnx import export_onnx

        return export_onnx(spec)

    def validated_input_size(self, spec: DictConfig) -> dict[str, Any]:
        height, width = (int(v) for v in spec.dataset.val_dataset.augmentation.crop_size)
        return {"export.input_height": height, "export.input_width": width}

    def engine_available(self) -> tuple[bool, str]:
        from trainer.deploy.tensorrt import tensorrt_status

        return tensorrt_status()

    def gen_trt_engine(self, spec: DictConfig) -> Any:
        from trainer.deploy.tensorrt import build_engine

        return build_engine(spec)

    # ---- data tools ---------------------------------------------------------------------------------------
    def synthesize(self, out: str, num: int, size: tuple[int, int], seed: int, layout: str,
                   val_fraction: float) -> Any:
        from trainer.data.synth import generate_dataset

        return generate_dataset(out, num, size=size, seed=seed, layout=layout, val_fraction=val_fraction,
                                progress=True)

    def convert(self, spec_path: str, overrides: Sequence[str]) -> Any:
        from trainer.data.convert import convert, load_convert_spec

        return convert(load_convert_spec(spec_path, overrides))

    def validate(self, spec_path: Optional[str], overrides: Sequence[str], action: str) -> Any:
        from trainer.config.validate import validate

        return validate(spec_path, overrides, action)
