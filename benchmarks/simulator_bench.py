"""Simulator speed and the accuracy of the condenser sampling (docs/simulator.md, "Speed").

Run (on a shared machine, niced):
  nice -n 19 python benchmarks/simulator_bench.py speed [--planes 31 --size 2048x1536 --repeats 1 --randomize]
  nice -n 19 python benchmarks/simulator_bench.py sources [--size 512]

speed: wall and CPU seconds of one `microdeblur simulate` process, the 1-minute load average around it,
peak RSS (the largest child so far) and a sha256 of the planes' pixels (reference preset, seed 0: compare with the figure in simulator.md to
confirm the output did not change).
sources: how far images made with fewer source points lie from a dense sampling of the condenser
(about 150 points on a square grid): RMS error over RMS contrast of the image, and in units of the
camera's shot noise at the reference background (2600 e-), over focal planes -20..+20 um.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _digest(day: Path) -> str:
    import tifffile

    h = hashlib.sha256()
    for f in sorted(day.glob("*.tif")):
        h.update(tifffile.imread(f).tobytes())
    return h.hexdigest()


def speed(a: argparse.Namespace) -> None:
    print(f"cores: {os.cpu_count()}, planes {a.planes}, size {a.size}, {'randomized' if a.randomize else 'reference preset'}")
    print("| run | lab | wall (s) | CPU (s) | peak RSS (GB) | load before / after | pixels sha256 |\n|---|---|---|---|---|---|---|")
    for r in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            cmd = [sys.executable, "-m", "microdeblur", "-q", "simulate", str(out), "--planes", str(a.planes),
                   "--size", a.size, "--seed", str(a.seed + r)] + (["--randomize"] if a.randomize else [])
            load0 = os.getloadavg()[0]
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            t = json.loads((out / "day01" / "ground_truth.json").read_text())
            o = t["optics"]
            lab = (f"{t['specimen']['family']}, {o['magnification']:g}x/{o['na']:g}, {t['spectrum']['kind']} "
                   f"({t['illumination']['source_points']} source points), canvas {t['canvas']['shape'][1]}x{t['canvas']['shape'][0]}")
            print(f"| seed {a.seed + r} | {lab} | {wall:.1f} | {cpu:.1f} | {cpu1.ru_maxrss / 2**20:.2f} | "
                  f"{load0:.2f} / {os.getloadavg()[0]:.2f} | {_digest(out / 'day01')[:16]}… |")


def _dense_points(optics, step: float = 1 / 7):
    """Square grid of equal-weight points inside the (possibly decentred) condenser disc."""
    radius = optics.condenser_na / optics.wavelength_um
    g = np.arange(-1, 1 + 1e-9, step)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    keep = yy**2 + xx**2 <= 1
    pts = np.stack([yy[keep], xx[keep]], 1) * radius
    oy, ox = optics.condenser_offset
    pts = pts + np.asarray([oy, ox]) * radius
    return pts.astype(np.float32), np.full(len(pts), 1 / len(pts), np.float32)


def _stack(specimen_logt, depths, spectrum, optics, zs, crop, dense: bool):
    """Intensity at every z summed over the spectrum, with the simulator's or a dense source sampling."""
    from microdeblur import microscope, simulate, specimens

    orig = microscope.source_points
    if dense:
        microscope.source_points = _dense_points
    try:
        out = [0.0 for _ in zs]
        n = len(spectrum.wavelengths_um)
        for j, (lam, w) in enumerate(zip(spectrum.wavelengths_um, spectrum.weights)):
            o = optics if n == 1 else replace(optics, wavelength_um=lam, source_angle=optics.source_angle + j * (np.pi / 3) / n)
            layers = [simulate._transmittance(lt, optics.wavelength_um / lam) for lt in specimen_logt]
            im = microscope.Imager(specimens.Specimen(layers, depths), o)
            for k, z in enumerate(zs):
                out[k] = out[k] + w * im.intensity(float(z), crop)
        return out
    finally:
        microscope.source_points = orig


def sources(a: argparse.Namespace) -> None:
    from microdeblur import labs, specimens
    from microdeblur.microscope import Optics, Spectrum

    zs = [-20.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0, 20.0]
    n = a.size
    m = 96
    shape = (n + 2 * m, n + 2 * m)
    crop = (slice(m, m + n), slice(m, m + n))
    shot = 1 / np.sqrt(2600.0)
    cases = [("reference (20x/0.40, condenser 0.20, 0.55 um)", Optics(), Spectrum(), (1, 2, 3, 4)),
             ("condenser 0.36 (sigma 0.9)", Optics(condenser_na=0.36), Spectrum(), (1, 2, 3)),
             ("halogen, 4 wavelengths, rings per wavelength", Optics(wavelength_um=labs._mean_wavelength(labs._HALOGEN)),
              labs._HALOGEN, (1, 2))]
    print(f"canvas {shape}, frame {n}x{n}, z = {zs}")
    print("| optics | source points | max rel. RMS error | mean rel. RMS error | max RMS error / shot noise |\n|---|---|---|---|---|")
    for label, optics, spectrum, rings in cases:
        rng = np.random.default_rng(0)
        logt, depths, _ = specimens.protoplasts(rng, shape, optics.pixel_um, 2 * np.pi / optics.wavelength_um)
        ref = _stack(logt, depths, spectrum, optics, zs, crop, dense=True)
        n_dense = len(_dense_points(optics)[0]) * len(spectrum.wavelengths_um)
        for r in rings:
            o = replace(optics, source_rings=r)
            got = _stack(logt, depths, spectrum, o, zs, crop, dense=False)
            rel = [float(np.sqrt(np.mean((g - f) ** 2)) / np.std(f)) for g, f in zip(got, ref)]
            absn = [float(np.sqrt(np.mean((g - f) ** 2)) / shot) for g, f in zip(got, ref)]
            pts = (1 + 6 * r) * len(spectrum.wavelengths_um)
            print(f"| {label} | {pts} (vs {n_dense}) | {max(rel):.3f} | {np.mean(rel):.3f} | {max(absn):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--planes", type=int, default=31)
    s.add_argument("--size", default="2048x1536")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--randomize", action="store_true")
    q = sub.add_parser("sources")
    q.add_argument("--size", type=int, default=384)
    a = p.parse_args()
    speed(a) if a.what == "speed" else sources(a)


if __name__ == "__main__":
    main()
