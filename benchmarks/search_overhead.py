"""Where a search's GPU time goes: training steps against start-up, compilation, validation, checkpoints, and what
packing several small trials on one GPU buys.

GPU part (default): trials are real `trainer.fit` runs (vits by default; validation and checkpoints every epoch, as
a search trial runs them; MLflow off), each in its own process started the way a Ray worker starts one (a fresh
Python that imports the trainer). A Lightning callback in each trial records host times and CUDA events of every
step; the parent samples NVML GPU utilisation (5 Hz) over the whole phase. Phases:
  cold  - one trial, real data pipeline (NYU-layout files), empty torch.compile cache: time to the first step
  warm  - the same trial again with the compile cache the cold trial left (the next trial of a search)
  pack1/pack2/pack4 - 1, 2, 4 concurrent trials on one GPU with in-memory batches (the loader never limits):
          aggregate steady-state img/s over the window in which all of them train.
Reported per trial: time from process start to the first step, GPU busy share (sum of step times / trial wall),
per-epoch overhead (validation + checkpoints), NVML utilisation.

Ray part (`--ray`, CPU is enough): a real tiny search through `automl` (Ray Tune + Optuna) with several trials; from
each trial's fit.json (`started_at`, `first_step_s`, `wall_time_s`) and the search's wall time it reports what Ray
adds per trial (worker start, imports, scheduling gaps between trials of one slot). Ray is not installed on the
lent GPU machine, so the two parts are measured separately and combined in docs/benchmarks.md.

    python benchmarks/search_overhead.py --out results/bench/search.json          # GPU phases
    python benchmarks/search_overhead.py --ray --out results/bench/ray.json       # Ray overhead (CPU)
    python benchmarks/search_overhead.py --smoke --out /tmp/search.json           # CPU smoke (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (shared helpers; puts the repository on sys.path)

REPO = tt.REPO


# ----------------------------------------------------------------------------------------------------------------
# one trial (a child process)
# ----------------------------------------------------------------------------------------------------------------

def _trial_callback(clock: "tt.Clock", record: dict[str, Any]):
    import pytorch_lightning as pl

    class TrialTimer(pl.Callback):
        def __init__(self):
            self.starts: list[Any] = []
            self.ends: list[Any] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not self.starts:
                record["first_step_start"] = time.time()
            self.starts.append(clock.mark())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(clock.mark())
            record["step_end_host"].append(time.time())
            if len(self.ends) == 1:
                clock.sync()
                record["first_step_end"] = time.time()

        def on_validation_start(self, trainer, pl_module):
            clock.sync()
            record["validation"].append([time.time(), None])

        def on_validation_end(self, trainer, pl_module):
            clock.sync()
            record["validation"][-1][1] = time.time()

        def on_train_epoch_start(self, trainer, pl_module):
            record["epoch_start"].append(time.time())

        def on_train_epoch_end(self, trainer, pl_module):
            record["epoch_end"].append(time.time())

    return TrialTimer()


def run_worker(config_path: str) -> None:
    """A trial process: fit(spec) with the timing callback; writes the record JSON."""
    cfg = json.loads(Path(config_path).read_text())
    record: dict[str, Any] = {"launch": cfg["launch_time"], "imported": time.time(), "step_end_host": [],
                              "validation": [], "epoch_start": [], "epoch_end": [], "name": cfg["name"]}
    import pytorch_lightning  # noqa: F401  (the imports a trial pays)

    from trainer.config import build_spec
    from trainer.fit import fit
    from trainer.tracking import TrackingConfig

    record["imported"] = time.time()
    spec = build_spec(cfg["spec"], check_files=True, notice=lambda _m: None)
    if cfg.get("pool"):
        import trainer.data as data_module

        pool = torch.load(cfg["pool"], weights_only=True)
        real = data_module.build_dataloader
        steps = int(spec.train.max_steps_per_epoch) * int(spec.train.num_epochs)
        bs = int(spec.dataset.train_dataset.batch_size)

        def build_dataloader(s, split, train, **kw):  # in-memory training batches; validation stays real
            if split != "train_dataset":
                return real(s, split, train, **kw)
            ds = tt.PoolDataset(pool, steps, bs, float(s.dataset.min_depth), float(s.dataset.max_depth))
            return tt.make_loader(ds, bs)

        data_module.build_dataloader = build_dataloader
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = tt.Clock(device)
    timer = _trial_callback(clock, record)
    record["fit_start"] = time.time()
    result = fit(spec, tracking=TrackingConfig(enabled=False), progress=False, quiet=True, callbacks=[timer])
    clock.sync()
    record["fit_end"] = time.time()
    spans = [clock.elapsed_ms(a, b) for a, b in zip(timer.starts, timer.ends)]
    record["step_ms"] = spans
    record["steps"] = len(spans)
    record["batch"] = int(spec.dataset.train_dataset.batch_size)
    record["fit_wall_s"] = result.wall_time_s
    record["fast_path"] = _fast_path_of(spec)
    record["peak_mem_gib"] = tt.peak_memory_gib()
    record["exit"] = time.time()
    Path(cfg["record"]).write_text(json.dumps(record))


def _fast_path_of(spec: Any) -> dict[str, Any]:
    from trainer.fit import fast_path

    return dict(fast_path(spec).__dict__)


# ----------------------------------------------------------------------------------------------------------------
# the parent: phases of trials
# ----------------------------------------------------------------------------------------------------------------

class UtilSampler:
    """NVML GPU utilisation ('a kernel was running' share of the driver's sample period), sampled at `hz`."""

    def __init__(self, hz: float = 5.0):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self.hz = hz
        self.ok = torch.cuda.is_available()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), float(torch.cuda.utilization())))
            except Exception:  # noqa: BLE001 - NVML absent: no samples
                self.ok = False
                return
            self._stop.wait(1.0 / self.hz)

    def __enter__(self) -> "UtilSampler":
        if self.ok:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def mean(self, t0: float, t1: float) -> Optional[float]:
        vals = [u for t, u in self.samples if t0 <= t <= t1]
        return statistics.fmean(vals) / 100.0 if vals else None


def trial_spec(data: Path, results: Path, *, model: dict[str, Any], crop: tuple[int, int], batch: int,
               epochs: int, steps: int, workers: int, val_batch: int) -> dict[str, Any]:
    return {
        "results_dir": str(results),
        "model": model,
        "dataset": {"min_depth": 0.001, "max_depth": 10.0,
                    "train_dataset": {"data_sources": [{"data_file": str(data / "train.txt"), "dataset_name": "NYUDV2"}],
                                      "batch_size": batch, "workers": workers,
                                      "augmentation": {"crop_size": list(crop)}},
                    "val_dataset": {"data_sources": [{"data_file": str(data / "val.txt"), "dataset_name": "NYUDV2"}],
                                    "batch_size": val_batch, "workers": min(workers, 4),
                                    "augmentation": {"crop_size": list(crop)}}},
        "train": {"num_epochs": epochs, "max_steps_per_epoch": steps, "seed": 0, "log_every_n_steps": 50,
                  "optim": {"lr": 5e-6, "head_lr_multiplier": 10.0, "weight_decay": 0.01, "lr_scheduler": "LambdaLR",
                            "warmup_steps": 0}},
    }


def run_phase(name: str, k: int, base: dict[str, Any], work: Path, env: dict[str, str], *, pool: Optional[Path],
              pool_workers: int, sampler: UtilSampler, timeout: float) -> dict[str, Any]:
    """k concurrent trial processes; their records and the aggregate."""
    procs = []
    records = []
    launched = time.time()
    for i in range(k):
        rec = work / f"{name}_{i}.json"
        tree = json.loads(json.dumps(base))
        tree["results_dir"] = str(work / f"{name}_{i}_results")
        cfg = {"name": f"{name}_{i}", "launch_time": time.time(), "spec": tree, "record": str(rec),
               "pool": str(pool) if pool else None, "pool_workers": pool_workers}
        cfg_path = work / f"{name}_{i}.cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        log = open(work / f"{name}_{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(cfg_path)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO)), rec, log))
    errors = []
    for p, rec, log in procs:
        try:
            rc = p.wait(timeout=max(1.0, timeout - (time.time() - launched)))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "timeout"
        log.close()
        if rc == 0 and rec.is_file():
            records.append(json.loads(rec.read_text()))
        else:
            tail = Path(log.name).read_text()[-1500:]
            errors.append(f"{rec.stem}: rc={rc}: {tail}")
    ended = time.time()
    out: dict[str, Any] = {"phase": name, "trials": k, "wall_s": ended - launched, "errors": errors,
                           "nvml_util_mean": sampler.mean(launched, ended)}
    per = []
    for r in records:
        wall = r["exit"] - r["launch"]
        busy = sum(r["step_ms"]) / 1e3
        val = sum((b - a) for a, b in r["validation"] if b)
        ends, starts = r["epoch_end"], r["epoch_start"]
        gaps = [starts[i + 1] - ends[i] for i in range(min(len(ends), len(starts) - 1))]
        per.append({
            "trial": r["name"], "steps": r["steps"], "wall_s": wall, "step_time_s": busy,
            "gpu_busy_share": busy / wall if wall > 0 else None,
            "process_to_import_s": r["imported"] - r["launch"],
            "process_to_first_step_s": r["first_step_start"] - r["launch"],
            "fit_to_first_step_s": r["first_step_start"] - r["fit_start"],
            "first_step_s": r["first_step_end"] - r["first_step_start"],
            "validation_s": val, "epoch_end_gaps_s": gaps, "after_last_step_s": r["exit"] - r["step_end_host"][-1],
            "median_step_ms": statistics.median(r["step_ms"][len(r["step_ms"]) // 4:]) if r["step_ms"] else None,
            "fast_path": r.get("fast_path"), "peak_mem_gib": r.get("peak_mem_gib"),
            "nvml_util_mean": sampler.mean(r["launch"], r["exit"])})
    out["per_trial"] = per
    if records:
        # steady state: the window in which every trial is past its first quarter of steps and none has finished
        lo = max(r["step_end_host"][len(r["step_end_host"]) // 4] for r in records)
        enough = all(len(r["step_end_host"]) > 2 for r in records)
        hi = min(r["step_end_host"][-2] for r in records) if enough else lo
        bs = records[0]["batch"]
        if hi > lo:
            steps = sum(sum(1 for t in r["step_end_host"] if lo < t <= hi) for r in records)
            out["aggregate_img_s"] = steps * bs / (hi - lo)
            out["steady_window_s"] = hi - lo
            out["trials_overlapped"] = True
            out["nvml_util_steady"] = sampler.mean(lo, hi)
        else:  # the trials never trained at the same time (tiny runs): images over the span of all their steps
            lo = min(r["step_end_host"][0] for r in records)
            hi = max(r["step_end_host"][-1] for r in records)
            steps = sum(len(r["step_end_host"]) - 1 for r in records)
            out["aggregate_img_s"] = steps * bs / (hi - lo) if hi > lo else None
            out["trials_overlapped"] = False
    return out


def gpu_phases(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    env_info = tt.environment()
    result: dict[str, Any] = {"benchmark": "search_overhead", "env": env_info, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="search-") as tmp:
        work = Path(tmp)
        ch, cw = tt.render_nyu(work / "nyu", args.frames, args.frame_size, args.crop, val_fraction=args.val_fraction)
        pool = work / "pool.pt"
        torch.save(tt.synth_pool(args.pool, (ch, cw), seed=0), pool)
        result["data"] = {"frames": args.frames, "frame_size": args.frame_size, "crop": args.crop,
                          "prepare_s": round(time.perf_counter() - t0, 1)}
        model = tt.model_tree_of(args.encoder)
        cache = Path(args.cache_dir) if args.cache_dir else work / "inductor_cache"
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), TORCHINDUCTOR_FX_GRAPH_CACHE="1",
                   TORCHINDUCTOR_AUTOGRAD_CACHE="1", PYTHONPATH=os.pathsep.join(
                       [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        result["settings"] = {"encoder": args.encoder, "batch": args.batch, "epochs": args.epochs,
                              "steps_files": args.steps_files, "steps_memory": args.steps_memory,
                              "workers_files": args.workers,
                              "compile_cache": f"TORCHINDUCTOR_CACHE_DIR={args.cache_dir} (given)" if args.cache_dir
                              else "a fresh TORCHINDUCTOR_CACHE_DIR shared by the phases (empty for cold)"}
        plan = [("cold", 1, False), ("warm", 1, False)] + [(f"pack{k}", k, True) for k in args.pack]
        plan = [p for p in plan if p[0] in args.phases.split(",") or (p[0].startswith("pack") and "pack" in
                                                                      args.phases.split(","))]
        deadline = args.deadline or float("inf")
        with UtilSampler() as sampler:
            for name, k, memory in plan:
                if time.perf_counter() - t0 > deadline:
                    result["phases"][name] = {"skipped": "deadline"}
                    continue
                steps = args.steps_memory if memory else args.steps_files
                workers = args.workers if not memory else 1
                base = trial_spec(work / "nyu", work / "r", model=model, crop=(ch, cw), batch=args.batch,
                                  epochs=args.epochs, steps=steps, workers=workers, val_batch=args.batch)
                ph = run_phase(name, k, base, work, env, pool=pool if memory else None,
                               pool_workers=args.pool_workers, sampler=sampler, timeout=args.phase_timeout)
                result["phases"][name] = ph
                short = {kk: ph.get(kk) for kk in ("wall_s", "aggregate_img_s", "nvml_util_mean", "errors")}
                print(f"[{time.perf_counter() - t0:6.1f}s] {name}: {json.dumps(short, default=str)[:600]}",
                      flush=True)
                tt.write_json(args.out, result)
    one = result["phases"].get("pack1", {}).get("aggregate_img_s")
    for name, ph in result["phases"].items():
        if one and ph.get("aggregate_img_s"):
            ph["aggregate_vs_pack1"] = ph["aggregate_img_s"] / one
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    tt.write_json(args.out, result)
    rows = []
    for name, ph in result["phases"].items():
        for t in ph.get("per_trial", [])[:1]:
            rows.append({"phase": name, "trials": ph.get("trials"), "to_first_step": t["process_to_first_step_s"],
                         "import": t["process_to_import_s"], "busy": t["gpu_busy_share"],
                         "val": t["validation_s"], "wall": t["wall_s"], "steps": t["steps"],
                         "agg": ph.get("aggregate_img_s"), "x1": ph.get("aggregate_vs_pack1"),
                         "nvml": ph.get("nvml_util_steady") or ph.get("nvml_util_mean"),
                         "err": "yes" if ph.get("errors") else None})
        if ph.get("skipped"):
            rows.append({"phase": name, "err": ph["skipped"]})
    print(f"\nGPU: {env_info.get('gpu', 'none (CPU)')}  encoder {args.encoder}  batch {args.batch}  "
          f"date {env_info['date']}")
    print(tt.table(rows, [("phase", "phase"), ("trials", "trials"), ("steps", "steps/trial"),
                          ("import", "import s"), ("to_first_step", "start->1st step s"), ("val", "val s"),
                          ("wall", "trial wall s"), ("busy", "step share"), ("agg", "agg img/s"),
                          ("x1", "x pack1"), ("nvml", "NVML util"), ("err", "error")]))
    return result


# ----------------------------------------------------------------------------------------------------------------
# Ray: what the search layer adds per trial (CPU is enough)
# ----------------------------------------------------------------------------------------------------------------

def ray_overhead(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from automl.cli import main as automl_main

    t0 = time.time()
    result: dict[str, Any] = {"benchmark": "search_overhead_ray", "env": tt.environment()}
    with tempfile.TemporaryDirectory(prefix="raysearch-") as tmp:
        work = Path(tmp)
        from trainer.data.synth import generate_dataset

        generate_dataset(work / "nyu", 48, size=(64, 80), seed=0, layout="nyu", progress=False)
        tree = trial_spec(work / "nyu", work / "search", model=tt.model_tree_of("smoke"), crop=(56, 70),
                          batch=8, epochs=args.ray_epochs, steps=args.ray_steps, workers=0, val_batch=8)
        tree["train"].update(clip_grad_norm=0.0)
        tree["automl"] = {"num_trials": args.ray_trials, "max_concurrent": args.ray_concurrent, "scheduler": "none",
                          "cpus_per_trial": 1, "export": "none"}
        (work / "spec.yaml").write_text(yaml.safe_dump(tree))
        (work / "space.yaml").write_text("objective: {metric: val/loss, mode: min}\nparameters:\n"
                                         "  train.optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n")
        started = time.time()
        rc = automl_main(["run", "-e", str(work / "spec.yaml"), "--search-space", str(work / "space.yaml")])
        ended = time.time()
        summary = json.loads((work / "search" / "summary.json").read_text())
        fits = []
        for t in summary["trials"]:
            f = Path(t["results_dir"]) / "fit.json"
            if f.is_file():
                fj = json.loads(f.read_text())
                fits.append({"trial": t["trial_id"], "started_at": fj["started_at"], "wall_s": fj["wall_time_s"],
                             "first_step_s": fj.get("first_step_s"), "ray_time_total_s": _trial_seconds(t)})
        fits.sort(key=lambda r: r["started_at"])
        # the timeline of fit() intervals on `concurrent` slots: idle slot time is what the search layer adds
        first, last = min(r["started_at"] for r in fits), max(r["started_at"] + r["wall_s"] for r in fits)
        busy = sum(r["wall_s"] for r in fits)
        slots = int(summary.get("concurrent", 1))
        inside = [r["ray_time_total_s"] - r["wall_s"] for r in fits if r["ray_time_total_s"]]
        result.update(
            rc=rc, trials=len(fits), concurrent=slots, search_wall_s=ended - started,
            first_fit_start_after_s=first - started, after_last_fit_s=ended - last,
            fit_share_of_slots=busy / (slots * (last - first)) if last > first else None,
            fit_share_of_search=busy / (slots * (ended - started)),
            mean_fit_s=statistics.fmean(r["wall_s"] for r in fits),
            mean_first_step_in_fit_s=statistics.fmean(r["first_step_s"] for r in fits if r["first_step_s"]),
            trainable_overhead_s=statistics.fmean(inside) if inside else None,
            per_trial=fits)
        # gaps between consecutive fit() intervals, assigned greedily to slots
        slot_free = [first] * slots
        gaps = []
        for r in fits:
            i = min(range(slots), key=lambda j: slot_free[j])
            if r["started_at"] > first + 1e-6 or i:
                gaps.append(max(0.0, r["started_at"] - slot_free[i]))
            slot_free[i] = r["started_at"] + r["wall_s"]
        result["slot_gap_s"] = gaps
        result["mean_gap_between_trials_s"] = statistics.fmean(gaps) if gaps else None
    result["wall_s"] = time.time() - t0
    tt.write_json(args.out, result)
    show = {k: result.get(k) for k in ("trials", "concurrent", "search_wall_s", "first_fit_start_after_s",
                                       "mean_fit_s", "mean_first_step_in_fit_s", "trainable_overhead_s",
                                       "mean_gap_between_trials_s", "fit_share_of_slots", "fit_share_of_search")}
    print(json.dumps(show, indent=1, default=str))
    return result


def _trial_seconds(trial: dict[str, Any]) -> Optional[float]:
    times = [h.get("time_total_s") for h in trial.get("history", []) if isinstance(h.get("time_total_s"), (int, float))]
    return float(max(times)) if times else None


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", default="vits")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps-files", type=int, default=150, help="steps per epoch of the cold/warm trials")
    ap.add_argument("--steps-memory", type=int, default=300, help="steps per epoch of the packed trials")
    ap.add_argument("--workers", type=int, default=8, help="loader workers of the cold/warm trials")
    ap.add_argument("--pack", default="1,2,4")
    ap.add_argument("--phases", default="cold,warm,pack", help="which of cold, warm, pack to run")
    ap.add_argument("--cache-dir", help="torch.compile cache to use (default: a fresh one, so `cold` is cold)")
    ap.add_argument("--pool", type=int, default=32)
    ap.add_argument("--pool-workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--val-fraction", type=float, default=0.16)
    ap.add_argument("--frame-size", default="480x640")
    ap.add_argument("--crop", default="518x518")
    ap.add_argument("--phase-timeout", type=float, default=240.0)
    ap.add_argument("--deadline", type=float, default=0.0, help="seconds; later phases are skipped past it")
    ap.add_argument("--ray", action="store_true", help="measure Ray's per-trial overhead with a real tiny search")
    ap.add_argument("--ray-trials", type=int, default=6)
    ap.add_argument("--ray-concurrent", type=int, default=2)
    ap.add_argument("--ray-epochs", type=int, default=2)
    ap.add_argument("--ray-steps", type=int, default=4)
    ap.add_argument("--out")
    ap.add_argument("--smoke", action="store_true", help="tiny model and data, CPU (tests)")
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return {}
    args.pack = [int(v) for v in str(args.pack).split(",") if v.strip()]
    if args.smoke:
        args.encoder, args.batch, args.epochs, args.steps_files, args.steps_memory = "smoke", 2, 1, 3, 4
        args.workers, args.pack, args.pool, args.pool_workers, args.frames = 0, [2], 2, 0, 12
        args.phases = "cold,pack"
        args.frame_size, args.crop, args.val_fraction, args.phase_timeout = "64x80", "56x70", 0.3, 120.0
    if args.ray:
        return ray_overhead(args)
    return gpu_phases(args)


if __name__ == "__main__":
    main()
