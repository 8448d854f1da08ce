"""Does `focus` transfer to other optics through the NA²/λ unit conversion, without retraining? (issue 13)

Run: python benchmarks/optics_transfer_bench.py [--preset yeast-40x] [--days 2] [--size 1024x768] [--z-step 1]
       [--weights W] [--workdir DIR]
Simulates days of a `microdeblur simulate --preset` microscope (seeds 77, 78, ...), then runs the real
`microdeblur focus` CLI on every plane with the preset's NA and nominal wavelength (`--na`, `--wavelength`;
the pixel size comes from the files' ImageJ resolution, so inputs are resized to the network's working pixel
size) and compares the per-plane medians with the true Δz: Spearman (signed and |Δz|) and median |error|.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from microdeblur.calibration import spearman


def run(*args: str) -> None:
    """Run the CLI in a fresh process; stop on failure."""
    subprocess.run([sys.executable, "-m", "microdeblur", "-q", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="yeast-40x")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--z-step", default="1")
    ap.add_argument("--planes", default="31")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="optics_transfer_"))
    raw = work / "raw"
    if not raw.exists():
        run("simulate", str(raw), "--days", str(a.days), "--planes", a.planes, "--z-step", a.z_step, "--size", a.size,
            "--preset", a.preset, "--seed", "77")
    wopt = ["-w", str(a.weights)] if a.weights else []
    rows = []
    for day in sorted(p for p in raw.iterdir() if (p / "ground_truth.json").exists()):
        truth = json.loads((day / "ground_truth.json").read_text())
        na, lam = truth["optics"]["na"], truth["optics"]["wavelength_um"]
        out = work / f"maps_{day.name}"
        run("focus", *map(str, sorted(day.glob("*.tif"))), "-o", str(out), "--csv", str(out) + ".csv",
            "--na", f"{na:g}", "--wavelength", f"{lam:.3f}", "--overwrite", *wopt)
        med = np.array([float(r["median_dz_um"]) for r in csv.DictReader(open(str(out) + ".csv"))])
        z = np.asarray(truth["z_um"], float)
        rows.append((day.name, na, lam, spearman(med, z), spearman(np.abs(med), np.abs(z)),
                     float(np.median(np.abs(med - z))), float(np.polyfit(z, med, 1)[0])))
    print(f"preset {a.preset}, {a.days} day(s) of {a.planes} planes at {a.z_step} um, {a.size}; work dir {work}")
    print("| day | NA | λ (µm) | Spearman vs Δz | Spearman vs abs Δz | median error (µm) | slope read/true |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.2f} | {r[6]:.2f} |")


if __name__ == "__main__":
    main()
