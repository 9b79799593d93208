"""Where a vits batch-4 training step spends its host time (issue 18: host-bound small-encoder step): the trainer's
fit() on the benchmark's spec, cProfile enabled from step WARMUP to the end; prints img/s and the top functions."""
import argparse, cProfile, io, pstats, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "."); sys.path.insert(0, "benchmarks")
import pytorch_lightning as pl
import search_gpu_busy as bench

work = Path(sys.argv[1]); work.mkdir(parents=True, exist_ok=True)
if not (work / "nyu").exists():
    from trainer.data.synth import generate_dataset
    generate_dataset(work / "nyu", 600, size=(240, 320), seed=0, layout="nyu", progress=False)
args = argparse.Namespace(smoke=False, encoder="vits", crop="518x518", workers=None, batch=None, epochs=3, steps=None,
                          grace=1, trials=12)
bench.write_spec(args, work / "nyu", work / "search", work / "spec.yaml")
from automl.skills import get_skill
from trainer.fit import fit
from trainer.probe import _probe_spec
from trainer.tracking import TrackingConfig
spec = get_skill("depth_net_mono").load_spec(str(work / "spec.yaml"), [], "train")
import os
WARM, STEPS = int(os.environ.get("WARM", 25)), int(os.environ.get("STEPS", 60))

class Prof(pl.Callback):
    def __init__(self):
        self.p = cProfile.Profile(); self.t = None; self.n = 0
    def on_train_batch_start(self, trainer, module, batch, i):
        if trainer.global_step == WARM and self.t is None:
            import torch; torch.cuda.is_available() and torch.cuda.synchronize(); self.t = time.time(); self.p.enable()
    def on_train_batch_end(self, trainer, module, out, batch, i):
        if self.t is not None and self.p is not None:
            self.n += 1
            if self.n == STEPS:
                import torch; torch.cuda.is_available() and torch.cuda.synchronize(); self.p.disable(); dt = time.time() - self.t
                print(f"[p] {STEPS} steps in {dt:.2f} s: {dt / STEPS * 1000:.1f} ms/step, {STEPS * 4 / dt:.1f} img/s (profiled)")
                s = io.StringIO(); pstats.Stats(self.p, stream=s).sort_stats("tottime").print_stats(30); print(s.getvalue()[:7000])
                s = io.StringIO(); pstats.Stats(self.p, stream=s).sort_stats("cumulative").print_stats(45); print(s.getvalue()[:9000])
                self.p = None

out = tempfile.mkdtemp()
fit(_probe_spec(spec, out, WARM + STEPS + 2), tracking=TrackingConfig(enabled=False), progress=False, quiet=True, callbacks=[Prof()])
