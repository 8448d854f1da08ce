#!/usr/bin/env bash
# The shipped manifold-1d from scratch in one command: stage 1 on the reference microscope (train_shipped.sh),
# stage 2 on reference plus domain-randomised days from its export (train_randomised.sh, which also fits the focus
# gate), then the ONNX graphs beside the result. Every stage resumes from its checkpoint when re-run.
#   bash benchmarks/ship.sh [STAGE1_STEPS STAGE2_STEPS NAME [STAGE-1-ONLY OPTIONS...]]
#   bash benchmarks/ship.sh       # the weights shipped now (2026-12-08): the full-resolution first level, m1dfsc ->
#                                 # m1dfscr, i.e. 15000 5500 m1dfsc --unshuffle 1 (about 15 h on the slower 2-core host
#                                 # of docs/benchmarks.md)
#   bash benchmarks/ship.sh 18000 10000 m1dsc18   # the weights shipped before (m1dsc18 -> m1dsc18r, about 2.5 h on
#                                                 # the faster host)
# Result: runs/NAMEr_gated.safetensors (+ .encoder.onnx, .decoder.onnx). To ship it:
#   cp runs/NAMEr_gated.safetensors models/manifold-1d.safetensors && microdeblur export onnx --overwrite
# Both cores, as the shipped runs were trained (LAUNCH and WORKERS as in the stage scripts; set LAUNCH=microdeblur
# for one process).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] && set -- 15000 5500 m1dfsc --unshuffle 1
S1=$1
S2=${2:?stage-2 steps}
NAME=${3:?run name}
shift $(( $# > 3 ? 3 : $# ))
RECIPE=(--deblur-weight 1 --dz-weight 1 --source-code --ema 0.999)  # both stages; the architecture comes with stage 1
export LAUNCH=${LAUNCH:-"torchrun --standalone --nproc-per-node 2 -m microdeblur"} WORKERS=${WORKERS:-1}
[ -f "runs/${NAME}.safetensors" ] || bash benchmarks/train_shipped.sh "$S1" "$NAME" "$@" "${RECIPE[@]}" --val-frames runs/val/ref
[ -f "runs/${NAME}r_gated.safetensors" ] \
  || bash benchmarks/train_randomised.sh "$S2" "${NAME}r" "runs/${NAME}.safetensors" "${RECIPE[@]}"
microdeblur export onnx -w "runs/${NAME}r_gated.safetensors" --overwrite
echo "shipped recipe done: runs/${NAME}r_gated.safetensors"
