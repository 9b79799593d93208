#!/bin/bash
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/site && tar -xJf .gpu18/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 240 python3 .gpu18/step_profile.py /tmp/sp 2>&1 | grep -v Warning | tail -110
