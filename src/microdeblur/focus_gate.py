"""How much of the network's correction `deblur` applies where: a ramp in each tile's estimated defocus.

A tile's defocus is its blur code through the weights' calibration (training-microscope µm), as a median over the
WINDOW_TILES x WINDOW_TILES neighbouring tiles (one focal position per neighbourhood; a level specimen gets about
one value per frame). The ramp applies none of the correction within `lo_um` of focus, all of it beyond `hi_um`,
linearly between. Its ends are fitted on validation days (`fit_ramp`, benchmarks/fit_focus_gate.py) and stored in
the weights (`WeightsMeta.focus_gate`); the engine blends (engine.Deblurrer._swap, with the weights from
engine.Deblurrer.focus_gate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from . import calibration
from .tiling import upsample_tile_values

DEFAULT_RAMP_UM = (1.0, 3.0)  # `--focus-gate` with weights that carry no fitted ramp (the gate of round 3)
WINDOW_TILES = 5
# the ramps fit_ramp tries (µm): starts 0-4 and widths 1-10 cover 0 to 14 µm, the range of the training dz
CANDIDATE_LO_UM = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
CANDIDATE_WIDTH_UM = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


@dataclass(frozen=True)
class Ramp:
    """Correction weight 0 at |dz| <= lo_um, 1 at |dz| >= hi_um, linear between (training µm)."""

    lo_um: float
    hi_um: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lo_um) and np.isfinite(self.hi_um) and 0 <= self.lo_um < self.hi_um):
            raise ValueError(f"a focus-gate ramp needs 0 <= lo < hi, got {self.lo_um}, {self.hi_um}")

    def weight(self, defocus_um: np.ndarray) -> np.ndarray:
        """Correction weight (float32, 0..1) of |defocus| values."""
        d = np.abs(np.asarray(defocus_um, np.float64))
        return np.clip((d - self.lo_um) / (self.hi_um - self.lo_um), 0.0, 1.0).astype(np.float32)

    @classmethod
    def from_meta(cls, entry: dict | None) -> Ramp | None:
        """The ramp a weights file stores (None when it stores none)."""
        return None if not entry else cls(float(entry["lo_um"]), float(entry["hi_um"]))


def tile_defocus(cal: dict, codes: np.ndarray, rows_cols: tuple[int, int]) -> np.ndarray:
    """|dz| (training µm) per tile [rows, cols]: each tile's code through the calibration, median over its
    WINDOW_TILES x WINDOW_TILES neighbourhood (odd, at most the grid; edge tiles repeated beyond the border).
    numpy only: scipy's import would cost a fresh `deblur` process more than the whole gate."""
    return neighbourhood_median(np.abs(calibration.code_to_dz(cal, np.asarray(codes).reshape(-1))).reshape(rows_cols))


def neighbourhood_window(rows_cols: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) of the neighbourhood window on a grid of that many tiles: WINDOW_TILES, at most the grid,
    odd so that it is centred on its tile."""
    return tuple(min(WINDOW_TILES, n - (n + 1) % 2) for n in rows_cols)


def neighbourhood_median(values: np.ndarray, window: tuple[int, int] | None = None) -> np.ndarray:
    """Per-tile values [rows, cols, ...] -> the median over each tile's neighbourhood (`window`, default
    neighbourhood_window of the values' grid; edge tiles repeated beyond the border), per trailing column. A
    grid's first rows, given the window of the whole grid, get the whole grid's medians except in their last
    window[0] // 2 rows."""
    size = list(window or neighbourhood_window(values.shape[:2]))
    padded = np.pad(values, [(k // 2, k // 2) for k in size] + [(0, 0)] * (values.ndim - 2), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=(0, 1))
    return np.median(windows, axis=(-2, -1))


@dataclass
class GateFrame:
    """One validation frame for fit_ramp: its input and full correction (raw units, float32), the per-tile
    defocus, a function that turns per-tile weights into per-pixel ones, the in-focus reference (normalised)
    and the true dz."""

    plane: np.ndarray
    corrected: np.ndarray
    defocus: np.ndarray
    to_pixels: Callable[[np.ndarray], np.ndarray]
    reference: np.ndarray
    dz_um: float


def gate_frame(deblurrer, plane: np.ndarray, reference: np.ndarray, dz_um: float, cal: dict | None = None) -> GateFrame:
    """A plane deblurred once without the gate, as a GateFrame (tile defocus through `cal`, default the weights')."""

    corrected, codes, grid = deblurrer.swap_parts(plane, deblurrer.target, 0.0)
    defocus = tile_defocus(cal or deblurrer.meta.calibration, codes[:, 0], grid.rows_cols)
    return GateFrame(np.asarray(plane, np.float32), corrected, defocus,
                     lambda w: upsample_tile_values(w, grid, plane.shape), reference, dz_um)


def score(frame: GateFrame, ramp: Ramp | None) -> float:
    """Min-MSE PSNR of the frame deblurred with the ramp (None: the full correction everywhere)."""
    from .metrics import minmse_fit, psnr_batch  # scikit-image: only when fitting

    out = frame.corrected
    if ramp is not None:
        out = frame.plane + frame.to_pixels(ramp.weight(frame.defocus)) * (frame.corrected - frame.plane)
    return float(psnr_batch(minmse_fit(out, frame.reference)[None], frame.reference.astype(np.float32)[None])[0])


def candidates() -> list[Ramp]:
    """The ramps fit_ramp tries."""
    return [Ramp(lo, lo + w) for lo in CANDIDATE_LO_UM for w in CANDIDATE_WIDTH_UM]


def fit_ramp(frames: Sequence[GateFrame], ramps: Iterable[Ramp] | None = None) -> tuple[Ramp, list[dict]]:
    """The ramp with the best mean min-MSE PSNR over the frames, and every tried ramp's mean (no gate: None)."""
    table = []
    for ramp in [None, *(ramps or candidates())]:
        table.append({"ramp": ramp, "psnr": float(np.mean([score(f, ramp) for f in frames]))})
    best = max((r for r in table if r["ramp"] is not None), key=lambda r: r["psnr"])
    return best["ramp"], table
