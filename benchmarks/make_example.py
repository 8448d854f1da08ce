"""Regenerate the example shipped in src/microdeblur/examples/ (fixed seed, reference microscope).

Run: python benchmarks/make_example.py
One simulated field of 1024x768 camera pixels (0.325 um) at dz = -10, 0 and +10 um, written as
zlib-compressed ImageJ TIFFs. The field's seed is never used for training data.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import tifffile

from microdeblur.microscope import Optics
from microdeblur.simulate import simulate_day

SEED = 424242
OUT = Path(__file__).resolve().parents[1] / "src" / "microdeblur" / "examples"
NAMES = {0: "example_dz-10um.tif", 1: "example_infocus.tif", 2: "example_dz+10um.tif"}


def main() -> None:
    px = Optics().pixel_um
    with tempfile.TemporaryDirectory() as tmp:
        truth = simulate_day(Path(tmp), "example", planes=3, size=(1024, 768), seed=SEED, z_step_um=10.0, cells=None)
        for k, name in NAMES.items():
            frame = tifffile.imread(Path(tmp) / f"example_z{k:03d}.tif")
            tifffile.imwrite(OUT / name, frame, imagej=True, resolution=(1 / px, 1 / px),
                             metadata={"axes": "YX", "unit": "um"}, compression="zlib")
    truth["files"] = {name: truth["z_um"][k] for k, name in NAMES.items()}
    truth.pop("cells")
    (OUT / "example.json").write_text(json.dumps(truth, indent=1))
    print("wrote", ", ".join(NAMES.values()), "to", OUT)


if __name__ == "__main__":
    main()
