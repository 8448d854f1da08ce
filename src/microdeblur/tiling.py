"""Tile grid with overlap, raised-cosine blending and stitching (pure numpy).

Tiles are spread evenly so the last one ends at the image border (overlap >= requested). With
`align` > 1 every tile starts on a multiple of `align` (a network's total stride): each tile then sees the
image at the same phase of its strided pyramid as a whole-image pass would, so neighbouring tiles agree
where they overlap; the image is reflect-padded at the bottom/right up to a multiple of `align`.
Each tile's blend weight is the outer product of two 1-D weights built as a telescoping
partition of unity: 1 inside the tile, a raised-cosine ramp across the band it shares with a
neighbour (exactly 0 on the tile's inner edge pixel), no ramp on sides that touch the image
border. Sum of weights is therefore 1 everywhere (no 0/0), and stitching is sum(w*y) / sum(w).
Images smaller than a tile in a dimension are reflect-padded (centred) to the tile size.
Per-tile values (defocus, gate weights) go back to pixels with `upsample_tile_values`; `tile_contrast` says
which tiles hold enough detail to read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class Tile:
    """One tile: its slice into the padded image and its separable blend weights."""

    y: int
    x: int
    wy: np.ndarray  # (T,) float32 weight along rows
    wx: np.ndarray  # (T,) float32 weight along columns

    @property
    def slices(self) -> tuple[slice, slice]:
        """Source/destination slice into the padded image."""
        return slice(self.y, self.y + len(self.wy)), slice(self.x, self.x + len(self.wx))

    @cached_property
    def weight(self) -> np.ndarray:
        """(T, T) float32 blend weight window (built once per tile: grids are reused plane after plane)."""
        return np.outer(self.wy, self.wx)


@dataclass(frozen=True)
class TileGrid:
    """Sequence of tiles (row-major) plus what is needed to pad and crop the image."""

    shape: tuple[int, int]
    tile: int
    pad: tuple[tuple[int, int], tuple[int, int]]
    ys: np.ndarray
    xs: np.ndarray
    tiles: tuple[Tile, ...]

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape of the reflect-padded image the slices index into."""
        return tuple(n + a + b for n, (a, b) in zip(self.shape, self.pad))

    @property
    def rows_cols(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.ys), len(self.xs)

    @cached_property
    def weight_sum(self) -> np.ndarray:
        """Sum of all tile weights over the padded image (separable: outer product of 1-D sums)."""
        sy = np.zeros(self.padded_shape[0], dtype=np.float32)
        sx = np.zeros(self.padded_shape[1], dtype=np.float32)
        for t in self.tiles[:: len(self.xs)]:
            sy[t.slices[0]] += t.wy
        for t in self.tiles[: len(self.xs)]:
            sx[t.slices[1]] += t.wx
        return np.outer(sy, sx)

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __getitem__(self, i: int) -> Tile:
        return self.tiles[i]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> np.ndarray:
    """Evenly spread tile starts (multiples of `align`) so the first begins at 0 and the last ends at `length`.

    With align > 1, `length` and `tile` must be multiples of `align` (tile_grid pads the image to that)."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    if align > 1:
        if length % align or tile % align:
            raise ValueError(f"length {length} and tile {tile} must be multiples of align {align}")
        step = max(align, (tile - overlap) // align * align)  # largest aligned step keeping the overlap
        units = (length - tile) // align
        n = int(np.ceil((length - tile) / step)) + 1
        return (np.floor(np.linspace(0, units, n) + 0.5).astype(np.int64)) * align
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    return np.floor(np.linspace(0, length - tile, n) + 0.5).astype(np.int64)


def _raised_cosine(t: np.ndarray) -> np.ndarray:
    """0 -> 1 raised-cosine of t in [0, 1] (clipped outside)."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def axis_weights(starts: np.ndarray, tile: int) -> list[np.ndarray]:
    """1-D blend weights (one (tile,) array per start) summing to exactly 1 at every pixel."""
    n = len(starts)
    ends = starts + tile
    centres = (starts[1:] + ends[:-1]) / 2.0  # middle of each shared band
    bands = (ends[:-1] - starts[1:]).astype(np.float64)
    gaps = np.diff(centres)
    half = bands.copy()
    if n > 2:  # keep consecutive ramps apart where three tiles overlap
        half[:-1] = np.minimum(half[:-1], gaps)
        half[1:] = np.minimum(half[1:], gaps)
    half /= 2.0
    lo, hi = centres - half, centres + half - 1.0
    out = []
    for i, s in enumerate(starts):
        p = np.arange(s, s + tile, dtype=np.float64)
        up = _step(p, lo[i - 1], hi[i - 1]) if i > 0 else np.ones(tile)
        down = _step(p, lo[i], hi[i]) if i < n - 1 else np.zeros(tile)
        out.append((up - down).astype(np.float32))
    return out


def _step(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fraction handed to the next tile: 0 up to `lo`, raised-cosine to 1 at `hi`."""
    if hi < lo:  # tiles only touch: hard cut at the next tile's first pixel
        return (p >= lo).astype(np.float64)
    if hi == lo:  # one shared pixel: split it evenly
        return np.where(p > lo, 1.0, np.where(p == lo, 0.5, 0.0))
    return _raised_cosine((p - lo) / (hi - lo))


def _axis_pad(n: int, tile: int, align: int) -> tuple[int, int]:
    """Reflect padding (before, after) of one axis: centred up to a tile, else at the end up to a multiple of align."""
    if n < tile:
        return (tile - n) // 2, tile - n - (tile - n) // 2
    return 0, -n % align


def tile_grid(shape: tuple[int, int], tile: int = 128, overlap: int = 48, align: int = 1) -> TileGrid:
    """Grid of overlapping `tile`-px tiles covering an image of `shape` (H, W), starts on multiples of `align`."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, {tile}), got {overlap}")
    if align < 1 or tile % align:
        raise ValueError(f"align must be a positive divisor of the tile size {tile}, got {align}")
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise ValueError(f"empty image shape {shape}")
    pad = (_axis_pad(h, tile, align), _axis_pad(w, tile, align))
    ph, pw = h + sum(pad[0]), w + sum(pad[1])
    ys, xs = tile_starts(ph, tile, overlap, align), tile_starts(pw, tile, overlap, align)
    wys, wxs = axis_weights(ys, tile), axis_weights(xs, tile)
    tiles = tuple(Tile(int(y), int(x), wy, wx) for y, wy in zip(ys, wys) for x, wx in zip(xs, wxs))
    return TileGrid((h, w), tile, pad, ys, xs, tiles)


def extract_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(N, T, T) float32 tiles of a 2-D image, in grid order (reflect-padded when needed)."""
    if tuple(image.shape) != grid.shape:
        raise ValueError(f"image shape {image.shape} does not match grid shape {grid.shape}")
    img = np.asarray(image, dtype=np.float32)
    if any(a or b for a, b in grid.pad):
        img = np.pad(img, grid.pad, mode="reflect")
    view = sliding_window_view(img, (grid.tile, grid.tile))
    return view[grid.ys[:, None], grid.xs[None, :]].reshape(-1, grid.tile, grid.tile)


def stitch(tiles_out: np.ndarray, grid: TileGrid, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Blend (N, T, T) tile outputs into one float32 image: sum(w*y) / sum(w), cropped to `shape`."""
    if shape is not None and tuple(shape) != grid.shape:
        raise ValueError(f"shape {shape} does not match grid shape {grid.shape}")
    blend = Blend(grid)
    blend.add(0, np.reshape(tiles_out, (len(grid), grid.tile, grid.tile)))
    return blend.image()


class Blend:
    """A blend-stitch filled batch by batch: `add` the outputs of consecutive tiles, then `image` (the same sums,
    in the same order, as `stitch` of all of them at once)."""

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self.acc = np.zeros(grid.padded_shape, dtype=np.float32)

    def add(self, first: int, outputs: np.ndarray) -> None:
        """Add the (n, T, T) outputs of tiles first .. first+n-1 (grid order)."""
        outputs = np.asarray(outputs, dtype=np.float32)
        for t, y in zip(self.grid.tiles[first:first + len(outputs)], outputs):  # O(N) slice adds
            self.acc[t.slices] += t.weight * y

    def image(self) -> np.ndarray:
        """sum(w*y) / sum(w) over the unpadded image (float32)."""
        (t0, _), (l0, _) = self.grid.pad
        h, w = self.grid.shape
        return self.acc[t0:t0 + h, l0:l0 + w] / self.grid.weight_sum[t0:t0 + h, l0:l0 + w]


def tile_centres(grid: TileGrid, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tile centres (row, column pixel coordinates) mapped into an image of `shape`."""
    out = []
    for starts, (pad, _), n_work, n_out in zip((grid.ys, grid.xs), grid.pad, grid.shape, shape):
        c_work = starts + (grid.tile - 1) / 2.0 - pad
        out.append((c_work + 0.5) * (n_out / n_work) - 0.5)
    return out[0], out[1]


def _interp_matrix(n: int, centres: np.ndarray) -> np.ndarray:
    """(n, k) linear interpolation weights from k sorted centres to pixels 0..n-1 (ends held flat)."""
    eye = np.eye(len(centres), dtype=np.float64)
    pos = np.arange(n, dtype=np.float64)
    return np.stack([np.interp(pos, centres, e) for e in eye], axis=1).astype(np.float32)


def upsample_tile_values(values: np.ndarray, grid: TileGrid, shape: tuple[int, int]) -> np.ndarray:
    """Per-tile values (rows, cols) placed at tile centres, bilinearly interpolated to `shape`.

    NaN tiles are left out of the interpolation and stay NaN over the pixels they are the nearest tile of."""
    cy, cx = tile_centres(grid, shape)
    my, mx = _interp_matrix(shape[0], cy), _interp_matrix(shape[1], cx)
    ok = np.isfinite(values)
    if ok.all():
        return my @ values @ mx.T
    num = my @ np.where(ok, values, 0).astype(np.float32) @ mx.T
    den = my @ ok.astype(np.float32) @ mx.T
    nearest = ok[np.argmax(my, axis=1)][:, np.argmax(mx, axis=1)]
    return np.where(nearest, num / np.maximum(den, 1e-12), np.nan).astype(np.float32)


def tile_contrast(work: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Per-tile contrast of a raw-unit working-scale plane: std of the band-passed tile (Gaussian sigma 1 minus
    sigma 8 px: no pixel noise, no illumination gradient) over the tile's mean level (0 where that is 0)."""
    from scipy import ndimage as ndi

    work = np.asarray(work, dtype=np.float32)
    base = ndi.gaussian_filter(work, 8.0)
    detail = extract_tiles(ndi.gaussian_filter(work, 1.0) - base, grid).reshape(len(grid), -1)
    level = np.abs(extract_tiles(base, grid).reshape(len(grid), -1).mean(axis=1))
    spread = detail.std(axis=1)
    return np.where(level > 0, spread / np.maximum(level, np.finfo(np.float32).tiny), 0.0)
