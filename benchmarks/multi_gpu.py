"""Data-parallel training on several GPUs of one machine: scaling of `trainer.fit` under Lightning's DDP (the path of
`automl off train.num_gpus=N` and, through Ray Train, of a search trial with `--gpus-per-trial N`), and the NaN guard
under NCCL: when one rank alone produces a NaN, every rank must stop with the same error and none may hang in a
collective.

Each run is a child process (`--worker CONFIG`) calling `trainer.fit` with `train.num_gpus=N`; Lightning starts the
other ranks by re-running that command. Real data pipeline (NYU-layout files rendered by the synthetic generator),
MLflow off. Rank 0 times the steady-state steps with CUDA synchronisation at the window's ends (the ranks run in
lockstep through the gradient all-reduce), so img/s = N x batch x steps / window.

    python benchmarks/multi_gpu.py --out results/bench/multi_gpu.json            # needs >= 2 GPUs
    python benchmarks/multi_gpu.py --smoke --out /tmp/multi_gpu.json              # CPU, one process (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (shared helpers; puts the repository on sys.path)

REPO = tt.REPO


def _callbacks(cfg: dict[str, Any], record: dict[str, Any]) -> list[Any]:
    import pytorch_lightning as pl
    import torch

    warmup, inject_rank, inject_step = int(cfg["warmup"]), cfg.get("inject_rank"), cfg.get("inject_step")
    last = warmup + int(cfg["steps"])

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.global_step
            if step == warmup and "t0" not in record:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                record["t0"], record["step0"] = time.perf_counter(), step
            if inject_rank is not None and trainer.global_rank == inject_rank and step == inject_step:
                p = next(p for p in pl_module.parameters() if p.requires_grad)
                with torch.no_grad():
                    p.fill_(float("nan"))  # this rank's next loss is NaN; the others' are finite

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record["steps_done"] = trainer.global_step
            if trainer.global_step >= last and "t1" not in record:  # the window spans epochs of a small dataset
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                record["t1"], record["step1"] = time.perf_counter(), trainer.global_step
                trainer.should_stop = True  # every rank reaches the same step, so all stop together

    return [Probe()]


def run_worker(config_path: str) -> None:
    """One rank (Lightning re-runs this command for ranks > 0 with LOCAL_RANK set)."""
    import torch

    from trainer.config import build_spec
    from trainer.errors import NonFiniteLossError
    from trainer.fit import fit
    from trainer.tracking import TrackingConfig

    cfg = json.loads(Path(config_path).read_text())
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    record: dict[str, Any] = {"rank": rank, "started": time.time()}
    spec = build_spec(cfg["spec"], check_files=True, notice=lambda _m: None)
    try:
        fit(spec, tracking=TrackingConfig(enabled=False), progress=False, quiet=True,
            callbacks=_callbacks(cfg, record))
        record["outcome"] = "finished"
    except NonFiniteLossError as exc:
        record.update(outcome="non_finite", what=exc.what, step=exc.step)
    record["ended"] = time.time()
    record["peak_mem_gib"] = tt.peak_memory_gib() if torch.cuda.is_available() else None
    Path(cfg["record_dir"], f"rank{rank}.json").write_text(json.dumps(record))


def run(name: str, n: int, spec: dict[str, Any], work: Path, *, warmup: int, steps: int, timeout: float,
        inject: Optional[tuple[int, int]] = None) -> dict[str, Any]:
    rec_dir = work / f"records-{name}"
    rec_dir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(json.dumps(spec))
    spec["results_dir"] = str(work / f"results-{name}")
    spec["train"].update(num_gpus=n, gpu_ids=list(range(n)))
    cfg = {"spec": spec, "record_dir": str(rec_dir), "warmup": warmup, "steps": steps}
    if inject:
        cfg.update(inject_rank=inject[0], inject_step=inject[1])
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(path)], env=env,
                              timeout=timeout, capture_output=True, text=True)
        rc, hung = proc.returncode, False
        tail = (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired as exc:
        rc, hung = None, True
        tail = ((exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace"))[-1500:]
    wall = time.perf_counter() - started
    ranks = [json.loads(p.read_text()) for p in sorted(rec_dir.glob("rank*.json"))]
    out: dict[str, Any] = {"gpus": n, "wall_s": round(wall, 1), "returncode": rc, "hung": hung,
                           "ranks_reported": len(ranks), "outcomes": [r.get("outcome") for r in ranks]}
    r0 = next((r for r in ranks if r["rank"] == 0), None)
    if r0 and "t0" in r0 and "t1" in r0 and r0["step1"] > r0["step0"]:
        steps = r0["step1"] - r0["step0"]
        batch = int(spec["dataset"]["train_dataset"]["batch_size"])
        out.update(steps_timed=steps, step_ms=round((r0["t1"] - r0["t0"]) / steps * 1000, 2),
                   img_s=round(n * batch * steps / (r0["t1"] - r0["t0"]), 1), peak_mem_gib=r0.get("peak_mem_gib"))
    if inject:
        out["non_finite"] = [{"rank": r["rank"], "what": r.get("what"), "step": r.get("step")} for r in ranks]
    if rc not in (0, None) or hung or len(ranks) < n:
        out["log_tail"] = tail
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", default="vits")
    ap.add_argument("--batch", type=int, default=8, help="per GPU")
    ap.add_argument("--gpus", default="1,2", help="GPU counts to time")
    ap.add_argument("--steps", type=int, default=120, help="timed steps (after the warm-up; across epochs)")
    ap.add_argument("--warmup", type=int, default=30, help="steps before the timed window (compile, loader start)")
    ap.add_argument("--workers", type=int, default=6, help="loader workers per rank")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--frame-size", default="480x640")
    ap.add_argument("--crop", default="518x518")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per run; past it the run counts as hung")
    ap.add_argument("--skip-nan", action="store_true", help="time only; skip the NaN-on-one-rank run")
    ap.add_argument("--out")
    ap.add_argument("--smoke", action="store_true", help="tiny model and frames, 2 CPU ranks over gloo")
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return {}
    import torch

    if args.smoke:
        args.encoder, args.batch, args.gpus, args.steps, args.warmup = "smoke", 2, "1", 4, 1
        args.workers, args.frames, args.frame_size, args.crop, args.timeout = 0, 24, "48x64", "42x56", 300.0
    counts = [int(c) for c in args.gpus.split(",")]
    have = torch.cuda.device_count()
    if not args.smoke and max(counts) > have:
        raise SystemExit(f"--gpus {args.gpus}: this machine has {have} GPU(s)")
    t0 = time.perf_counter()
    env_info = tt.environment()
    result: dict[str, Any] = {"benchmark": "multi_gpu", "env": env_info, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="multigpu-") as tmp:
        work = Path(tmp)
        data = work / "nyu"
        ch, cw = tt.render_nyu(data, args.frames, args.frame_size, args.crop)
        spec = {
            "model": tt.model_tree_of(args.encoder),
            "dataset": {"min_depth": 0.001, "max_depth": 10.0,
                        "train_dataset": {"data_sources": [{"data_file": str(data / "train.txt"),
                                                            "dataset_name": "NYUDV2"}],
                                          "batch_size": args.batch, "workers": args.workers,
                                          "augmentation": {"crop_size": [ch, cw]}},
                        "val_dataset": {"data_sources": [], "batch_size": args.batch}},
            # the probe stops training once the timed window ends; no per-epoch checkpoint inside the window
            "train": {"num_epochs": 1000, "seed": 0, "checkpoint_interval": 10 ** 6,
                      "log_every_n_steps": 50, "initial_validation": False,
                      "optim": {"lr": 5e-6, "head_lr_multiplier": 10.0, "weight_decay": 0.01,
                                "lr_scheduler": "Constant", "warmup_steps": 0}},
        }
        result["settings"] = {"encoder": args.encoder, "batch_per_gpu": args.batch, "crop": args.crop,
                              "steps_timed": args.steps, "warmup": args.warmup, "loader_workers_per_rank":
                              args.workers, "frames": args.frames}
        for n in counts:
            r = run(f"ddp{n}", n, spec, work, warmup=args.warmup, steps=args.steps, timeout=args.timeout)
            result["runs"][f"{n} GPU"] = r
            print(f"[{time.perf_counter() - t0:6.1f}s] {n} GPU: {json.dumps({k: v for k, v in r.items() if k != 'log_tail'})}",
                  flush=True)
            tt.write_json(args.out, result)
        nan_n = max(counts)
        if (nan_n > 1 or args.smoke) and not args.skip_nan:  # (the smoke run checks this path on one CPU process)
            r = run("nan", nan_n, spec, work, warmup=10 ** 6, steps=0, timeout=args.timeout, inject=(nan_n - 1, 3))
            r["agreed"] = (not r["hung"] and r["ranks_reported"] == nan_n
                           and all(o == "non_finite" for o in r["outcomes"]))
            result["runs"]["nan on one rank"] = r
            print(f"[{time.perf_counter() - t0:6.1f}s] NaN on rank {nan_n - 1} of {nan_n}: "
                  f"{json.dumps({k: v for k, v in r.items() if k != 'log_tail'})}", flush=True)
    one = result["runs"].get("1 GPU", {}).get("img_s")
    for name, r in result["runs"].items():
        if one and r.get("img_s") and r["gpus"] > 1:
            r["scaling_efficiency"] = round(r["img_s"] / (r["gpus"] * one), 3)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    tt.write_json(args.out, result)
    print(f"\nGPU: {env_info.get('gpu', 'none (CPU)')} x {have}  encoder {args.encoder}  batch/GPU {args.batch}  "
          f"date {env_info['date']}")
    rows = [{"run": k, **{c: v.get(c) for c in ("gpus", "img_s", "step_ms", "scaling_efficiency", "peak_mem_gib",
                                                  "wall_s", "outcomes")}} for k, v in result["runs"].items()]
    print(tt.table(rows, [("run", "run"), ("gpus", "GPUs"), ("img_s", "img/s"), ("step_ms", "step ms"),
                          ("scaling_efficiency", "scaling eff."), ("peak_mem_gib", "peak GiB"),
                          ("wall_s", "wall s"), ("outcomes", "outcome per rank")]))
    return result


if __name__ == "__main__":
    main()
