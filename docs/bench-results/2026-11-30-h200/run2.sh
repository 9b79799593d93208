#!/bin/bash
# issue 18, second call: the branch's search again, after warming the disk cache (imports, one compiled step)
set -u
cd "$(dirname "$0")"
mkdir -p /tmp/site && tar -xJf site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
t=$(date +%s)
python3 - <<'PY'
import torch, pytorch_lightning, timm, ray, optuna, mlflow, omegaconf
m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).cuda()
f = torch.compile(m)
f(torch.randn(8, 64, device="cuda")).sum().backward()
torch.cuda.synchronize()
print("warm-up done")
PY
rm -rf /tmp/torchinductor_root ~/.triton/cache
echo "warm-up $(( $(date +%s) - t )) s"
python3 branch/benchmarks/search_gpu_busy.py --label after_warmdisk --repo branch --timeout 250 --work /tmp/w_a2 --out $OUT 2>&1 | tail -45
cp /tmp/w_a2/automl_run.log $OUT/after_warmdisk_run.log
