#!/usr/bin/env bash
# Recipe of the shipped weights: regenerate the simulated data and train from scratch with one command.
#   bash benchmarks/train_shipped.sh [MINUTES] [VARIANT] [EXTRA TRAIN OPTIONS...]
# Writes runs/raw_train, runs/data_train, runs/<variant>.safetensors (+ .ckpt, .log.csv).
# Re-running continues an interrupted run from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-90}
VARIANT=${2:-manifold-1d}
shift $(( $# > 2 ? 2 : $# ))
[ -d runs/raw_train ] || microdeblur simulate runs/raw_train --days 16 --planes 31 --z-step 2 --size 2048x1536 --seed 1000
[ -f runs/data_train/index.json ] || microdeblur prepare runs/raw_train runs/data_train
OUT=runs/${VARIANT}.safetensors
RESUME=()
[ -f runs/${VARIANT}.ckpt ] && [ ! -f "$OUT" ] && RESUME=(--resume runs/${VARIANT}.ckpt)
microdeblur -v train runs/data_train -o "$OUT" --variant "$VARIANT" --epochs 100000 --max-minutes "$MINUTES" \
  --batch-size 16 --dz-range 30 --seed 0 --checkpoint-every 100 "${RESUME[@]}" "$@"
