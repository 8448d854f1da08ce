"""Whole-frame deblurring quality: what `microdeblur deblur --truth` prints, over many held-out fields.

    python benchmarks/frame_quality_bench.py runs/raw_test -w runs/m1d.safetensors -w models/manifold-1d.safetensors

RAW_DAYS: days written by `microdeblur simulate` (ground_truth.json, focus.txt) with seeds never used
for training. Every plane with 0 < |dz| <= --dz-max is deblurred whole (tiling, blending, resizing and
the return to raw units, as the command does) and scored against the day's in-focus plane, each image
normalised by its own percentiles (metrics.frame_scores), and again after the least-squares gain and
offset that best match the output to the normalised in-focus plane (CSBDeep's "min-MSE" convention, which
ignores global intensity mapping). Prints mean PSNR/SSIM per |dz| bin for both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from microdeblur.inference import Deblurrer
from microdeblur.metrics import frame_scores, psnr_batch, ssim_batch
from microdeblur.normalize import frame_normalizer
from microdeblur.weights import load_weights

BINS = ((0, 5), (5, 10), (10, 15), (15, 20), (20, 30))


def minmse_scores(image: np.ndarray, truth_norm: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM after the gain and offset that minimise the MSE to the percentile-normalised truth."""
    x = image.astype(np.float64).ravel()
    a = np.stack([x, np.ones_like(x)], 1)
    fit = (a @ np.linalg.lstsq(a, truth_norm.ravel().astype(np.float64), rcond=None)[0]).reshape(truth_norm.shape)
    fit = fit.astype(np.float32)[None]
    return float(psnr_batch(fit, truth_norm[None])[0]), float(ssim_batch(fit, truth_norm[None])[0])


def scores(image: np.ndarray, truth: np.ndarray, truth_norm: np.ndarray) -> tuple[float, float, float, float]:
    """Own-percentile PSNR, SSIM, then min-MSE PSNR, SSIM (truth_norm: the truth normalised once per day)."""
    return (*frame_scores(image, truth), *minmse_scores(image, truth_norm))


def main() -> None:
    """Deblur every selected plane with every model and print the per-bin table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, nargs="+", help="folders of simulated days")
    ap.add_argument("--weights", "-w", type=Path, action="append", default=[], help="repeatable; default: shipped")
    ap.add_argument("--dz-max", type=float, default=15.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the per-plane scores here")
    a = ap.parse_args()
    weights = a.weights or [None]
    names = [w.stem if w else "shipped" for w in weights]
    models = [Deblurrer(*load_weights(w), device="cpu") for w in weights]
    rows = []  # (|dz|, method, psnr, ssim, minmse psnr, minmse ssim)
    days = sorted(d for r in a.raw for d in r.iterdir() if (d / "ground_truth.json").exists())
    for day in days:
        truth = json.loads((day / "ground_truth.json").read_text())
        files = sorted(day.glob(f"{day.name}_z*.tif"))
        ref = tifffile.imread(files[truth["focus_plane"]])
        ref_norm = frame_normalizer(ref).before(ref.astype(np.float32))
        for f, z in zip(files, truth["z_um"]):
            if z == 0 or abs(z) > a.dz_max:
                continue
            plane = tifffile.imread(f)
            rows.append((abs(z), "input", *scores(plane, ref, ref_norm)))
            for name, db in zip(names, models):
                rows.append((abs(z), name, *scores(db.deblur_plane(plane), ref, ref_norm)))
    dz = np.array([r[0] for r in rows])
    method = np.array([r[1] for r in rows])
    score = np.array([r[2:] for r in rows])
    print(f"{len(days)} day(s), {int((method == 'input').sum())} frames with 0 < |dz| <= {a.dz_max:g} um\n")
    bins = [(lo, hi) for lo, hi in BINS if lo < a.dz_max]
    for title, col in (("each image normalised by its own percentiles (deblur --truth)", 0), ("min-MSE gain and offset", 2)):
        print(f"{title}:\n")
        print("| method | PSNR | SSIM | " + " | ".join(f"PSNR {lo}-{hi}" for lo, hi in bins) + " |")
        print("|---|---|---|" + "---|" * len(bins))
        for name in ["input", *names]:
            m = method == name
            cells = [f"{score[m & (dz > lo) & (dz <= hi), col].mean():.2f}" for lo, hi in bins]
            print(f"| {name} | {score[m, col].mean():.2f} | {score[m, col + 1].mean():.3f} | " + " | ".join(cells) + " |")
        print()
    if a.json:
        a.json.write_text(json.dumps([dict(zip(("dz_abs_um", "method", "psnr", "ssim", "minmse_psnr", "minmse_ssim"), r)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
