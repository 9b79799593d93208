"""Samples/s of the real training data pipeline against what the GPU consumes.

The pipeline is the trainer's own: `trainer.data.build_dataloader(spec, "train_dataset", train=True)` over an
NYU-layout folder (JPEG images + 16-bit PNG depth in millimetres, 480x640 like NYU Depth V2) rendered by
`trainer.data.synth.generate_dataset`: decode, short-side resize with scale jitter, 518x518 random crop, flip,
colour augmentation, normalisation, collate, pinned memory on a GPU machine. For each worker count it times
batches after the workers' start-up (the first batches are excluded) and reports samples/s. Given the JSON of
benchmarks/train_throughput.py it puts each encoder's GPU consumption (img/s of our step) beside it: the loader
must deliver more than the GPU consumes. Files are read from the page cache after the first pass (the pool is
small), so disk bandwidth is not measured.

    python benchmarks/dataloader.py --workers 4,8,15 --gpu-json results/bench/throughput.json --out loader.json
    python benchmarks/dataloader.py --smoke --out /tmp/loader.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (shared helpers; puts the repository on sys.path)


def make_spec(data: Path, crop: tuple[int, int], batch: int, workers: int, results: str,
              color_aug_prob: Optional[float] = None) -> Any:
    from trainer.config import build_spec

    tree = {
        "results_dir": results,
        "model": {"model_type": "MetricDepthAnything", "encoder": "vits"},
        "dataset": {"min_depth": 0.001, "max_depth": 10.0,
                    "train_dataset": {"data_sources": [{"data_file": str(data / "train.txt"), "dataset_name": "NYUDV2"}],
                                      "batch_size": batch, "workers": workers,
                                      "augmentation": {"crop_size": list(crop)}}},
    }
    if color_aug_prob is not None:
        tree["dataset"]["train_dataset"]["augmentation"]["color_aug_prob"] = color_aug_prob
    return build_spec(tree, check_files=True, notice=lambda _m: None)


def measure(spec: Any, seconds: float, skip: int, max_batches: int) -> dict[str, Any]:
    """Batches/s of one DataLoader after `skip` batches (worker start-up); the loader is re-iterated as needed."""
    from trainer.data import build_dataloader

    loader = build_dataloader(spec, "train_dataset", train=True)
    started = time.perf_counter()
    n = 0
    t_first = None
    first_batch_s = None
    samples = 0
    while True:
        for batch in loader:
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - started
            n += 1
            if n == skip:
                t_first = time.perf_counter()
            elif n > skip:
                samples += int(batch["image"].shape[0])
            if t_first is not None and (time.perf_counter() - t_first > seconds or n - skip >= max_batches):
                break
        else:
            continue
        break
    elapsed = time.perf_counter() - (t_first or started)
    out = {"workers": int(loader.num_workers), "batch": int(loader.batch_size), "batches_timed": n - skip,
           "samples_per_s": samples / elapsed if elapsed > 0 else None, "first_batch_s": first_batch_s,
           "pinned": bool(loader.pin_memory)}
    del loader
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an NYU-layout folder with train.txt (default: render one)")
    ap.add_argument("--frames", type=int, default=96, help="frames to render when --data is not given")
    ap.add_argument("--frame-size", default="480x640")
    ap.add_argument("--crop", default="518x518")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", default="4,8,15", help="worker counts to measure")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per worker count")
    ap.add_argument("--skip", type=int, default=8, help="batches not timed (worker start-up)")
    ap.add_argument("--max-batches", type=int, default=100000)
    ap.add_argument("--also-no-color", action="store_true",
                    help="one more run at the largest worker count with colour augmentation off (its cost)")
    ap.add_argument("--gpu-json", help="train_throughput.py JSON: GPU consumption to compare with")
    ap.add_argument("--out", help="JSON file")
    ap.add_argument("--smoke", action="store_true", help="tiny frames and crops, one worker count (CPU tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.frames, args.frame_size, args.crop, args.batch = 16, "64x80", "56x70", 2
        args.workers, args.seconds, args.skip, args.max_batches = "0,1", 1.0, 1, 6
    t0 = time.perf_counter()
    env = tt.environment()
    fh, fw = (int(v) for v in args.frame_size.lower().split("x"))
    ch, cw = (int(v) for v in args.crop.lower().split("x"))
    result: dict[str, Any] = {"benchmark": "dataloader", "env": env, "frame_size": f"{fh}x{fw}",
                              "crop": f"{ch}x{cw}", "batch": args.batch, "runs": []}
    with tempfile.TemporaryDirectory(prefix="loader-") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "nyu"
        if not args.data:
            from trainer.data.synth import generate_dataset

            generate_dataset(data, args.frames, size=(fh, fw), seed=0, layout="nyu", progress=False,
                             val_fraction=0.0)
            result["data"] = {"frames": args.frames, "render_s": round(time.perf_counter() - t0, 1),
                              "source": "trainer.data.synth.generate_dataset (NYU layout: JPEG + uint16 PNG mm)"}
        else:
            result["data"] = {"folder": str(data)}
        counts = [min(int(v), os.cpu_count() or 1) for v in args.workers.split(",") if v.strip()]
        runs = [(w, None) for w in counts] + ([(max(counts), 0.0)] if args.also_no_color else [])
        for w, color in runs:
            spec = make_spec(data, (ch, cw), args.batch, w, tmp, color)
            try:
                r = measure(spec, args.seconds, args.skip, args.max_batches)
            except Exception as exc:  # noqa: BLE001
                r = {"workers": w, "error": f"{type(exc).__name__}: {exc}"}
            if r.get("samples_per_s") and w:
                r["samples_per_s_per_worker"] = r["samples_per_s"] / w
            r["color_aug_prob"] = color if color is not None else float(
                spec.dataset.train_dataset.augmentation.color_aug_prob)
            result["runs"].append(r)
            print(f"[{time.perf_counter() - t0:6.1f}s] workers {w}: {r}", flush=True)
            tt.write_json(args.out, result)
    # the pipeline as configured (default colour augmentation); the no-colour run only shows what it costs
    best = max((r.get("samples_per_s") or 0 for r in result["runs"] if r.get("color_aug_prob") != 0.0 or
                not args.also_no_color), default=0)
    result["best_samples_per_s"] = best
    if args.gpu_json and Path(args.gpu_json).is_file():
        import json

        gpu = json.loads(Path(args.gpu_json).read_text())
        consumption = {}
        for enc, er in gpu.get("encoders", {}).items():
            fast = er.get("runs", {}).get("fast", {})
            if fast.get("img_s"):
                consumption[enc] = {"gpu_img_s": fast["img_s"], "loader_over_gpu": best / fast["img_s"],
                                    "gpu": gpu.get("env", {}).get("gpu")}
        result["gpu_consumption"] = consumption
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    tt.write_json(args.out, result)
    print(f"\nCPU: {env['cpu_count']} cores  GPU: {env.get('gpu', '-')}  frames {result['frame_size']} -> crop "
          f"{result['crop']}, batch {args.batch}")
    print(tt.table(result["runs"], [("workers", "workers"), ("color_aug_prob", "colour aug p"),
                                    ("samples_per_s", "samples/s"),
                                    ("samples_per_s_per_worker", "per worker"), ("first_batch_s", "1st batch s"),
                                    ("pinned", "pinned")]))
    if result.get("gpu_consumption"):
        rows = [{"encoder": k, **v} for k, v in result["gpu_consumption"].items()]
        print(tt.table(rows, [("encoder", "encoder"), ("gpu_img_s", "GPU img/s (fast)"),
                              ("loader_over_gpu", "loader / GPU")]))
    return result


if __name__ == "__main__":
    main()
