"""Absolute or frame-relative target codes for deblurring, each with its own focus gate fitted on the same frames.

    python benchmarks/relative_target_bench.py [-w WEIGHTS] runs/val/ref runs/val/random

Absolute (what `deblur` does): every tile decoded with the weights' in-focus code. Relative: every tile's code
moved by the frame's median offset from that code, so each tile keeps its deviation from the frame's median.
Prints, per variant, the ramp fit_ramp picks on the given days and the mean min-MSE PSNR with and without it,
all frames and per |dz| bin (0-15, 0-2, 2-5, 5-10, 10-15 um). Use validation days: the ramp is fitted on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from microdeblur import frame_eval
from microdeblur.devices import torch_threads
from microdeblur.engine import Deblurrer
from microdeblur.focus_gate import GateFrame, fit_ramp, score, tile_defocus
from microdeblur.resizing import resize_to
from microdeblur.tiling import stitch, upsample_tile_values
from microdeblur.weights import load_weights

BINS = ((0, 15), (0, 2), (2, 5), (5, 10), (10, 15))


def frames(db: Deblurrer, days) -> tuple[list[GateFrame], list[GateFrame]]:
    """(absolute, relative) GateFrames of every defocused plane with |dz| <= 15 um."""
    absolute, relative = [], []
    for day, dz, x, ref in frame_eval.defocused_frames(days):
        d = db.with_scale(db.scale_for(day.pixel_um))
        enc = d.encode(x)

        def decode(codes: np.ndarray) -> np.ndarray:
            n, b = len(codes), d.batch_size
            out = np.concatenate([d.decode_tiles(enc.identity[j:j + b], codes[j:j + b]) for j in range(0, n, b)])
            return resize_to(d.revert_for(enc, 0.0).after(stitch(out[:, 0], enc.grid)), x.shape)

        codes = enc.blur
        defocus = tile_defocus(db.meta.calibration, codes[:, 0], enc.grid.rows_cols)
        to_pixels = lambda w, g=enc.grid, s=x.shape: upsample_tile_values(w, g, s)
        for out, target in ((absolute, np.broadcast_to(d.target, codes.shape)),
                            (relative, d.target + codes - np.median(codes, 0))):
            out.append(GateFrame(x, decode(np.ascontiguousarray(target, np.float32)), defocus, to_pixels, ref, dz))
    return absolute, relative


def main() -> None:
    """Fit a ramp per variant and print both variants' figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("days", type=Path, nargs="+")
    ap.add_argument("--weights", "-w", type=Path, default=None)
    a = ap.parse_args()
    model, meta = load_weights(a.weights)
    with torch_threads(0):
        # each tile's own code in the identity, as when the published figures were measured (before 2026-12-07)
        variants = frames(Deblurrer(model, meta, device="cpu", focus_gate=False, smooth_codes=False),
                          frame_eval.find_frame_days(a.days))
    print("| target | ramp | gated " + " ".join(f"{lo}-{hi}" for lo, hi in BINS) + " | ungated (same bins) |")
    for name, fs in zip(("absolute", "relative"), variants):
        ramp, _ = fit_ramp(fs)
        dz = np.abs([f.dz_um for f in fs])
        gated, plain = (np.array([score(f, r) for f in fs]) for r in (ramp, None))
        cell = lambda v: " ".join(f"{v[(dz > lo) & (dz <= hi)].mean():.2f}" for lo, hi in BINS)
        print(f"| {name} | {ramp.lo_um:g}-{ramp.hi_um:g} um | {cell(gated)} | {cell(plain)} |")


if __name__ == "__main__":
    main()
