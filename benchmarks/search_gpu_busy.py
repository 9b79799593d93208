"""How busy a real search keeps the GPU: runs `automl run` (the CLI, in its own process, as a user runs it) on
synthetic NYU-layout frames and samples the GPU with NVML every 0.5 s for the whole run.

The search is experiments/depth_net_mono/train_metric.yaml with the data, the encoder and the run length replaced
(`--encoder vits --trials 12 --gpus-per-trial 0.25 --frames 600 --frame-size 240x320 --epochs 3 --grace 1`: the
search of issue 18). Reported, over the search's wall time (CLI start to exit) and over the same after its first
60 s:
  - GPU busy: mean NVML utilisation, and the share of samples in which the GPU was not idle (utilisation > 0)
  - time to the first GPU step: first non-idle sample after the CLI started (and the first trial's first step,
    from its fit.json)
  - per-trial start-up: trial start (the trial function entered) to its first training step; cold workers (a new
    process) and warm ones (a process that ran a trial before) apart
  - idle gaps: stretches of 2 s or more at 0% utilisation
  - trials (and epochs) per GPU-hour of the search's wall time
  - `Fatal Python error` in any log of the run (CLI output, Ray worker logs), and whether every trial that trained
    all its epochs left status.json SUCCESS
Writes RESULTS.json (samples, trials, the numbers) and RESULTS.png (utilisation and memory over time, one bar per
trial by worker process).

    python benchmarks/search_gpu_busy.py --label after --out results/bench/busy_after       # GPU
    python benchmarks/search_gpu_busy.py --repo /path/to/other/checkout --label before --out ...  # another version
    python benchmarks/search_gpu_busy.py --smoke --out /tmp/busy                             # CPU smoke (tests)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SPEC = "experiments/depth_net_mono/train_metric.yaml"
SMOKE_MODEL = {"encoder": "custom",
               "custom": {"embed_dim": 32, "depth": 2, "num_heads": 2, "features": 16, "out_channels": [8, 16, 32, 32]}}
IDLE_GAP_S = 2.0
SKIP_S = 60.0


# ----------------------------------------------------------------------------------------------------------------
# GPU sampling
# ----------------------------------------------------------------------------------------------------------------

class GpuSampler:
    """Every `period` s: (time, utilisation % and memory MiB of each GPU), through pynvml, else nvidia-smi."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.samples: list[dict[str, Any]] = []
        self.source = None
        self.gpu_names: list[str] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> "GpuSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.gpu_names = [str(pynvml.nvmlDeviceGetName(h)) for h in handles]
            self.source = "pynvml"
            self._thread = threading.Thread(target=self._poll_nvml, args=(pynvml, handles), daemon=True)
        except Exception:  # noqa: BLE001 - no pynvml (or no driver): the command-line tool
            if not shutil.which("nvidia-smi"):
                raise RuntimeError("no GPU to sample: neither pynvml nor nvidia-smi works here (use --smoke on CPUs)")
            self.source = "nvidia-smi"
            self.gpu_names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                            capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", f"-lms={int(self.period * 1000)}"],
                                          stdout=subprocess.PIPE, text=True, bufsize=1)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        self._thread.start()
        return self

    def _poll_nvml(self, pynvml: Any, handles: list) -> None:
        while not self._stop.is_set():
            t = time.time()
            util, mem = [], []
            for h in handles:
                util.append(float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu))
                mem.append(pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
            self.samples.append({"t": t, "util": util, "mem_mib": mem})
            self._stop.wait(max(0.0, self.period - (time.time() - t)))

    def _read_smi(self) -> None:
        n = max(len(self.gpu_names), 1)
        row: list[tuple[float, float]] = []
        for line in self._proc.stdout:  # one line per GPU per period
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 3:
                continue
            row.append((float(parts[1]), float(parts[2])))
            if len(row) == n:
                self.samples.append({"t": time.time(), "util": [u for u, _ in row], "mem_mib": [m for _, m in row]})
                row = []

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ----------------------------------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------------------------------

def write_spec(args: argparse.Namespace, data: Path, results: Path, spec_file: Path) -> None:
    """experiments/depth_net_mono/train_metric.yaml on the synthetic frames, no initial weights (none are on the
    benchmark machine: the step costs the same), the benchmark's run length."""
    import yaml

    tree = yaml.safe_load((REPO / SPEC).read_text())
    tree["results_dir"] = str(results)
    tree["model"]["mono_backbone"]["pretrained_path"] = None
    if args.smoke:
        tree["model"].update(SMOKE_MODEL)
    else:
        tree["model"]["encoder"] = args.encoder
    crop = [int(v) for v in args.crop.split("x")]
    for split, listing in (("train_dataset", "train.txt"), ("val_dataset", "val.txt")):
        ds = tree["dataset"][split]
        ds["data_sources"] = [{"dataset_name": "NYUDV2", "data_file": str(data / listing)}]
        ds["augmentation"]["crop_size"] = crop
        if args.workers is not None:
            ds["workers"] = args.workers if split == "train_dataset" else min(args.workers, 4)
        if args.batch:
            ds["batch_size"] = args.batch
    tree["train"]["num_epochs"] = args.epochs
    if args.steps:
        tree["train"]["max_steps_per_epoch"] = args.steps
    tree["automl"].update(grace_period=args.grace, export="none", num_trials=args.trials)
    spec_file.write_text(yaml.safe_dump(tree, sort_keys=False))


def search_command(args: argparse.Namespace, spec_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "automl.cli", "run", "-e", str(spec_file), "--num-trials", str(args.trials),
           "--gpus-per-trial", str(args.gpus_per_trial)]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    return cmd


MARKS = ("checked:", "--gpus-per-trial auto", "[search] start")  # CLI lines whose time the run records


def _copy_marking(stream: Any, log: Any, marks: list[tuple[float, str]], launched: float) -> None:
    """Copy the CLI's output to `log`; record (seconds after launch, line) of the first line of each MARKS kind
    and of every `checked:` line (where the search's start-up goes)."""
    seen: set[str] = set()
    for line in stream:
        log.write(line)
        kind = next((m for m in MARKS if line.startswith(m)), None)
        if kind and (kind == "checked:" or kind not in seen):
            seen.add(kind)
            marks.append((round(time.time() - launched, 2), line.strip()[:300]))
    log.flush()


def run_search(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Generate the frames, run the CLI in `args.repo` while sampling the GPU; what happened, with timestamps."""
    sys.path.insert(0, str(REPO))
    from trainer.data.synth import generate_dataset

    h, w = (int(v) for v in args.frame_size.split("x"))
    t0 = time.time()
    generate_dataset(work / "nyu", args.frames, size=(h, w), seed=0, layout="nyu", progress=False)
    data_s = time.time() - t0
    results = work / "search"
    spec_file = work / "spec.yaml"
    write_spec(args, work / "nyu", results, spec_file)
    cmd = search_command(args, spec_file)
    repo = Path(args.repo).resolve()
    path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path,
           "PYTHONUNBUFFERED": "1"}
    sampler = GpuSampler(args.period).start() if not args.smoke else None
    log_path = work / "automl_run.log"
    launched = time.time()
    marks: list[tuple[float, str]] = []
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=str(repo), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        reader = threading.Thread(target=_copy_marking, args=(proc.stdout, log, marks, launched), daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        reader.join(10)
    ended = time.time()
    if sampler is not None:
        time.sleep(args.period)
        sampler.stop()
    return {"command": " ".join(cmd), "repo": str(repo), "rc": rc, "launched": launched, "ended": ended,
            "data_s": data_s, "results": str(results), "log": str(log_path), "log_marks": marks,
            "samples": sampler.samples if sampler else [], "gpus": sampler.gpu_names if sampler else [],
            "sampler": sampler.source if sampler else None}


# ----------------------------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------------------------

def trials_of(results: Path, num_epochs: int) -> list[dict[str, Any]]:
    """Per trial: its interval (trial start, fit start, first step, fit end), worker, epochs and end state."""
    summary = json.loads((results / "summary.json").read_text()) if (results / "summary.json").is_file() else {}
    out = []
    for t in summary.get("trials", []):
        folder = Path(t.get("results_dir") or results / "trials" / t["trial_id"])
        fit = json.loads((folder / "fit.json").read_text()) if (folder / "fit.json").is_file() else {}
        hist = [h for h in t.get("history", []) if h.get("epoch") is not None]
        first = hist[0] if hist else {}
        started = first.get("trial_started_at")
        if started is None and first.get("reported_at") and first.get("time_total_s") is not None:
            started = first["reported_at"] - first["time_total_s"]  # versions before warm workers: Ray's clock
        fit_start = fit.get("started_at")
        first_step = first.get("first_step_at")  # reported by trials of this version (a scheduler-stopped trial
        if first_step is None and fit_start and fit.get("first_step_s") is not None:  # writes no fit.json)
            first_step = fit_start + fit["first_step_s"]
        last_report = max((h.get("reported_at") or 0 for h in hist), default=None)
        status = _last_status(folder / "status.json")
        out.append({
            "trial_id": t["trial_id"], "state": t.get("state"), "epochs": t.get("epochs"),
            "worker_pid": first.get("worker_pid"), "worker_trial": first.get("worker_trial"),
            "trial_started_at": started, "fit_started_at": fit_start, "first_step_at": first_step,
            "fit_ended_at": fit_start + fit["wall_time_s"] if fit_start and fit.get("wall_time_s") else last_report,
            "last_report_at": last_report,
            "startup_s": first_step - started if first_step and started else None,
            **{k: first.get(k) for k in ("preloaded", "startup_imports_s", "startup_spec_s", "startup_tracking_s")},
            "status": status, "ran_all_epochs": (t.get("epochs") or 0) >= num_epochs})
    return sorted(out, key=lambda r: r["trial_started_at"] or r["fit_started_at"] or 0)


def _last_status(path: Path) -> Optional[str]:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]).get("status") if lines else None
    except (OSError, ValueError):
        return None


def busy(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Optional[float]]:
    """Mean utilisation (%) and non-idle share of the samples in [start, end], over all GPUs."""
    vals = [u for s in samples if start <= s["t"] <= end for u in s["util"]]
    if not vals:
        return {"mean_util_pct": None, "busy_share": None, "samples": 0}
    return {"mean_util_pct": round(statistics.fmean(vals), 1),
            "busy_share": round(sum(1 for v in vals if v > 0) / len(vals), 3), "samples": len(vals)}


def idle_gaps(samples: list[dict[str, Any]], start: float, end: float, min_s: float = IDLE_GAP_S) -> list[list[float]]:
    """[start, length] (s after `start`) of every stretch of at least `min_s` in which every GPU read 0%."""
    gaps, begin = [], None
    inside = [s for s in samples if start <= s["t"] <= end]
    for s in inside:
        idle = max(s["util"]) == 0
        if idle and begin is None:
            begin = s["t"]
        elif not idle and begin is not None:
            if s["t"] - begin >= min_s:
                gaps.append([round(begin - start, 1), round(s["t"] - begin, 1)])
            begin = None
    if begin is not None and inside and inside[-1]["t"] - begin >= min_s:
        gaps.append([round(begin - start, 1), round(inside[-1]["t"] - begin, 1)])
    return gaps


def fatal_errors(paths: Sequence[str]) -> list[str]:
    """Files (CLI log, Ray worker logs) holding `Fatal Python error`."""
    hits = []
    for p in paths:
        try:
            with open(p, errors="replace") as fh:
                if "Fatal Python error" in fh.read():
                    hits.append(p)
        except OSError:
            pass
    return hits


def _first(trials: list[dict[str, Any]], key: str, start: float) -> Optional[float]:
    """Seconds from the CLI's start to the earliest `key` of any trial (None when no trial has it)."""
    times = [t[key] for t in trials if t.get(key)]
    return round(min(times) - start, 1) if times else None


def _packing(results: Path) -> Optional[dict[str, Any]]:
    """What `--gpus-per-trial auto` chose (summary.json `packing`), or None."""
    try:
        return json.loads((results / "summary.json").read_text()).get("packing")
    except (OSError, ValueError):
        return None


def analyse(run: dict[str, Any], num_epochs: int, n_gpus: int,
            trials: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """The numbers, over the search's wall time: from the CLI's start to the end of its last trial (the winner's
    evaluation, export and report come after; `cli_exit_s` says when the CLI ended)."""
    trials = trials_of(Path(run["results"]), num_epochs) if trials is None else trials
    samples = run["samples"]
    start = run["launched"]
    ends = [t["fit_ended_at"] or t["last_report_at"] for t in trials if t["fit_ended_at"] or t["last_report_at"]]
    end = max(ends) if ends else run["ended"]
    wall = end - start
    first_busy = next((s["t"] for s in samples if s["t"] >= start and max(s["util"]) > 0), None)
    first_steps = [t["first_step_at"] for t in trials if t["first_step_at"]]
    cold = [t["startup_s"] for t in trials if t["startup_s"] is not None and t["worker_trial"] == 0]
    warm = [t["startup_s"] for t in trials if t["startup_s"] is not None and (t["worker_trial"] or 0) > 0]
    epochs = sum(t["epochs"] or 0 for t in trials)
    gpu_hours = wall * max(n_gpus, 1) / 3600
    full = [t for t in trials if t["ran_all_epochs"]]
    logs = [run["log"], *glob.glob("/tmp/ray/session_latest/logs/worker-*.err"),
            *glob.glob("/tmp/ray/session_latest/logs/worker-*.out")]
    gaps = idle_gaps(samples, start, end)
    return {
        "search_wall_s": round(wall, 1),
        "cli_exit_s": round(run["ended"] - start, 1), "cli_rc": run["rc"],
        "gpu_busy": busy(samples, start, end),
        "gpu_busy_after_60s": busy(samples, start + SKIP_S, end),
        "first_gpu_activity_s": round(first_busy - start, 1) if first_busy else None,
        "first_trial_step_s": round(min(first_steps) - start, 1) if first_steps else None,
        "first_trial_started_s": _first(trials, "trial_started_at", start),
        "first_fit_started_s": _first(trials, "fit_started_at", start),
        "packing": _packing(Path(run["results"])),
        "startup_cold_s": _stats(cold), "startup_warm_s": _stats(warm),
        "idle_gaps": {"count": len(gaps), "total_s": round(sum(g[1] for g in gaps), 1),
                      "longest_s": max((g[1] for g in gaps), default=0.0), "gaps": gaps},
        "trials": len(trials), "epochs": epochs, "worker_processes": len({t["worker_pid"] for t in trials}),
        "trials_per_gpu_hour": round(len(trials) / gpu_hours, 1) if gpu_hours else None,
        "epochs_per_gpu_hour": round(epochs / gpu_hours, 1) if gpu_hours else None,
        "fatal_python_error_in": fatal_errors(logs),
        "trials_all_epochs": len(full),
        "trials_all_epochs_not_success": [t["trial_id"] for t in full if t["status"] != "SUCCESS"],
        "per_trial": trials,
    }


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def plot(result: dict[str, Any], path: Path) -> Optional[str]:
    """Utilisation and memory over time, and each trial's interval (start-up hatched, training solid) by worker."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    run, a = result["run"], result["analysis"]
    t0 = run["launched"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1.4]})
    if run["samples"]:
        ts = [s["t"] - t0 for s in run["samples"]]
        ax1.plot(ts, [statistics.fmean(s["util"]) for s in run["samples"]], lw=0.8, label="GPU utilisation %")
        ax1b = ax1.twinx()
        ax1b.plot(ts, [sum(s["mem_mib"]) / 1024 for s in run["samples"]], lw=0.8, color="tab:orange",
                  label="memory GiB")
        ax1b.set_ylabel("memory GiB")
    ax1.set_ylabel("utilisation %")
    ax1.set_ylim(0, 105)
    ax1.set_title(f"{result['label']}: busy {a['gpu_busy']['busy_share']} "
                  f"(after 60 s {a['gpu_busy_after_60s']['busy_share']}), {a['trials']} trials, "
                  f"{a['search_wall_s']:.0f} s")
    lanes = {pid: i for i, pid in enumerate(dict.fromkeys(t["worker_pid"] for t in a["per_trial"]))}
    for t in a["per_trial"]:
        y = lanes.get(t["worker_pid"], 0)
        if t["trial_started_at"] and t["first_step_at"]:
            ax2.barh(y, t["first_step_at"] - t["trial_started_at"], left=t["trial_started_at"] - t0, height=0.6,
                     color="lightgray", hatch="//", edgecolor="gray")
        if t["first_step_at"] and t["fit_ended_at"]:
            ax2.barh(y, t["fit_ended_at"] - t["first_step_at"], left=t["first_step_at"] - t0, height=0.6,
                     color="tab:green" if t["state"] == "completed" else "tab:blue")
    ax2.set_yticks(range(len(lanes)), [f"worker {i}" for i in range(len(lanes))])
    ax2.set_xlabel("seconds since `automl run` started (hatched: trial start-up, solid: training)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="search")
    ap.add_argument("--repo", default=str(REPO), help="checkout whose automl/trainer run the search")
    ap.add_argument("--encoder", default="vits")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--gpus-per-trial", default="0.25", help="a number, or auto (the probe's packing)")
    ap.add_argument("--max-concurrent", type=int)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--frame-size", default="240x320")
    ap.add_argument("--crop", default="518x518")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--batch", type=int, help="batch size (default: the spec's)")
    ap.add_argument("--steps", type=int, help="train.max_steps_per_epoch (default: the whole split)")
    ap.add_argument("--workers", type=int, help="loader workers (default: the spec's)")
    ap.add_argument("--period", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--work", help="folder for data and results (default: OUT/work)")
    ap.add_argument("--out", required=True, help="folder: LABEL.json and LABEL.png")
    ap.add_argument("--smoke", action="store_true", help="tiny model and search on CPUs, no NVML (tests)")
    ap.add_argument("--reanalyse", metavar="LABEL.json", help="recompute the numbers and the plot of a saved run")
    args = ap.parse_args(argv)
    if args.reanalyse:
        return reanalyse(Path(args.reanalyse), Path(args.out))
    if args.smoke:
        args.trials, args.gpus_per_trial, args.max_concurrent, args.frames = 3, "0", 2, 24
        args.frame_size, args.crop, args.epochs, args.grace, args.batch = "64x80", "56x70", 2, 1, 2
        args.steps, args.workers, args.timeout = 3, 0, min(args.timeout, 600.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out / f"work_{args.label}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run = run_search(args, work)
    n_gpus = len(run["gpus"]) or 1
    result = {"benchmark": "search_gpu_busy", "label": args.label, "gpus": run["gpus"],
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "args": vars(args), "run": run,
              "analysis": analyse(run, args.epochs, n_gpus)}
    return _save_and_show(result, out)


def reanalyse(saved: Path, out: Path) -> dict[str, Any]:
    """The numbers and plot of a saved LABEL.json again (after a change to the analysis), from its samples and
    per-trial intervals; written to OUT/LABEL.json and OUT/LABEL.png."""
    result = json.loads(saved.read_text())
    a = result["analysis"]
    n_gpus = len(result["gpus"]) or 1
    result["analysis"] = analyse(result["run"], int(result["args"]["epochs"]), n_gpus, trials=a["per_trial"])
    result["analysis"]["fatal_python_error_in"] = a["fatal_python_error_in"]  # the logs are gone by now
    out.mkdir(parents=True, exist_ok=True)
    return _save_and_show(result, out)


def _save_and_show(result: dict[str, Any], out: Path) -> dict[str, Any]:
    label, run = result["label"], result["run"]
    (out / f"{label}.json").write_text(json.dumps(result, indent=1, default=str))
    result["plot"] = plot(result, out / f"{label}.png")
    a = result["analysis"]
    show = {k: a[k] for k in ("search_wall_s", "cli_exit_s", "cli_rc", "gpu_busy", "gpu_busy_after_60s",
                              "first_gpu_activity_s",
                              "first_trial_started_s", "first_fit_started_s",
                              "first_trial_step_s", "startup_cold_s", "startup_warm_s", "trials", "epochs",
                              "worker_processes", "trials_per_gpu_hour", "epochs_per_gpu_hour",
                              "fatal_python_error_in", "trials_all_epochs", "trials_all_epochs_not_success")}
    show["idle_gaps"] = {k: v for k, v in a["idle_gaps"].items() if k != "gaps"}
    show["packing"] = (a.get("packing") or {}).get("reason")
    print(f"== {label}: rc {run['rc']}, GPUs {run['gpus'] or 'none'}\n   {run['command']}")
    print(json.dumps(show, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
