"""Time `microdeblur deblur` as users run it (whole process) against Richardson-Lucy, and a big stack.

(a) one 1024x768 uint16 frame, `--scale 1`: median of 5 CLI runs (start-up and model load included)
    vs 30 iterations of skimage.restoration.richardson_lucy in-process (median of 3);
(b) a synthetic 100-plane 2048x1536 uint16 stack through the CLI: wall time and peak RSS.

Usage: python benchmarks/deblur_bench.py [--weights W] [--planes 100] [--skip-stack] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `microdeblur.inference` sets it for the CLI

FRAME = (768, 1024)
STACK = (1536, 2048)
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "manifold-1d.safetensors"


def texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth cell-like texture, unit variance, float32."""
    rng = np.random.default_rng(seed)
    coarse = ndi.gaussian_filter(rng.normal(size=(shape[0] // 8, shape[1] // 8)), 1.5)
    return ndi.zoom(coarse / coarse.std(), 8, order=1).astype(np.float32)[: shape[0], : shape[1]]


def make_frame(path: Path) -> np.ndarray:
    """Blurred uint16 bright-field-like frame."""
    frame = 20000 + 3000 * ndi.gaussian_filter(texture(FRAME), 3) + np.random.default_rng(1).normal(0, 20, FRAME)
    frame = np.clip(frame, 0, 65535).astype(np.uint16)
    tifffile.imwrite(path, frame, imagej=True, metadata={"axes": "YX"})
    return frame


def make_stack(path: Path, planes: int) -> None:
    """Through-focus uint16 ZYX stack written plane by plane (contrast flips across the middle)."""
    tex = texture(STACK)
    rng = np.random.default_rng(2)
    out = tifffile.memmap(path, shape=(planes, *STACK), dtype=np.uint16, imagej=True,
                          metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"})
    for z in range(planes):
        plane = 20000 + 60 * (z - planes // 2) * tex + rng.standard_normal(STACK, dtype=np.float32) * 20
        out[z] = np.clip(plane, 0, 65535).astype(np.uint16)
    out.flush()
    del out


def default_weights(work: Path) -> Path:
    """Shipped weights if present, else an untrained default-config model saved into `work`."""
    if SHIPPED.exists():
        return SHIPPED
    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.weights import WeightsMeta, save_weights

    model = DisentangledAE(ModelConfig()).eval()
    path = work / "untrained.safetensors"
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=0.5,
                                          focus_blur_code=np.zeros(1, np.float32)))
    return path


def cli(args: list[str]) -> list[str]:
    """Command line running the installed CLI module with this interpreter."""
    return [sys.executable, "-m", "microdeblur", "-q", *args]


def time_cli(args: list[str], repeats: int) -> list[float]:
    """Wall seconds of each whole-process run."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cli(args), check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t)
    return runs


def time_rl(frame: np.ndarray, repeats: int) -> list[float]:
    """Seconds of 30 Richardson-Lucy iterations (Gaussian PSF, sigma 3 px) on the frame."""
    from skimage.restoration import richardson_lucy

    r = np.arange(-12, 13)
    psf = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 3.0 ** 2))
    psf /= psf.sum()
    img = frame.astype(np.float32) / 65535
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        richardson_lucy(img, psf, num_iter=30)
        runs.append(time.perf_counter() - t)
    return runs


def time_in_process(weights: Path, frame: np.ndarray, overlap: int, repeats: int) -> tuple[list[float], int]:
    """Seconds per deblur_plane call on the frame (model loaded once, --scale 1) and tiles per frame."""
    from microdeblur.inference import Deblurrer
    from microdeblur.weights import load_weights

    db = Deblurrer(*load_weights(weights), device="cpu", scale=1.0, overlap=overlap)
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        db.deblur_plane(frame)
        runs.append(time.perf_counter() - t)
    return runs, len(db.encode(frame).grid)


def run_stack(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one CLI run, measured by /usr/bin/time -v."""
    t = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cli(args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    if res.returncode:
        raise SystemExit(res.stderr)
    wall = time.perf_counter() - t
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return wall, kb / 2**20


def main() -> None:
    """Run (a) and (b) and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--planes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-stack", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deblur_bench_", dir=args.workdir))
    try:
        weights = args.weights or default_weights(work)
        print(f"weights: {weights}; torch threads: {os.cpu_count()} cores; load: {os.getloadavg()}")
        frame = make_frame(work / "frame.tif")
        common = ["--weights", str(weights), "--device", "cpu", "--overwrite"]
        runs = time_cli(["deblur", str(work / "frame.tif"), "-o", str(work / "frame_out.tif"), "--scale", "1",
                         *common], args.repeats)
        print(f"(a) microdeblur deblur 1024x768 --scale 1: median {statistics.median(runs):.2f} s "
              f"(runs {', '.join(f'{r:.2f}' for r in runs)})")
        runs = time_cli(["--version"], 3)
        print(f"    start-up only (microdeblur --version): median {statistics.median(runs):.2f} s")
        for overlap in (48, 16):
            runs, n = time_in_process(weights, frame, overlap, 3)
            med = statistics.median(runs)
            print(f"    in-process deblur_plane, overlap {overlap}: median {med:.2f} s for {n} tiles "
                  f"({n / med:.0f} tiles/s)")
        rl = time_rl(frame, 3)
        print(f"    richardson_lucy 30 iterations: median {statistics.median(rl):.2f} s "
              f"(runs {', '.join(f'{r:.2f}' for r in rl)})")
        if not args.skip_stack:
            make_stack(work / "stack.tif", args.planes)
            wall, gib = run_stack(["deblur", str(work / "stack.tif"), "-o", str(work / "stack_out.tif"), *common])
            print(f"(b) {args.planes}-plane 2048x1536 uint16 stack: {wall:.1f} s, peak RSS {gib:.2f} GiB, "
                  f"load after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
