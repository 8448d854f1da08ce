"""Does the estimated blur code limit deblurring? Whole frames decoded with the tiles' own codes against better ones.

    python benchmarks/code_oracle_bench.py runs/val/ref runs/val/ref_more runs/val/ref_sparse \
        [-w W.safetensors] [--markdown runs/code_oracle.md]

A source-code network (train --source-code) decodes every tile from its identity and its own blur code, the code
that tells the decoder how blurred the tile is. Every frame with 0 < |dz| <= --dz-max is deblurred without the
focus gate with that code replaced by
  own       the tile's own code (what `deblur` did before),
  smoothed  the median of the codes over the tile's 5 x 5 neighbourhood (what `deblur` does since 2026-12-07,
            engine.Deblurrer.source_codes),
  oracle    the code of the frame's true dz through the weights' calibration (known only in simulation),
and scored like frame_quality_bench.py (min-MSE PSNR per |dz| bin; the shipped gated output alongside). If the
oracle row is far above `own`, the code estimate limits deblurring; if not, the decoder does. Reference-microscope
days only (their dz is in the calibration's µm). A diagnosis: run it on validation days, not on the test days.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np

from microdeblur import calibration, frame_eval
from microdeblur.devices import torch_threads
from microdeblur.engine import Deblurrer
from microdeblur.frame_eval import INPUT
from microdeblur.weights import load_weights


def with_source_code(d: Deblurrer, code: float) -> Deblurrer:
    """A copy of `d` whose decoder reads `code` as every tile's own blur code."""
    out = copy.copy(d)
    out.smooth_codes = False

    def encode_tiles(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        identity, blur = Deblurrer.encode_tiles(out, tiles)
        identity[:, -1] = code
        return identity, blur

    out.encode_tiles = encode_tiles
    return out


def methods_for(d: Deblurrer) -> dict[str, frame_eval.Method]:
    """The blurry input, `deblur` as shipped (gated), and the ungated decode with own, smoothed and oracle codes."""
    own, smoothed = copy.copy(d), copy.copy(d)
    own.smooth_codes, smoothed.smooth_codes = False, True

    def ungated(pick: Callable[[float], Deblurrer]) -> frame_eval.Method:
        def method(plane: np.ndarray, dz: float, px: float) -> np.ndarray:
            s = pick(dz)
            return s.with_scale(s.scale_for(px)).swap_parts(plane, d.target, 0.0)[0]
        return method

    def oracle(dz: float) -> Deblurrer:
        return with_source_code(d, float(calibration.dz_to_code(d.meta.calibration, dz)))

    return {INPUT: frame_eval.baseline_methods(d.scale, [])[INPUT], "shipped (gated)": frame_eval.model_method(d),
            "own code": ungated(lambda dz: own), "smoothed code": ungated(lambda dz: smoothed),
            "oracle code": ungated(oracle)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("days", nargs="+", type=Path, help="simulate's output folders (reference-microscope days)")
    p.add_argument("-w", "--weights", type=Path, default=None, help="a source-code manifold-1d file (default: shipped)")
    p.add_argument("--dz-max", type=float, default=15.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    a = p.parse_args()
    model, meta = load_weights(a.weights)
    if not model.config.source_code or model.config.blur_dim != 1 or not meta.calibration:
        raise SystemExit("error: needs calibrated manifold-1d weights trained with --source-code")
    with torch_threads(a.threads):
        rows = frame_eval.score_frames(frame_eval.find_frame_days(a.days), methods_for(Deblurrer(model, meta)), a.dz_max)
    print(frame_eval.write_report(rows, a.dz_max, a.json, a.markdown)[1])


if __name__ == "__main__":
    main()
