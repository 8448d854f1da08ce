"""Fit the focus gate's ramp (how much of the correction `deblur` applies at each estimated defocus) on
validation days and write weights that carry it (microdeblur.focus_gate).

    python benchmarks/fit_focus_gate.py W.safetensors runs/val/ref runs/val/random -o W_gated.safetensors

VAL: simulated days (`microdeblur simulate`) with seeds used neither for training nor for any reported test
figure, or days of your own in the same layout: a folder per day holding DAY_z000.tif, DAY_z001.tif, ... (one
2-D plane each) and a ground_truth.json with "z_um" (each plane's z, um), "focus_plane" (its index) and
{"optics": {"pixel_um": ...}} (the camera pixel at the sample, um). Every frame with 0 < |dz| <= 15 um is deblurred once (no gate); each candidate ramp is then scored by the
whole-frame min-MSE PSNR of input + weight x correction, the weight taken from each tile's neighbourhood defocus
exactly as `deblur` does. The best mean over all frames wins. Prints the candidates' means and the per-bin
figures of input, ungated and gated deblurring on the validation frames.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from microdeblur import frame_eval
from microdeblur.devices import torch_threads
from microdeblur.engine import Deblurrer
from microdeblur.errors import UserError
from microdeblur.focus_gate import GateFrame, fit_ramp, gate_frame, score
from microdeblur.weights import load_weights, save_weights


def frames(db: Deblurrer, days, dz_max: float) -> list[GateFrame]:
    """One GateFrame per defocused plane of the days."""
    return [gate_frame(db.with_scale(db.scale_for(day.pixel_um)), x, ref, dz)
            for day, dz, x, ref in frame_eval.defocused_frames(days, dz_max)]


def main() -> None:
    """Fit, print, write; a bad input is one `error:` line."""
    try:
        _fit()
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


def _fit() -> None:
    """Fit, print, write."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path)
    ap.add_argument("val", type=Path, nargs="+", help="folders of simulated validation days")
    ap.add_argument("-o", "--output", type=Path, required=True, help="weights to write (the input's, plus the ramp)")
    ap.add_argument("--dz-max", type=float, default=15.0)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    a = ap.parse_args()
    if a.output.exists() and not a.overwrite:
        raise SystemExit(f"error: {a.output} exists (--overwrite to replace it)")
    model, meta = load_weights(a.weights)
    with torch_threads(0):
        fs = frames(Deblurrer(model, meta, device="cpu", focus_gate=False), frame_eval.find_frame_days(a.val), a.dz_max)
    ramp, table = fit_ramp(fs)
    plain = table[0]["psnr"]
    print(f"{len(fs)} validation frames; no gate {plain:.2f} dB; best ramps:")
    for r in sorted(table[1:], key=lambda r: -r["psnr"])[:8]:
        print(f"  {r['ramp'].lo_um:g}-{r['ramp'].hi_um:g} um: {r['psnr']:.2f} dB")
    dz = np.abs([f.dz_um for f in fs])
    rows = {"input": [score(dataclasses.replace(f, corrected=f.plane), None) for f in fs],
            "no gate": [score(f, None) for f in fs], f"gate {ramp.lo_um:g}-{ramp.hi_um:g} um": [score(f, ramp) for f in fs]}
    bins = [(0, a.dz_max)] + [(lo, hi) for lo, hi in frame_eval.FRAME_BINS if lo < a.dz_max]
    print("| validation frames | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi in bins) + " |")
    for name, v in rows.items():
        v = np.asarray(v)
        print(f"| {name} | " + " | ".join(f"{v[(dz > lo) & (dz <= hi)].mean():.2f}" for lo, hi in bins) + " |")
    entry = {"lo_um": ramp.lo_um, "hi_um": ramp.hi_um, "fitted_on": [str(p) for p in a.val], "frames": len(fs),
             "gain_db": round(float(np.mean(rows[list(rows)[-1]]) - plain), 3)}
    save_weights(a.output, model, dataclasses.replace(meta, focus_gate=entry), overwrite=a.overwrite)
    print(f"wrote {a.output} with focus_gate {entry}")


if __name__ == "__main__":
    main()
