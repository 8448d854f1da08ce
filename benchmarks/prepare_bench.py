"""Time `prepare` on one synthetic day: 100 planes of 2048x1536 uint16 written as 100 files.

Usage: python benchmarks/prepare_bench.py [--planes 100] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from rich.table import Table
from scipy import ndimage as ndi
from skimage.transform import resize

from microdeblur import log
from microdeblur.prepare import prepare_days
from microdeblur.resizing import rescale

SHAPE = (1536, 2048)


def make_day(folder: Path, planes: int, seed: int = 0) -> None:
    """Bright-field-like day: smooth texture whose contrast grows with |dz| and flips sign at the middle plane."""
    rng = np.random.default_rng(seed)
    coarse = ndi.gaussian_filter(rng.normal(size=(SHAPE[0] // 8, SHAPE[1] // 8)), 1.5)
    texture = ndi.zoom(coarse / coarse.std(), 8, order=1).astype(np.float32)
    folder.mkdir(parents=True)
    focus = planes // 2
    for z in range(planes):
        noise = rng.standard_normal(SHAPE, dtype=np.float32) * 20
        plane = 20000 + 300 * (z - focus) * texture + noise
        tifffile.imwrite(folder / f"bench_z{z:03d}.tif", np.clip(plane, 0, 65535).astype(np.uint16))


def time_downsizers(frame: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per frame of the two resize paths at scale 0.5."""
    out = {}
    for name, fn in [("binning 2x2 (used)", lambda: rescale(frame, 0.5)),
                     ("skimage resize, anti_aliasing", lambda: resize(frame, (SHAPE[0] // 2, SHAPE[1] // 2),
                                                                     anti_aliasing=True, preserve_range=True))]:
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        out[name] = statistics.median(runs)
    return out


def main() -> None:
    """Generate the day, time prepare (median of repeats), show a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prepare_bench_", dir=args.workdir))
    try:
        log.info(f"generating {args.planes} planes of {SHAPE[1]}x{SHAPE[0]} uint16 in {work} ...")
        make_day(work / "raw" / "bench", args.planes)
        log.set_verbosity(0)
        runs = []
        for r in range(args.repeats):
            data = work / f"data{r}"
            t = time.perf_counter()
            summary = prepare_days([work / "raw" / "bench"], data, focus_plane=None, scale=0.5, tile=128,
                                   z_step_um=1.0, overwrite=False)
            runs.append(time.perf_counter() - t)
            focus = json.loads((data / "index.json").read_text())["days"]["bench"]["focus_plane"]
            shutil.rmtree(data)
        log.set_verbosity(1)
        frame = tifffile.imread(work / "raw" / "bench" / "bench_z000.tif")
        per_frame = time_downsizers(frame, 5)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"prepare: 1 day, {args.planes} x {SHAPE[1]}x{SHAPE[0]} uint16 -> scale 0.5, tile 128 "
                        f"({os.cpu_count()} cores)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"prepare, median of {len(runs)} (s)", f"{statistics.median(runs):.2f}")
    table.add_row("prepare, all runs (s)", ", ".join(f"{r:.2f}" for r in runs))
    table.add_row("per plane (ms)", f"{1000 * statistics.median(runs) / args.planes:.0f}")
    table.add_row("crops written", str(summary["crops"]))
    table.add_row(f"auto focus plane (true {args.planes // 2})", str(focus))
    for name, sec in per_frame.items():
        table.add_row(f"downsize one frame: {name} (ms)", f"{1000 * sec:.1f}")
    log.console.print(table)


if __name__ == "__main__":
    main()
