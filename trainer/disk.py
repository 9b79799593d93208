"""Where a training run writes (`results_dir_of`) and what it writes to disk, estimated before it starts (the
pre-flight room check of a run and of a search). Imports torch and the model code only when asked, never Lightning:
a search's driver calls it before Ray starts, and Lightning's import alone took 5.6-7.8 s there."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

# what a run keeps on disk: last.ckpt, best.ckpt and the temporary file of the checkpoint being written
CHECKPOINTS_ON_DISK = 3
RUN_MARGIN_BYTES = 16 * 2**20  # status.json, spec, logs, MLflow rows, the disk reserve


def checkpoint_bytes(spec: DictConfig) -> int:
    """Estimated size of one training checkpoint of `spec`'s model: fp32 weights and buffers plus AdamW's two
    moments per trained parameter. The network is built on the meta device (no memory, well under a second)."""
    import torch

    from trainer.model.depth_anything import build_model

    with torch.device("meta"):
        model = build_model(spec)
    total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * (total + 2 * trained)


def run_bytes(spec: DictConfig, runs: int = 1) -> tuple[int, str]:
    """What `runs` training runs of `spec` write at most (checkpoints x kept + a margin), and how that was counted."""
    one = checkpoint_bytes(spec)
    need = runs * (CHECKPOINTS_ON_DISK * one + RUN_MARGIN_BYTES)
    who = f"{runs} runs x " if runs > 1 else ""
    return need, (f"{who}{CHECKPOINTS_ON_DISK} checkpoints of {one / 2**20:.1f} MiB (last, best, the one being "
                  f"written) + {RUN_MARGIN_BYTES // 2**20} MiB for records")


def results_dir_of(spec: DictConfig) -> Path:
    """Training writes to `train.results_dir` when set (TAO), else the spec's `results_dir`."""
    return Path(spec.train.results_dir or spec.results_dir)
