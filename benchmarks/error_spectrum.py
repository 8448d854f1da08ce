"""Where in spatial frequency each method removes the defocus error: whole frames, min-MSE fitted, per |dz| bin.

    python benchmarks/error_spectrum.py runs/val/ref runs/val/ref_more runs/val/ref_sparse \
        [-w W.safetensors] [--unet U.safetensors] [--onnx CARE=C.onnx] [--markdown runs/spectrum.md]

Every frame with 0 < |dz| <= --dz-max goes through each method as frame_quality_bench.py runs it (the model through
the real `deblur` path, peers through the same tiling and blending), is fitted to the day's normalised in-focus
frame (gain and offset, CSBDeep's min-MSE convention) and its error image is split into octave bands of radial
frequency (cycles per camera pixel). Printed per |dz| bin and band: the input's share of its error energy, then
each method's error energy against the input's in that band (dB, mean over frames; negative: less error). A
diagnosis, not a score: run it on validation days, where choosing what to try next cannot leak into the test figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from microdeblur import frame_eval
from microdeblur.devices import torch_threads
from microdeblur.engine import Deblurrer
from microdeblur.frame_eval import INPUT
from microdeblur.metrics import minmse_fit
from microdeblur.weights import load_weights

EDGES = (0.0, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 0.5 * np.sqrt(2))  # cycles per camera pixel
BINS = ((0.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 15.0))


def band_energy(error: np.ndarray) -> np.ndarray:
    """Energy of an error image in each radial frequency band of EDGES."""
    power = np.abs(np.fft.rfft2(error.astype(np.float64))) ** 2
    fy = np.fft.fftfreq(error.shape[0])[:, None]
    fx = np.fft.rfftfreq(error.shape[1])[None, :]
    band = np.digitize(np.hypot(fy, fx), EDGES[1:-1])
    weight = np.where((fx == 0) | (fx == 0.5), 1.0, 2.0)  # rfft keeps one half of the symmetric spectrum
    return np.bincount(band.ravel(), (power * weight).ravel(), minlength=len(EDGES) - 1)


def band_label(i: int) -> str:
    """'1/64-1/32'-style label of band i (periods in pixels)."""
    lo, hi = EDGES[i], EDGES[i + 1]
    return f"{'0' if lo == 0 else f'1/{round(1 / lo)}'}-{'max' if i == len(EDGES) - 2 else f'1/{round(1 / hi)}'}"


def methods_for(a: argparse.Namespace) -> dict[str, frame_eval.Method]:
    """The blurry input, the weights through `deblur`, and the peers through the same tiling and blending."""
    model, meta = load_weights(a.weights)
    methods = {INPUT: frame_eval.baseline_methods(meta.scale, [])[INPUT],
               a.weights.stem if a.weights else "shipped": frame_eval.model_method(Deblurrer(model, meta, device="cpu"))}
    if a.unet is not None:
        from microdeblur.baselines import load_unet

        methods["U-Net"] = frame_eval.tiled_method(load_unet(a.unet)[0], meta.scale)
    for spec in a.onnx:
        name, _, path = spec.partition("=")
        methods[name] = frame_eval.onnx_tiled_method(Path(path), meta.scale)
    return methods


def table(energy: dict[str, list[tuple[float, np.ndarray]]]) -> str:
    """Markdown: per |dz| bin and band, the input's error share and every method's error against the input's (dB),
    then all bands together (= minus the min-MSE PSNR gain); the last column takes, frame by frame, the least error
    of the methods in each band: what the best of them together would leave."""
    names = [n for n in energy if n != INPUT]
    head = ("| \\|dz\\| bin | band (cycles/px) | input error share | " + " | ".join(f"{n} (dB vs input)" for n in names)
            + " | best per band (dB vs input) |")
    lines = [head, "|" + "---|" * (4 + len(names))]
    for lo, hi in BINS:
        keep = [i for i, (dz, _) in enumerate(energy[INPUT]) if lo < abs(dz) <= hi]
        if not keep:
            continue
        inp = np.stack([energy[INPUT][i][1] for i in keep])  # [frames, bands]
        each = np.stack([np.stack([energy[n][i][1] for i in keep]) for n in names])  # [methods, frames, bands]
        best = each.min(axis=0)
        share = (inp / inp.sum(axis=1, keepdims=True)).mean(axis=0)
        label = f"{lo:g}-{hi:g} µm ({len(keep)})"
        for b in range(len(EDGES) - 1):
            cells = [f"{np.mean(10 * np.log10(e[:, b] / inp[:, b])):+.2f}" for e in (*each, best)]
            lines.append(f"| {label} | {band_label(b)} | {share[b]:.1%} | " + " | ".join(cells) + " |")
        cells = [f"{np.mean(10 * np.log10(e.sum(axis=1) / inp.sum(axis=1))):+.2f}" for e in (*each, best)]
        lines.append(f"| {label} | **all** | 100% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Deblur every selected frame with every method and print the band table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, nargs="+", help="folders of simulated days (validation days)")
    ap.add_argument("--weights", "-w", type=Path, default=None, help="default: shipped")
    ap.add_argument("--unet", type=Path, default=None, help="U-Net baseline weights (benchmarks/train_unet.py)")
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=FILE", help="tile-to-tile ONNX peer")
    ap.add_argument("--dz-max", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    a = ap.parse_args()
    with torch_threads(a.threads):
        methods = methods_for(a)
        energy: dict[str, list[tuple[float, np.ndarray]]] = {n: [] for n in methods}
        for day, dz, plane, ref in frame_eval.defocused_frames(frame_eval.find_frame_days(a.raw), a.dz_max):
            for name, method in methods.items():
                out = method(plane, dz, day.pixel_um)
                energy[name].append((dz, band_energy(minmse_fit(out, ref) - ref)))
    text = table(energy)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
