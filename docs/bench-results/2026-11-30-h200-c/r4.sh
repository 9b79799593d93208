#!/bin/bash
# the checks beside Ray's start with checkpoint sizing in its own process (code at HEAD), twice; then sizing in
# the driver (AUTOML_SIZE_IN_PROCESS=1), as in r3.sh
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/site && tar -xJf .gpu18/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, pytorch_lightning, timm, ray, mlflow.tracking, cv2, sqlalchemy, alembic" 2>&1 | tail -1
for run in 1 2; do
  echo "== sizing in its own process ($run)"; rm -rf /tmp/ct/search; ray stop --force >/dev/null 2>&1
  python3 .gpu18/checks_timing.py /tmp/ct 2>&1 | grep "\[t\]"
done
echo "== sizing in the driver"; rm -rf /tmp/ct/search; ray stop --force >/dev/null 2>&1
AUTOML_SIZE_IN_PROCESS=1 python3 .gpu18/checks_timing.py /tmp/ct 2>&1 | grep "\[t\]"
