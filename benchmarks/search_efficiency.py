"""Search efficiency: best validation loss reached per epoch of compute, our default search against the searches a
user would otherwise run, on real (small) Depth Anything V2 finetunes of synthetic scenes.

Contenders, each given the same total budget in training epochs (`automl.budget_epochs`), all through `automl run`
(so every one of them gets the trainer's NaN guard, which TAO's runs do not have):

    ours        TPE (Optuna) + ASHA (rungs on validation epochs) + NaN pruning: the default
    random      random sampling, no early stopping
    hyperband   TAO-style Hyperband: random sampling, synchronous successive halving (R = max epochs, eta = 3)
    bayesian    TAO-style Bayesian: Gaussian-process sampler, one trial at a time
    grid        lr x weight decay grid, every point trained to the end

The space spans a region that diverges (high learning rates), so NaN pruning is exercised for real.

    python benchmarks/search_efficiency.py --out results/bench_search          # the full run (CPU, ~1 h)
    python benchmarks/search_efficiency.py --smoke --out /tmp/smoke            # seconds-scale check

Writes RESULTS/search_efficiency.json, RESULTS/anytime.png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = """
objective: {metric: val/loss, mode: min}
parameters:
  train.optim.lr: {type: float, low: 1.0e-5, high: 3.0, log: true}
  train.optim.weight_decay: {type: float, low: 1.0e-5, high: 0.1, log: true}
  train.optim.head_lr_multiplier: {type: float, low: 1.0, high: 30.0, log: true}
"""
GRID = """
objective: {metric: val/loss, mode: min}
parameters:
  train.optim.lr: {type: categorical, choices: [3.0e-5, 3.0e-4, 3.0e-3, 3.0e-2]}
  train.optim.weight_decay: {type: categorical, choices: [1.0e-4, 1.0e-2]}
"""

CONTENDERS = {
    "ours": {"sampler": "tpe", "scheduler": "asha", "space": "space"},
    "random": {"sampler": "random", "scheduler": "none", "space": "space"},
    "hyperband": {"sampler": "random", "scheduler": "hyperband", "space": "space"},
    "bayesian": {"sampler": "gp", "scheduler": "none", "space": "space", "max_concurrent": 1},
    "grid": {"sampler": "grid", "scheduler": "none", "space": "grid"},
}


def task_spec(data: Path, results: Path, epochs: int, smoke: bool) -> dict[str, Any]:
    aug = {"crop_size": [56, 70]}
    model = {"embed_dim": 32, "depth": 2, "num_heads": 2, "features": 16, "out_channels": [8, 16, 32, 32]} if smoke \
        else {"embed_dim": 64, "depth": 4, "num_heads": 2, "features": 32, "out_channels": [16, 32, 64, 64]}
    return {
        "results_dir": str(results),
        "model": {"model_type": "MetricDepthAnything", "encoder": "custom", "custom": model},
        "dataset": {
            "min_depth": 0.001, "max_depth": 10.0,
            "train_dataset": {"data_sources": [{"data_file": str(data / "train.txt"), "dataset_name": "NYUDV2"}],
                              "batch_size": 8, "workers": 0, "augmentation": aug},
            "val_dataset": {"data_sources": [{"data_file": str(data / "val.txt"), "dataset_name": "NYUDV2"}],
                            "batch_size": 16, "workers": 0, "augmentation": aug},
        },
        "train": {"num_epochs": epochs, "seed": 0, "clip_grad_norm": 0.0,
                  "optim": {"lr": 1e-3, "lr_scheduler": "CosineAnnealingLR", "warmup_steps": 10}},
    }


def run_contender(name: str, seed: int, args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    from automl.search.driver import SearchOptions, run_search
    from automl.skills import get_skill
    from trainer.config import build_spec

    import ray

    cfg = CONTENDERS[name]
    results = out / f"{name}-seed{seed}"
    if results.exists():  # left by an interrupted benchmark: start this run afresh rather than resume a search
        shutil.rmtree(results)
    skill = get_skill("depth_net_mono")
    spec = build_spec(task_spec(data, results, args.max_epochs, args.smoke), action="train", notice=lambda _m: None)
    space = out / ("grid.yaml" if cfg["space"] == "grid" else "space.yaml")
    opts = SearchOptions.from_spec(
        spec, num_trials=10_000 if cfg["sampler"] != "grid" else 8, sampler=cfg["sampler"],
        scheduler=cfg["scheduler"], search_space=str(space), seed=seed, budget_epochs=args.budget,
        max_concurrent=cfg.get("max_concurrent", args.concurrent), cpus_per_trial=1, grace_period=1,
        reduction_factor=3, export="none", max_failures=0)
    started = time.time()
    try:
        summary = run_search(skill, spec, opts)
    except Exception as exc:  # noqa: BLE001 - a contender that finds nothing still has a curve (flat)
        print(f"{name} seed {seed}: {exc}", file=sys.stderr)
        summary = json.loads((results / "summary.json").read_text())
    finally:
        ray.shutdown()
    return {"wall_s": time.time() - started, **anytime(summary, args.budget)}


def anytime(summary: dict[str, Any], budget: int) -> dict[str, Any]:
    """Order every reported epoch of every trial by wall clock; the curve is the best finite val/loss reached once
    `b` epochs have been spent, for b = 1..budget. A diverged trial spends the epoch it diverged in."""
    events = []  # (time, objective or None, diverged)
    wasted = 0
    for t in summary["trials"]:
        for h in t["history"]:
            if h.get("prune_reason"):
                events.append((h.get("reported_at") or 0.0, None))
                wasted += 1 + sum(1 for x in t["history"] if not x.get("prune_reason"))
            elif "val/loss" in h:
                events.append((h.get("reported_at") or 0.0, h["val/loss"]))
    events.sort(key=lambda e: e[0])
    curve, best = [], math.inf
    for _, v in events[:budget]:
        if v is not None and math.isfinite(v):
            best = min(best, v)
        curve.append(best if math.isfinite(best) else None)
    return {"curve": curve, "final_best": curve[-1] if curve else None, "diverged_epochs": wasted,
            "trials": len(summary["trials"]), "states": summary.get("states", {})}


def first_reaching(curve: list, target: float) -> int | None:
    for i, v in enumerate(curve):
        if v is not None and v <= target:
            return i + 1
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=int, default=90, help="total training epochs per contender")
    p.add_argument("--max-epochs", type=int, default=9, help="epochs of one full trial (Hyperband's R)")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--frames", type=int, default=320)
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny budget, one seed, two contenders")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.budget, args.max_epochs, args.frames = 1, 4, 2, 32
        args.contenders = "ours,random"
    names = [c.strip() for c in args.contenders.split(",")]
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown:
        p.error(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")

    from trainer.data.synth import generate_dataset

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(SPACE)
    (out / "grid.yaml").write_text(GRID)
    data = out / "data"
    if not (data / "train.txt").is_file():
        generate_dataset(data, args.frames, size=(64, 80), seed=0, layout="nyu", progress=False)

    results: dict[str, list[dict[str, Any]]] = {}
    partial = out / "search_efficiency.json"
    if partial.is_file():  # resume: runs already finished with the same settings are kept, not re-run
        before = json.loads(partial.read_text())
        same = {k: v for k, v in before.get("args", {}).items() if k not in ("out", "seeds", "contenders")}
        if same == {k: v for k, v in vars(args).items() if k not in ("out", "seeds", "contenders")}:
            results = {k: v for k, v in before.get("results", {}).items() if k in names}
            done = sum(len(v) for v in results.values())
            print(f"resuming from {partial}: {done} finished run(s) kept", flush=True)
        else:
            print(f"{partial} was written with other settings; starting over", flush=True)
    for seed in range(args.seeds):
        for name in names:
            if len(results.get(name, [])) > seed:
                continue
            print(f"== {name}, seed {seed}", flush=True)
            results.setdefault(name, []).append(run_contender(name, seed, args, data, out))
            partial.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))

    report = summarise(results, args)
    partial.write_text(json.dumps({"args": vars(args), "results": results, "summary": report}, indent=1))
    plot(results, out / "anytime.png", args.budget)
    print_table(report, args)
    return 0


def summarise(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    def med(xs: list) -> Any:
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    random_final = med([r["final_best"] for r in results.get("random", [])])
    hyperband_final = med([r["final_best"] for r in results.get("hyperband", [])])
    report = {"random_final_best": random_final, "hyperband_final_best": hyperband_final, "contenders": {}}
    for name, runs in results.items():
        finals = [r["final_best"] for r in runs]
        reach = [first_reaching(r["curve"], random_final) for r in runs] if random_final is not None else []
        report["contenders"][name] = {
            "final_best_median": med(finals),
            "final_best_min": min([f for f in finals if f is not None], default=None),
            "final_best_max": max([f for f in finals if f is not None], default=None),
            "budget_to_random_final_median": med(reach),
            "reached_random_final": sum(r is not None for r in reach),
            "diverged_epochs_median": med([r["diverged_epochs"] for r in runs]),
            "wall_s_median": med([r["wall_s"] for r in runs]),
            "seeds": len(runs),
        }
    return report


def print_table(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nbudget {args.budget} epochs per contender, trials up to {args.max_epochs} epochs, "
          f"{args.seeds} seeds; random search's final best (median) = {report['random_final_best']}")
    head = f"{'contender':<10} {'final best val/loss: median [min, max]':>40} {'epochs to reach random final':>30} " \
           f"{'diverged epochs':>16} {'wall s':>8}"
    print(head + "\n" + "-" * len(head))
    for name, c in report["contenders"].items():
        rng = f"{_f(c['final_best_median'])} [{_f(c['final_best_min'])}, {_f(c['final_best_max'])}]"
        reach = f"{_f(c['budget_to_random_final_median'])} ({c['reached_random_final']}/{c['seeds']} seeds)"
        print(f"{name:<10} {rng:>40} {reach:>30} {_f(c['diverged_epochs_median']):>16} {_f(c['wall_s_median']):>8}")


def _f(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def plot(results: dict[str, list[dict[str, Any]]], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    finals = []
    for name, runs in results.items():
        curves = np.full((len(runs), budget), np.nan)
        for i, r in enumerate(runs):
            c = [np.nan if v is None else v for v in r["curve"]]
            c += [c[-1] if c else np.nan] * (budget - len(c))
            curves[i] = c[:budget]
        x = np.arange(1, budget + 1)
        finals += [v for v in curves[:, -1] if np.isfinite(v)]
        with np.errstate(all="ignore"):
            ax.plot(x, np.nanmedian(curves, axis=0), label=name, lw=2 if name == "ours" else 1.2)
            if len(runs) > 1:
                ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), alpha=0.12)
    random_final = [r["final_best"] for r in results.get("random", []) if r.get("final_best") is not None]
    if random_final:
        ax.axhline(float(np.median(random_final)), color="grey", ls="--", lw=0.8,
                   label="random search's final best (median)")
    if finals:  # the interesting range: from the best found to a model that learnt nothing (val/loss ~ 1)
        low = min(finals)
        ax.set_ylim(low - 0.1 * (1.05 - low), 1.05)
    ax.set_xlabel("training epochs spent (all trials)")
    ax.set_ylabel("best val/loss so far (median over seeds)")
    ax.set_title("Anytime performance of the search")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
