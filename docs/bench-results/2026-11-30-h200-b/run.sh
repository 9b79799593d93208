#!/bin/bash
# issue 18 (b), call 1: baseline (main HEAD 75cfd41, warm workers) vs candidate (branch i18: frame cache, start-up
# overlap, preloaded workers), the same 12-trial vits search at --gpus-per-trial 0.25, one H200, one after the other
set -u
cd "$(dirname "$0")"
MODE=${1:-call1}
mkdir -p /tmp/site && tar -xJf site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv
nproc; free -g | head -2
t=$(date +%s)
if [ $MODE = call1 ]; then
python3 - <<'PY'
import torch, pytorch_lightning, timm, ray, optuna, mlflow, omegaconf
m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).cuda()
f = torch.compile(m)
f(torch.randn(8, 64, device="cuda")).sum().backward()
torch.cuda.synchronize()
print("ray", ray.__version__, "torch", torch.__version__)
PY
else  # call 2: imports only (the disk cache), no compile: the device time is short
python3 -c "import torch, pytorch_lightning, timm, ray, optuna, mlflow.tracking, omegaconf, sqlalchemy, cv2; print(torch.__version__)"
fi
rm -rf /tmp/torchinductor_root ~/.triton/cache
echo "disk warm-up $(( $(date +%s) - t )) s"
run() {  # label repo timeout gpus-per-trial [VAR=value...]
  label=$1 repo=$2 T=$3 gpt=$4; shift 4
  env "$@" python3 branch/benchmarks/search_gpu_busy.py --label $label --repo $repo --timeout $T --gpus-per-trial $gpt \
      --work /tmp/w_$label --out $OUT > /tmp/bench_$label.txt 2>&1
  tail -30 /tmp/bench_$label.txt
  if [ $MODE = call1 ] || [ $label = auto ]; then cp /tmp/w_$label/automl_run.log $OUT/${label}_run.log; else tail -25 /tmp/w_$label/automl_run.log; fi
  grep -l "Fatal Python error" /tmp/ray/session_*/logs/* 2>/dev/null | head -3
  ls -la /tmp/w_$label/search/frame_cache 2>/dev/null | head -5
  rm -rf /tmp/ray /tmp/w_$label/nyu
}
summary() {
  python3 - "$@" <<'PY'
import json, os, sys
for l in sys.argv[1:]:
    p = os.path.join(os.environ["OUT"], l + ".json")
    if not os.path.exists(p): print(l, "missing"); continue
    a = json.load(open(p))["analysis"]
    print(l, "wall", a["search_wall_s"], "busy", a["gpu_busy"]["mean_util_pct"], "after60", a["gpu_busy_after_60s"]["mean_util_pct"],
          "first_gpu", a["first_gpu_activity_s"], "first_trial", a.get("first_trial_started_s"), "first_fit", a.get("first_fit_started_s"),
          "first_step", a["first_trial_step_s"], "cold", a["startup_cold_s"], "warm", a["startup_warm_s"],
          "gaps", {k: v for k, v in a["idle_gaps"].items() if k != "gaps"}, "trials/GPUh", a["trials_per_gpu_hour"],
          "epochs/GPUh", a["epochs_per_gpu_hour"], "fatal", a["fatal_python_error_in"], "not_success", a["trials_all_epochs_not_success"],
          "trials", a["trials"], "epochs", a["epochs"], "rc", a["cli_rc"], "packing", (a.get("packing") or {}).get("reason"))
PY
}
if [ $MODE = call1 ]; then
  run main main 250 0.25
  run branch branch 240 0.25
  summary main branch
else  # call 2: the branch's final commit at 0.25, then auto, then warm workers off (same base)
  run final branch 160 0.25
  run auto branch 185 auto
  run warm0 branch 190 0.25 AUTOML_WARM_WORKERS=0
  summary final auto warm0
  python3 - <<'PY'
import json, os
for l in ("final", "auto", "warm0"):
    p = os.path.join(os.environ["OUT"], l + ".json")
    if not os.path.exists(p): continue
    r = json.load(open(p))
    print(l, "marks", r["run"].get("log_marks"))
    for t in r["analysis"]["per_trial"][:5]:
        print("  ", {k: t.get(k) for k in ("trial_id", "worker_trial", "preloaded", "startup_imports_s", "startup_spec_s", "startup_tracking_s", "startup_s")})
PY
fi
