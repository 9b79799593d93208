"""`--gpus-per-trial auto`: how many trials share one GPU, chosen from a short probe of one trial alone on a GPU.

The probe (the skill's `probe_training`, run as a Ray task on one GPU before the first trial) trains a few dozen
steps of the spec and measures images per second, the GPU's busy share (NVML), the peak GPU memory it reserved and
the CPU cores it used (the trial's process and its loader workers). From one probe run, k trials on one GPU are
predicted to keep it `min(1, k * busy)` busy and to train `img_per_s * min(k, 1 / busy)` images per second in all:
packing fills the gaps a host-bound step leaves, and adds nothing once the GPU is saturated. (Measured on an H100:
one vits batch-4 trial 16% busy, four trials 87% busy at 4.45x the images per second of one; see docs/benchmarks.md.)

`choose_trials_per_gpu` takes the smallest k of `CANDIDATES` predicted to keep the GPU at least `TARGET_BUSY` busy,
among those that fit: k * peak memory within `MEMORY_SHARE` of the GPU, k * cores within the node's CPUs per GPU,
and no more trials per GPU than the search has trials for its GPUs. When none reaches the target it takes the
largest that fits. Without a busy share (no NVML) or without a probe it keeps one trial per GPU, and says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

AUTO = "auto"
CANDIDATES = (1, 2, 4, 8)
TARGET_BUSY = 0.9
MEMORY_SHARE = 0.85  # of the GPU's memory the packed trials may reserve together
PROBE_STEPS = 30
PROBE_WARMUP = 10


@dataclass
class PackingChoice:
    """What `--gpus-per-trial auto` chose and why (printed, and stored in summary.json under `packing`)."""

    trials_per_gpu: int
    gpus_per_trial: float
    reason: str
    probe: Optional[dict[str, Any]] = None
    predicted: list[dict[str, Any]] = field(default_factory=list)  # per candidate k: busy, img/s, fits, why not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gib(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _limits(probe: Mapping[str, Any], k: int, cpus_per_gpu: float, max_k: int) -> list[str]:
    """Why k trials cannot share one GPU (empty when they can)."""
    why = []
    peak, total = probe.get("peak_memory_bytes"), probe.get("total_memory_bytes")
    if peak and total and k * peak > MEMORY_SHARE * total:
        why.append(f"memory: {k} x {_gib(peak)} > {MEMORY_SHARE:.0%} of {_gib(total)}")
    cores = probe.get("cpu_cores")
    if cores and k * cores > cpus_per_gpu:
        why.append(f"CPU: {k} x {cores:.1f} cores > {cpus_per_gpu:g} per GPU")
    if k > max_k:
        why.append(f"trials: {k} > the {max_k} per GPU the search has")
    return why


def choose_trials_per_gpu(probe: Optional[Mapping[str, Any]], *, cpus_per_gpu: float, num_trials: int,
                          gpus: float) -> PackingChoice:
    """The packing for one probe's measurements (see the module's doc); `gpus` is the cluster's GPU count."""
    if not probe:
        return PackingChoice(1, 1.0, "1 trial per GPU: no probe measurement (the skill cannot probe)")
    busy, rate = probe.get("gpu_busy"), float(probe["img_per_s"])
    max_k = max(1, math.ceil(num_trials / max(gpus, 1.0)))
    rows = []
    for k in CANDIDATES:
        why = _limits(probe, k, cpus_per_gpu, max_k)
        pred_busy = min(1.0, k * busy) if busy is not None else None
        pred_rate = rate * min(k, 1.0 / busy) if busy else None
        rows.append({"trials_per_gpu": k, "predicted_busy": pred_busy, "predicted_img_per_s": pred_rate,
                     "fits": not why, "limits": why})
    measured = (f"one trial alone: {rate:.1f} img/s, GPU {busy:.0%} busy, {_gib(probe.get('peak_memory_bytes'))} "
                f"of {_gib(probe.get('total_memory_bytes'))}, {probe.get('cpu_cores') or 0:.1f} CPU cores"
                if busy is not None else f"one trial alone: {rate:.1f} img/s, GPU busy share not measured")
    if busy is None:
        return PackingChoice(1, 1.0, f"1 trial per GPU: {measured} (without it packing cannot be predicted)",
                             dict(probe), rows)
    fitting = [r for r in rows if r["fits"]] or rows[:1]
    enough = [r for r in fitting if r["predicted_busy"] >= TARGET_BUSY]
    pick = enough[0] if enough else fitting[-1]
    k = pick["trials_per_gpu"]
    if enough:
        why = f"the fewest predicted to keep it >= {TARGET_BUSY:.0%} busy ({pick['predicted_busy']:.0%})"
    else:
        blocked = next((r for r in rows if not r["fits"]), None)
        why = (f"the most that fit (predicted {pick['predicted_busy']:.0%} busy"
               + (f"; {blocked['trials_per_gpu']} do not: {'; '.join(blocked['limits'])})" if blocked else ")"))
    reason = (f"{k} trial{'s' if k > 1 else ''} per GPU (--gpus-per-trial {1 / k:g}): {measured}; {why}, "
              f"predicted {pick['predicted_img_per_s']:.0f} img/s per GPU")
    return PackingChoice(k, 1.0 / k, reason, dict(probe), rows)


def wants_auto(gpus_per_trial: Any) -> bool:
    """Whether the search chooses its packing itself: `--gpus-per-trial auto`, or no value (the default)."""
    return gpus_per_trial is None or str(gpus_per_trial).strip().lower() == AUTO


def probe_on_gpu(skill: Any, spec: Any, cpus_per_trial: float, compile_cache: str) -> Optional[dict[str, Any]]:
    """Run the skill's `probe_training` as a Ray task on one GPU (its compilation fills the search's compile cache,
    which the trials then read); its measurements, or None when the skill cannot probe or the probe failed (logged)."""
    import os

    import ray

    @ray.remote(num_gpus=1, num_cpus=cpus_per_trial, max_calls=1)
    def probe(plain: dict[str, Any]) -> Optional[dict[str, Any]]:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(compile_cache, "inductor"))
        from omegaconf import OmegaConf

        return skill.probe_training(OmegaConf.create(plain), PROBE_STEPS, PROBE_WARMUP)

    try:
        from omegaconf import OmegaConf

        return ray.get(probe.remote(OmegaConf.to_container(spec, resolve=True)), timeout=900)
    except Exception as exc:  # noqa: BLE001 - packing falls back to one trial per GPU, and says why
        log.warning("--gpus-per-trial auto: the probe failed (%s); one trial per GPU", str(exc).splitlines()[-1])
        return None


def resolve_packing(skill: Any, spec: Any, opts: Any, compile_cache: str) -> Optional[PackingChoice]:
    """The probe's choice for `opts.gpus_per_trial` auto (or none) on a cluster with GPUs (for the terminal and
    summary.json). None when a number was given, or when the cluster has no GPU (CPU trials, as before)."""
    import ray

    if not wants_auto(opts.gpus_per_trial):
        return None
    total = ray.cluster_resources()
    gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 1))
    if gpus == 0:
        return None
    measured = probe_on_gpu(skill, spec, opts.cpus_per_trial, compile_cache)
    choice = choose_trials_per_gpu(measured, cpus_per_gpu=cpus / gpus, num_trials=opts.num_trials, gpus=gpus)
    log.info("--gpus-per-trial auto: %s", choice.reason)
    return choice
