"""Training throughput of Depth Anything V2 finetuning: the original recipe against this trainer's fast path.

For each encoder (vits, vitb, vitl at 518x518, one process, one GPU) it measures images/s of
  (a) the reference: the original metric recipe step (the original `depth_anything_v2` code, fp32, eager, AdamW
      with the head at 10x lr and poly decay, the original SiLog loss with boolean-mask indexing), and
  (b) ours: `DepthModule` driven by a Lightning `Trainer` built as `trainer.fit` builds it (precision, accelerator,
      fast path from `trainer.fit.fast_path`/`apply_fast_path`), with the same model, data and recipe,
plus named ablations of (b). Both read the same batches, in the same order, from a DataLoader (pinned memory,
worker processes) over synthetic rooms held in memory (`trainer.data.synth.render_frame`), so the data pipeline
is not what is measured here (benchmarks/dataloader.py measures it).

Timing: CUDA events at the start of every step; warm-up steps (and compilation) excluded; the median over windows
of steps. Compilation is reported separately (wall time to the end of the first step). FLOPs per image (forward +
backward at the measured size, batch 1) are counted with torch.utils.flop_counter.FlopCounterMode on the meta
device; MFU = FLOPs/image * images/s / the GPU's dense bf16 datasheet peak (989.4 TFLOP/s for an H100 SXM).

Convergence: (a) and (ours) train `--conv-steps` steps from the same initial weights on the same batches; the
final training losses (mean of the last 10 steps) are reported side by side.

    python benchmarks/train_throughput.py --out results/bench/throughput.json           # GPU: the full table
    python benchmarks/train_throughput.py --smoke --out /tmp/tp.json                   # CPU smoke (tests)
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s. MFU is reported against these.
DENSE_BF16_PEAK = {
    "H100 SXM": 989.4e12,  # "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756.5e12,
    "H100 NVL": 835.5e12,
    "H200": 989.4e12,
    "A100": 312e12,
}


def gpu_peak(name: str) -> tuple[Optional[float], str]:
    """(dense bf16 peak FLOP/s, which datasheet entry) for a CUDA device name; (None, '') when unknown."""
    n = name.upper()
    if "H200" in n:
        return DENSE_BF16_PEAK["H200"], "H200"
    if "H100" in n:
        if "PCIE" in n:
            return DENSE_BF16_PEAK["H100 PCIe"], "H100 PCIe"
        if "NVL" in n:
            return DENSE_BF16_PEAK["H100 NVL"], "H100 NVL"
        return DENSE_BF16_PEAK["H100 SXM"], "H100 SXM"
    if "A100" in n:
        return DENSE_BF16_PEAK["A100"], "A100"
    return None, ""


def environment() -> dict[str, Any]:
    """What the numbers were measured on: GPU model, driver-visible facts, software versions, date, command."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "device": "cpu",
    }
    try:
        import pytorch_lightning as pl

        env["lightning"] = pl.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        peak, entry = gpu_peak(props.name)
        env.update(device="cuda", gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   sm_count=props.multi_processor_count, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), bf16_peak_tflops=peak / 1e12 if peak else None,
                   bf16_peak_source=f"datasheet dense bf16, {entry}" if entry else "unknown GPU")
    return env


class Clock:
    """Marks on the GPU stream (CUDA events) or the host clock (CPU); `elapsed_ms(a, b)` after `sync()`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def elapsed_ms(self, a: Any, b: Any) -> float:
        if self.cuda:
            return float(a.elapsed_time(b))
        return (b - a) * 1e3


def window_step_ms(clock: Clock, marks: Sequence[Any], warmup: int, window: int,
                   stop: Optional[int] = None) -> list[float]:
    """Mean step time (ms) of consecutive windows of `window` steps, from step `warmup` to `stop` (exclusive);
    `marks[i]` is the start of step i and `marks[n]` the end of the last step."""
    stop = len(marks) - 1 if stop is None else min(stop, len(marks) - 1)
    out = []
    i = warmup
    while i + window <= stop:
        out.append(clock.elapsed_ms(marks[i], marks[i + window]) / window)
        i += window
    if not out and stop > warmup:  # fewer steps than one window: one shorter window
        out.append(clock.elapsed_ms(marks[warmup], marks[stop]) / (stop - warmup))
    return out


def median(values: Iterable[float]) -> Optional[float]:
    v = list(values)
    return statistics.median(v) if v else None


def spread(values: Iterable[float]) -> Optional[float]:
    """(max - min) / median of the windows: how far apart repeated measurements of one setting are."""
    v = list(values)
    if len(v) < 2:
        return None
    m = statistics.median(v)
    return (max(v) - min(v)) / m if m else None


def write_json(path: Optional[str | Path], data: Any) -> None:
    """Write (atomically replace) a JSON file: called after every section so a timeout still leaves data."""
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(p)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text (also Markdown) table of `rows` with (key, header) columns."""
    head = [h for _, h in columns]
    body = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def free_cuda() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


# ----------------------------------------------------------------------------------------------------------------
# model FLOPs
# ----------------------------------------------------------------------------------------------------------------

def count_flops(model_tree: dict[str, Any], size: tuple[int, int], max_depth: float = 20.0) -> dict[str, float]:
    """FLOPs of one training step of one image (forward + backward) and of the forward alone, on the meta device
    (shapes only: exact counts, no compute). Matmuls, convolutions and attention are counted
    (torch.utils.flop_counter), as MFU conventions do; elementwise work is not."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.model import build_model

    spec = {"model": model_tree, "dataset": {"max_depth": max_depth}}
    with torch.device("meta"):
        model = build_model(spec)
        x = torch.randn(1, 3, *size)
    model.train()
    fwd = FlopCounterMode(display=False)
    with fwd:
        model(x)
    total = FlopCounterMode(display=False)
    with total:
        model(x).sum().backward()
    per_module = total.get_flop_counts()
    return {"train_flops_per_image": float(total.get_total_flops()),
            "forward_flops_per_image": float(fwd.get_total_flops()),
            "backbone_train_flops": float(sum(per_module.get("DepthAnythingV2.pretrained", {}).values())),
            "head_train_flops": float(sum(per_module.get("DepthAnythingV2.depth_head", {}).values()))}


# ----------------------------------------------------------------------------------------------------------------
# data: synthetic rooms in memory, served by a real DataLoader
# ----------------------------------------------------------------------------------------------------------------

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _render(args: tuple[int, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    from trainer.data.synth import render_frame

    return render_frame(args[0], args[1])


def render_nyu(folder: Path, frames: int, frame_size: str, crop: str, **kwargs: Any) -> tuple[int, int]:
    """Render `frames` synthetic NYU-layout scenes of `frame_size` ("HxW") into `folder`; returns `crop` as (h, w)."""
    from trainer.data.synth import generate_dataset

    fh, fw = (int(v) for v in frame_size.split("x"))
    generate_dataset(folder, frames, size=(fh, fw), seed=0, layout="nyu", progress=False, **kwargs)
    ch, cw = (int(v) for v in crop.split("x"))
    return ch, cw


def synth_pool(n: int, size: tuple[int, int], seed: int = 0, processes: Optional[int] = None) -> dict[str, torch.Tensor]:
    """n rendered rooms: normalised images [n, 3, H, W] float32 and depth [n, H, W] metres."""
    jobs = [(seed * 100003 + i, size) for i in range(n)]
    procs = processes if processes is not None else min(n, os.cpu_count() or 1)
    if procs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:
            frames = pool.map(_render, jobs)
    else:
        frames = [_render(j) for j in jobs]
    rgb = torch.from_numpy(np.stack([f[0] for f in frames])).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    depth = torch.from_numpy(np.stack([f[1] for f in frames])).float()
    return {"image": ((rgb - mean) / std).contiguous(), "depth": depth}


class PoolDataset(torch.utils.data.Dataset):
    """Whole batches in the trainer's batch format (image, depth, valid, path, index), collated once in advance
    (from `permutations` shuffles of the pool) and pinned on a GPU machine; item i is batch `order[i]`, the same
    sequence for every run. Serving a batch costs nothing on the host, so the step is what is timed (collating
    float images in the step loop costs tens of ms per batch on a VM's page faults: benchmarks/dataloader.py
    measures the real pipeline)."""

    def __init__(self, pool: dict[str, torch.Tensor], batches: int, batch: int, min_depth: float, max_depth: float,
                 seed: int = 0, permutations: int = 4):
        n = pool["image"].shape[0]
        g = torch.Generator().manual_seed(seed)
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(permutations)])
        per = len(idx) // batch
        if per < 1:
            raise ValueError(f"a pool of {n} frames makes no batch of {batch}")
        pin = torch.cuda.is_available()
        self.batches = []
        for b in range(per):
            sel = idx[b * batch:(b + 1) * batch]
            depth = pool["depth"][sel].contiguous()
            valid = (depth >= min_depth) & (depth <= max_depth)
            item = {"image": pool["image"][sel].contiguous(), "depth": depth, "valid": valid}
            if pin:
                item = {k: v.pin_memory() for k, v in item.items()}
            item["path"] = [f"synth_{int(j)}.jpg" for j in sel]
            item["index"] = sel.clone()
            self.batches.append(item)
        self.order = torch.randint(0, per, (batches,), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[self.order[i]]


def make_loader(ds: PoolDataset, batch: int, workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches as they are (already collated and pinned), in the main process."""
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=0,
                                       collate_fn=lambda b: b)


# ----------------------------------------------------------------------------------------------------------------
# (a) the reference: the original metric training step
# ----------------------------------------------------------------------------------------------------------------

def original_silog(pred: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor, lambd: float = 0.5):
    """The original metric_depth SiLogLoss, verbatim in substance (boolean indexing, no epsilon)."""
    valid_mask = valid_mask.detach()
    diff_log = torch.log(target[valid_mask]) - torch.log(pred[valid_mask])
    return torch.sqrt(torch.pow(diff_log, 2).mean() - lambd * torch.pow(diff_log.mean(), 2))


def reference_model(model_tree: dict[str, Any], state: dict[str, torch.Tensor], max_depth: float
                    ) -> tuple[torch.nn.Module, str]:
    """The original Depth Anything V2 network (package depth_anything_v2) with the metric head's final Sigmoid,
    loaded with `state`; its forward returns sigmoid output, which the step multiplies by max_depth as the original
    metric model does. Falls back to this project's model in fp32 with the original's explicit (non-SDPA)
    attention when the original cannot be built (custom encoders, missing package); says which."""
    from trainer.model import ENCODER_CONFIGS

    enc = model_tree["encoder"]
    if enc in ENCODER_CONFIGS:
        try:
            from depth_anything_v2.dpt import DepthAnythingV2 as Original

            c = ENCODER_CONFIGS[enc]
            model = Original(encoder=enc, features=c.features, out_channels=list(c.out_channels))
            model.depth_head.scratch.output_conv2[3] = torch.nn.Sigmoid()  # metric head: ReLU -> Sigmoid
            model.load_state_dict(state, strict=True)
            return model, "original depth_anything_v2 code (metric head), fp32 eager"
        except Exception as exc:  # noqa: BLE001 - fall back, and say so in the results
            reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "custom encoder"
    from trainer.model import build_model

    model = build_model({"model": model_tree, "dataset": {"max_depth": 1.0}})
    model.depth_head.scratch.output_conv2[3] = torch.nn.Sigmoid()
    model.is_metric = False  # sigmoid output; the step multiplies by max_depth
    for block in model.pretrained.blocks:
        block.attn.fused_attn = False  # explicit softmax attention, as the original without xFormers
    model.load_state_dict(state, strict=True)
    return model, f"this project's model in the original's form (fp32, explicit attention; {reason})"


def run_reference(model_tree: dict[str, Any], state: dict[str, torch.Tensor], loader, device: torch.device, *,
                  steps: int, lr: float, max_depth: float, min_depth: float, max_seconds: float,
                  warmup: int, window: int) -> dict[str, Any]:
    """The original recipe's loop: fp32, AdamW (backbone lr, head 10x), poly decay 0.9, SiLog over the valid mask."""
    free_cuda()
    torch.backends.cudnn.benchmark = True  # the original metric train.py sets it
    torch.backends.cudnn.deterministic = False
    model, impl = reference_model(model_tree, state, max_depth)
    model.to(device).train()
    groups = [{"params": [p for n, p in model.named_parameters() if "pretrained" in n], "lr": lr},
              {"params": [p for n, p in model.named_parameters() if "pretrained" not in n], "lr": lr * 10.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    clock = Clock(device)
    marks, losses = [], []
    started = time.perf_counter()
    first_step_s = None
    for it, batch in enumerate(loader):
        if it >= steps:
            break
        marks.append(clock.mark())
        img = batch["image"].to(device, non_blocking=True)
        depth = batch["depth"].to(device, non_blocking=True)
        valid = batch["valid"].to(device, non_blocking=True)
        now = lr * (1 - it / steps) ** 0.9
        opt.param_groups[0]["lr"] = now
        opt.param_groups[1]["lr"] = now * 10.0
        opt.zero_grad()
        pred = model(img) * max_depth
        loss = original_silog(pred, depth, valid & (depth >= min_depth) & (depth <= max_depth))
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if it == 0:
            clock.sync()
            first_step_s = time.perf_counter() - started
        if time.perf_counter() - started > max_seconds:
            break
    marks.append(clock.mark())
    clock.sync()
    done = len(losses)
    windows = window_step_ms(clock, marks, warmup, window)
    out = {"impl": impl, "steps": done, "losses": [float(v) for v in torch.stack(losses).cpu()],
           "window_step_ms": windows, "step_ms": median(windows), "spread": spread(windows),
           "first_step_s": first_step_s, "peak_mem_gib": peak_memory_gib(),
           "truncated_by_time": done < steps}
    del model, opt
    free_cuda()
    return out


# ----------------------------------------------------------------------------------------------------------------
# (b) ours: DepthModule driven by Lightning as trainer.fit drives it
# ----------------------------------------------------------------------------------------------------------------

# Named settings of our step. `fast` is what trainer.fit does on a GPU with the defaults; the others are ablations.
VARIANTS: dict[str, dict[str, Any]] = {
    "fast": {},
    "fast_sync": {"defer_nonfinite_check": False},  # the non-finite guard reads its flag in every step
    "fast_nocl": {"channels_last": False},
    "fast_nocompile": {"compile": False},
    "fast_detcudnn": {"cudnn_benchmark": False, "cudnn_deterministic": True},  # TAO's cuDNN defaults
    "fast_fullcompile": {"compile": "full"},
    # the compiled regions replayed as CUDA graphs (Inductor's "reduce-overhead"): fewer kernel launches from the
    # host, for small encoders at small batch where the step is host-bound (docs/benchmarks.md, vits batch 4)
    "fast_cudagraphs": {"compile": "reduce-overhead"},
    "fast_interp": {"matmul_upsample": False},  # the head's upsampling through F.interpolate (atomic-add backward)
    # the trainer before this work with bf16 switched on: bf16 autocast + SDPA + fused AdamW, eager, contiguous
    # head, TAO's cuDNN settings (benchmark off, deterministic on), a host sync per step
    "bf16_eager_old": {"compile": False, "channels_last": False, "cudnn_benchmark": False,
                       "cudnn_deterministic": True, "defer_nonfinite_check": False, "matmul_upsample": False},
    "fp32_ours": {"precision": "fp32", "compile": False, "channels_last": False},
}


def our_spec_tree(model_tree: dict[str, Any], *, lr: float, max_depth: float, min_depth: float, batch: int,
                  results_dir: str) -> dict[str, Any]:
    """The spec of run (b): the original recipe's optimisation in this project's keys (defaults elsewhere)."""
    return {
        "results_dir": results_dir,
        "model": model_tree,
        "dataset": {"min_depth": min_depth, "max_depth": max_depth,
                    "train_dataset": {"batch_size": batch}},
        "train": {"clip_grad_norm": 0.0, "seed": 0,
                  "optim": {"optimizer": "AdamW", "lr": lr, "head_lr_multiplier": 10.0, "weight_decay": 0.01,
                            "betas": [0.9, 0.999], "lr_scheduler": "LambdaLR", "poly_power": 0.9,
                            "warmup_steps": 0, "min_lr": 0.0}},
    }


class StepTimer:
    """Lightning callback: a clock mark at the start of every step, the loss of every step (kept on the device),
    a sync after the first steps only (to time compilation), an optional profiler over a few late steps."""

    def __new__(cls, *args, **kwargs):  # subclass pl.Callback lazily (import cost) but keep isinstance working
        import pytorch_lightning as pl

        klass = type("StepTimerCallback", (cls, pl.Callback), {})
        obj = object.__new__(klass)
        return obj

    def __init__(self, clock: Clock, started: float, profile_at: Optional[int] = None, profile_steps: int = 3):
        self.clock, self.started = clock, started
        self.marks: list[Any] = []
        self.losses: list[torch.Tensor] = []
        self.first_step_s: Optional[float] = None
        self.second_step_s: Optional[float] = None
        self.profile_at, self.profile_steps = profile_at, profile_steps
        self.profiler = None
        self.profile_table: Optional[str] = None
        self.profile_rows: list[dict[str, Any]] = []
        self.kernel_ms_per_step: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.profile_at is not None and batch_idx == self.profile_at:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                               torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
        if self.profiler is not None and batch_idx == self.profile_at + self.profile_steps:
            self._stop_profiler()
        self.marks.append(self.clock.mark())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach())
        self.end_mark = self.clock.mark()  # the end of the last step closes the last window
        if batch_idx <= 1:
            self.clock.sync()
            now = time.perf_counter() - self.started
            if batch_idx == 0:
                self.first_step_s = now
            else:
                self.second_step_s = now - (self.first_step_s or 0.0)

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(self.end_mark)
        if self.profiler is not None:
            self._stop_profiler()

    def _stop_profiler(self) -> None:
        self.clock.sync()
        prof, self.profiler = self.profiler, None
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        self.profile_table = events.table(sort_by="self_device_time_total", row_limit=30)
        cuda = torch.autograd.DeviceType.CUDA
        kernels = [e for e in events if getattr(e, "device_type", None) == cuda]  # GPU kernels and copies only
        time_of = lambda e: float(getattr(e, "self_device_time_total", 0) or 0)  # noqa: E731  (us)
        total = sum(time_of(e) for e in kernels)
        self.kernel_ms_per_step = total / 1e3 / self.profile_steps
        rows = sorted(kernels, key=time_of, reverse=True)[:20]
        self.profile_rows = [{"kernel": e.key[:160], "ms_per_step": time_of(e) / 1e3 / self.profile_steps,
                              "share": time_of(e) / total if total else None} for e in rows]


def run_ours(model_tree: dict[str, Any], state: dict[str, torch.Tensor], loader, device: torch.device, *,
             steps: int, lr: float, max_depth: float, min_depth: float, batch: int, variant: str,
             warmup: int, window: int, profile: bool = False) -> dict[str, Any]:
    """Our step, as trainer.fit runs it: DepthModule + the Trainer arguments of fit + its fast path."""
    import pytorch_lightning as pl

    from trainer.config import build_spec, to_plain
    from trainer.fit import _PRECISION, _accelerator, apply_fast_path, fast_path
    from trainer.module import DepthModule

    free_cuda()
    opts = dict(VARIANTS[variant])
    with tempfile.TemporaryDirectory(prefix="tp-") as tmp:
        tree = our_spec_tree(model_tree, lr=lr, max_depth=max_depth, min_depth=min_depth, batch=batch,
                             results_dir=tmp)
        for key in ("precision", "cudnn_benchmark", "cudnn_deterministic"):
            if key in opts:
                if key == "precision":
                    tree["train"]["precision"] = opts[key]
                else:
                    tree["train"].setdefault("cudnn", {})[key.split("_", 1)[1]] = opts[key]
        if "channels_last" in opts:
            tree["train"]["channels_last"] = opts["channels_last"]
        if isinstance(opts.get("compile"), bool):
            tree["train"]["compile"] = opts["compile"]
        spec = build_spec(tree, check_files=False, notice=lambda _m: None)
        torch._dynamo.reset()
        torch.backends.cudnn.benchmark = bool(spec.train.cudnn.benchmark)  # as fit does
        torch.backends.cudnn.deterministic = bool(spec.train.cudnn.deterministic)
        fast = fast_path(spec, on_gpu=device.type == "cuda")
        module = DepthModule(to_plain(spec))
        module.model.load_state_dict(state, strict=True)
        module.defer_nonfinite_check = bool(opts.get("defer_nonfinite_check", True))
        import dataclasses

        if "matmul_upsample" in opts:
            fast = dataclasses.replace(fast, matmul_upsample=bool(opts["matmul_upsample"]))
        if opts.get("compile") == "full":
            apply_fast_path(module.model, dataclasses.replace(fast, compile=False))
            module.model.compile()
            fast = dataclasses.replace(fast, compile=True)
        elif opts.get("compile") == "reduce-overhead":
            apply_fast_path(module.model, dataclasses.replace(fast, compile=False))
            module.model.compile_regions(mode="reduce-overhead")
            fast = dataclasses.replace(fast, compile=True)
        else:
            apply_fast_path(module.model, fast)
        accelerator, devices, strategy = _accelerator(spec)
        clock = Clock(device)
        started = time.perf_counter()
        profile_at = steps - 4 if profile and steps >= warmup + 8 else None
        timer = StepTimer(clock, started, profile_at=profile_at, profile_steps=3)
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=strategy, precision=_PRECISION[fast.precision],
            max_epochs=1, limit_train_batches=steps, log_every_n_steps=int(spec.train.log_every_n_steps),
            callbacks=[timer], logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp, num_sanity_val_steps=0, enable_checkpointing=False)
        trainer.fit(module, train_dataloaders=loader)
        clock.sync()
        stop = profile_at if profile_at is not None else None
        windows = window_step_ms(clock, timer.marks, warmup, window, stop=stop)
        out = {"variant": variant, "settings": {**fast.__dict__, "cudnn_benchmark": bool(spec.train.cudnn.benchmark),
                                                "cudnn_deterministic": bool(spec.train.cudnn.deterministic),
                                                "defer_nonfinite_check": module.defer_nonfinite_check,
                                                "compile_scope": {"full": "full", "reduce-overhead":
                                                                  "regional, CUDA graphs"}.get(
                                                    opts.get("compile"), "regional" if fast.compile else "none")},
               "steps": len(timer.losses), "losses": [float(v) for v in torch.stack(timer.losses).float().cpu()],
               "window_step_ms": windows, "step_ms": median(windows), "spread": spread(windows),
               "first_step_s": timer.first_step_s, "second_step_s": timer.second_step_s,
               "peak_mem_gib": peak_memory_gib()}
        if timer.profile_rows:
            out["gpu_kernel_ms_per_step"] = timer.kernel_ms_per_step  # the GPU's busy time in one step
            out["profile_top_kernels"] = timer.profile_rows
            out["profile_table"] = timer.profile_table
        del trainer, module
    free_cuda()
    return out


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------

SMOKE_MODEL = {"model_type": "MetricDepthAnything", "encoder": "custom",
               "custom": {"embed_dim": 32, "depth": 2, "num_heads": 2, "features": 16, "out_channels": [8, 16, 32, 32]}}


def model_tree_of(encoder: str) -> dict[str, Any]:
    if encoder == "smoke":
        return copy.deepcopy(SMOKE_MODEL)
    return {"model_type": "MetricDepthAnything", "encoder": encoder}


def parse_plan(text: str) -> list[tuple[str, list[str]]]:
    """"vits:ref,fast;vitl:ref,fast,bf16_eager_old" -> [(encoder, [runs])]; a run is `ref`, a variant name, or
    `VARIANT@bsN` (another batch size, throughput only)."""
    plan = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        enc, _, runs = part.partition(":")
        plan.append((enc.strip(), [r.strip() for r in runs.split(",") if r.strip()]))
    return plan


def summarise(enc_result: dict[str, Any], flops: Optional[float], peak: Optional[float], batch: int) -> None:
    """img/s, MFU and ratios to the reference for every run of one encoder (in place)."""
    ref = enc_result["runs"].get("ref")
    for name, r in enc_result["runs"].items():
        if not isinstance(r, dict) or r.get("step_ms") is None:
            continue
        bs = r.get("batch", batch)
        r["img_s"] = bs * 1e3 / r["step_ms"]
        if flops:
            r["tflops_achieved"] = flops * r["img_s"] / 1e12
            if peak:
                r["mfu"] = flops * r["img_s"] / peak
        if ref and ref.get("step_ms") and name != "ref":
            r["speedup_vs_ref"] = r["img_s"] / (batch * 1e3 / ref["step_ms"])
    fast = enc_result["runs"].get("fast")
    if ref and fast and ref.get("losses") and fast.get("losses"):
        n = min(len(ref["losses"]), len(fast["losses"]))
        tail = max(1, min(10, n // 4))
        a = statistics.fmean(ref["losses"][n - tail:n])
        b = statistics.fmean(fast["losses"][n - tail:n])
        enc_result["convergence"] = {
            "steps": n, "final_loss_ref": a, "final_loss_ours": b, "relative_difference": (b - a) / a if a else None,
            "first_loss_ref": ref["losses"][0], "first_loss_ours": fast["losses"][0],
            "final_step_loss_ref": ref["losses"][n - 1], "final_step_loss_ours": fast["losses"][n - 1],
            "averaged_over_last_steps": tail}


def print_tables(result: dict[str, Any]) -> None:
    env = result["env"]
    rows = []
    for enc, er in result["encoders"].items():
        for name, r in er.get("runs", {}).items():
            if not isinstance(r, dict):
                continue
            rows.append({"encoder": enc, "run": name, "batch": r.get("batch", result["batch"]),
                         "img_s": r.get("img_s"), "x_ref": r.get("speedup_vs_ref"),
                         "mfu": None if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%",
                         "mem": r.get("peak_mem_gib"), "first_step_s": r.get("first_step_s"),
                         "spread": None if r.get("spread") is None else f"{100 * r['spread']:.1f}%",
                         "error": (r.get("error") or "")[:40] or None})
    print(f"\nGPU: {env.get('gpu', 'none (CPU)')}  torch {env['torch']}  size {result['size']}  "
          f"date {env['date']}")
    print(table(rows, [("encoder", "encoder"), ("run", "run"), ("batch", "batch"), ("img_s", "img/s"),
                       ("x_ref", "x ref"), ("mfu", "MFU"), ("mem", "peak GiB"),
                       ("first_step_s", "1st step s"), ("spread", "spread"), ("error", "error")]))
    conv = [{"encoder": enc, **er["convergence"]} for enc, er in result["encoders"].items() if er.get("convergence")]
    if conv:
        print()
        print(table(conv, [("encoder", "encoder"), ("steps", "steps"), ("first_loss_ref", "loss0 ref"),
                           ("first_loss_ours", "loss0 ours"), ("final_loss_ref", "final ref"),
                           ("final_loss_ours", "final ours"), ("relative_difference", "rel diff")]))


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="vits:ref,fast,bf16_eager_old;vitb:ref,fast,bf16_eager_old;"
                                      "vitl:ref,fast,bf16_eager_old",
                    help="encoders and runs, e.g. 'vits:ref,fast;vitl:ref,fast,fast_nocl,fast@bs16'")
    ap.add_argument("--extra", default="", help="runs in the --plan format done only while --deadline allows")
    ap.add_argument("--size", default="518x518")
    ap.add_argument("--batch", type=int, default=4, help="batch per step (the original recipe: 4 per GPU)")
    ap.add_argument("--conv-steps", type=int, default=200, help="steps of ref and fast (the convergence check)")
    ap.add_argument("--conv-steps-for", default="", help="per-encoder override, e.g. 'vitl=120'")
    ap.add_argument("--ablation-steps", type=int, default=30, help="steps of every other run")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--ref-max-seconds", type=float, default=120.0, help="time cap of one reference run")
    ap.add_argument("--deadline", type=float, default=0.0, help="seconds; skip --extra runs past it (0: none)")
    ap.add_argument("--pool", type=int, default=32, help="distinct synthetic frames held in memory")
    ap.add_argument("--lr", type=float, default=5e-6, help="backbone lr of the recipe (head: 10x)")
    ap.add_argument("--max-depth", type=float, default=20.0)
    ap.add_argument("--min-depth", type=float, default=0.001)
    ap.add_argument("--profile", default="vitl", help="encoders whose `fast` run records a profile")
    ap.add_argument("--out", help="JSON file (rewritten after every run)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, tiny images, few steps (CPU tests)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    if args.smoke:
        given = sys.argv[1:] if argv is None else argv
        args.plan = args.plan if any(a.startswith("--plan") for a in given) else "smoke:ref,fast,fast_sync"
        args.size, args.batch, args.conv_steps, args.ablation_steps = "56x70", 2, 6, 4
        args.warmup, args.window, args.pool = 2, 2, 4
        args.extra = ""
    h, w = (int(v) for v in args.size.lower().split("x"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment()
    peak = None
    if device.type == "cuda":
        peak, _ = gpu_peak(torch.cuda.get_device_name(0))
    conv_for = {k: int(v) for k, v in (p.split("=") for p in args.conv_steps_for.split(",") if p)}
    result: dict[str, Any] = {"benchmark": "train_throughput", "env": env, "size": f"{h}x{w}", "batch": args.batch,
                              "recipe": {"lr_backbone": args.lr, "lr_head": 10 * args.lr, "optimizer": "AdamW",
                                         "weight_decay": 0.01, "schedule": "poly 0.9", "loss": "SiLog (lambda 0.5)",
                                         "max_depth": args.max_depth, "clip": None},
                              "timing": {"warmup_steps": args.warmup, "window_steps": args.window,
                                         "statistic": "median of windows (CUDA events)"},
                              "encoders": {}}
    pool = synth_pool(args.pool, (h, w), seed=0)
    result["data"] = {"pool_frames": args.pool, "source": "trainer.data.synth.render_frame (in memory)",
                      "loader": "pre-collated batches, pinned, served in the main process",
                      "pool_seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.out, result)

    def run_one(enc: str, run: str, optional: bool) -> None:
        er = result["encoders"].setdefault(enc, {"runs": {}})
        tree = model_tree_of(enc)
        if "flops" not in er:
            try:
                er["flops"] = count_flops(tree, (h, w), args.max_depth)
            except Exception as exc:  # noqa: BLE001
                er["flops"] = {"error": f"{type(exc).__name__}: {exc}"}
        if "init" not in er:
            from trainer.model import build_model

            torch.manual_seed(0)
            model = build_model({"model": tree, "dataset": {"max_depth": args.max_depth}})
            er["_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            er["init"] = "torch.manual_seed(0); build_model (random init, shared by every run)"
            del model
        if optional and args.deadline and time.perf_counter() - t0 > args.deadline:
            er["runs"][run] = {"skipped": "deadline"}
            return
        variant, _, bs_text = run.partition("@bs")
        bs = int(bs_text) if bs_text else args.batch
        conv = conv_for.get(enc, args.conv_steps)
        steps = conv if run in ("ref", "fast") else args.ablation_steps
        ref = er["runs"].get("ref")
        if run == "fast" and isinstance(ref, dict) and ref.get("truncated_by_time"):
            steps = ref["steps"]  # the same steps as the (time-capped) reference, for the loss comparison
        ds = PoolDataset(pool, steps, bs, args.min_depth, args.max_depth)
        loader = make_loader(ds, bs)
        began = time.perf_counter()
        try:
            if variant == "ref":
                r = run_reference(tree, er["_state"], loader, device, steps=steps, lr=args.lr,
                                  max_depth=args.max_depth, min_depth=args.min_depth,
                                  max_seconds=args.ref_max_seconds, warmup=args.warmup, window=args.window)
            else:
                warm = args.warmup if steps > args.warmup + args.window else max(1, steps // 3)
                win = args.window if steps >= warm + 2 * args.window else max(1, (steps - warm) // 3)
                r = run_ours(tree, er["_state"], loader, device, steps=steps, lr=args.lr, max_depth=args.max_depth,
                             min_depth=args.min_depth, batch=bs, variant=variant, warmup=warm, window=win,
                             profile=(variant == "fast" and enc in args.profile.split(",") and not bs_text))
        except Exception as exc:  # noqa: BLE001 - one failing run must not lose the others
            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}"}
            free_cuda()
        r["batch"] = bs
        r["wall_s"] = round(time.perf_counter() - began, 1)
        er["runs"][run] = r
        flops = er["flops"].get("train_flops_per_image") if isinstance(er.get("flops"), dict) else None
        summarise(er, flops, peak, args.batch)
        shown = {k: v for k, v in r.items() if k in ("img_s", "step_ms", "first_step_s", "peak_mem_gib", "mfu",
                                                      "speedup_vs_ref", "error", "steps")}
        print(f"[{time.perf_counter() - t0:6.1f}s] {enc} {run}: {json.dumps(shown, default=str)}", flush=True)
        write_json(args.out, _public(result))

    for optional, text in ((False, args.plan), (True, args.extra)):
        for enc, runs in parse_plan(text):
            for run in runs:
                run_one(enc, run, optional)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    public = _public(result)
    write_json(args.out, public)
    print_tables(public)
    return public


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the initial weights kept for the runs."""
    out = dict(result)
    out["encoders"] = {enc: {k: v for k, v in er.items() if not k.startswith("_")}
                       for enc, er in result["encoders"].items()}
    return out


if __name__ == "__main__":
    main()
