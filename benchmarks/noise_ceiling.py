"""How well can any method match a noisy in-focus target? (ceiling for PSNR/SSIM in evaluate and the model card)

Run: python benchmarks/noise_ceiling.py [--seeds 3]
Simulates in-focus fields of the reference microscope (1024x768 camera pixels), exposes each twice
with independent camera noise, downsizes 2x2 as `prepare` does and normalises per frame. A perfect
deblur-and-denoise (the noiseless image) and a second noisy exposure are then scored against the
first exposure with the metrics `evaluate` uses, on 128-px tiles.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.fft as sfft

from microdeblur.metrics import psnr_batch, ssim_batch
from microdeblur.microscope import Camera, Imager, Optics, expose, illumination
from microdeblur.normalize import frame_normalizer
from microdeblur.resizing import rescale
from microdeblur.specimens import make_specimen


def tiles(frame: np.ndarray, t: int = 128) -> np.ndarray:
    h, w = (frame.shape[0] // t) * t, (frame.shape[1] // t) * t
    return frame[:h, :w].reshape(h // t, t, w // t, t).swapaxes(1, 2).reshape(-1, t, t)


def prep(frame: np.ndarray) -> np.ndarray:
    small = rescale(frame.astype(np.float32), 0.5)
    return tiles(frame_normalizer(small).before(small))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    optics, camera = Optics(), Camera()
    rows = []
    for seed in range(a.seeds):
        rng = np.random.default_rng(9000 + seed)
        m = 150
        shape = (sfft.next_fast_len(768 + 2 * m), sfft.next_fast_len(1024 + 2 * m))
        imager = Imager(make_specimen(rng, shape, optics), optics)
        clean = imager.intensity(0.0, (slice(m, m + 768), slice(m, m + 1024)))
        illum = illumination(rng, clean.shape, camera)
        noisy_a = expose(rng, clean, illum, camera)
        noisy_b = expose(rng, clean, illum, camera)
        noiseless = clean * illum * camera.background + camera.offset
        ta, tb, tc = prep(noisy_a), prep(noisy_b), prep(noiseless)
        rows.append((psnr_batch(tc, ta).mean(), ssim_batch(tc, ta).mean(), psnr_batch(tb, ta).mean(), ssim_batch(tb, ta).mean()))
    r = np.array(rows).mean(0)
    print("| candidate vs noisy in-focus target | PSNR (dB) | SSIM |\n|---|---|---|")
    print(f"| noiseless in-focus image (perfect deblur + denoise) | {r[0]:.2f} | {r[1]:.3f} |")
    print(f"| second noisy exposure of the in-focus plane | {r[2]:.2f} | {r[3]:.3f} |")


if __name__ == "__main__":
    main()
