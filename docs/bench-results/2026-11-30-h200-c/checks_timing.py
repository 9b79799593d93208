"""Where the checks beside Ray's start go on this machine: the CLI's prepare phase in-process, each check timed
(seconds after the CLI started), stopped before the packing probe. Usage: checks_timing.py WORK_DIR"""
import argparse, sys, threading, time
from pathlib import Path
sys.path.insert(0, ".")
sys.path.insert(0, "benchmarks")
import search_gpu_busy as bench

work = Path(sys.argv[1]); work.mkdir(parents=True, exist_ok=True)
if not (work / "nyu").exists():
    from trainer.data.synth import generate_dataset
    generate_dataset(work / "nyu", 600, size=(240, 320), seed=0, layout="nyu", progress=False)
args = argparse.Namespace(smoke=False, encoder="vits", crop="518x518", workers=None, batch=None, epochs=3, steps=None,
                          grace=1, trials=12)
bench.write_spec(args, work / "nyu", work / "search", work / "spec.yaml")
T0 = time.time()
def timed(mod, name):
    fn = getattr(mod, name)
    def wrap(*a, **k):
        s = time.time() - T0
        try:
            return fn(*a, **k)
        finally:
            print(f"[t] {name:28s} {s:6.1f} -> {time.time() - T0:6.1f} s  ({threading.current_thread().name})", flush=True)
    setattr(mod, name, wrap)
import automl.search.driver as d, automl.search.cluster as cl
from automl.skills.depth_net_mono import DepthNetMono
for n in ("check_tracking_reachable", "load_search_space", "_check_results", "with_frame_cache", "check_free_space"):
    timed(d, n)
timed(cl, "init_ray")
for n in ("storage_needed", "preflight"):
    timed(DepthNetMono, n)
def stop(*a, **k):
    raise SystemExit(0)
d.resolve_packing = stop
import automl.cli
T0 = time.time()
try:
    automl.cli.main(["run", "-e", str(work / "spec.yaml"), "--gpus-per-trial", "0.25"])
except SystemExit:
    pass
print(f"[t] total {time.time() - T0:.1f} s")
