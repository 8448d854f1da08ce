"""Resizing planes to and from the network's working pixel: `rescale` exactly as `prepare` resized the training
frames (k x k binning without importing prepare, else prepare's resampler), `resize_to` bilinear back to the input
shape (numpy, as torch's bilinear with align_corners=False)."""

from __future__ import annotations

import numpy as np

# resize factors to the working pixel: at 1/64 a 2048-px frame is 32 px (pixel sizes of 0.01 um at the shipped
# 0.65 um working pixel: below any bright-field optics); beyond 8 the network would see 8x-interpolated pixels
MIN_SCALE, MAX_SCALE = 1 / 64, 8.0
SCALE_RANGE = "[1/64, 8]"


def scale_ok(scale: float) -> bool:
    """A usable resize factor (NaN is not)."""
    return MIN_SCALE <= scale <= MAX_SCALE


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight) per output pixel of a pixel-centre-aligned linear resize along one
    axis (source positions below 0 clamp to 0; the upper index stops at the last pixel), as torch's bilinear
    interpolation with align_corners=False."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


def resize_to(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 plane to an exact shape (pixel-centre aligned, edges clamped; no antialiasing)."""
    plane = np.asarray(plane, dtype=np.float32)
    if plane.shape == tuple(shape):
        return plane
    r0, r1, wr = _linear_taps(plane.shape[0], int(shape[0]))
    c0, c1, wc = _linear_taps(plane.shape[1], int(shape[1]))
    rows = plane[r0] + wr[:, None] * (plane[r1] - plane[r0])
    return rows[:, c0] + wc * (rows[:, c1] - rows[:, c0])


def _binning_factor(shape: tuple[int, int], scale: float) -> int | None:
    """k when resizing `shape` by `scale` is exact k x k binning (prepare.rescale_frame's first case), else None."""
    k = round(1 / scale)
    out = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    return k if scale < 1 and k > 1 and (out[0] * k, out[1] * k) == tuple(shape) else None


def _bin(frame: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks, float32, with the very operations of prepare's binning (bit-identical, tested)."""
    h, w = frame.shape[0] // k, frame.shape[1] // k
    rows = sum(frame[i::k][:h] for i in range(k))
    return sum(rows[:, j::k][:, :w] for j in range(k)) / np.float32(k * k)


def rescale(plane: np.ndarray, scale: float) -> np.ndarray:
    """Plane at working scale, resized exactly as `prepare` resized the training frames."""
    plane = np.asarray(plane, dtype=np.float32)
    if scale == 1:
        return plane
    k = _binning_factor(plane.shape, scale)
    if k is not None:  # the common case (scale 0.5) without importing prepare, scipy and skimage (~0.4 s)
        return _bin(plane, k)
    from .prepare import rescale_frame

    return rescale_frame(plane, scale)
