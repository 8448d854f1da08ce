"""Whole-frame deblurring quality over held-out simulated days (microdeblur.frame_eval), peers in one table.

    python benchmarks/frame_quality_bench.py runs/raw_sparse runs/raw_crowded -w runs/m1d.safetensors \
        [--unet runs/unet.safetensors] [--dz-max 15] [--json runs/frames.json] [--markdown runs/frames.md]

RAW: days written by `microdeblur simulate` with seeds never used for training. Every plane with
0 < |dz| <= --dz-max goes through each method whole and is scored against the day's in-focus plane:
min-MSE (gain and offset fitted to the percentile-normalised in-focus frame, CSBDeep's convention; the
input gets the same fit) and each image normalised by its own percentiles (`deblur --truth`).
Methods: the blurry input, unsharp masking, Richardson-Lucy with the true PSF, with `--linear-fit` the
least-squares linear filter per true dz learned on held-out days (isotropic, shift-invariant: a Wiener filter
learned from data; told the true dz, like Richardson-Lucy), each model through the real
`deblur` path (with the focus gate when the weights carry a fitted ramp, as `deblur` does), and the U-Net baseline (benchmarks/train_unet.py) and tile-to-tile ONNX baselines (`--onnx CARE=FILE`,
benchmarks/care_baseline.py) through the same tiling and blending.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from microdeblur import frame_eval
from microdeblur.devices import torch_threads
from microdeblur.engine import Deblurrer
from microdeblur.weights import load_weights


def main() -> None:
    """Score every method on every selected frame and print the per-bin tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, nargs="+", help="folders of simulated days")
    ap.add_argument("--weights", "-w", type=Path, action="append", default=[], help="repeatable; default: shipped")
    ap.add_argument("--unet", type=Path, default=None, help="U-Net baseline weights (benchmarks/train_unet.py)")
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=FILE",
                    help="a tile-to-tile ONNX baseline (benchmarks/care_baseline.py), repeatable")
    ap.add_argument("--dz-max", type=float, default=15.0)
    ap.add_argument("--linear-fit", type=Path, nargs="+", default=[], metavar="DAYS",
                    help="held-out days of the same microscope: add the least-squares linear filter per true dz "
                    "learned on them (frame_eval.linear_filter_method)")
    ap.add_argument("--rl-iterations", type=int, nargs="+", default=[1, 10], help="one Richardson-Lucy row per count")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-frame rows and the summary here")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    ap.add_argument("--gated", action="store_true", help="also score every weights file with the other focus-gate "
                    "setting: off for weights that carry a fitted ramp (their default is on), the default ramp otherwise")
    ap.add_argument("--tta", type=int, nargs="+", default=[], metavar="VIEWS",
                    help="also score every weights file and tile baseline with this many test-time views (2, 4, 8)")
    a = ap.parse_args()
    with torch_threads(a.threads):
        days = frame_eval.find_frame_days(a.raw)
        first_meta = None
        methods = {}
        for w in a.weights or [None]:
            model, meta = load_weights(w)
            first_meta = first_meta or meta
            name = w.stem if w else f"shipped {meta.variant}"
            methods[name] = frame_eval.model_method(Deblurrer(model, meta, device="cpu"))
            for v in a.tta:
                methods[f"{name} (tta {v})"] = frame_eval.model_method(Deblurrer(model, meta, device="cpu", tta=v))
            if a.gated and meta.calibration and model.config.blur_dim == 1:  # the gate needs a calibrated 1-D code
                fitted = meta.focus_gate is not None
                methods[f"{name} ({'gate off' if fitted else 'default gate'})"] = frame_eval.model_method(
                    Deblurrer(model, meta, device="cpu", focus_gate=not fitted))
        scale = first_meta.scale
        methods = frame_eval.baseline_methods(scale, a.rl_iterations) | methods
        if a.unet is not None:
            from microdeblur.baselines import load_unet

            unet, _ = load_unet(a.unet)
            methods["U-Net"] = frame_eval.tiled_method(unet, scale)
            for v in a.tta:
                methods[f"U-Net (tta {v})"] = frame_eval.tiled_method(unet, scale, views=v)
        if a.linear_fit:
            methods["linear filter per true dz"] = frame_eval.linear_filter_method(
                frame_eval.find_frame_days(a.linear_fit), scale, a.dz_max)
        for spec in a.onnx:
            name, _, path = spec.partition("=")
            methods[name] = frame_eval.onnx_tiled_method(Path(path), scale)
            for v in a.tta:
                methods[f"{name} (tta {v})"] = frame_eval.onnx_tiled_method(Path(path), scale, views=v)
        rows = frame_eval.score_frames(days, methods, a.dz_max)
    summary, table = frame_eval.write_report(rows, a.dz_max, a.json, a.markdown)
    n = summary["methods"][frame_eval.INPUT]["all"]["n"]
    print(f"{len(days)} day(s) from {', '.join(map(str, a.raw))}: {n} frames with 0 < |dz| <= {a.dz_max:g} um\n")
    print(table)


if __name__ == "__main__":
    main()
