"""Through-focus contrast of simulated days vs the real yeast bright-field stacks (docs/simulator.md).

Run: python benchmarks/simulator_realism.py [--out docs/img/simulator_realism.png]
Simulates one 512x512 field with 41 planes at 0.5 um (-10..+10 um) and compares its band-passed
contrast curve with the two real stacks in ../shared/data/real (34 planes at 0.3 um). Prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from microdeblur.simulate import simulate_days  # noqa: E402

REAL = {"bfseg_pombe": ("bfseg_pombe/BF_zstack_34x0.3um.tif", 17),
        "bfautofocus_pombe": ("bfautofocus_pombe/BF_zstack_0.3um.tif", 15)}


def contrast(frame: np.ndarray, sigma_bg: float) -> float:
    """Band-passed standard deviation over the mean."""
    f = frame.astype(np.float64)
    return float((gaussian_filter(f, 1) - gaussian_filter(f, sigma_bg)).std() / f.mean())


def shared_real() -> Path:
    here = Path(__file__).resolve()
    for p in [here.parents[1], *here.parents[1].parents]:
        if (p / "shared" / "data" / "real").is_dir():
            return p / "shared" / "data" / "real"
    raise SystemExit("shared/data/real not found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/img/simulator_realism.png"))
    a = ap.parse_args()
    real = shared_real()
    fig, ax = plt.subplots(1, 1, figsize=(7, 4))
    print("| stack | contrast min at dz (um) | min / max contrast |\n|---|---|---|")
    for name, (rel, focus) in REAL.items():
        stack = tifffile.imread(real / rel)
        c = np.array([contrast(p, 8) for p in stack])
        dz = (np.arange(len(c)) - focus) * 0.3
        ax.plot(dz, c / c.max(), "o-", ms=3, label=f"real yeast {name} (0.3 um steps)")
        print(f"| real {name} | {dz[np.argmin(c)]:+.1f} | {c.min() / c.max():.2f} |")
    with tempfile.TemporaryDirectory() as tmp:
        day = simulate_days(Path(tmp) / "sim", days=1, planes=41, size=(512, 512), seed=11, z_step_um=0.5)[0]
        files = sorted(day.glob("day01_z*.tif"))
        c = np.array([contrast(tifffile.imread(f), 25) for f in files])
    dz = (np.arange(len(c)) - 20) * 0.5
    ax.plot(dz, c / c.max(), "k.-", label="simulated protoplasts (20x/0.40, 0.5 um)")
    print(f"| simulated | {dz[np.argmin(c)]:+.1f} | {c.min() / c.max():.2f} |")
    ax.set_xlabel("dz from marked focus (um)")
    ax.set_ylabel("band-passed contrast / max")
    ax.set_title("Bright-field through-focus contrast: minimum at focus")
    ax.legend(fontsize=8)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print("figure:", a.out)


if __name__ == "__main__":
    main()
