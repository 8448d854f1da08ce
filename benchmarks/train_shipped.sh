#!/usr/bin/env bash
# Recipe of the shipped weights and of the variant comparison: regenerate the simulated data and train
# from scratch with one command, with a fixed number of optimiser steps (reproducible whatever the load).
#   bash benchmarks/train_shipped.sh STEPS NAME [TRAIN OPTIONS...]
# Writes runs/raw_train, runs/data_train and runs/NAME.safetensors (+ .ckpt, .log.csv); re-running
# continues an interrupted run from its checkpoint. The runs of the model card (one thread each):
#   bash benchmarks/train_shipped.sh 5000 m1d --dz-weight 0.1            # shipped manifold-1d
#   bash benchmarks/train_shipped.sh 5000 manifold --variant manifold
#   bash benchmarks/train_shipped.sh 5000 mlvae --variant ml-vae
#   bash benchmarks/train_shipped.sh 5000 manifold_nocross --variant manifold --no-cross
#   bash benchmarks/train_shipped.sh 5000 manifold_nocont --variant manifold --no-contrastive
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5000}
NAME=${2:-manifold-1d}
shift $(( $# > 2 ? 2 : $# ))
[ -d runs/raw_train ] || microdeblur simulate runs/raw_train --days 16 --planes 31 --z-step 2 --size 2048x1536 --seed 1000
[ -f runs/data_train/index.json ] || microdeblur prepare runs/raw_train runs/data_train
OUT=runs/${NAME}.safetensors
RESUME=()
[ -f "runs/${NAME}.ckpt" ] && [ ! -f "$OUT" ] && RESUME=(--resume "runs/${NAME}.ckpt")
microdeblur -v train runs/data_train -o "$OUT" --epochs 100000 --max-steps "$STEPS" --batch-size 8 \
  --dz-range 30 --seed 0 --widths 16,32 --workers 1 --checkpoint-every 100 "${RESUME[@]}" "$@"
