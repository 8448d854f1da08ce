#!/usr/bin/env bash
# Recipe of the shipped weights: a reference run (train_shipped.sh) fine-tuned on the reference days plus
# domain-randomised days (other objectives, cameras, illumination, specimens), every day resized to the 0.65 um
# working pixel from its own pixel size and its dz counted in reference-microscope um (u = dz NA^2/lambda,
# docs/prepare.md). The export is the step whose held-out whole frames (one reference day, two randomised days;
# seeds never used in training or in the model card's test days) gain most over the input (train --val-frames);
# then the focus gate's ramp is fitted on those validation days and five more (benchmarks/fit_focus_gate.py) and
# written into runs/NAME_gated.safetensors, the file that ships.
#   bash benchmarks/train_randomised.sh STEPS NAME INIT [TRAIN OPTIONS...]
#   bash benchmarks/train_randomised.sh 5500 m1dfscr models/checkpoints/m1dfsc.safetensors \
#       --deblur-weight 1 --dz-weight 1 --source-code --ema 0.999     # shipped manifold-1d (2026-12-08, session 26)
# (its stage 1, m1dfsc, is the full-resolution network: train_shipped.sh 15000 m1dfsc --unshuffle 1 ...; ship.sh runs both)
# Shipped before it (2026-12-06, session 15): 10000 m1dsc18r models/checkpoints/m1dsc18.safetensors, the same options
# (its gated file is models/checkpoints/m1dsc18r_gated.safetensors).
# (the train options are part of the shipped recipe: without them the run is the plain fine-tune)
# INIT: the stage-1 export, committed; its command in train_shipped.sh rebuilds it from scratch
# (m1dsc18, 18,000 steps, for m1dsc18r). Shipped before m1dsc18r: m1dscr10, the same command on models/checkpoints/m1dsc.safetensors
# (9,000 steps; its gated file is models/checkpoints/m1dscr10_gated.safetensors). Before that (2026-12-02):
# (m1dsc and m1dz1 left the tree on 2026-12-07: git show 09448fb:models/checkpoints/m1dz1.safetensors, or m1dsc)
#   bash benchmarks/train_randomised.sh 4000 m1dz1rs models/checkpoints/m1dz1.safetensors \
#       --deblur-weight 1 --dz-weight 1 --source-code
# on `bash benchmarks/train_shipped.sh 9000 m1dz1 --deblur-weight 1 --dz-weight 1` (exported step 8,250).
# Re-running continues an interrupted run from runs/NAME.ckpt. LAUNCH runs it data-parallel, e.g. two one-thread
# processes (1.3x the tiles/s of one two-thread process on 2 cores, docs/benchmarks.md):
#   LAUNCH="torchrun --standalone --nproc-per-node 2 -m microdeblur" WORKERS=1 bash benchmarks/train_randomised.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5500}
NAME=${2:-m1dfscr}
INIT=${3:-models/checkpoints/m1dfsc.safetensors}
shift $(( $# > 3 ? 3 : $# ))
# a simulated folder is done when its last day is there (a killed simulate leaves only its staging folder)
[ -d runs/raw_train/day16 ] || microdeblur simulate runs/raw_train --days 16 --planes 31 --z-step 2 --size 2048x1536 --seed 1000
[ -d runs/raw_random/day16 ] || microdeblur simulate runs/raw_random --days 16 --planes 31 --size 2048x1536 --randomize --seed 4000
[ -f runs/data_mixed/index.json ] || microdeblur prepare runs/raw_train runs/raw_random runs/data_mixed
[ -d runs/val/ref/day01 ] || microdeblur simulate runs/val/ref --days 1 --planes 31 --z-step 2 --size 2048x1536 --seed 5000
[ -d runs/val/random/day02 ] || microdeblur simulate runs/val/random --days 2 --planes 31 --size 2048x1536 --randomize --seed 5001
# more validation days for the gate's ramp only (session 10): two reference days, one sparse, two randomised
[ -d runs/val/ref_more/day02 ] || microdeblur simulate runs/val/ref_more --days 2 --planes 31 --z-step 2 --size 2048x1536 --seed 5100
[ -d runs/val/ref_sparse/day01 ] || microdeblur simulate runs/val/ref_sparse --days 1 --planes 31 --z-step 2 --size 2048x1536 --seed 5200 --cells 320
[ -d runs/val/random_more/day02 ] || microdeblur simulate runs/val/random_more --days 2 --planes 31 --size 2048x1536 --randomize --seed 5300
OUT=runs/${NAME}.safetensors
RESUME=()
[ -f "runs/${NAME}.ckpt" ] && [ ! -f "$OUT" ] && RESUME=(--resume "runs/${NAME}.ckpt")
[ ${#RESUME[@]} -eq 0 ] && [ -f "models/checkpoints/${NAME}.ckpt" ] && [ ! -f "$OUT" ] && {
  cp "models/checkpoints/${NAME}.ckpt" "runs/${NAME}.ckpt"; RESUME=(--resume "runs/${NAME}.ckpt"); }
# a finished run (its export there) goes straight to the gate fit, so a re-run completes a gate fit that failed
[ -f "$OUT" ] || ${LAUNCH:-microdeblur} -v train runs/data_mixed -o "$OUT" --init "$INIT" --epochs 100000 \
  --max-steps "$STEPS" --lr 3e-4 --dz-range 30 --seed 0 --workers "${WORKERS:-0}" --checkpoint-every 200 \
  --val-frames runs/val/ref --val-frames runs/val/random "${RESUME[@]}" "$@"
[ "runs/${NAME}_gated.safetensors" -nt "$OUT" ] || python benchmarks/fit_focus_gate.py "$OUT" runs/val/ref runs/val/random \
  runs/val/ref_more runs/val/ref_sparse runs/val/random_more -o "runs/${NAME}_gated.safetensors" --overwrite
