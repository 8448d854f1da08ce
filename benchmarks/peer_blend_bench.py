"""Is the focus gate's gain something any network would get from a blend with its input? Score a tile-to-tile
ONNX peer (CARE, benchmarks/care_baseline.py) on whole frames as input + g x (output - input) for a grid of
constant g, pick g on the validation days and report it on the test days.

    python benchmarks/peer_blend_bench.py runs/care_4k.onnx --val runs/val/ref runs/val/random \
        --test runs/raw_sparse runs/raw_crowded

Prints the mean min-MSE PSNR per g on both sets and the per-|dz|-bin figures at the g picked on validation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from microdeblur import frame_eval
from microdeblur.devices import torch_threads
from microdeblur.metrics import minmse_fit, psnr_batch
from microdeblur.weights import load_weights

G = np.round(np.linspace(0, 1, 11), 2)
DZ_MAX = 15.0  # frames with 0 < |dz| <= DZ_MAX um, as frame_quality_bench.py


def table(onnx: Path, raws: list[Path], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(|dz| per frame, PSNR [frames, len(G)])."""
    method = frame_eval.onnx_tiled_method(onnx, scale)
    dzs, rows = [], []
    for day, dz, x, ref in frame_eval.defocused_frames(frame_eval.find_frame_days(raws), DZ_MAX):
        y = method(x, dz, day.pixel_um)
        rows.append([float(psnr_batch(minmse_fit(x + g * (y - x), ref)[None], ref[None])[0]) for g in G])
        dzs.append(abs(dz))
    return np.array(dzs), np.array(rows)


def main() -> None:
    """Validation table, the g it picks, test figures at that g."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--val", type=Path, nargs="+", required=True)
    ap.add_argument("--test", type=Path, nargs="+", required=True)
    a = ap.parse_args()
    scale = load_weights(None)[1].scale
    with torch_threads(0):
        vdz, v = table(a.onnx, a.val, scale)
        tdz, t = table(a.onnx, a.test, scale)
    g = int(np.argmax(v.mean(0)))
    print("g:          " + " ".join(f"{x:6.2f}" for x in G))
    print("validation: " + " ".join(f"{x:6.2f}" for x in v.mean(0)))
    print("test:       " + " ".join(f"{x:6.2f}" for x in t.mean(0)))
    bins = [(0, DZ_MAX), *[(lo, hi) for lo, hi in frame_eval.FRAME_BINS if lo < DZ_MAX]]
    print(f"picked on validation: g = {G[g]:g}")
    print("| test frames | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi in bins) + " |")
    for name, col in (("input", 0), ("peer", len(G) - 1), (f"peer blended g={G[g]:g}", g)):
        print(f"| {name} | " + " | ".join(f"{t[(tdz > lo) & (tdz <= hi), col].mean():.2f}" for lo, hi in bins) + " |")


if __name__ == "__main__":
    main()
