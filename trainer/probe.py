"""A short training run that measures what packing trials onto one GPU needs to know.

Contract: `measure_training(spec, steps, warmup)` runs `fit` on a copy of `spec` for one epoch of `warmup + steps`
training steps (no validation, no initial validation, tracking off, results in a temporary folder that is removed)
and returns a `StepProbe`: images per second and seconds per step over the `steps` timed steps, the peak GPU memory
the process reserved and the GPU's total memory (bytes), and the GPU's busy share over the timed steps (NVML
utilisation sampled every 0.1 s through `torch.cuda.utilization`; None when NVML cannot be read or on CPUs). It uses
the spec's own model, batch size, data pipeline and fast path, so the numbers are those of one trial alone on the
GPU, and its compilation fills the same compile cache the trials then read. `cpu_cores` is the CPU time of the
process and its children (loader workers) per second of the timed steps.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class StepProbe:
    """What one trial alone on a GPU measured (see the module's contract)."""

    img_per_s: float
    step_s: float
    batch_size: int
    steps: int
    peak_memory_bytes: Optional[int]
    total_memory_bytes: Optional[int]
    gpu_busy: Optional[float]  # 0..1, None when not measured
    cpu_cores: Optional[float]  # CPU seconds per second of the process and its loader workers over the timed steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its living children (DataLoader workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


class _UtilSampler:
    """NVML utilisation of the current CUDA device every `period` s while running (None values when unreadable)."""

    def __init__(self, period: float = 0.1):
        self.period = period
        self.values: list[float] = []
        self.failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.wait(self.period):
            try:
                self.values.append(float(torch.cuda.utilization()))
            except Exception as exc:  # noqa: BLE001 - no pynvml / NVML: busy share unknown
                log.info("GPU utilisation not readable (%s)", exc)
                self.failed = True
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Optional[float]:
        """Stop sampling; the mean busy share (0..1), or None when nothing was read."""
        self._stop.set()
        self._thread.join()
        return None if self.failed or not self.values else sum(self.values) / len(self.values) / 100.0


def _timer_callback(warmup: int, on_cuda: bool) -> Any:
    """A Lightning callback that times the training steps after the first `warmup` and samples the GPU meanwhile."""
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.started: Optional[float] = None
            self.ended: Optional[float] = None
            self.steps = 0
            self.sampler = _UtilSampler() if on_cuda else None
            self.busy: Optional[float] = None
            self.cpu: list[float] = []

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                if on_cuda:
                    torch.cuda.synchronize()
                    self.sampler.start()
                self.started = time.perf_counter()
                self.cpu.append(_cpu_seconds())

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.started is not None and batch_idx >= warmup:
                self.steps += 1

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if self.started is not None and self.ended is None:
                if on_cuda:
                    torch.cuda.synchronize()
                    self.busy = self.sampler.stop()
                self.ended = time.perf_counter()
                self.cpu.append(_cpu_seconds())

    return StepTimer()


def _probe_spec(spec: DictConfig, out: str, steps: int) -> DictConfig:
    """A copy of `spec` that trains `steps` steps of one epoch into `out`, without validation or tracking."""
    probe = OmegaConf.create(OmegaConf.to_container(spec, resolve=True))
    probe.results_dir = out
    probe.train.results_dir = None
    probe.train.num_epochs = 1
    probe.train.max_steps_per_epoch = steps
    probe.train.accumulate_grad_batches = 1
    probe.train.initial_validation = False
    probe.train.resume_training_checkpoint_path = None
    probe.dataset.val_dataset.data_sources = []
    return probe


def measure_training(spec: DictConfig, steps: int = 30, warmup: int = 10) -> StepProbe:
    """Train `warmup + steps` steps of `spec` and measure them (see the module's contract)."""
    import torch

    from trainer.fit import fit
    from trainer.tracking import TrackingConfig

    on_cuda = torch.cuda.is_available()
    out = tempfile.mkdtemp(prefix="probe-")
    timer = _timer_callback(warmup, on_cuda)
    try:
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        fit(_probe_spec(spec, out, warmup + steps), tracking=TrackingConfig(enabled=False), progress=False,
            quiet=True, callbacks=[timer])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if timer.started is None or timer.ended is None or timer.steps == 0:
        raise RuntimeError(f"probe: found no timed training step after {warmup} warm-up steps (is the training set "
                           f"smaller than {warmup + 1} batches of {spec.dataset.train_dataset.batch_size}?)")
    took = timer.ended - timer.started
    batch = int(spec.dataset.train_dataset.batch_size)
    peak = int(torch.cuda.max_memory_reserved()) if on_cuda else None
    total = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory) if on_cuda else None
    return StepProbe(img_per_s=timer.steps * batch / took, step_s=took / timer.steps, batch_size=batch,
                     steps=timer.steps, peak_memory_bytes=peak, total_memory_bytes=total, gpu_busy=timer.busy,
                     cpu_cores=(timer.cpu[1] - timer.cpu[0]) / took)
