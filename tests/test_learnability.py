"""The synthetic scenes carry depth cues a model can learn: a tiny network trained for about a minute on the CPU
beats predicting the training set's mean depth by a clear margin on held-out scenes.

What is trained: a small convolutional encoder-decoder (`TinyDepthNet`, 0.3 M parameters): a stride-2 stem, then a
four-level U-Net from half resolution (its receptive field spans the whole 60x80 input, which depth needs: a
wall's distance shows where it meets the floor, far from most of its pixels), batch norm, and an output bias set
to the training set's mean log-depth, so that training starts from the baseline it is compared with. L1 loss on
log depth, AdamW with a cosine decay (a quiet last iterate), 400 steps of 16 frames: a step count, not a time
budget, so the result does not depend on the machine's load (about 25-60 s on two busy cores, one torch thread).

Why not the project's Depth Anything V2 tiny ViT through `trainer.fit`: a from-scratch ViT needs more steps than
this budget gives (the demo's ViT took 1-2 CPU minutes to get 20-40% below the baseline; test_training.py checks
its gain over its own untrained start), and this test is about the data, not the model. Why not the earlier full-resolution
U-Net without normalisation, trained for 60 s of wall time: each step cost three times as much, it started from
an output of 1 m instead of the mean (its first ~100 steps went into the bias), and under load two torch threads
made steps 5-20x slower, so it got 20-250 steps and sat near the baseline.

Measured on CPU (8 runs: data seeds 0-5, training seeds 0-2): silog 0.60-0.66x and abs_rel 0.52-0.61x the
mean-depth baseline's, d1 +0.24 to +0.30. The test asks for 0.75x, 0.72x and +0.15.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.data.annotations import read_annotation_file
from trainer.data.depth_io import read_depth, read_image
from trainer.data.synth import generate_dataset
from trainer.metrics import MetricAccumulator

pytestmark = pytest.mark.slow

FRAMES = 480  # 60 scenes of 8 views: 48 for training, 12 held out
FRAME_SIZE = (120, 160)  # rendered
INPUT_SIZE = (60, 80)  # seen by the network (area-downsampled)
STEPS = 400
BATCH = 16
MAX_TRAIN_SECONDS = 240.0  # a guard for pathological machines only: normally 25-60 s


def load(split_file: Path, size: tuple[int, int] = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, h, w] in [0, 1] and depths [N, h, w] in metres (0 = invalid) of an annotation file."""
    rgbs, depths = [], []
    for s in read_annotation_file(split_file, require_depth=True):
        rgb = torch.from_numpy(read_image(s.image)).permute(2, 0, 1).float() / 255.0
        d = torch.from_numpy(read_depth(s.depth)[0] / 1000.0).float()
        rgbs.append(F.interpolate(rgb[None], size=size, mode="area")[0])
        depths.append(F.interpolate(d[None, None], size=size, mode="nearest")[0, 0])
    return torch.stack(rgbs), torch.stack(depths)


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                         nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())


class TinyDepthNet(nn.Module):
    """Stride-2 stem, U-Net over `levels` scales from half resolution; log depth at half resolution, upsampled."""

    def __init__(self, c: int = 16, levels: int = 4, mean_log_depth: float = 0.0):
        super().__init__()
        chs = [c * 2 ** min(k, 2) for k in range(levels)]
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.enc = nn.ModuleList([_block(c if k == 0 else chs[k - 1], chs[k]) for k in range(levels)])
        self.dec = nn.ModuleList([_block(chs[k + 1] + chs[k], chs[k]) for k in reversed(range(levels - 1))])
        self.out = nn.Conv2d(c, 1, 1)
        with torch.no_grad():
            self.out.bias.fill_(mean_log_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        feats = []
        for k, enc in enumerate(self.enc):
            x = enc(x if k == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            feats.append(x)
        for k, dec in enumerate(self.dec):
            skip = feats[-2 - k]
            x = dec(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return F.interpolate(self.out(x), size=size, mode="bilinear", align_corners=False)[:, 0]  # log depth


def score(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    acc = MetricAccumulator()
    for p, g in zip(pred, gt):
        acc.update(p, g, (g > 1e-3) & (g < 10))
    return acc.compute()


def train_and_score(data_dir: Path, *, data_seed: int = 0, train_seed: int = 0, steps: int = STEPS,
                    max_seconds: float = MAX_TRAIN_SECONDS, on_step: Optional[Callable] = None
                    ) -> tuple[dict[str, float], dict[str, float], dict]:
    """Generate the scenes, train `TinyDepthNet`; (mean-depth baseline, model, run info) on the held-out scenes.

    Runs torch on one thread: on two cores shared with other work, two intra-op threads made these small
    operations 5-20x slower (threads spinning at barriers while the other core was taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_and_score(data_dir, data_seed, train_seed, steps, max_seconds, on_step)
    finally:
        torch.set_num_threads(threads)


def _train_and_score(data_dir: Path, data_seed: int, train_seed: int, steps: int, max_seconds: float,
                     on_step: Optional[Callable]) -> tuple[dict[str, float], dict[str, float], dict]:
    start = time.perf_counter()
    generate_dataset(data_dir, FRAMES, size=FRAME_SIZE, seed=data_seed, layout="nyu", progress=False)
    x_tr, y_tr = load(data_dir / "train.txt")
    x_va, y_va = load(data_dir / "val.txt")  # scenes never seen in training
    valid_tr = (y_tr > 1e-3) & (y_tr < 10)
    mean_log = float(torch.log(y_tr[valid_tr]).mean())
    baseline = score(torch.full_like(y_va, mean_log).exp(), y_va)
    data_s = time.perf_counter() - start

    torch.manual_seed(train_seed)
    net = TinyDepthNet(mean_log_depth=mean_log)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # a quiet last iterate
    start, step = time.perf_counter(), 0
    while step < steps and time.perf_counter() - start < max_seconds:
        idx = torch.randint(0, len(x_tr), (BATCH,))
        x, y, m = x_tr[idx], y_tr[idx], valid_tr[idx]
        if torch.rand(()) < 0.5:
            x, y, m = x.flip(-1), y.flip(-1), m.flip(-1)
        loss = (net(x) - torch.log(y.clamp_min(1e-3)))[m].abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if on_step is not None:
            on_step(step, net)
    train_s = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        model = score(torch.exp(net(x_va)), y_va)
    return baseline, model, {"steps": step, "data_s": data_s, "train_s": train_s}


def test_tiny_model_beats_the_mean_depth_on_held_out_scenes(tmp_path):
    baseline, model, info = train_and_score(tmp_path)
    keys = ("d1", "abs_rel", "silog")
    print(f"\nmean-depth baseline: {({k: round(baseline[k], 3) for k in keys})}"
          f"\ntiny model ({info['steps']} steps, {info['train_s']:.0f} s; data {info['data_s']:.0f} s): "
          f"{({k: round(model[k], 3) for k in keys})}")
    assert info["steps"] >= 200, f"only {info['steps']} steps in {MAX_TRAIN_SECONDS:.0f} s: machine far too slow"
    assert model["silog"] < 0.75 * baseline["silog"]
    assert model["abs_rel"] < 0.72 * baseline["abs_rel"]
    assert model["d1"] > baseline["d1"] + 0.15
