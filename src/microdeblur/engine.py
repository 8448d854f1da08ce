"""The array-level engine: tiled batched prediction and the `Deblurrer` (no paths, no files).

Per plane: float32 -> resize by `scale` (`resizing.rescale`, exactly as `prepare` resized the training frames) ->
per-frame percentile normalisation -> overlapping 128-px tiles -> encode in batches -> (source-code networks)
each tile's own code replaced by its neighbourhood's median -> decode with the target code -> blend-stitch
(`tiling.Blend`; encode and decode interleaved batch by batch, `Deblurrer.swap_parts`) -> revert to raw units
(with the weights' focus-plane ratios for the target dz when they hold them) -> resize back to the input shape
(`resize_to`, bilinear) -> when deblurring to focus with a focus gate, input + weight x correction (focus_gate.py)
-> cast to the input dtype (clip, round). Also here: per-tile defocus maps (`Deblurrer.focus_map`, from
`tiling.tile_contrast` and `tiling.upsample_tile_values`) and the checks every front end applies to a plane and to the weights (`check_finite`,
`require_calibration`).
The network itself is a runner on numpy tiles (`torch_runner.TorchRunner`, the reference, or
`onnx_runner.OnnxRunner`), so this module never imports torch. The path-level commands are in `inference.py`,
`interpolation.py` and `focus_runs.py`, batch-run bookkeeping in `batch_runs.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import calibration, log
from .errors import UserError
from .focus_gate import DEFAULT_RAMP_UM, Ramp, neighbourhood_median, neighbourhood_window, tile_defocus
from .model_config import ModelConfig
from .normalize import NormalizationSpec, Normalizer, frame_normalizer, frame_statistics, is_positive_intensity
from .resizing import SCALE_RANGE, rescale, resize_to, scale_ok
from .tiling import Blend, TileGrid, extract_tiles, stitch, tile_contrast, tile_grid, upsample_tile_values

IN_FOCUS_UM = 2.0  # |dz| within this counts as in focus in focus summaries
# Tile overlap (px at working scale), the narrowest band two tiles share on the stride-aligned grid. 16 px: on the
# shipped network a 1024x768 working plane needs 63 tiles instead of 88 at 32 px (-28 % time), for a mean seam 10 %
# larger and 0.01 dB less min-MSE PSNR than 32 px (docs/benchmarks.md "Seams", session 26). cli.py repeats it.
OVERLAP = 16
GRIDS_KEPT = 4  # tile grids kept per Deblurrer (one per plane shape; the oldest goes first)
BATCH_SIZE = 32  # tiles per network call on a CPU for the default ModelConfig's size (cpu_batch_size; shipped: 8)
# A tile's contrast: std of its band-passed working-scale plane (Gaussian sigma 1 px minus sigma 8 px) over the
# local mean level, raw units. Below this a tile shows nothing to estimate defocus from: measured 0.0026-0.0031
# on the simulator's empty background, >= 0.035 on every tile of the real yeast and THP-1 stacks at any plane
# (docs/reliability.md has the measurement and its command).
MIN_TILE_CONTRAST = 0.01
MIN_FOCUS_PX = 32  # a plane narrower than this at working scale is mostly padding in every tile: no estimate
NO_CONTRAST = (f"no tile has enough contrast, or the image is under {MIN_FOCUS_PX} px a side at working scale, "
               "to estimate defocus")
TTA_CHOICES = (1, 2, 4, 8)  # views averaged per tile: none, + mirror, + the other mirror and both, + transposes


# ---------------------------------------------------------------- tiled, batched prediction


def memory_ratio(config: ModelConfig) -> float:
    """How many times the default ModelConfig's largest feature map per tile `config`'s is."""
    return config.largest_feature_map / ModelConfig().largest_feature_map


def cpu_batch_size(config: ModelConfig) -> int:
    """Tiles per network call on a CPU: BATCH_SIZE for the default ModelConfig's size, proportionally fewer (at
    least 4; 8 for the shipped full-resolution network) for a larger largest feature map, so that a call's memory stays the same (ONNX Runtime keeps its
    peak allocation; docs/benchmarks.md "Deblur speed")."""
    return int(np.clip(BATCH_SIZE / memory_ratio(config), 4, BATCH_SIZE))


def predict_tiled(image2d: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], tile: int = 128,
                  overlap: int = OVERLAP, batch_size: int = BATCH_SIZE, align: int = 1) -> np.ndarray:
    """Run `fn` (tiles [n,1,T,T] float32 -> the same shape) on batches of tiles of a 2-D image and blend-stitch
    its outputs: frame_eval's tile-to-tile baselines through the Deblurrer's tiling and blending."""
    grid = tile_grid(image2d.shape, tile, overlap, align)
    tiles = extract_tiles(image2d, grid)[:, None]
    blend = Blend(grid)
    for i in range(0, len(tiles), batch_size):
        blend.add(i, fn(tiles[i:i + batch_size])[:, 0])
    return blend.image()


def dihedral(tiles: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
    """View k (0-7) of tiles [..., T, T] among the square's 8 symmetries (bit 0: mirror left-right, bit 1: mirror
    up-down, bit 2: transpose), or its inverse. Bright-field defocus blur has these symmetries, so each view is
    as valid an input as the tile itself."""
    steps = [lambda a: np.swapaxes(a, -1, -2)] * bool(k & 4) + [lambda a: a[..., ::-1]] * bool(k & 1) \
        + [lambda a: a[..., ::-1, :]] * bool(k & 2)
    for f in reversed(steps) if inverse else steps:
        tiles = f(tiles)
    return np.ascontiguousarray(tiles)


def averaged_views(fn: Callable[[np.ndarray], np.ndarray], views: int) -> Callable[[np.ndarray], np.ndarray]:
    """Tile function averaging `fn` over the first `views` dihedral views (each mapped back); fn itself for 1."""
    if views == 1:
        return fn
    return lambda tiles: sum(dihedral(fn(dihedral(tiles, k)), k, inverse=True) for k in range(views)) / views


# ---------------------------------------------------------------- the core object


@dataclass
class TileFocus:
    """Per-tile defocus of one plane (µm of the training microscope) and which tiles have enough contrast."""

    dz_um: np.ndarray  # [N]
    usable: np.ndarray  # [N] bool
    grid: TileGrid
    shape: tuple[int, int]


@dataclass
class Encoded:
    """Codes of every tile of one plane plus what is needed to decode it back to that plane."""

    identity: np.ndarray  # [N, Di]
    blur: np.ndarray  # [N, Db]
    grid: TileGrid
    norm: Normalizer
    shape: tuple[int, int]
    dtype: np.dtype
    median: float | None = None  # median of the working-scale plane (raw units), when focus ratios need it


class Deblurrer:
    """Tiled, batched encode/decode of whole planes with a network and its weights' metadata.

    `model` is a torch module (run by a TorchRunner on `device` at `precision`) or a runner itself (anything with
    `config`, `encode`, `decode` and `default_batch_size` on numpy tiles, e.g. an OnnxRunner)."""

    def __init__(self, model, meta, *, device="cpu", scale: float | None = None, overlap: int = OVERLAP,
                 batch_size: int | None = None, precision: str = "auto", focus_gate: bool | None = None,
                 tta: int = 1, smooth_codes: bool = True) -> None:
        if hasattr(model, "default_batch_size"):
            self.net = model
        else:
            from .torch_runner import TorchRunner

            self.net = TorchRunner(model, device, precision)
        self.config = self.net.config
        batch_size = self.net.default_batch_size() if batch_size is None else batch_size
        self.tile = int(self.config.tile)
        self.align = int(getattr(self.config, "downsample", 1))  # tiles start on the network's stride
        self._grids: dict[tuple[int, int], TileGrid] = {}
        if not 0 <= overlap < self.tile // 2:
            raise UserError(f"--overlap must be between 0 and {self.tile // 2 - 1} px, got {overlap}")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        if tta not in TTA_CHOICES:
            raise UserError(f"--tta must be one of {', '.join(map(str, TTA_CHOICES))} views, got {tta}")
        self.tta = int(tta)
        self.smooth_codes = bool(smooth_codes)  # source_codes: neighbourhood medians, else each tile's own code
        self.scale = float(meta.scale if scale is None else scale)
        if not scale_ok(self.scale):
            raise UserError(f"--scale must be in {SCALE_RANGE}, got {self.scale:g}")
        self.scale_given = scale is not None  # an explicit --scale wins over every input's pixel size
        from .weights import training_optics

        self.optics = training_optics(meta)  # the microscope the weights were trained for (calibration's µm)
        self.overlap, self.batch_size, self.meta = overlap, batch_size, meta
        self.spec = NormalizationSpec.of_weights(meta)
        self.pmin, self.pmax = self.spec.pmin, self.spec.pmax
        self.focus_ratios = self.spec.intensity
        self._median_warned = False
        focus = np.asarray(getattr(meta, "focus_blur_code", ()), dtype=np.float32).reshape(-1)
        self.target = self.as_code(focus) if focus.size == self.config.blur_dim else None
        cal = getattr(meta, "calibration", None)
        # the gate needs the blur code's dz calibration (1-D codes); without it the correction applies everywhere.
        # None: on when the weights carry a fitted ramp; True: that ramp, else DEFAULT_RAMP_UM
        fitted = Ramp.from_meta(getattr(meta, "focus_gate", None))
        use = fitted is not None if focus_gate is None else focus_gate
        if focus_gate and not (cal and self.config.blur_dim == 1):
            raise UserError("--focus-gate needs calibrated manifold-1d weights (a 1-D blur code calibrated to um)")
        self.gate_ramp = (fitted or Ramp(*DEFAULT_RAMP_UM)) if use and cal and self.config.blur_dim == 1 else None
        self.gate_calibration = cal if self.gate_ramp is not None else None

    # -- resizing per input

    def scale_for(self, pixel_um: float | None, source: Path | str = "the input") -> float:
        """Resize factor for an input with this pixel size (µm at the sample): an explicit scale, else
        pixel_um / the weights' working pixel size, else (pixel size unknown) the weights' scale."""
        if self.scale_given or not pixel_um or not self.optics.working_pixel_um:
            return self.scale
        scale = float(f"{pixel_um / self.optics.working_pixel_um:.10g}")  # 0.325 / 0.65 -> exactly 0.5
        if not scale_ok(scale):
            raise UserError(f"{source}: its pixel size {pixel_um:g} um gives a resize factor of {scale:g} to the "
                            f"network's {self.optics.working_pixel_um:g} um pixels, outside {SCALE_RANGE}; check "
                            "--pixel-size or the file's metadata, or give --scale")
        return scale

    def with_scale(self, scale: float) -> Deblurrer:
        """This Deblurrer resizing by `scale` (a shallow copy sharing the model and tile grids; self if equal)."""
        if scale == self.scale:
            return self
        if not scale_ok(scale):
            raise UserError(f"resize factor must be in {SCALE_RANGE}, got {scale:g}")
        other = copy.copy(self)
        other.scale = float(scale)
        return other

    # -- codes

    @staticmethod
    def as_code(code) -> np.ndarray:
        """Blur code(s) as float32, [Db] or [N, Db]."""
        return np.asarray(code, dtype=np.float32)

    def encode_tiles(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One network call: tiles [n,1,T,T] float32 -> (identity [n,Di], blur [n,Db])."""
        return self.net.encode(tiles)

    def decode_tiles(self, identity: np.ndarray, blur: np.ndarray) -> np.ndarray:
        """One network call: codes -> tiles [n,1,T,T] float32."""
        return self.net.decode(identity, blur)

    # -- planes

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        """The tile grid of a working-scale plane shape (built once per shape)."""
        shape = tuple(int(v) for v in shape)
        if shape not in self._grids:
            if len(self._grids) >= GRIDS_KEPT:  # a grid holds its tiles' blend weights (~9 MB at 1024x768)
                self._grids.pop(next(iter(self._grids)))
            self._grids[shape] = tile_grid(shape, self.tile, self.overlap, self.align)
        return self._grids[shape]

    def _working(self, plane: np.ndarray) -> tuple[np.ndarray, Normalizer, float | None]:
        """Resized, normalised float32 plane, its normaliser and (with focus ratios) its raw median."""
        work = rescale(plane, self.scale)
        if self.focus_ratios is None:
            norm, median = frame_normalizer(work, self.pmin, self.pmax), None
        else:
            norm, median = frame_statistics(work, self.pmin, self.pmax)
        return norm.before(work), norm, median

    def encode(self, plane: np.ndarray) -> Encoded:
        """Encode every tile of a 2-D plane (any dtype) in batches."""
        plane = np.asarray(plane)
        if plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
        return self._encode_working(plane, *self._working(plane))

    def _encode_working(self, plane: np.ndarray, work: np.ndarray, norm: Normalizer, median: float | None) -> Encoded:
        """`encode` of a plane already resized and normalised by `_working`."""
        grid = self.grid(work.shape)
        tiles = extract_tiles(work, grid)[:, None]
        identity, blur = self._encode_batches(tiles)
        sources = self.source_codes(blur, grid)
        if sources is not None:
            identity[:, -sources.shape[1]:] = sources
        return Encoded(identity, blur, grid, norm, plane.shape, plane.dtype, median)

    def _encode_batches(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(identities [N,Di], blur codes [N,Db]) of tiles, encoded batch by batch."""
        parts = [self.encode_tiles(tiles[i:i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def smooths_codes(self) -> bool:
        """Whether the decoder reads each tile's neighbourhood median code as its own (source_codes)."""
        return bool(self.config.source_code and self.smooth_codes and self.config.blur_dim == 1)

    def source_codes(self, blur: np.ndarray, grid: TileGrid) -> np.ndarray | None:
        """What a source-code decoder reads as each tile's own blur code: the median of the tiles' codes [N,Db]
        over its neighbourhood (focus_gate.neighbourhood_median; a tile's own code scatters around its
        neighbours' where the specimen's defocus does not); None for other networks or with smooth_codes off
        (a median per component of a vector code was never measured: own codes there)."""
        if not self.smooths_codes():
            return None
        return self._medians(blur, grid, 0, grid.rows_cols[0], grid.rows_cols[0])

    @staticmethod
    def _medians(codes: np.ndarray, grid: TileGrid, first: int, last: int, have: int) -> np.ndarray:
        """Flat [(last-first)*cols,Db] float32 neighbourhood medians (the whole grid's window) of tile rows
        first..last-1, from the codes [>=have*cols,Db] of the grid's first `have` rows; rows within window // 2 of
        `have` are final only when have is all rows. Reads just the rows it needs (a slab from `first` - window // 2)."""
        cols, window = grid.rows_cols[1], neighbourhood_window(grid.rows_cols)
        top = max(first - window[0] // 2, 0)  # above it the slab's edge padding equals the grid's
        slab = codes[top * cols:have * cols].reshape(have - top, cols, -1)
        medians = neighbourhood_median(slab, window)[first - top:last - top]
        return medians.reshape((last - first) * cols, -1).astype(np.float32)

    def read_codes(self, enc: Encoded) -> np.ndarray:
        """The blur codes [N,Db] the decoder takes as the tiles' own from `enc.identity` (the source codes of a
        source-code network, else the encoder's): decoding with them as the target reconstructs the plane."""
        return enc.identity[:, -self.config.source_dim:] if self.config.source_dim else enc.blur

    def decode(self, enc: Encoded, blur: np.ndarray, norm: Normalizer | None = None) -> np.ndarray:
        """Decode `enc`'s identity codes with blur code(s) [Db] or [N,Db] into a plane of the input shape."""
        from .image_write import to_dtype

        blur = self.as_code(blur)
        n = len(enc.identity)
        blur = np.broadcast_to(blur, (n, blur.shape[-1])) if blur.ndim == 1 else blur
        out = np.concatenate([self.decode_tiles(enc.identity[i:i + self.batch_size], blur[i:i + self.batch_size])
                              for i in range(0, n, self.batch_size)])
        plane = (norm or enc.norm).after(stitch(out[:, 0], enc.grid))
        return to_dtype(resize_to(plane, enc.shape), enc.dtype)

    def revert_for(self, enc: Encoded, dz: float | None) -> Normalizer:
        """Normaliser back to raw units for a decode targeting dz (um): focus ratios x median, else the input's."""
        if dz is None or self.focus_ratios is None:
            return enc.norm
        if not is_positive_intensity(enc.norm, enc.median):
            if not self._median_warned:
                log.warn("a plane holds values below zero or a median that is not positive (offset, signed or "
                         "background-subtracted data): its output keeps the input's intensity range")
                self._median_warned = True
            return enc.norm
        return self.focus_ratios.normalizer(dz, enc.median)

    def deblur_plane(self, plane2d: np.ndarray, blur_code=None, dz: float | None = 0.0) -> np.ndarray:
        """Plane with every tile's blur code replaced (default: the in-focus code); same shape and dtype.

        `dz` is the defocus (um) the code stands for (0 = in focus); it picks the intensity range of
        the output (see revert_for); None keeps the input plane's range. Deblurring to focus (no code given)
        applies the focus gate when the Deblurrer has one.
        """
        if blur_code is None and self.target is None:
            raise UserError("the weights hold no in-focus blur code; use --reference or --dz")
        gate = blur_code is None and self.gate_calibration is not None
        return self._swap(np.asarray(plane2d), self.target if blur_code is None else blur_code, dz, gate)

    def _swap(self, plane: np.ndarray, code, dz: float | None, gate: bool = False) -> np.ndarray:
        """swap_parts (encode, decode with `code`, stitch, revert for dz), cast to the plane's dtype; with `gate`,
        blended with the input by each tile's estimated defocus (focus_gate)."""
        from .image_write import to_dtype

        result, sources, grid = self.swap_parts(plane, code, dz)
        if gate:
            g = self.focus_gate(sources[:, 0], grid, plane.shape)
            result = plane.astype(np.float32) + g * (result - plane.astype(np.float32))
        return to_dtype(result, plane.dtype)

    def swap_parts(self, plane: np.ndarray, code, dz: float | None) -> tuple[np.ndarray, np.ndarray, TileGrid]:
        """(the plane decoded with `code`, float32 in raw units at the input shape, every tile's own blur code,
        the tile grid): what _swap blends and casts. One pass over the tiles, batch by batch: each batch is
        encoded (its own codes and identities kept), then every batch whose tiles' neighbourhoods are all encoded
        (source_codes; at once without them) is decoded with its target codes and blended in, and its identities
        are dropped. So each tile is encoded once and only a few rows of identities are held at any frame size
        (with --tta the other views are encoded as their batch is decoded)."""
        if plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
        work, norm, median = self._working(plane)
        grid = self.grid(work.shape)
        code = self.as_code(code)
        code = np.broadcast_to(code, (len(grid), code.shape[-1])) if code.ndim == 1 else code
        tiles = extract_tiles(work, grid)[:, None]
        n, (rows, cols), size = len(tiles), grid.rows_cols, self.batch_size
        codes = np.empty((n, self.config.blur_dim), np.float32)
        sources = np.empty_like(codes) if self.smooths_codes() else None
        kept: dict[int, np.ndarray] = {}
        blend = Blend(grid)
        half = neighbourhood_window(grid.rows_cols)[0] // 2  # rows below a tile row its sources need
        final = decoded = 0  # tiles whose decoder inputs are known; tiles decoded (a multiple of the batch size)
        for i in range(0, n, size):
            kept[i], codes[i:i + size] = self.encode_tiles(tiles[i:i + size])
            done = min(i + size, n)
            if sources is None:
                final = done
            elif done == n or done // cols - half > final // cols:
                have = rows if done == n else done // cols
                now = rows if done == n else have - half
                sources[final:now * cols] = self._medians(codes, grid, final // cols, now, have)
                final = now * cols
            while decoded < final and (decoded + size <= final or final == n):
                j = min(decoded + size, n)
                own = None if sources is None else sources[decoded:j]
                blend.add(decoded, self._decode_batch(tiles[decoded:j], kept.pop(decoded), code[decoded:j], own)[:, 0])
                decoded = j
        enc = Encoded(np.empty(0), np.empty(0), grid, norm, plane.shape, plane.dtype, median)
        result = resize_to(self.revert_for(enc, dz).after(blend.image()), plane.shape)
        return result, codes, grid

    def _decode_batch(self, batch: np.ndarray, identity: np.ndarray, code: np.ndarray,
                      sources: np.ndarray | None) -> np.ndarray:
        """Decoded tiles [n,1,T,T] of one batch from its kept identities (with --tta averaged over its views, the
        others encoded here), the decoder reading `sources` as the tiles' own codes where given."""

        def one_view(view: np.ndarray) -> np.ndarray:
            ids = identity if np.array_equal(view, batch) else self.encode_tiles(view)[0]  # an equal view encodes alike
            if sources is not None:
                ids[:, -sources.shape[1]:] = sources
            return self.decode_tiles(ids, code)

        return averaged_views(one_view, self.tta)(batch)

    def focus_gate(self, codes: np.ndarray, grid: TileGrid, shape: tuple[int, int]) -> np.ndarray:
        """Per-pixel weight of the correction (input shape): the Deblurrer's ramp of each tile's neighbourhood
        defocus (focus_gate.tile_defocus), interpolated between tile centres."""
        d = tile_defocus(self.gate_calibration, codes, grid.rows_cols)
        return upsample_tile_values(self.gate_ramp.weight(d), grid, shape)

    def mean_blur_code(self, plane2d: np.ndarray, source: str = "the reference") -> np.ndarray:
        """Mean blur code over the tiles of a plane (e.g. an in-focus reference image) with enough contrast to
        show their focus; a UserError naming `source` when none has."""
        enc, usable = self._encode_with_contrast(plane2d)
        if not usable.any():
            raise UserError(f"{source}: {NO_CONTRAST}")
        return enc.blur[usable].mean(0)

    def _encode_with_contrast(self, plane2d: np.ndarray) -> tuple[Encoded, np.ndarray]:
        """A 2-D plane's encoding and which tiles have the contrast to show their focus (MIN_TILE_CONTRAST, MIN_FOCUS_PX)."""
        plane = np.asarray(plane2d)
        if plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
        work, norm, median = self._working(plane)  # resized once: the codes and the contrast read the same plane
        enc = self._encode_working(plane, work, norm, median)
        usable = (tile_contrast(norm.after(work), enc.grid) >= MIN_TILE_CONTRAST) & (min(work.shape) >= MIN_FOCUS_PX)
        return enc, usable

    def focus_map(self, plane2d: np.ndarray, dz_factor: float = 1.0, signed: bool = True) -> tuple[np.ndarray, dict]:
        """Defocus map (dz um, float32, input size) from each tile's blur code, and its summary.

        The calibration gives µm of the training microscope; `dz_factor` (calibration.dz_factor) turns them into µm
        of the imaging microscope, in which the map, the median and the fraction within IN_FOCUS_UM are given.
        Tiles below MIN_TILE_CONTRAST are NaN (and NaN where they are the nearest tile) and left out of the
        median; a plane without any usable tile has a NaN median and fraction in focus. With `signed` False the
        map holds |dz| (see `focus_maps`)."""
        dmap, _, summary = self.focus_maps(plane2d, dz_factor, signed=signed)
        return dmap, summary

    def tile_focus(self, plane2d: np.ndarray) -> TileFocus:
        """Each tile's calibrated defocus (µm of the training microscope) and whether it has enough contrast to
        count, from one encoding of the plane."""
        cal = getattr(self.meta, "calibration", None)
        if not cal:
            raise UserError("focus maps need weights with a blur-code calibration")
        if self.config.blur_dim != 1:
            raise UserError("focus maps need a 1-D blur code (manifold-1d weights)")
        enc, usable = self._encode_with_contrast(plane2d)
        return TileFocus(calibration.code_to_dz(cal, enc.blur[:, 0]), usable, enc.grid, enc.shape)

    def focus_maps(self, plane2d: np.ndarray, dz_factor: float = 1.0, *, signed: bool = True,
                   confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """(defocus map, sign-confidence map or None, summary) of a plane; see `focus_map` and `maps_of`."""
        return self.maps_of(self.tile_focus(plane2d), dz_factor, signed=signed, confidence=confidence)

    def maps_of(self, tf: TileFocus, dz_factor: float = 1.0, *, signed: bool = True,
                confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """(defocus map, sign-confidence map or None, summary) of a plane's `tile_focus`.

        Unsigned (`signed` False): every tile's |dz| is interpolated (no false in-focus band where neighbouring
        tiles' signs differ) and the summary's median is `median_abs_dz_um` instead of `median_dz_um`. The
        confidence map (with `confidence`) holds each tile's `calibration.tile_sign_confidence`, interpolated like the dz map,
        NaN where the dz map is NaN."""
        rows, cols = tf.grid.rows_cols
        dz = (tf.dz_um * float(dz_factor)).astype(np.float32)
        if not signed:
            dz = np.abs(dz)
        dz = np.where(tf.usable, dz, np.nan).reshape(rows, cols)
        dmap = upsample_tile_values(dz, tf.grid, tf.shape)
        cmap = None
        if confidence:
            conf = calibration.tile_sign_confidence(self.meta.calibration, tf.dz_um)
            conf = np.where(tf.usable, conf, np.nan).astype(np.float32)
            cmap = upsample_tile_values(conf.reshape(rows, cols), tf.grid, tf.shape)
            cmap = np.where(np.isfinite(dmap), np.clip(cmap, 0.0, 1.0), np.nan).astype(np.float32)
        known = dmap[np.isfinite(dmap)]
        summary = {"median_dz_um" if signed else "median_abs_dz_um":
                   float(np.median(known)) if known.size else float("nan"),
                   "frac_in_focus": float(np.mean(np.abs(known) <= IN_FOCUS_UM)) if known.size else float("nan"),
                   "n_tiles": int(dz.size), "n_tiles_used": int(tf.usable.sum())}
        return dmap, cmap, summary


# ---------------------------------------------------------------- checks of planes and weights (every front end)


LARGEST_VALUE = 1e30  # float pixels beyond this overflow float32 sums (binning, percentile ranges); no camera gets near


def check_finite(plane: np.ndarray, source: Path | str, index: int | None = None) -> np.ndarray:
    """The plane, or a UserError naming its source (a file, a napari layer) and plane when it holds NaN, inf or
    values beyond ±LARGEST_VALUE."""
    if plane.dtype.kind == "f":
        limit = min(LARGEST_VALUE, float(np.finfo(plane.dtype).max))  # 1e30 is inf in float16
        bad = ~(np.abs(plane) <= limit)  # NaN compares False
        n = int(np.count_nonzero(bad))
        if n:
            where = "" if index is None else f" plane {index}"
            raise UserError(f"{source}{where}: {n} pixel(s) are NaN, infinite or beyond ±{LARGEST_VALUE:g}; "
                            "replace them (e.g. with the image median) before processing")
    return plane


def require_calibration(meta, weights: Path | None, what: str) -> dict:
    """The weights' calibration dict, or a UserError naming what needs it (`weights`: the file, None for the
    shipped default; only named in messages)."""
    cal = getattr(meta, "calibration", None)
    if not cal:
        name = weights or "the default weights"
        raise UserError(f"{what} needs calibrated manifold-1d weights; {name} has no blur-code calibration")
    if not cal.get("ok", True):
        log.warn(f"the calibration of {weights or 'the default weights'} is weak "
                 f"(Spearman rho {cal.get('spearman_rho', float('nan')):.2f}); dz values are unreliable")
    return cal
