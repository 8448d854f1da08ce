#!/usr/bin/env bash
# Every figure of the model card for one weights file, in one command (2 cores: about 35 min).
#   bash benchmarks/evaluate_shipped.sh WEIGHTS OUTDIR [COMPARE_WEIGHTS...]
# Held-out data (seeds and densities never used in training; regenerated if missing, ~3 min):
#   runs/raw_sparse  = microdeblur simulate runs/raw_sparse --days 3 --planes 31 --z-step 2 --seed 2000 --cells 320
#   runs/raw_crowded = microdeblur simulate runs/raw_crowded --days 2 --planes 31 --z-step 2 --seed 3000
#   runs/data_sparse = microdeblur prepare runs/raw_sparse runs/data_sparse
#   runs/raw_random_test = microdeblur simulate runs/raw_random_test --days 3 --planes 31 --size 1024x768 --randomize --seed 6000
# and the reference microscope's validation days of benchmarks/train_randomised.sh (seeds 5000, 5100, 5200), on which
# the linear-filter peer is learned (frame_quality_bench.py --linear-fit)
# Writes OUTDIR/frames.{md,json,txt} (whole frames, min-MSE and own-percentile per |dz| bin, peers in the same
# table; COMPARE_WEIGHTS get their own rows; every weights file also with the other focus-gate setting), frames_random.* (the same on randomised other optics), focus.{json,txt}, refocus.{json,txt}, real.{md,txt} and
# report/ (`microdeblur evaluate`: tiles, ML-VAE score, figures).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?weights file}
OUT=${2:?output folder}
shift 2
mkdir -p "$OUT"
# a simulated folder is done when its last day is there (a killed simulate leaves only its staging folder)
[ -d runs/raw_sparse/day03 ] || microdeblur simulate runs/raw_sparse --days 3 --planes 31 --z-step 2 --size 2048x1536 --seed 2000 --cells 320
[ -d runs/raw_crowded/day02 ] || microdeblur simulate runs/raw_crowded --days 2 --planes 31 --z-step 2 --size 2048x1536 --seed 3000
[ -f runs/data_sparse/index.json ] || microdeblur prepare runs/raw_sparse runs/data_sparse
[ -d runs/raw_random_test/day03 ] || microdeblur simulate runs/raw_random_test --days 3 --planes 31 --size 1024x768 --randomize --seed 6000
[ -d runs/val/ref/day01 ] || microdeblur simulate runs/val/ref --days 1 --planes 31 --z-step 2 --size 2048x1536 --seed 5000
[ -d runs/val/ref_more/day02 ] || microdeblur simulate runs/val/ref_more --days 2 --planes 31 --z-step 2 --size 2048x1536 --seed 5100
[ -d runs/val/ref_sparse/day01 ] || microdeblur simulate runs/val/ref_sparse --days 1 --planes 31 --z-step 2 --size 2048x1536 --seed 5200 --cells 320
COMPARE=()
for c in "$@"; do COMPARE+=(-w "$c"); done
python benchmarks/frame_quality_bench.py runs/raw_sparse runs/raw_crowded -w "$W" "${COMPARE[@]}" --gated \
  --linear-fit runs/val/ref runs/val/ref_more runs/val/ref_sparse \
  --json "$OUT/frames.json" --markdown "$OUT/frames.md" > "$OUT/frames.txt" 2>&1
python benchmarks/frame_quality_bench.py runs/raw_random_test -w "$W" "${COMPARE[@]}" --gated --rl-iterations 1 \
  --json "$OUT/frames_random.json" --markdown "$OUT/frames_random.md" > "$OUT/frames_random.txt" 2>&1
python benchmarks/focus_bench.py runs/raw_sparse --weights "$W" --json "$OUT/focus.json" > "$OUT/focus.txt" 2>&1
python benchmarks/refocus_bench.py runs/raw_sparse --weights "$W" --json "$OUT/refocus.json" > "$OUT/refocus.txt" 2>&1
python benchmarks/real_bench.py -w "$W" --scale 0.5 --scale 1.0 --markdown "$OUT/real.md" > "$OUT/real.txt" 2>&1
microdeblur evaluate runs/data_sparse -o "$OUT/report" -w "$W" --split all --identities 48 --classifier-epochs 100 \
  --overwrite > "$OUT/evaluate.txt" 2>&1
echo "figures in $OUT"
