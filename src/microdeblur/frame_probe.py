"""Whole-frame validation during training (`train --val-frames`): the export is picked by what the model card scores.

Tile probes rank checkpoints badly on whole frames (docs/model-card.md). This probe runs held-out simulated days'
defocused frames (a central crop, several tiles wide) through the real `deblur` path, tiling, blending and
intensity return included, and scores them against the in-focus frame after the min-MSE fit (CSBDeep's
convention). The selection score is the mean over |dz| bins of the gain over the blurry input, so each bin weighs
the same whatever the number of frames in it. For a 1-D blur code tied to dz (manifold-1d) the probe also scores
what ships: the output blended by the focus gate whose ramp fits these frames best, each tile's defocus read
through the tie (code = dz / dz_scale) instead of a calibration that does not exist yet (GATED_SCORE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .calibration import REFERENCE
from .eval_protocol import spread
from .focus_gate import fit_ramp, gate_frame, score
from .frame_eval import FRAME_BINS, bin_name, find_frame_days
from .image_write import to_dtype
from .metrics import minmse_scores
from .normalize import frame_normalizer

SCORE = "val_frame_gain"
GATED_SCORE = "val_frame_gated_gain"


@dataclass(frozen=True)
class ProbeFrame:
    """One defocused crop, its normalised in-focus crop, its dz (um, its own microscope) and camera pixel size."""

    plane: np.ndarray
    truth: np.ndarray
    dz_um: float
    pixel_um: float | None
    input_psnr: float


@dataclass(frozen=True)
class FrameProbe:
    frames: tuple[ProbeFrame, ...]

    @classmethod
    def build(cls, folders: Sequence[Path], per_day: int = 8, crop_um: float = 330.0, dz_max: float = 15.0) -> FrameProbe:
        """`per_day` defocused frames with 0 < |dz| <= dz_max (um) spread over each day, cropped to a central
        square of crop_um (about 4 x 4 tiles of 128 working pixels at 0.65 um)."""
        frames = []
        for day in find_frame_days(folders):
            side = int(round(crop_um / (day.pixel_um or REFERENCE.pixel_um)))
            ref = _centre(day.plane(day.focus), side).astype(np.float32)
            truth = frame_normalizer(ref).before(ref)
            sel = [i for i, dz in enumerate(day.dz) if 0 < abs(dz) <= dz_max + 1e-9]
            for i in np.asarray(sel)[spread(len(sel), per_day)]:
                plane = _centre(day.plane(int(i)), side)
                frames.append(ProbeFrame(plane, truth, float(day.dz[i]), day.pixel_um,
                                         minmse_scores(plane.astype(np.float32), truth)[0]))
        return cls(tuple(frames))

    def metrics(self, deblurrer, tie_um: float | None = None) -> dict[str, float]:
        """Mean min-MSE PSNR of input and output and the bin-balanced mean gain (SCORE) of this Deblurrer's ungated
        output; with `tie_um` (the dz that code 1 stands for), also the bin-balanced gain after the best-fitting focus
        gate (GATED_SCORE) and that gate's ramp."""
        gains: dict[str, list[float]] = {}
        outs, ins, gated = [], [], []
        with torch.inference_mode():
            for f in self.frames:
                db = deblurrer.with_scale(deblurrer.scale_for(f.pixel_um))
                if tie_um:
                    gated.append(gate_frame(db, f.plane, f.truth, f.dz_um, tie_calibration(tie_um)))
                y = gated[-1].corrected if tie_um else db.swap_parts(f.plane, db.target, 0.0)[0]
                out = minmse_scores(to_dtype(y, f.plane.dtype).astype(np.float32), f.truth)[0]  # as deblur writes
                outs.append(out)
                ins.append(f.input_psnr)
                gains.setdefault(_bin(f.dz_um), []).append(out - f.input_psnr)
        per_bin = {f"{SCORE}_{k}": float(np.mean(v)) for k, v in gains.items()}
        row = {"val_frame_minmse": float(np.mean(outs)), "val_frame_input": float(np.mean(ins)),
               SCORE: _balanced(gains), **per_bin}
        if gated:
            ramp, _ = fit_ramp(gated)
            gated_gains: dict[str, list[float]] = {}
            for gf, f in zip(gated, self.frames):
                gated_gains.setdefault(_bin(f.dz_um), []).append(score(gf, ramp) - f.input_psnr)
            row |= {GATED_SCORE: _balanced(gated_gains), "val_gate_lo_um": ramp.lo_um, "val_gate_hi_um": ramp.hi_um}
        return row


def tie_calibration(tie_um: float) -> dict:
    """The calibration a dz tie implies before one is fitted: code c stands for c x tie_um (linear, signed)."""
    return {"kind": "signed", "knots": {"code": [-1.0, 1.0], "dz_um": [-tie_um, tie_um]}}


def _bin(dz_um: float) -> str:
    lo, hi = next((lo, hi) for lo, hi in FRAME_BINS if lo < abs(dz_um) <= hi)
    return bin_name(lo, hi)


def _balanced(gains: dict[str, list[float]]) -> float:
    """Mean over bins of the mean gain in each bin (every bin weighs the same)."""
    return float(np.mean([np.mean(v) for v in gains.values()]))


def _centre(plane: np.ndarray, side: int) -> np.ndarray:
    """The central side x side crop of a plane (the whole plane along axes shorter than side)."""
    h, w = plane.shape
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(plane[y:y + side, x:x + side])
