#!/bin/bash
# final main (all merges) on one H200: the 12-trial vits search with --gpus-per-trial auto (the new default)
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/site && tar -xJf .gpu18/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, pytorch_lightning, timm, ray, optuna, mlflow.tracking, omegaconf, cv2; print('torch', torch.__version__, 'ray', ray.__version__)"
python3 benchmarks/search_gpu_busy.py --label final_auto --repo . --timeout 300 --gpus-per-trial auto \
    --work /tmp/w_final --out $OUT > /tmp/bench_final.txt 2>&1
echo "bench rc $?"
tail -40 /tmp/bench_final.txt
cp /tmp/w_final/automl_run.log $OUT/final_auto_run.log 2>/dev/null
grep -l "Fatal Python error" /tmp/ray/session_*/logs/* 2>/dev/null | head -3
grep -c "Traceback" /tmp/w_final/automl_run.log
python3 - <<'PY'
import json, os
p = os.path.join(os.environ["OUT"], "final_auto.json")
if os.path.exists(p):
    a = json.load(open(p))["analysis"]
    print({k: a.get(k) for k in ("search_wall_s", "gpu_busy", "gpu_busy_after_60s", "first_gpu_activity_s", "first_trial_step_s",
          "startup_cold_s", "startup_warm_s", "trials_per_gpu_hour", "epochs_per_gpu_hour", "fatal_python_error_in",
          "trials_all_epochs_not_success", "trials", "epochs", "cli_rc")})
    print("packing", (a.get("packing") or {}))
PY
