#!/usr/bin/env bash
# Recipe of the shipped weights and of the variant comparison: regenerate the simulated data and train
# from scratch with one command, with a fixed number of optimiser steps (reproducible whatever the load).
#   bash benchmarks/train_shipped.sh STEPS NAME [TRAIN OPTIONS...]
# Writes runs/raw_train, runs/data_train and runs/NAME.safetensors (+ .ckpt, .log.csv); re-running
# continues an interrupted run from its checkpoint (also with a larger STEPS: the schedules are counted
# in steps, so extending a run keeps the steps already planned).
# Stage 1 of the shipped manifold-1d (2026-12-06; stage 2: train_randomised.sh), the source code from the first step
# (models/checkpoints/m1dsc18.safetensors, 95 min on both cores; run as 9,000 steps, m1dsc, then resumed):
#   LAUNCH="torchrun --standalone --nproc-per-node 2 -m microdeblur" WORKERS=1 bash benchmarks/train_shipped.sh 18000 \
#       m1dsc18 --deblur-weight 1 --dz-weight 1 --source-code --ema 0.999 --val-frames runs/val/ref
# (the same with 9000 m1dsc is the stage 1 of the weights shipped before, m1dscr10)
# The full-resolution candidate in training (model card ¹⁴; its stage 2 is train_randomised.sh ... m1dfscr
# runs/m1dfsc.safetensors with the same options; benchmarks/ship.sh 15000 10000 m1dfsc --unshuffle 1 runs both):
#   ... bash benchmarks/train_shipped.sh 15000 m1dfsc --unshuffle 1 --deblur-weight 1 --dz-weight 1 --source-code \
#       --ema 0.999 --val-frames runs/val/ref
# The plain recipe (shipped until 2026-12-02): bash benchmarks/train_shipped.sh 10000 m1d
# Editing the source tree while a run trains can end it: modules imported late (the frame probe's) are read then.
# To keep working, run it from a snapshot: git archive HEAD src | tar -x -C /path/snap; PYTHONPATH=/path/snap/src bash ...
# Same-budget comparisons (WORKERS=1 to run two at once):
#   bash benchmarks/train_shipped.sh 10000 manifold --variant manifold
#   bash benchmarks/train_shipped.sh 10000 mlvae --variant ml-vae
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5000}
NAME=${2:-manifold-1d}
shift $(( $# > 2 ? 2 : $# ))
# a simulated folder is done when its last day is there (a killed simulate leaves only its staging folder)
[ -d runs/raw_train/day16 ] || microdeblur simulate runs/raw_train --days 16 --planes 31 --z-step 2 --size 2048x1536 --seed 1000
[ -f runs/data_train/index.json ] || microdeblur prepare runs/raw_train runs/data_train
# the whole-frame validation day that --val-frames runs/val/ref reads (seed never used in training or testing)
[ -d runs/val/ref/day01 ] || microdeblur simulate runs/val/ref --days 1 --planes 31 --z-step 2 --size 2048x1536 --seed 5000
OUT=runs/${NAME}.safetensors
RESUME=()
[ -f "runs/${NAME}.ckpt" ] && [ ! -f "$OUT" ] && RESUME=(--resume "runs/${NAME}.ckpt")
# a committed checkpoint of an unfinished shipped run lives in models/checkpoints/ (see docs/model-card.md)
[ ${#RESUME[@]} -eq 0 ] && [ -f "models/checkpoints/${NAME}.ckpt" ] && [ ! -f "$OUT" ] && {
  cp "models/checkpoints/${NAME}.ckpt" "runs/${NAME}.ckpt"; RESUME=(--resume "runs/${NAME}.ckpt"); }
${LAUNCH:-microdeblur} -v train runs/data_train -o "$OUT" --epochs 100000 --max-steps "$STEPS" \
  --dz-range 30 --seed 0 --workers "${WORKERS:-0}" --checkpoint-every 200 "${RESUME[@]}" "$@"
