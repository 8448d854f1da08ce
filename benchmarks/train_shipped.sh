#!/usr/bin/env bash
# Recipe of the shipped weights: regenerate the simulated data and train from scratch with one command.
#   bash benchmarks/train_shipped.sh MINUTES NAME [TRAIN OPTIONS...]
# Writes runs/raw_train, runs/data_train and runs/NAME.safetensors (+ .ckpt, .log.csv); re-running
# continues an interrupted run from its checkpoint. The shipped models/manifold-1d.safetensors came from
#   bash benchmarks/train_shipped.sh 75 m1d_dz --dz-weight 0.1 --widths 16,32 --workers 1 --beta-delay 0.3
# and its thesis-faithful ablation (no dz tie) from
#   bash benchmarks/train_shipped.sh 75 m1d --widths 16,32 --workers 1 --beta-delay 0.3
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-75}
NAME=${2:-manifold-1d}
shift $(( $# > 2 ? 2 : $# ))
[ -d runs/raw_train ] || microdeblur simulate runs/raw_train --days 16 --planes 31 --z-step 2 --size 2048x1536 --seed 1000
[ -f runs/data_train/index.json ] || microdeblur prepare runs/raw_train runs/data_train
OUT=runs/${NAME}.safetensors
RESUME=()
[ -f "runs/${NAME}.ckpt" ] && [ ! -f "$OUT" ] && RESUME=(--resume "runs/${NAME}.ckpt")
microdeblur -v train runs/data_train -o "$OUT" --epochs 100000 --max-minutes "$MINUTES" \
  --batch-size 8 --dz-range 30 --seed 0 --checkpoint-every 100 "${RESUME[@]}" "$@"
