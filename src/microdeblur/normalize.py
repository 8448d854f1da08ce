"""Per-frame percentile normalisation that can be reverted exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EXACT_PIXELS = 1024 * 768  # frames up to this size use every pixel for the percentiles


@dataclass(frozen=True)
class Normalizer:
    """Affine map x' = (x - lo) / (hi - lo) and its inverse, in float32."""

    lo: float
    hi: float

    def before(self, x: np.ndarray) -> np.ndarray:
        """Raw values → normalised float32."""
        return ((np.asarray(x, dtype=np.float32) - np.float32(self.lo)) / np.float32(self.hi - self.lo))

    def after(self, y: np.ndarray) -> np.ndarray:
        """Normalised values → raw scale, float32 (cast with io.to_dtype to restore the dtype)."""
        return np.asarray(y, dtype=np.float32) * np.float32(self.hi - self.lo) + np.float32(self.lo)


def _sample(frame: np.ndarray) -> np.ndarray:
    """The frame, strided-subsampled above EXACT_PIXELS; ValueError when it holds NaN or infinite values."""
    frame = np.asarray(frame)
    if frame.dtype.kind in "fc" and not np.isfinite(frame).all():
        raise ValueError(f"frame holds {np.count_nonzero(~np.isfinite(frame))} NaN or infinite value(s)")
    if frame.size > EXACT_PIXELS and frame.ndim >= 2:
        step = math.ceil(math.sqrt(frame.size / EXACT_PIXELS))
        frame = frame[..., ::step, ::step]
    return frame


PMIN, PMAX = 1.0, 99.8
NORMALIZATION = {"method": "frame-percentile", "pmin": PMIN, "pmax": PMAX}  # what weights record


def frame_normalizer(frame: np.ndarray, pmin: float = PMIN, pmax: float = PMAX) -> Normalizer:
    """Normalizer from the frame's pmin/pmax percentiles (strided subsample above EXACT_PIXELS)."""
    lo, hi = (float(v) for v in np.percentile(_sample(frame), [pmin, pmax]))
    span = 1e-6 * max(1.0, abs(lo))  # smallest span float32 still resolves at this magnitude
    return Normalizer(lo, hi if hi - lo > span else lo + span)


def frame_median(frame: np.ndarray) -> float:
    """Median of the frame, sampled as frame_normalizer samples it."""
    return float(np.median(_sample(frame)))
