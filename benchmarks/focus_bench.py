"""Defocus estimation accuracy of calibrated manifold-1d weights (issue: `microdeblur focus`).

Run: python benchmarks/focus_bench.py RAW_DAYS [--weights W] [--dz-max 30]
RAW_DAYS: days written by `microdeblur simulate` with seeds never used for training (each day has
ground_truth.json). Every plane with |dz| <= dz-max is a whole camera frame; its median estimate as
`microdeblur focus` reports it (`Deblurrer.tile_focus` and `maps_of`, as `focus_maps`: tiles below the contrast floor left out) is compared with
the true dz, and so is the plain median over all tiles (empty background included; the figure before session 14).
Prints Spearman rho, mean absolute errors, and per-tile error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from microdeblur import calibration
from microdeblur.engine import Deblurrer
from microdeblur.weights import load_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--dz-max", type=float, default=30.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    model, meta = load_weights(a.weights)
    db = Deblurrer(model, meta, device="cpu")
    true, med, med_all, tile_err = [], [], [], []
    signed = meta.calibration["kind"] != "abs"
    for day in sorted(p for p in a.raw.iterdir() if (p / "ground_truth.json").exists()):
        truth = json.loads((day / "ground_truth.json").read_text())
        files = sorted(day.glob(f"{day.name}_z*.tif"))
        for f, z in zip(files, truth["z_um"]):
            if abs(z) > a.dz_max:
                continue
            tf = db.tile_focus(tifffile.imread(f))
            dz_tiles = tf.dz_um
            _, _, summary = db.maps_of(tf, signed=signed)
            true.append(z)
            med.append(summary["median_dz_um" if signed else "median_abs_dz_um"])
            med_all.append(float(np.median(dz_tiles)))
            tile_err.append(np.abs(dz_tiles - (z if signed else abs(z))))
    true, med, med_all = np.asarray(true), np.asarray(med), np.asarray(med_all)
    target = true if signed else np.abs(true)
    tiles = np.concatenate(tile_err)
    res = {"calibration_kind": meta.calibration["kind"], "images": int(len(true)),
           "spearman_median_vs_true": calibration.spearman(med, target),
           "mae_median_um": float(np.mean(np.abs(med - target))),
           "mae_median_all_tiles_um": float(np.mean(np.abs(med_all - target))),
           "tile_mae_um": float(tiles.mean()), "tile_p90_um": float(np.percentile(tiles, 90))}
    print("| measure | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    print("\n| true dz (um) | median estimate (um) |\n|---|---|")
    for z in np.unique(true):
        print(f"| {z:+.0f} | {np.mean(med[true == z]):+.1f} |")
    if a.json:
        a.json.write_text(json.dumps(res | {"per_dz": {f"{z:+.0f}": float(np.mean(med[true == z])) for z in np.unique(true)}}, indent=1))


if __name__ == "__main__":
    main()
