#!/bin/bash
# issue 18, round 3, call 2: main 7d13bf7 (base) vs the working tree (trial actors on preloaded workers, driver
# start-up cuts), the 12-trial vits search with --gpus-per-trial auto (the default), one H200, one after the other
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/site && tar -xJf .gpu18/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
t=$(date +%s)
python3 - <<'PY'
import torch, pytorch_lightning, timm, ray, optuna, mlflow, omegaconf
m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).cuda()
f = torch.compile(m); f(torch.randn(8, 64, device="cuda")).sum().backward(); torch.cuda.synchronize()
print("ray", ray.__version__, "torch", torch.__version__)
PY
rm -rf /tmp/torchinductor_root ~/.triton/cache
PYTHONPATH=/tmp/site:$PWD AUTOML_PRELOAD_SLOTS_DIR=/tmp/pl AUTOML_PRELOAD_SKILL=depth_net_mono python3 -c "
import automl.search.preload as p, torch
print('preload: slot', p._held != [], 'libcuda mapped:', 'libcuda' in open('/proc/self/maps').read(), 'cuda initialised:', torch.cuda.is_initialized())"
echo "warm-up $(( $(date +%s) - t )) s"
run() {  # label repo timeout gpus-per-trial
  python3 benchmarks/search_gpu_busy.py --label $1 --repo $2 --timeout $3 --gpus-per-trial $4 --work /tmp/w_$1 --out $OUT > /tmp/bench_$1.txt 2>&1
  cp /tmp/w_$1/automl_run.log $OUT/${1}_run.log
  grep -l "Fatal Python error" /tmp/ray/session_*/logs/* 2>/dev/null | head -3
  rm -rf /tmp/ray /tmp/w_$1/nyu
}
run base_auto .gpu18/base 245 auto
run cand_auto . 235 auto
python3 - <<'PY'
import json, os
for l in ("base_auto", "cand_auto"):
    p = os.path.join(os.environ["OUT"], l + ".json")
    if not os.path.exists(p): print(l, "missing"); continue
    r = json.load(open(p)); a = r["analysis"]
    print(l, {k: a.get(k) for k in ("search_wall_s", "cli_rc", "first_gpu_activity_s", "first_trial_started_s", "first_fit_started_s",
          "first_trial_step_s", "trials_per_gpu_hour", "epochs_per_gpu_hour", "trials", "epochs", "fatal_python_error_in", "trials_all_epochs_not_success")}, "packing", (a.get("packing") or {}).get("reason"))
    print("  busy", a["gpu_busy"], "after60", a["gpu_busy_after_60s"], "cold", a["startup_cold_s"], "warm", a["startup_warm_s"],
          "gaps", {k: v for k, v in a["idle_gaps"].items() if k != "gaps"})
    print("  marks", [m for m in r["run"].get("log_marks", []) if "checked: Ray" in m[1] or "[search] start" in m[1]][:3])
    for t in a.get("per_trial", [])[:6]:
        print("   ", {k: t.get(k) for k in ("trial_id", "worker_trial", "preloaded", "startup_imports_s", "startup_s")})
PY
