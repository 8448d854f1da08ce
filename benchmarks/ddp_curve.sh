#!/usr/bin/env bash
# 1 process (2 threads) against 2 DDP processes (1 thread each) on the same global batch and steps (issue 14):
# the validation probes of runs/ddp/one.log.csv and runs/ddp/two.log.csv should match (same samples seen).
#   bash benchmarks/ddp_curve.sh [STEPS]      (needs runs/data_train from benchmarks/train_shipped.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-800}
mkdir -p runs/ddp
COMMON=(--epochs 100000 --max-steps "$STEPS" --eval-every 250 --dz-range 30 --seed 0 --overwrite --no-input-skip)
microdeblur -q train runs/data_train -o runs/ddp/one.safetensors --workers 2 "${COMMON[@]}"
torchrun --nproc-per-node 2 -m microdeblur -q train runs/data_train -o runs/ddp/two.safetensors --workers 1 "${COMMON[@]}"
