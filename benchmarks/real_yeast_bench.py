"""Deblur the real fission-yeast bright-field stacks and compare each defocused plane with the in-focus one.

Run: python benchmarks/real_yeast_bench.py [--weights W] [--scale 1.0]
The stacks (shared/data/real, 34 planes at 0.3 um, another microscope) are far from the training
domain. Scale 1 feeds the pixels as they are. PSNR/SSIM on each plane normalised by its own
percentiles (as `microdeblur evaluate`), for the input and for the output, per |dz| bin; also the
defocus that `focus` estimates for each plane.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from microdeblur import calibration
from microdeblur.inference import Deblurrer
from microdeblur.metrics import psnr_batch, ssim_batch
from microdeblur.normalize import frame_normalizer
from microdeblur.weights import load_weights

STACKS = {"bfseg_pombe": ("bfseg_pombe/BF_zstack_34x0.3um.tif", 17),
          "bfautofocus_pombe": ("bfautofocus_pombe/BF_zstack_0.3um.tif", 15)}


def shared_real() -> Path:
    here = Path(__file__).resolve()
    for p in here.parents:
        if (p / "shared" / "data" / "real").is_dir():
            return p / "shared" / "data" / "real"
    raise SystemExit("shared/data/real not found")


def norm(x: np.ndarray) -> np.ndarray:
    return frame_normalizer(x).before(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    model, meta = load_weights(a.weights)
    db = Deblurrer(model, meta, device="cpu", scale=a.scale, overlap=48)
    root = shared_real()
    print(f"scale {a.scale}\n| stack | |dz| bin (um) | planes | input PSNR | output PSNR | input SSIM | output SSIM | focus estimate (um, median) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (rel, focus) in STACKS.items():
        stack = tifffile.imread(root / rel).astype(np.float32)
        ref = norm(stack[focus])
        rows = []
        for k, plane in enumerate(stack):
            if k == focus:
                continue
            out = norm(db.deblur_plane(plane))
            inp = norm(plane)
            enc = db.encode(plane)
            est = float(np.median(calibration.code_to_dz(meta.calibration, enc.blur[:, 0].cpu().numpy()))) if meta.calibration else float("nan")
            rows.append((abs(k - focus) * 0.3, psnr_batch(inp[None], ref[None])[0], psnr_batch(out[None], ref[None])[0],
                         ssim_batch(inp[None], ref[None])[0], ssim_batch(out[None], ref[None])[0], est))
        r = np.array(rows)
        for lo, hi in ((0, 1.5), (1.5, 3.0), (3.0, 5.5)):
            m = (r[:, 0] > lo) & (r[:, 0] <= hi)
            if m.any():
                s = r[m].mean(0)
                print(f"| {name} | {lo}-{hi} | {m.sum()} | {s[1]:.2f} | {s[2]:.2f} | {s[3]:.3f} | {s[4]:.3f} | {np.median(r[m, 5]):+.1f} |")


if __name__ == "__main__":
    main()
