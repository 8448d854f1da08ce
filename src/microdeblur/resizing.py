"""Resizing planes to and from the network's working pixel: `rescale`, the one resampler of training frames and
inference inputs (k x k binning, else anti-aliased bilinear), and `resize_to`, bilinear back to the input shape
(numpy, as torch's bilinear with align_corners=False)."""

from __future__ import annotations

from collections.abc import Sequence

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


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """(Y, X) of a frame after resizing by `scale` (rounded, at least 1 px)."""
    return max(1, round(shape[-2] * scale)), max(1, round(shape[-1] * scale))


def _bin(frame: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks (camera-style binning), float32."""
    h, w = frame.shape[0] // k, frame.shape[1] // k
    rows = sum(frame[i::k][:h] for i in range(k))
    return sum(rows[:, j::k][:, :w] for j in range(k)) / np.float32(k * k)


def rescale(plane: np.ndarray, scale: float) -> np.ndarray:
    """A 2-D plane resized by `scale` to float32, the one resampler of training frames and inference inputs: exact
    k x k binning when 1/scale is an integer k that divides the frame, else skimage's anti-aliased bilinear resize
    (imported only then: ~0.4 s)."""
    f = np.asarray(plane, dtype=np.float32)
    out = scaled_shape(f.shape, scale)
    if out == f.shape:
        return f
    k = round(1 / scale)
    if scale < 1 and (out[0] * k, out[1] * k) == f.shape:
        return _bin(f, k)
    from skimage.transform import resize

    return resize(f, out, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
