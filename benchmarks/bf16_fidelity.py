"""How much does BF16 change Depth Anything V2's depth? The exported model's PyTorch graph in bf16 autocast against
fp32, on synthetic validation scenes with exact depth (`trainer.data.synth.render_frame`).

Reports the per-pixel relative error |bf16 - fp32| / |fp32| (mean, 99th percentile, max), the largest absolute
difference (metres for metric models), the standard metrics (d1, abs_rel, rmse) of both against the scenes'
ground truth and their change, and on a GPU the latency of both. BF16 autocast in PyTorch is the closest
measurable stand-in here for a TensorRT BF16 engine (TensorRT is not installable on this project's machines);
the engine's own numbers go to its sidecar (`parity_vs_onnxruntime`) when it is built.

    python benchmarks/bf16_fidelity.py --onnx results/x/export/model.onnx      # the exported model (its sidecar)
    python benchmarks/bf16_fidelity.py --checkpoint best.ckpt --size 518x518   # a checkpoint of ours
    python benchmarks/bf16_fidelity.py --encoder vitl --max-depth 20           # random init: numerics only
    python benchmarks/bf16_fidelity.py --smoke --json out.json                 # tiny model on the CPU (tests)

With random weights the depth metrics against the ground truth are meaningless in absolute terms; the change
between fp32 and bf16 still measures what bf16 does to this architecture.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

SMOKE_MODEL = {"model_type": "MetricDepthAnything", "encoder": "custom",
               "custom": {"embed_dim": 32, "depth": 2, "num_heads": 2, "features": 16, "out_channels": [8, 16, 32, 32]}}
REPORTED = ("d1", "abs_rel", "rmse")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size: expected HxW like 518x518, found {text!r}") from None
    if h <= 0 or w <= 0 or h % 14 or w % 14:
        raise SystemExit(f"--size: found {h}x{w}, expected positive multiples of 14")
    return h, w


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network and a description: from an ONNX sidecar (its checkpoint and model section), a checkpoint of
    ours, or a random initialisation of `--encoder`."""
    from trainer.config import build_spec
    from trainer.model import build_model, load_weights, read_checkpoint_spec

    model_tree: dict[str, Any] = {"model_type": "RelativeDepthAnything" if args.relative else "MetricDepthAnything",
                                  "encoder": args.encoder}
    max_depth: Optional[float] = args.max_depth
    checkpoint = args.checkpoint
    size = _parse_size(args.size) if args.size else None
    if args.smoke:
        model_tree = json.loads(json.dumps(SMOKE_MODEL))
        max_depth = max_depth or 10.0
    elif args.onnx:
        from trainer.deploy.sidecar import read_sidecar

        meta = read_sidecar(args.onnx)
        m = meta["model"]
        model_tree = {"model_type": m["model_type"], "encoder": m["encoder"], **({"custom": m["custom"]}
                                                                                if m.get("custom") else {})}
        max_depth = m.get("max_depth")
        checkpoint = meta.get("checkpoint")
        size = size or (int(meta["input_height"]), int(meta["input_width"]))
    elif checkpoint:
        stored = read_checkpoint_spec(checkpoint)
        if stored:
            model_tree = dict(stored["model"])
            max_depth = (stored.get("dataset") or {}).get("max_depth", max_depth)
    metric = model_tree["model_type"] == "MetricDepthAnything"
    if metric and max_depth is None:
        max_depth = 20.0
    spec = build_spec({"model": model_tree, "dataset": {"max_depth": max_depth if metric else None}},
                      check_files=False, notice=lambda _m: None)
    model = build_model(spec, activation_checkpoint=False, channels_last=False)
    if checkpoint:
        load_weights(model, checkpoint, strict=True)
    with torch.no_grad():  # a random relative head is all zeros after its ReLU: give it some signal
        if not checkpoint and not metric:
            model.depth_head.scratch.output_conv2[2].bias.fill_(1.0)
    size = size or ((56, 70) if args.smoke else (518, 518))
    info = {"model_type": model_tree["model_type"], "encoder": model_tree["encoder"], "metric": metric,
            "max_depth": max_depth if metric else None, "weights": checkpoint or "random init (numerics only)",
            "input_size": list(size)}
    return model.eval(), info


def scenes(num: int, frame: tuple[int, int], size: tuple[int, int], seed: int,
           mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """`num` synthetic frames: network input [N,3,H,W] (bicubic resize + normalisation, as evaluation does) and
    the ground-truth depth maps (metres, frame size)."""
    from trainer.data.synth import render_frame
    from trainer.data.transforms import EvalTransform

    t = EvalTransform(short_side=min(size), mean=tuple(mean), std=tuple(std), height=size[0], width=size[1])
    images, depths = [], []
    for i in range(num):
        rgb, depth = render_frame([seed, i], size=frame)
        images.append(t(rgb))
        depths.append(depth)
    return torch.stack(images), depths


def _forward(model: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device, bf16: bool) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for chunk in x.split(batch):
            chunk = chunk.to(device)
            if bf16:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = model(chunk)
            else:
                out = model(chunk)
            outs.append(out.float().cpu())
    return torch.cat(outs)


def _latency_ms(model: torch.nn.Module, x: torch.Tensor, device: torch.device, bf16: bool, reps: int) -> float:
    x = x.to(device)
    with torch.inference_mode():
        for _ in range(3):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(x)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(x)
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / reps * 1000.0


def _metrics(preds: torch.Tensor, depths: list[np.ndarray], metric: bool, max_depth: Optional[float]
             ) -> dict[str, float]:
    from trainer.metrics import MetricAccumulator
    from trainer.runtime import resize_prediction

    acc = MetricAccumulator()
    for p, d in zip(preds, depths):
        gt = torch.from_numpy(np.asarray(d, dtype=np.float32))
        valid = torch.isfinite(gt) & (gt > 1e-3)
        if metric and max_depth:
            valid &= gt <= float(max_depth)
        pred = resize_prediction(p, tuple(gt.shape))
        acc.update(pred, torch.where(valid, gt, torch.zeros_like(gt)), valid, relative=not metric)
    out = acc.compute()
    out.pop("count", None)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = build(args)
    model.to(device)
    size = tuple(info["input_size"])
    frame = (56, 70) if args.smoke else tuple(int(v) for v in args.frame.lower().split("x"))
    num = args.scenes if args.scenes else (4 if args.smoke else 16)
    x, depths = scenes(num, frame, size, args.seed, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    t0 = time.perf_counter()
    fp32 = _forward(model, x, args.batch, device, bf16=False)
    bf16 = _forward(model, x, args.batch, device, bf16=True)
    seconds = time.perf_counter() - t0
    diff = (bf16.double() - fp32.double()).abs()
    floor = 1e-3 * (info["max_depth"] or float(fp32.abs().max().clamp_min(1e-12)))
    rel = (diff / fp32.double().abs().clamp_min(floor)).flatten()
    q = float(torch.quantile(rel[:: max(1, rel.numel() // 1_000_000)], 0.99))
    m32 = _metrics(fp32, depths, info["metric"], info["max_depth"])
    m16 = _metrics(bf16, depths, info["metric"], info["max_depth"])
    result: dict[str, Any] = {
        "model": info,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({platform.processor() or platform.machine()})"),
        "scenes": num, "frame_size": list(frame), "batch": args.batch,
        "relative_error": {"mean": float(rel.mean()), "p99": q, "max": float(rel.max())},
        "max_abs_diff": float(diff.max()),
        "finite_bf16": bool(torch.isfinite(bf16).all()),
        "metrics_fp32": m32, "metrics_bf16": m16,
        "metric_change": {k: m16[k] - m32[k] for k in m32 if k in m16},
        "forward_seconds_total": round(seconds, 3),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if device.type == "cuda" and not args.smoke:
        xb = x[: args.batch]
        result["latency_ms_per_batch"] = {"batch": int(xb.shape[0]),
                                          "fp32": _latency_ms(model, xb, device, False, args.reps),
                                          "bf16": _latency_ms(model, xb, device, True, args.reps)}
    return result


def table(r: dict[str, Any]) -> str:
    m = r["model"]
    kind = f"metric, max_depth {m['max_depth']:g} m" if m["metric"] else "relative"
    lines = [f"bf16 autocast vs fp32: {m['encoder']} ({kind}), weights: {m['weights']}",
             f"{r['scenes']} synthetic scenes {r['frame_size'][0]}x{r['frame_size'][1]} -> network "
             f"{m['input_size'][0]}x{m['input_size'][1]}, batch {r['batch']}, on {r['device']}", ""]
    lines.append(f"{'metric':<10} {'fp32':>10} {'bf16':>10} {'change':>10}")
    lines.append("-" * 43)
    for k in REPORTED:
        if k in r["metrics_fp32"]:
            lines.append(f"{k:<10} {r['metrics_fp32'][k]:>10.4f} {r['metrics_bf16'][k]:>10.4f} "
                         f"{r['metric_change'][k]:>+10.4f}")
    e = r["relative_error"]
    unit = " m" if m["metric"] else ""
    lines += ["", f"|bf16 - fp32| / |fp32| per pixel: mean {e['mean']:.2e}, p99 {e['p99']:.2e}, max {e['max']:.2e}",
              f"max |bf16 - fp32|: {r['max_abs_diff']:.3g}{unit}; bf16 output finite: {r['finite_bf16']}"]
    if not m["weights"] or str(m["weights"]).startswith("random"):
        lines.append("random weights: the metrics against the ground truth (and their change) mean little here; "
                     "the per-pixel error is the fidelity number")
    if "latency_ms_per_batch" in r:
        lat = r["latency_ms_per_batch"]
        lines.append(f"latency per batch of {lat['batch']}: fp32 {lat['fp32']:.2f} ms, bf16 {lat['bf16']:.2f} ms "
                     f"(PyTorch eager, not TensorRT)")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (one of; default: random init of --encoder)")
    src.add_argument("--onnx", help="an exported ONNX file: its sidecar names the checkpoint, model and size")
    src.add_argument("--checkpoint", help="a checkpoint (ours: model and depth range from its stored spec)")
    src.add_argument("--encoder", default="vits", choices=("vits", "vitb", "vitl", "vitg"))
    src.add_argument("--relative", action="store_true", help="RelativeDepthAnything (default metric)")
    src.add_argument("--max-depth", type=float, default=None, help="metric range in metres (default 20)")
    p.add_argument("--size", help="network input HxW, multiples of 14 (default 518x518, or the ONNX export size)")
    p.add_argument("--frame", default="240x320", help="synthetic frame size HxW (default 240x320)")
    p.add_argument("--scenes", type=int, default=0, help="number of scenes (default 16; smoke 4)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=20, help="timed repetitions for the GPU latency")
    p.add_argument("--device", help="cuda | cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny custom model, 4 tiny scenes, CPU-friendly (tests)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten {args.json}")
    bad = not result["finite_bf16"] or not all(math.isfinite(v) for v in result["metric_change"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
