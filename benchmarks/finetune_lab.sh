#!/usr/bin/env bash
# How much does fine-tuning on a lab's own days lift that microscope's figures? A simulated lab stands in for a
# real one (the real stacks in shared/data/real are smaller than one 128-px tile): PRESET's microscope gives
# TRAIN_DAYS training days (seeds 90...) and the 2 test days of optics_transfer_bench.py (seeds 77, 78, never
# trained on). The shipped weights are fine-tuned much as the README tells a lab to (prepare with the lab's optics,
# train --init shipped --lr 3e-4; the README's command adds stage 2's loss weights and EMA, not measured here), and
# both weights are scored on the test days: focus (optics_transfer_bench.py) and whole frames (frame_quality_bench.py).
#   bash benchmarks/finetune_lab.sh [PRESET] [Z_STEP] [TRAIN_DAYS] [STEPS]
#   bash benchmarks/finetune_lab.sh mammalian-10x 2 2 500
# Writes runs/lab_PRESET/ (raw, data, mine.safetensors, *.txt, *.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-mammalian-10x}
ZSTEP=${2:-2}
NDAYS=${3:-2}
STEPS=${4:-500}
W=runs/lab_${PRESET}
mkdir -p "$W"
# a simulated folder is done when its last day is there (a killed simulate leaves only its staging folder)
[ -d "$W/raw_train/day$(printf %02d "$NDAYS")" ] || microdeblur simulate "$W/raw_train" --days "$NDAYS" --planes 31 --z-step "$ZSTEP" \
  --size 1024x768 --preset "$PRESET" --seed 90
[ -d "$W/test/raw/day02" ] || microdeblur simulate "$W/test/raw" --days 2 --planes 31 --z-step "$ZSTEP" --size 1024x768 \
  --preset "$PRESET" --seed 77
NA=$(python -c "import json,glob; print(json.load(open(sorted(glob.glob('$W/raw_train/*/ground_truth.json'))[0]))['optics']['na'])")
WL=$(python -c "import json,glob; print(json.load(open(sorted(glob.glob('$W/raw_train/*/ground_truth.json'))[0]))['optics']['wavelength_um'])")
[ -f "$W/data/index.json" ] || microdeblur prepare "$W/raw_train" "$W/data" --na "$NA" --wavelength "$WL"
[ -f "$W/mine.safetensors" ] || microdeblur train "$W/data" -o "$W/mine.safetensors" --init shipped \
  --max-steps "$STEPS" --lr 3e-4 --seed 0
for name in shipped mine; do
  wopt=(); [ "$name" = mine ] && wopt=(--weights "$W/mine.safetensors")
  python benchmarks/optics_transfer_bench.py --preset "$PRESET" --z-step "$ZSTEP" --workdir "$W/test" "${wopt[@]}" \
    > "$W/focus_$name.txt"
done
python benchmarks/frame_quality_bench.py "$W/test/raw" -w models/manifold-1d.safetensors -w "$W/mine.safetensors" \
  --rl-iterations 1 --markdown "$W/frames.md" > "$W/frames.txt" 2>&1
tail -n 4 "$W"/focus_*.txt
head -n 9 "$W/frames.md"
