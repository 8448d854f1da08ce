"""Does refocusing land where `focus` says it does? (issue 17, item 4)

Run: python benchmarks/refocus_bench.py RAW_DAYS [--weights W] [--targets -10 -5 5 10] [--sources -6 0 6]
       [--json out.json]
RAW_DAYS: days written by `microdeblur simulate` with seeds never used for training. For every day and every
source plane (true dz in --sources), each target dz is produced the way `deblur --dz T` does (the source's
identity decoded with the calibrated code of T, intensity reverted for T); the tool's own focus estimate
(median over all tiles of the calibrated code of the output; `focus` leaves out tiles below the contrast floor,
which on the simulated test days moves the median by at most 0.01 µm, benchmarks/focus_bench.py) is then
compared with T. Also reported: the
focus estimate of the unmodified source planes (the focus error bar the refocus error is measured against)
and the share of output pixels at the dtype's limits that the input did not have there (clipping).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from microdeblur import calibration
from microdeblur.engine import Deblurrer
from microdeblur.weights import load_weights


def focus_estimate(db: Deblurrer, plane: np.ndarray) -> float:
    """Median calibrated dz over all the plane's tiles (`focus` leaves out low-contrast tiles; see the module doc)."""
    codes = db.encode(plane).blur[:, 0]
    return float(np.median(calibration.code_to_dz(db.meta.calibration, codes)))


def clipped_share(out: np.ndarray, inp: np.ndarray) -> float:
    """Fraction of pixels at the dtype's limits in the output that are not at them in the input."""
    if not np.issubdtype(out.dtype, np.integer):
        return 0.0
    info = np.iinfo(out.dtype)
    edge = (out == info.min) | (out == info.max)
    was = (inp == info.min) | (inp == info.max)
    return float(np.mean(edge & ~was))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--targets", type=float, nargs="+", default=[-10.0, -6.0, -2.0, 2.0, 6.0, 10.0])
    ap.add_argument("--sources", type=float, nargs="+", default=[-6.0, 0.0, 6.0])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    model, meta = load_weights(a.weights)
    db = Deblurrer(model, meta, device="cpu")
    cal = meta.calibration
    rows, source_err = [], []
    for day in sorted(p for p in a.raw.iterdir() if (p / "ground_truth.json").exists()):
        truth = json.loads((day / "ground_truth.json").read_text())
        files = sorted(day.glob(f"{day.name}_z*.tif"))
        for f, z in zip(files, truth["z_um"]):
            if not any(abs(z - s) < 1e-6 for s in a.sources):
                continue
            plane = tifffile.imread(f)
            source_err.append(focus_estimate(db, plane) - z)
            for t in a.targets:
                out = db.deblur_plane(plane, calibration.dz_to_code(cal, t).reshape(1), dz=t)
                rows.append({"day": day.name, "source_dz": z, "target_dz": t, "read_dz": focus_estimate(db, out),
                             "clipped": clipped_share(out, plane)})
    err = np.array([r["read_dz"] - r["target_dz"] for r in rows])
    res = {"outputs": len(rows), "refocus_median_abs_error_um": float(np.median(np.abs(err))),
           "refocus_mean_error_um": float(err.mean()),
           "source_median_abs_error_um": float(np.median(np.abs(source_err))),
           "clipped_share_max": float(max(r["clipped"] for r in rows))}
    print("| measure | value |\n|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    print("\n| source dz (µm) | " + " | ".join(f"→ {t:+g}" for t in a.targets) + " |")
    print("|---|" + "---|" * len(a.targets))
    for s in a.sources:
        cells = []
        for t in a.targets:
            got = [r["read_dz"] for r in rows if abs(r["source_dz"] - s) < 1e-6 and r["target_dz"] == t]
            cells.append(f"{np.mean(got):+.1f}" if got else "-")
        print(f"| {s:+g} | " + " | ".join(cells) + " |")
    print("\ncells: mean focus reading (µm) of the refocused outputs")
    if a.json:
        a.json.write_text(json.dumps(res | {"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
