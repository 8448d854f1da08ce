"""Real microscopes: deblur and focus on every real through-focus stack the project holds (shared/data/real).

    python benchmarks/real_bench.py [-w W.safetensors] [--scale 0.5 --scale 1.0] [--markdown runs/real.md]

Per stack and |dz| bin: min-MSE (and own-percentile) PSNR/SSIM against the stack's in-focus plane for the
blurry input, unsharp masking, Richardson-Lucy (the reference objective's PSF; only where the pixel size is
known) and the model through the real `deblur` path (frame_eval); and focus ordering: Spearman's rho of the
per-plane median defocus estimate against the true |dz| and against the signed dz. The stacks come from other
microscopes than the training simulator; each is used at every --scale given (the resize before the network).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from microdeblur import calibration, frame_eval
from microdeblur.calibration import spearman
from microdeblur.engine import Deblurrer
from microdeblur.weights import load_weights

# stack file, in-focus plane (the source projects' own answers; README of shared/data/real), z step, pixel um
STACKS = {"bfseg_pombe": ("bfseg_pombe/BF_zstack_34x0.3um.tif", 17, 0.3, None),
          "bfautofocus_pombe": ("bfautofocus_pombe/BF_zstack_0.3um.tif", 15, 0.3, None),
          "thp1_led": ("bfdc_thp1_brightfield/dict_redLED_SP_100nm_21z.ome.tif", 10, 0.1, 0.11)}
BINS = ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 3.5), (3.5, 5.5))


def shared_real() -> Path:
    """shared/data/real beside the repository (or above it)."""
    for p in Path(__file__).resolve().parents:
        if (p / "shared" / "data" / "real").is_dir():
            return p / "shared" / "data" / "real"
    raise SystemExit("shared/data/real not found")


def series(root: Path) -> list[frame_eval.FrameDay]:
    """The real stacks as frame_eval series."""
    import tifffile

    out = []
    for name, (rel, focus, step, px) in STACKS.items():
        n = len(tifffile.TiffFile(root / rel).pages)
        out.append(frame_eval.FrameDay(name, (), (np.arange(n) - focus) * step, focus, px, stack=root / rel))
    return out


def focus_order(db: Deblurrer, meta, day: frame_eval.FrameDay) -> tuple[float, float]:
    """Spearman of per-plane median dz estimates against |dz| and against dz (planes other than focus)."""
    est = []
    for i in range(day.n_planes):
        codes = db.encode(day.plane(i)).blur[:, 0]
        est.append(float(np.nanmedian(calibration.code_to_dz(meta.calibration, codes))))
    est = np.asarray(est)
    return spearman(np.abs(est), np.abs(day.dz)), spearman(est, day.dz)


def main() -> None:
    """Print one table per scale."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", "-w", type=Path, default=None)
    ap.add_argument("--scale", type=float, action="append", default=[])
    ap.add_argument("--rl-iterations", type=int, default=10)
    ap.add_argument("--markdown", type=Path, default=None)
    a = ap.parse_args()
    model, meta = load_weights(a.weights)
    days = series(shared_real())
    lines = []
    for scale in a.scale or [meta.scale]:
        db = Deblurrer(model, meta, device="cpu", scale=scale, overlap=32)
        methods = frame_eval.baseline_methods(scale, a.rl_iterations, by_pixel=False) | {"model": frame_eval.model_method(db)}
        lines += [f"\n**scale {scale:g}** (weights: {a.weights or 'shipped'})\n",
                  "| stack | |dz| bin (µm) | planes | method | min-MSE PSNR | min-MSE SSIM | own-pct PSNR |", "|---|---|---|---|---|---|---|"]
        for day in days:
            rows = frame_eval.score_frames([day], methods, dz_max=float(np.abs(day.dz).max()))
            for lo, hi in BINS:
                sel = [r for r in rows if lo < abs(r["dz_um"]) <= hi]
                for name in methods:
                    mine = [r for r in sel if r["method"] == name]
                    if mine:
                        m = {k: np.mean([r[k] for r in mine]) for k in ("minmse_psnr", "minmse_ssim", "pct_psnr")}
                        lines.append(f"| {day.name} | {lo:g}-{hi:g} | {len(mine)} | {name} | {m['minmse_psnr']:.2f} | "
                                     f"{m['minmse_ssim']:.3f} | {m['pct_psnr']:.2f} |")
            if meta.calibration:
                rho_abs, rho_signed = focus_order(db, meta, day)
                lines.append(f"| {day.name} | focus order | {day.n_planes} | Spearman vs |dz| {rho_abs:+.2f}, vs dz {rho_signed:+.2f} | | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        a.markdown.write_text(text)


if __name__ == "__main__":
    main()
