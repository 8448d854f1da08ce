"""The bioimage.io package against `deblur`: export the package of some weights, run its TorchScript model on
whole frames and compare with `Deblurrer.deblur_plane` (which tiles and blends).

    python benchmarks/bioimageio_bench.py [-w WEIGHTS] [IMAGE ...]   # default: shipped weights, the example frames

Prints the package's own test tile against `deblur_plane`, then per frame the median / 99th percentile / max |difference| (DN), the output's std, their correlation and
the package's seconds per frame (one thread, the fastest of three calls after a first). Needs the extra `microdeblur[bioimageio]`.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import torch

from microdeblur.bioimageio import export_bioimageio
from microdeblur.engine import Deblurrer
from microdeblur.weights import load_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "microdeblur" / "examples"


def main() -> None:
    """Export, run both paths on every image, print one line each."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", type=Path, nargs="*", help="2-D TIFFs (default: the shipped example's blurry frames)")
    ap.add_argument("--weights", "-w", type=Path, default=None)
    a = ap.parse_args()
    images = a.images or sorted(EXAMPLES.glob("example_dz*.tif"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = export_bioimageio(Path(tmp) / "pkg.zip", a.weights)
        with zipfile.ZipFile(pkg) as z:
            module = torch.jit.load(z.extract("microdeblur_deblur.pt", tmp))
            tile_in, tile_out = (np.load(io.BytesIO(z.read(f"test_{n}.npy"))) for n in ("input", "output"))
    db = Deblurrer(*load_weights(a.weights), device="cpu")
    print(f"weights: {a.weights or 'shipped'}")
    expect = db.deblur_plane(tile_in[0, 0])
    print(f"package test tile {tile_in.shape[-1]}x{tile_in.shape[-2]}: max |package - deblur| "
          f"{np.abs(tile_out[0, 0] - expect).max():.2g} DN over an output range of {np.ptp(expect):.0f} DN")
    for path in images:
        x = tifffile.imread(path).astype(np.float32)
        times = []
        with torch.no_grad():
            for _ in range(4):  # the first call also optimises the TorchScript graph: timed are the other three
                t0 = time.perf_counter()
                y = module(torch.from_numpy(x)[None, None]).numpy()[0, 0]
                times.append(time.perf_counter() - t0)
        sec = min(times[1:])
        ref = db.deblur_plane(x)
        d = np.abs(y - ref)
        corr = float(np.corrcoef(y.ravel(), ref.ravel())[0, 1])
        print(f"{path.name} {x.shape[1]}x{x.shape[0]}: |package - deblur| median {np.median(d):.2f}, p99 "
              f"{np.percentile(d, 99):.1f}, max {d.max():.1f} DN; deblur output std {ref.std():.1f} DN; "
              f"correlation {corr:.4f}; package {sec:.2f} s")


if __name__ == "__main__":
    main()
