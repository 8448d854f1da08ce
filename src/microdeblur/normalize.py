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
        """Normalised values → raw scale, float32 (cast with image_write.to_dtype to restore the dtype)."""
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
    return _spanned(lo, hi)


def _spanned(lo: float, hi: float) -> Normalizer:
    """Normalizer lo..hi, widened to the smallest span float32 still resolves at this magnitude."""
    span = 1e-6 * max(1.0, abs(lo))
    return Normalizer(lo, hi if hi - lo > span else lo + span)


def is_positive_intensity(norm: Normalizer, median: float | None) -> bool:
    """Whether a frame reads as transmitted light (median above 0, no negative values at its low percentile), the
    only frames the intensity model's ratios to the median can revert; offset or signed data keep their range."""
    return median is not None and median > 0 and norm.lo >= 0


def frame_statistics(frame: np.ndarray, pmin: float = PMIN, pmax: float = PMAX) -> tuple[Normalizer, float]:
    """`frame_normalizer` and the frame's median, both from one pass over the same sample of the frame."""
    lo, hi, median = (float(v) for v in np.percentile(_sample(frame), [pmin, pmax, 50.0]))
    return _spanned(lo, hi), median


@dataclass(frozen=True)
class IntensityModel:
    """In-focus (and any dz) intensity range of a frame as ratios to its median: raw lo = lo(dz)·median,
    hi = hi(dz)·median, linear in dz between the fitted levels. How a decode at dz returns to raw units."""

    dz_um: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        z, lo, hi = (np.asarray(v, np.float64) for v in (self.dz_um, self.lo, self.hi))
        ok = (z.size > 0 and z.size == lo.size == hi.size and np.all(np.diff(z) > 0)
              and np.all(np.isfinite(np.concatenate([z, lo, hi]))) and np.all(hi > lo))
        if not ok:
            raise ValueError("an intensity model needs increasing dz levels and finite lo < hi ratios, one per level")

    @classmethod
    def fit(cls, samples: dict[float, list[tuple[float, float]]]) -> IntensityModel:
        """Median over frames of (lo/median, hi/median) per dz level (training)."""
        levels = sorted(samples)
        return cls(tuple(levels), tuple(float(np.median([s[0] for s in samples[k]])) for k in levels),
                   tuple(float(np.median([s[1] for s in samples[k]])) for k in levels))

    def normalizer(self, dz: float, median: float) -> Normalizer:
        """The raw-units map of a frame with this median decoded at dz (um)."""
        return Normalizer(float(np.interp(dz, self.dz_um, self.lo)) * median, float(np.interp(dz, self.dz_um, self.hi)) * median)

    def to_dict(self) -> dict:
        """JSON form stored in the weights (`normalization.focus_ratios`)."""
        return {"dz_um": list(self.dz_um), "lo": list(self.lo), "hi": list(self.hi)}


@dataclass(frozen=True)
class NormalizationSpec:
    """What the weights record about intensities: per-frame percentiles in, the intensity model out."""

    method: str = "frame-percentile"
    pmin: float = PMIN
    pmax: float = PMAX
    intensity: IntensityModel | None = None

    @classmethod
    def of_weights(cls, meta) -> NormalizationSpec:
        """The spec a weights file's metadata records, or a UserError naming what is wrong with it."""
        from .errors import UserError

        try:
            return cls.from_dict(getattr(meta, "normalization", None))
        except ValueError as e:
            raise UserError(f"the weights' normalization metadata is inconsistent: {e}") from None

    @classmethod
    def from_dict(cls, value: dict | None) -> NormalizationSpec:
        """Read `WeightsMeta.normalization` (files written by 0.1 and 0.2 alike); ValueError when malformed."""
        d = dict(value or {})
        method = d.get("method", "frame-percentile")
        if method != "frame-percentile":
            raise ValueError(f"unknown normalisation method {method!r}")
        pmin, pmax = float(d.get("pmin", PMIN)), float(d.get("pmax", PMAX))
        if not (0.0 <= pmin < pmax <= 100.0):
            raise ValueError(f"normalisation percentiles must satisfy 0 <= pmin < pmax <= 100, got {pmin}, {pmax}")
        ratios = d.get("focus_ratios")
        intensity = None
        if ratios:
            try:
                intensity = IntensityModel(*(tuple(float(v) for v in ratios[k]) for k in ("dz_um", "lo", "hi")))
            except (KeyError, TypeError) as e:
                raise ValueError(f"focus_ratios needs dz_um, lo and hi lists ({type(e).__name__})") from None
        return cls(method, pmin, pmax, intensity)

    def to_dict(self) -> dict:
        """JSON form for the weights."""
        d = {"method": self.method, "pmin": self.pmin, "pmax": self.pmax}
        return d | ({"focus_ratios": self.intensity.to_dict()} if self.intensity is not None else {})

    def before(self, frame: np.ndarray) -> tuple[np.ndarray, Normalizer]:
        """Normalised float32 frame and its own normaliser (the way back when no intensity model applies)."""
        norm = frame_normalizer(frame, self.pmin, self.pmax)
        return norm.before(frame), norm
