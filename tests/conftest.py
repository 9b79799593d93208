"""Shared fixtures: a small synthetic NYU-style dataset and tiny model specs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

# one torch thread per test process: on 2 (often busy) cores more threads only oversubscribe
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """The library's messages reach the terminal as under the CLI (automl.logs), also in tests that call a
    function of the library without `automl.cli.main`."""
    from automl import logs

    logs.configure()

TINY_MODEL = {
    "model_type": "MetricDepthAnything",
    "encoder": "custom",
    "custom": {"embed_dim": 32, "depth": 2, "num_heads": 2, "features": 16, "out_channels": [8, 16, 32, 32]},
}
FRAME = (64, 80)
CROP = [56, 70]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """48 NYU-layout frames (rgb_*.jpg + sync_depth_*.png in millimetres) with train.txt / val.txt by scene."""
    from trainer.data.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 48, size=FRAME, seed=0, layout="nyu", progress=False)
    return out


def tiny_spec_tree(data: Path, results_dir: Path, *, epochs: int = 1, lr: float = 1e-3,
                   model_type: str = "MetricDepthAnything", extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A plain spec mapping for a tiny model on `synth_data` (NYU names switched to relative when asked)."""
    relative = model_type == "RelativeDepthAnything"
    name = "NYUDV2Relative" if relative else "NYUDV2"
    aug = {"crop_size": list(CROP)}
    tree: dict[str, Any] = {
        "results_dir": str(results_dir),
        "model": {**TINY_MODEL, "model_type": model_type},
        "dataset": {
            "train_dataset": {"data_sources": [{"data_file": str(data / "train.txt"), "dataset_name": name}],
                              "batch_size": 8, "workers": 0, "augmentation": aug},
            "val_dataset": {"data_sources": [{"data_file": str(data / "val.txt"), "dataset_name": name}],
                            "batch_size": 8, "workers": 0, "augmentation": aug},
        },
        "train": {"num_epochs": epochs, "seed": 0, "clip_grad_norm": 1.0, "log_every_n_steps": 1,
                  "optim": {"lr": lr, "head_lr_multiplier": 2.0, "weight_decay": 0.01,
                            "lr_scheduler": "Constant", "warmup_steps": 0}},
    }
    if not relative:
        tree["dataset"].update(min_depth=0.001, max_depth=10.0)
    if extra:
        _deep_update(tree, extra)
    return tree


def search_space_text(diverge: bool = True) -> str:
    """A search space over lr and weight decay. With `diverge`, lr spans a diverging region and the first proposed
    point sits in it, so one trial really diverges; without, every lr trains."""
    high = "1.0e+6" if diverge else "3.0e-3"
    text = f"""
objective: {{metric: val/loss, mode: min}}
parameters:
  train.optim.lr: {{type: float, low: 1.0e-4, high: {high}, log: true}}
  train.optim.weight_decay: {{type: float, low: 1.0e-4, high: 0.1, log: true}}
"""
    if diverge:
        text += "initial_points:\n  - {train.optim.lr: 1.0e+6}\n"
    return text


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


@pytest.fixture
def tiny_spec(synth_data, tmp_path):
    """Factory: tiny_spec(epochs=..., lr=..., model_type=..., extra={...}) -> validated DictConfig."""
    from trainer.config import build_spec

    def make(**kwargs: Any):
        results = kwargs.pop("results_dir", tmp_path / "results")
        return build_spec(tiny_spec_tree(synth_data, results, **kwargs), action="train",
                          notice=lambda _m: None)

    return make


def write_yaml(path: Path, tree: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def status_lines(folder: Path) -> list[dict[str, Any]]:
    """The TAO-style status.json of a results folder, one dict per line."""
    import json

    return [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(uri: str, timeout: float) -> None:
    """Wait until an MLflow server at `uri` answers /health."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{uri} did not come up in {timeout} s")


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `mnt` (created) with mount `options` (e.g. "size=24m", "ro,size=1m") for the test, and
    unmounted after it; skips the test where mounting is refused (it needs root / CAP_SYS_ADMIN)."""
    import subprocess

    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(reason=f"cannot mount a tmpfs ({options}) here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
