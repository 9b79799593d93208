#!/bin/bash
# issue 18: before (main) vs after (branch), one H200, the same 12-trial vits search
set -u
cd "$(dirname "$0")"
mkdir -p /tmp/site && tar -xJf site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv
python3 -c "import ray, optuna, mlflow, omegaconf, torch; print('ray', ray.__version__, 'optuna', optuna.__version__, 'torch', torch.__version__)" || exit 1
for label in after before; do
  repo=branch; T=240; [ $label = before ] && repo=main && T=300
  python3 branch/benchmarks/search_gpu_busy.py --label $label --repo $repo --timeout $T --work /tmp/w_$label --out $OUT 2>&1 | tail -60
  cp /tmp/w_$label/automl_run.log $OUT/${label}_run.log
  grep -l "Fatal Python error" /tmp/ray/session_*/logs/* 2>/dev/null | head -5
  rm -rf /tmp/ray
done
python3 - <<'PY'
import json, os
for l in ("after", "before"):
    p = os.path.join(os.environ["OUT"], l + ".json")
    if not os.path.exists(p): print(l, "missing"); continue
    a = json.load(open(p))["analysis"]
    print(l, "wall", a["search_wall_s"], "busy", a["gpu_busy"], "after60", a["gpu_busy_after_60s"], "first_gpu", a["first_gpu_activity_s"],
          "cold", a["startup_cold_s"], "warm", a["startup_warm_s"], "gaps", {k: v for k, v in a["idle_gaps"].items() if k != "gaps"},
          "trials/GPUh", a["trials_per_gpu_hour"], "epochs/GPUh", a["epochs_per_gpu_hour"], "fatal", a["fatal_python_error_in"],
          "not_success", a["trials_all_epochs_not_success"], "trials", a["trials"], "epochs", a["epochs"])
PY
