"""Deblur, interpolate and focus maps on whole images and stacks (tiled, batched, streamed).

Per plane: float32 -> resize by `scale` (prepare.rescale_frame, exactly as training) ->
per-frame percentile normalisation -> overlapping 128-px tiles -> encode in batches ->
replace the blur code -> decode -> blend-stitch -> revert to raw units (with the weights'
focus-plane ratios for the target dz when they hold them) -> resize back to the input shape
(bilinear) -> cast to the input dtype (clip, round).
"""

from __future__ import annotations

import copy
import csv as csvlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import calibration, log
from .errors import UserError, one_line
from .io import TIFF_SUFFIXES, Outputs, Shard, parse_shard
from .normalize import Normalizer, NormalizationSpec, frame_median, frame_normalizer
from .tiling import TileGrid, extract_tiles, stitch, tile_grid

IN_FOCUS_UM = 2.0  # |dz| within this counts as in focus in focus summaries
# Tile overlap (px at working scale). With tiles aligned to the network's stride, 32 px keeps the difference to a
# whole-image pass at a quarter of what 48 px unaligned gave, with 25 % fewer tiles (docs/benchmarks.md, issue 14).
OVERLAP = 32
BATCH_SIZE = 32
# A tile's contrast: std of its band-passed working-scale plane (Gaussian sigma 1 px minus sigma 8 px) over the
# local mean level, raw units. Below this a tile shows nothing to estimate defocus from: measured 0.0026-0.0031
# on the simulator's empty background, >= 0.035 on every tile of the real yeast and THP-1 stacks at any plane
# (docs/reliability.md has the measurement and its command).
MIN_TILE_CONTRAST = 0.01
NO_CONTRAST = "no tile has enough contrast to estimate defocus"


# ---------------------------------------------------------------- model preparation


def resize_to(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 plane to an exact shape (pixel-centre aligned, edges clamped)."""
    if plane.shape == tuple(shape):
        return plane
    t = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


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


# ---------------------------------------------------------------- the core object


@dataclass
class Encoded:
    """Codes of every tile of one plane plus what is needed to decode it back to that plane."""

    identity: torch.Tensor  # [N, Di]
    blur: torch.Tensor  # [N, Db]
    grid: TileGrid
    norm: Normalizer
    shape: tuple[int, int]
    dtype: np.dtype
    median: float | None = None  # median of the working-scale plane (raw units), when focus ratios need it


class Deblurrer:
    """Tiled, batched encode/decode of whole planes with a loaded model and its metadata."""

    def __init__(self, model: nn.Module, meta, *, device: torch.device | str = "cpu", scale: float | None = None,
                 overlap: int = OVERLAP, batch_size: int = BATCH_SIZE) -> None:
        self.device = torch.device(device)
        self.tile = int(model.config.tile)
        self.align = int(getattr(model.config, "downsample", 1))  # tiles start on the network's stride
        self._grids: dict[tuple[int, int], TileGrid] = {}
        if not 0 <= overlap < self.tile // 2:
            raise UserError(f"--overlap must be between 0 and {self.tile // 2 - 1} px, got {overlap}")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        self.scale = float(meta.scale if scale is None else scale)
        if not 0 < self.scale <= 8:
            raise UserError(f"--scale must be in (0, 8], got {self.scale:g}")
        self.overlap, self.batch_size, self.meta = overlap, batch_size, meta
        self.model = copy.deepcopy(model).eval().to(self.device)
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.spec = normalization_spec(meta)
        self.pmin, self.pmax = self.spec.pmin, self.spec.pmax
        self.focus_ratios = self.spec.intensity
        self._median_warned = False
        focus = np.asarray(getattr(meta, "focus_blur_code", ()), dtype=np.float32).reshape(-1)
        self.target = self.as_code(focus) if focus.size == model.config.blur_dim else None

    # -- codes

    def as_code(self, code) -> torch.Tensor:
        """Blur code(s) as a float32 tensor on the device, [Db] or [N, Db]."""
        if isinstance(code, torch.Tensor):
            return code.to(self.device, torch.float32)
        return torch.as_tensor(np.asarray(code, dtype=np.float32), device=self.device)

    def encode_tiles(self, tiles: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call: tiles [n,1,T,T] float32 -> (identity [n,Di], blur [n,Db])."""
        x = torch.from_numpy(tiles).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        codes = self.model.encode(x)
        return codes.identity, codes.blur

    def decode_tiles(self, identity: torch.Tensor, blur: torch.Tensor) -> np.ndarray:
        """One network call: codes -> tiles [n,1,T,T] float32 on the host."""
        return self.model.decode(identity, blur).float().cpu().numpy()

    # -- planes

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        """The tile grid of a working-scale plane shape (built once per shape)."""
        shape = tuple(int(v) for v in shape)
        if shape not in self._grids:
            self._grids[shape] = tile_grid(shape, self.tile, self.overlap, self.align)
        return self._grids[shape]

    def _working(self, plane: np.ndarray) -> tuple[np.ndarray, Normalizer, float | None]:
        """Resized, normalised float32 plane, its normaliser and (with focus ratios) its raw median."""
        work = rescale(plane, self.scale)
        norm = frame_normalizer(work, self.pmin, self.pmax)
        median = frame_median(work) if self.focus_ratios is not None else None
        return norm.before(work), norm, median

    @torch.inference_mode()
    def encode(self, plane: np.ndarray) -> Encoded:
        """Encode every tile of a 2-D plane (any dtype) in batches."""
        plane = np.asarray(plane)
        if plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
        work, norm, median = self._working(plane)
        grid = self.grid(work.shape)
        tiles = extract_tiles(work, grid)[:, None]
        parts = [self.encode_tiles(tiles[i:i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)]
        identity = torch.cat([p[0] for p in parts])
        blur = torch.cat([p[1] for p in parts])
        return Encoded(identity, blur, grid, norm, plane.shape, plane.dtype, median)

    def encode_plane(self, plane2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, TileGrid]:
        """(identity codes [N,Di], blur codes [N,Db], tile grid) of a 2-D plane."""
        enc = self.encode(plane2d)
        return enc.identity.cpu().numpy(), enc.blur.cpu().numpy(), enc.grid

    @torch.inference_mode()
    def decode(self, enc: Encoded, blur: torch.Tensor | np.ndarray, norm: Normalizer | None = None) -> np.ndarray:
        """Decode `enc`'s identity codes with blur code(s) [Db] or [N,Db] into a plane of the input shape."""
        from .io import to_dtype

        blur = self.as_code(blur)
        n = len(enc.identity)
        blur = blur.expand(n, -1) if blur.ndim == 1 else blur
        out = np.concatenate([self.decode_tiles(enc.identity[i:i + self.batch_size], blur[i:i + self.batch_size])
                              for i in range(0, n, self.batch_size)])
        plane = (norm or enc.norm).after(stitch(out[:, 0], enc.grid))
        return to_dtype(resize_to(plane, enc.shape), enc.dtype)

    def revert_for(self, enc: Encoded, dz: float | None) -> Normalizer:
        """Normaliser back to raw units for a decode targeting dz (um): focus ratios x median, else the input's."""
        if dz is None or self.focus_ratios is None:
            return enc.norm
        if not (enc.median is not None and enc.median > 0):
            if not self._median_warned:
                log.warn("a plane's median is not positive: its output keeps the input's intensity range")
                self._median_warned = True
            return enc.norm
        return self.focus_ratios.normalizer(dz, enc.median)

    def deblur_plane(self, plane2d: np.ndarray, blur_code=None, dz: float | None = 0.0) -> np.ndarray:
        """Plane with every tile's blur code replaced (default: the in-focus code); same shape and dtype.

        `dz` is the defocus (um) the code stands for (0 = in focus); it picks the intensity range of
        the output (see revert_for); None keeps the input plane's range.
        """
        if blur_code is None and self.target is None:
            raise UserError("the weights hold no in-focus blur code; use --reference or --dz")
        return self._swap(np.asarray(plane2d), self.target if blur_code is None else blur_code, dz)

    @torch.inference_mode()
    def _swap(self, plane: np.ndarray, code, dz: float | None) -> np.ndarray:
        """encode -> decode batch by batch (no plane-wide identity kept), stitched and reverted for dz."""
        from .io import to_dtype

        if plane.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {plane.shape}")
        work, norm, median = self._working(plane)
        grid = self.grid(work.shape)
        tiles = extract_tiles(work, grid)[:, None]
        code = self.as_code(code)
        code = code.expand(len(tiles), -1) if code.ndim == 1 else code
        out = np.concatenate([self.decode_tiles(self.encode_tiles(tiles[i:i + self.batch_size])[0],
                                                code[i:i + self.batch_size])
                              for i in range(0, len(tiles), self.batch_size)])
        enc = Encoded(torch.empty(0), torch.empty(0), grid, norm, plane.shape, plane.dtype, median)
        result = self.revert_for(enc, dz).after(stitch(out[:, 0], grid))
        return to_dtype(resize_to(result, plane.shape), plane.dtype)

    def mean_blur_code(self, plane2d: np.ndarray) -> np.ndarray:
        """Mean blur code over all tiles of a plane (e.g. of an in-focus reference image)."""
        return self.encode(plane2d).blur.mean(0).cpu().numpy()

    def focus_map(self, plane2d: np.ndarray) -> tuple[np.ndarray, dict]:
        """Defocus map (dz um, float32, input size) from each tile's blur code, and its summary.

        Tiles below MIN_TILE_CONTRAST are NaN (and NaN where they are the nearest tile) and left out of the
        median; a plane without any usable tile has a NaN median and fraction in focus."""
        cal = getattr(self.meta, "calibration", None)
        if not cal:
            raise UserError("focus maps need weights with a blur-code calibration")
        enc = self.encode(plane2d)
        if enc.blur.shape[1] != 1:
            raise UserError("focus maps need a 1-D blur code (manifold-1d weights)")
        rows, cols = enc.grid.rows_cols
        dz = calibration.code_to_dz(cal, enc.blur[:, 0].cpu().numpy()).astype(np.float32)
        usable = tile_contrast(rescale(np.asarray(plane2d), self.scale), enc.grid) >= MIN_TILE_CONTRAST
        dz = np.where(usable, dz, np.nan).reshape(rows, cols)
        dmap = upsample_tile_values(dz, enc.grid, enc.shape)
        known = dmap[np.isfinite(dmap)]
        summary = {"median_dz_um": float(np.median(known)) if known.size else float("nan"),
                   "frac_in_focus": float(np.mean(np.abs(known) <= IN_FOCUS_UM)) if known.size else float("nan"),
                   "n_tiles": int(dz.size), "n_tiles_used": int(usable.sum())}
        return dmap, summary


def normalization_spec(meta) -> NormalizationSpec:
    """The weights' typed normalisation spec, or a UserError naming what is wrong with it."""
    try:
        return NormalizationSpec.from_dict(getattr(meta, "normalization", None))
    except ValueError as e:
        raise UserError(f"the weights' normalization metadata is inconsistent: {e}") from None


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


# ---------------------------------------------------------------- checks shared by the commands


def _infos(paths: Iterable[Path]) -> list:
    """ImageInfo of every input, refusing channel axes, other than 2-D/one-plane-axis arrays, non-real pixels."""
    from .io import read_info

    infos = []
    for p in paths:
        info = read_info(p)
        channel = next((a for a in "CS" if a in info.axes), None)
        if channel is not None:
            raise UserError(f"{p}: has a channel axis {channel} (shape {info.shape}, axes {info.axes}); only "
                            "single-channel bright-field images are deblurred: split the channels first "
                            "(e.g. Fiji: Image > Color > Split Channels) and pass the bright-field one")
        if len(info.shape) not in (2, 3):
            raise UserError(f"{p}: cannot interpret an array of shape {info.shape} (axes {info.axes}); "
                            "accepted are 2-D images (YX) and stacks with one plane axis (ZYX or TYX)")
        if info.dtype.kind not in "uif":
            kind = "binary (bool)" if info.dtype.kind == "b" else f"{info.dtype}"
            raise UserError(f"{p}: {kind} pixels are not supported; bright-field images hold real intensities "
                            "(integer or float)")
        infos.append(info)
    return infos


def _finite(plane: np.ndarray, path: Path, index: int | None = None) -> np.ndarray:
    """The plane, or a UserError naming the file (and plane) when it holds NaN, inf or values beyond float32."""
    if plane.dtype.kind == "f":
        bad = ~np.isfinite(plane)
        if plane.dtype.itemsize > 4:
            bad |= np.abs(np.nan_to_num(plane)) > np.finfo(np.float32).max
        n = int(np.count_nonzero(bad))
        if n:
            where = "" if index is None else f" plane {index}"
            raise UserError(f"{path}{where}: {n} pixel(s) are NaN, infinite or beyond float32; "
                            "replace them (e.g. with the image median) before processing")
    return plane


def _require_finite(option: str, value: float | None) -> None:
    """UserError naming the option when a given number is NaN or infinite."""
    if value is not None and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {value}")


def _warn_half(info) -> None:
    """Warn that a float16 input is computed and written as float32."""
    if info.dtype == np.float16:
        log.warn(f"{info.path}: float16 output is written as float32 (TIFF writers here have no half floats)")


def _is_folder_name(output: str | os.PathLike) -> bool:
    """True when the output as typed ends with a path separator ('deblurred/'): always a folder."""
    return isinstance(output, str) and output.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))


def _single_plane_info(path: Path, what: str):
    """ImageInfo of an input that must be a single 2-D image."""
    info = _infos([path])[0]
    if len(info.shape) != 2:
        raise UserError(f"{path}: {what} must be a single 2-D image, got axes {info.axes} shape {info.shape}")
    return info


def _output_paths(files: list[Path], output: Path, name_for: Callable[[Path], str],
                  folder: bool = False) -> list[Path]:
    """Output path per input: `output` itself for one input (unless a folder), else names inside it."""
    from .io import check_output_names

    check_output_names(output)
    if len(files) == 1 and not folder and not output.is_dir():
        return [output]
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is a file; " + ("the output ends with a path separator, so it must be a folder"
                                                     if folder else "several inputs need an output folder"))
    if not folder and not output.exists() and output.suffix.lower() in TIFF_SUFFIXES + (".png",):
        raise UserError(f"{output}: looks like a file name, but {len(files)} inputs need an output folder")
    outs = [output / name_for(f) for f in files]
    seen: dict[Path, Path] = {}
    for f, o in zip(files, outs):
        if o in seen:
            raise UserError(f"{f} and {seen[o]} would both be written to {o}; rename one or run them separately")
        seen[o] = f
    return outs


def _check_outputs(outs: Sequence[Path], files: Sequence[Path], overwrite: bool) -> None:
    """Every output must be writable under the rules (no input, no folder, overwrite needed)."""
    from .io import check_output_path

    for o in outs:
        check_output_path(o, overwrite, files)


def _load(weights: Path | None, device: str):
    """(model, meta, torch device) for the requested weights and device."""
    from .devices import resolve_device
    from .weights import load_weights

    dev = resolve_device(device)
    model, meta = load_weights(weights, device=str(dev))
    return model, meta, dev


def _require_calibration(meta, weights: Path | None, what: str) -> dict:
    """The weights' calibration dict, or a UserError naming what needs it."""
    cal = getattr(meta, "calibration", None)
    if not cal:
        name = weights or "the default weights"
        raise UserError(f"{what} needs calibrated manifold-1d weights; {name} has no blur-code calibration")
    if not cal.get("ok", True):
        log.warn(f"the calibration of {weights or 'the default weights'} is weak "
                 f"(Spearman rho {cal.get('spearman_rho', float('nan')):.2f}); dz values are unreliable")
    return cal


def _dz_code(cal: dict, dz: np.ndarray | float) -> np.ndarray:
    """Blur code(s) at dz (um), warning when dz lies outside the calibrated range."""
    lo, hi = calibration.dz_range(cal)
    dzs = np.atleast_1d(np.asarray(dz, dtype=np.float64))
    probe = np.abs(dzs) if cal["kind"] == "abs" else dzs
    if np.any(probe < lo - 1e-9) or np.any(probe > hi + 1e-9):
        log.warn(f"dz outside the calibrated range [{lo:g}, {hi:g}] um is clipped to it")
    return calibration.dz_to_code(cal, dz)


def _display(plane: np.ndarray) -> np.ndarray:
    """uint8 rendering of a plane (1st-99.8th percentile stretch)."""
    n = frame_normalizer(plane)
    return (np.clip(n.before(plane), 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_png(path: Path, data: np.ndarray) -> None:
    """Write a 2-D array as PNG."""
    import imageio.v3 as iio

    iio.imwrite(path, data, extension=".png")


# ---------------------------------------------------------------- batch runs: shards, skip-existing, manifest

MANIFEST_COLUMNS = ("input", "output", "status", "seconds", "message")
FOCUS_COLUMNS = ("file", "plane", "median_dz_um", "frac_in_focus", "n_tiles", "n_tiles_used")


@dataclass
class Batch:
    """How a many-input run is split and kept: one shard of the inputs, finished outputs skipped, a manifest."""

    shard: Shard | str | None = None
    skip_existing: bool = False
    manifest: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.shard, str):
            self.shard = parse_shard(self.shard)
        self.manifest = None if self.manifest is None else Path(self.manifest)

    @property
    def active(self) -> bool:
        """Batch mode: every output is committed when complete; a failing input is recorded and the run goes on."""
        return self.shard is not None or self.skip_existing or self.manifest is not None


@dataclass
class ManifestRow:
    """What happened to one input of a batch run."""

    input: Path
    output: Path
    status: str  # written | skipped | failed
    seconds: float = 0.0
    message: str = ""


def _has_header(path: Path, columns: Sequence[str]) -> bool:
    """True when the file's first line is exactly this CSV header (a file this command wrote)."""
    try:
        with open(path, newline="") as fh:
            return next(csvlib.reader(fh), None) == list(columns)
    except (OSError, UnicodeDecodeError, csvlib.Error):
        return False


def _check_replaceable(path: Path, columns: Sequence[str], files: Sequence[Path], overwrite: bool, what: str) -> None:
    """A run log (manifest, or a CSV carried over) may replace an earlier one of its kind; anything else needs
    --overwrite."""
    from .io import check_output_path

    if Path(path).is_file() and not overwrite and not _has_header(Path(path), columns):
        raise UserError(f"{path}: exists and is not a {what} written by microdeblur (use --overwrite to replace it)")
    check_output_path(path, True, files)


def _shard_pairs(files: list[Path], outs: list[Path], batch: Batch, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) of this shard, after the checks: outputs must be writable unless skipped."""
    from .io import check_output_path, shard_indices

    if batch.skip_existing and overwrite:
        raise UserError("--skip-existing and --overwrite cannot be combined (keep finished outputs, or replace them)")
    idx = shard_indices(files, batch.shard) if batch.shard is not None else range(len(files))
    pairs = [(files[i], outs[i]) for i in idx]
    for _, o in pairs:
        if not (batch.skip_existing and o.is_file()):
            check_output_path(o, overwrite, files)
    if batch.manifest is not None:
        _check_replaceable(batch.manifest, MANIFEST_COLUMNS, files + outs, overwrite, "manifest")
    if not pairs:
        log.info(f"shard {batch.shard}: nothing to do ({len(files)} input(s) over {batch.shard.count} shards)")
        if batch.manifest is not None:
            _write_manifest(batch.manifest, [], files)
    return pairs


def _batch_item(path: Path, out: Path, process: Callable, skip_existing: bool, overwrite: bool,
                files: Sequence[Path]) -> ManifestRow:
    """Process one input into its own atomic output; a failure is logged and returned as a `failed` row."""
    from .io import AtomicFile

    if skip_existing and out.is_file():
        log.debug(f"{out}: exists, skipped")
        return ManifestRow(path, out, "skipped")
    t0 = time.perf_counter()
    try:
        with AtomicFile(out, overwrite, files) as f:
            process(path, f)
    except Exception as e:  # noqa: BLE001 - one bad input must not stop a batch job
        if skip_existing and out.is_file():  # another job finished it meanwhile
            return ManifestRow(path, out, "skipped", time.perf_counter() - t0)
        msg = one_line(e)
        log.warn(msg if str(path) in msg else f"{path}: {msg}")
        if not isinstance(e, (UserError, OSError, MemoryError)):
            import traceback

            log.debug(traceback.format_exc())
        return ManifestRow(path, out, "failed", time.perf_counter() - t0, msg)
    return ManifestRow(path, out, "written", time.perf_counter() - t0)


def _write_manifest(path: Path, rows: Sequence[ManifestRow], files: Sequence[Path]) -> None:
    """The shard's manifest (CSV), written atomically; it replaces an earlier manifest of the same name."""
    from .io import AtomicFile

    with AtomicFile(path, True, files) as f, open(f.tmp, "w", newline="") as fh:
        w = csvlib.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        w.writerows([str(r.input), str(r.output), r.status, f"{r.seconds:.3f}", r.message] for r in rows)


def run_batch(pairs: Sequence[tuple[Path, Path]], process: Callable, batch: Batch, *, overwrite: bool,
              files: Sequence[Path], what: str) -> list[ManifestRow]:
    """Run `process(input, AtomicFile)` for each pair, each output committed on its own; write the manifest
    (also when interrupted); UserError at the end when any input failed."""
    rows: list[ManifestRow] = []
    try:
        for path, out in pairs:
            t0 = time.perf_counter()
            try:
                rows.append(_batch_item(path, out, process, batch.skip_existing, overwrite, files))
            except KeyboardInterrupt:
                rows.append(ManifestRow(path, out, "failed", time.perf_counter() - t0, "interrupted"))
                raise
    finally:
        if batch.manifest is not None:
            _write_manifest(batch.manifest, rows, files)
    counts = {s: sum(r.status == s for r in rows) for s in ("written", "skipped", "failed")}
    where = f"shard {batch.shard}: " if batch.shard is not None else ""
    log.info(f"{where}{what}: {counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed")
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        names = ", ".join(r.input.name for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        raise UserError(f"{len(failed)} of {len(rows)} input(s) failed ({names}); the others were written"
                        + (f"; see {batch.manifest}" if batch.manifest is not None else ""))
    return rows


def _tolerant_infos(paths: Iterable[Path]) -> dict[Path, object]:
    """ImageInfo per input, or the UserError that refuses it (raised again when that input's turn comes)."""
    out: dict[Path, object] = {}
    for p in paths:
        try:
            out[p] = _infos([p])[0]
        except UserError as e:
            out[p] = e
    return out


def _info_or_raise(infos: dict, path: Path):
    """The input's ImageInfo; its refusal raised."""
    info = infos[path]
    if isinstance(info, Exception):
        raise info
    return info


def _planes_to_do(pairs: Sequence[tuple[Path, Path]], infos: dict, skip_existing: bool) -> int:
    """Planes the batch will process (for the progress bar)."""
    return sum(infos[f].n_planes for f, o in pairs
               if not (skip_existing and o.is_file()) and not isinstance(infos.get(f), Exception))


# ---------------------------------------------------------------- deblur


def _deblur_name(path: Path) -> str:
    """Output file name for an input inside an output folder (TIFF, same stem)."""
    return path.name if path.suffix.lower() in TIFF_SUFFIXES else path.stem + ".tif"


def _check_deblur_output(out: Path, info) -> None:
    """Output format rules: TIFF always; PNG only for 2-D uint8/uint16."""
    suffix = out.suffix.lower()
    if suffix == ".png":
        if len(info.shape) != 2 or info.dtype not in (np.uint8, np.uint16):
            raise UserError(f"{out}: PNG output holds only 2-D uint8/uint16 images; "
                            f"{info.path} is {info.dtype} with shape {info.shape} (use .tif)")
    elif suffix not in TIFF_SUFFIXES:
        raise UserError(f"{out}: output must end with .tif, .tiff or .png")
    _warn_half(info)


def _checked_planes(path: Path, info) -> Iterator[tuple[int, np.ndarray]]:
    """(index, plane) of an input, each checked for NaN/inf, read ahead in a background thread."""
    from .io import iter_planes, prefetch

    def read() -> Iterator[tuple[int, np.ndarray]]:
        for i, plane in iter_planes(path):
            yield i, _finite(plane, path, i if info.n_planes > 1 else None)

    return prefetch(read())


def _deblur_file(db: Deblurrer, path: Path, info, out, code, dz: float, bar) -> tuple[np.ndarray, np.ndarray]:
    """Deblur every plane of one input into the AtomicFile `out` (code targeting dz um); returns the first
    input/output planes."""
    from .io import StackWriter, read_image

    if out.path.suffix.lower() == ".png":
        plane = _finite(read_image(path).data, path)
        result = db.deblur_plane(plane, code, dz)
        _write_png(out.tmp, result)
        bar.advance()
        return plane, result
    first = None
    with StackWriter(out, info.shape, info.dtype, **info.write_kwargs()) as writer:
        planes = _checked_planes(path, info)
        try:
            for i, plane in planes:
                result = db.deblur_plane(plane, code, dz)
                writer.write(result)
                if first is None:
                    first = (plane, result)
                bar.advance()
                log.debug(f"{path.name}: plane {i + 1}/{info.n_planes}")
        finally:
            planes.close()
    return first


def _plan(inputs: Sequence[str], output: str | Path, name_for: Callable[[Path], str],
          batch: Batch | None = None) -> tuple[list[Path], list, list[Path]]:
    """Input files, their infos (none in batch mode: read per input) and their output paths (a trailing separator
    on `output` means a folder; always planned over the whole input list, so every shard names outputs alike)."""
    from .io import expand_inputs

    files = expand_inputs(inputs)
    infos = [] if batch is not None and batch.active else _infos(files)
    return files, infos, _output_paths(files, Path(output), name_for, _is_folder_name(output))


def _blur_target(db: Deblurrer, meta, weights: Path | None, reference: Path | None, dz: float | None):
    """The blur code every tile is decoded with: from --dz, from --reference, else the weights' in-focus code."""
    code = None
    if dz is not None:
        code = db.as_code(np.atleast_1d(_dz_code(_require_calibration(meta, weights, "--dz"), dz)))
    elif reference is not None:
        from .io import read_image

        code = db.as_code(db.mean_blur_code(_finite(read_image(reference).data, Path(reference))))
        log.debug(f"reference blur code from {reference}")
    if code is None and db.target is None:
        raise UserError(f"{weights or 'the default weights'} hold no in-focus blur code; use --reference or --dz")
    return code


def deblur_paths(inputs: Sequence[str], output: str | Path, *, weights: Path | None = None,
                 reference: Path | None = None, scale: float | None = None, overlap: int = OVERLAP,
                 batch_size: int = BATCH_SIZE, dz: float | None = None, save_comparison: Path | None = None,
                 device: str = "auto", overwrite: bool = False, shard: Shard | str | None = None,
                 skip_existing: bool = False, manifest: Path | None = None) -> list[Path]:
    """Deblur images/stacks into `output` (a file for one input; a folder for several or 'name/'); returns outputs.

    With `shard`, `skip_existing` or `manifest` the run is a batch run (see `run_batch`): it returns the outputs of
    its shard that exist at the end."""
    t0 = time.perf_counter()
    batch = Batch(shard, skip_existing, manifest)
    _require_finite("--dz", dz)
    files, infos, outs = _plan(inputs, output, _deblur_name, batch)
    if batch.active:
        if save_comparison is not None:
            raise UserError("--save-comparison cannot be combined with --shard, --skip-existing or --manifest")
        pairs = _shard_pairs(files, outs, batch, overwrite)
        if not pairs:
            return []
    else:
        for o, info in zip(outs, infos):
            _check_deblur_output(o, info)
        _check_outputs(outs, files, overwrite)
    if save_comparison is not None:
        if Path(save_comparison).suffix.lower() != ".png":
            raise UserError(f"{save_comparison}: --save-comparison must name a .png file")
        _check_outputs([Path(save_comparison)], files + outs, overwrite)
    if reference is not None:
        if dz is not None:
            raise UserError("--dz and --reference cannot be combined")
        _single_plane_info(Path(reference), "--reference")
    model, meta, dev = _load(weights, device)
    db = Deblurrer(model, meta, device=dev, scale=scale, overlap=overlap, batch_size=batch_size)
    code = _blur_target(db, meta, weights, reference, dz)
    target_dz = 0.0 if dz is None else float(dz)  # the stored code and --reference target focus
    if batch.active:
        return _deblur_batch(db, pairs, batch, code, target_dz, overwrite=overwrite, files=files, t0=t0)
    n_planes = sum(i.n_planes for i in infos)
    with Outputs(overwrite, files) as written, log.progress("deblur", total=n_planes) as bar:
        firsts = [_deblur_file(db, f, info, written.add(o), code, target_dz, bar)
                  for f, info, o in zip(files, infos, outs)]
        if save_comparison is not None:
            plane, out = firsts[0]
            _write_png(written.add(save_comparison).tmp, np.concatenate([_display(plane), _display(out)], axis=1))
    log.info(f"deblurred {len(files)} file(s), {n_planes} plane(s) in {time.perf_counter() - t0:.1f} s -> {output}")
    return outs


def _deblur_batch(db: Deblurrer, pairs: list[tuple[Path, Path]], batch: Batch, code, dz: float, *, overwrite: bool,
                  files: list[Path], t0: float) -> list[Path]:
    """Batch-mode deblurring of a shard's pairs (one atomic output each, failures recorded, manifest)."""
    infos = _tolerant_infos(f for f, o in pairs if not (batch.skip_existing and o.is_file()))

    def process(path: Path, out) -> None:
        info = _info_or_raise(infos, path)
        _check_deblur_output(out.path, info)
        _deblur_file(db, path, info, out, code, dz, bar)

    with log.progress("deblur", total=_planes_to_do(pairs, infos, batch.skip_existing)) as bar:
        rows = run_batch(pairs, process, batch, overwrite=overwrite, files=files, what="deblur")
    log.debug(f"batch of {len(rows)} input(s) in {time.perf_counter() - t0:.1f} s")
    return [r.output for r in rows if r.status != "failed"]


# ---------------------------------------------------------------- interpolate


def interpolate_paths(a: Path, b: Path | None, output: Path, *, steps: int = 6, dz_from: float | None = None,
                      dz_to: float | None = None, weights: Path | None = None, scale: float | None = None,
                      overlap: int = OVERLAP, batch_size: int = BATCH_SIZE, device: str = "auto",
                      overwrite: bool = False) -> Path:
    """Z-stack walking the blur code from A's to B's (per tile) or between two dz, with A's identity code."""
    from .io import read_image, write_tiff

    output = Path(output)
    if steps < 2:
        raise UserError(f"--steps must be at least 2, got {steps}")
    _require_finite("--dz-from", dz_from)
    _require_finite("--dz-to", dz_to)
    if (dz_from is None) != (dz_to is None):
        raise UserError("--dz-from and --dz-to must be given together")
    by_dz = dz_from is not None
    if b is None and not by_dz:
        raise UserError("give image B, or --dz-from and --dz-to")
    if output.suffix.lower() not in TIFF_SUFFIXES:
        raise UserError(f"{output}: interpolation output must be a .tif or .tiff file")
    info_a = _single_plane_info(Path(a), "A")
    _warn_half(info_a)
    if b is not None and by_dz:
        log.warn(f"{b}: not used with --dz-from/--dz-to")
        b = None
    if b is not None:
        info_b = _single_plane_info(Path(b), "B")
        if info_b.shape != info_a.shape:
            raise UserError(f"A and B must show the same field at the same size: {a} is "
                            f"{info_a.shape[1]}x{info_a.shape[0]}, {b} is {info_b.shape[1]}x{info_b.shape[0]}")
    inputs = [Path(a)] + ([Path(b)] if b is not None else [])
    _check_outputs([output], inputs, overwrite)
    model, meta, dev = _load(weights, device)
    db = Deblurrer(model, meta, device=dev, scale=scale, overlap=overlap, batch_size=batch_size)
    plane_a = _finite(read_image(a).data, Path(a))
    if by_dz:
        planes, z_step = _walk_dz(db, plane_a, _require_calibration(meta, weights, "--dz-from/--dz-to"),
                                  dz_from, dz_to, steps)
    else:
        planes, z_step = walk_codes(db, plane_a, _finite(read_image(b).data, Path(b)), steps), None
    write_tiff(output, np.stack(planes), "ZYX", pixel_size_um=info_a.pixel_size_um, z_step_um=z_step,
               unit=info_a.unit, compression=info_a.compression, predictor=info_a.predictor, ome=info_a.ome,
               overwrite=overwrite, inputs=inputs)
    log.info(f"wrote {steps} interpolated planes to {output}")
    return output


def walk_codes(db: Deblurrer, plane_a: np.ndarray, plane_b: np.ndarray, steps: int) -> list[np.ndarray]:
    """Planes decoded with A's identity and blur codes going linearly, per tile, from A's to B's.

    Intensities are reverted with lo/hi interpolated from A's to B's, so the end planes are A's
    reconstruction and (when A and B share identity codes) B's reconstruction.
    """
    enc_a, enc_b = db.encode(plane_a), db.encode(plane_b)
    if enc_a.grid.shape != enc_b.grid.shape:
        raise UserError("A and B must have the same size")
    out = []
    with log.progress("interpolate", total=steps) as bar:
        for r in np.linspace(0.0, 1.0, steps):
            blur = (1 - r) * enc_a.blur + r * enc_b.blur
            norm = Normalizer((1 - r) * enc_a.norm.lo + r * enc_b.norm.lo, (1 - r) * enc_a.norm.hi + r * enc_b.norm.hi)
            out.append(db.decode(enc_a, blur, norm))
            bar.advance()
    return out


def _walk_dz(db: Deblurrer, plane_a: np.ndarray, cal: dict, dz_from: float, dz_to: float,
             steps: int) -> tuple[list[np.ndarray], float | None]:
    """Planes at evenly spaced dz from dz_from to dz_to (um), each reverted for its dz, and their spacing."""
    dzs = np.linspace(dz_from, dz_to, steps)
    codes = _dz_code(cal, dzs)
    enc = db.encode(plane_a)
    out = []
    with log.progress("interpolate", total=steps) as bar:
        for c, d in zip(codes, dzs):
            out.append(db.decode(enc, np.atleast_1d(c), db.revert_for(enc, float(d))))
            bar.advance()
    step = abs(dz_to - dz_from) / (steps - 1)
    return out, step if step > 0 else None


# ---------------------------------------------------------------- focus maps


def _focus_name(path: Path) -> str:
    """Defocus map file name inside an output folder."""
    return f"{path.stem}_dz.tif"


def _focus_file(db: Deblurrer, path: Path, info, out, bar) -> Iterator[dict]:
    """Write the defocus map(s) of one input into the AtomicFile `out`; yields one summary row per plane."""
    from .io import StackWriter

    kw = info.write_kwargs()
    with StackWriter(out, info.shape, np.float32, **kw) as writer:
        planes = _checked_planes(path, info)
        try:
            for i, plane in planes:
                dmap, s = db.focus_map(plane)
                writer.write(dmap)
                bar.advance()
                if info.n_planes > 1:
                    log.debug(f"{path.name} plane {i}: median dz {s['median_dz_um']:+.2f} um, "
                              f"{100 * s['frac_in_focus']:.0f}% within +/-{IN_FOCUS_UM:g} um")
                yield {"file": str(path), "plane": i, **s}
        finally:
            planes.close()


def focus_paths(inputs: Sequence[str], output: str | Path, *, weights: Path | None = None, scale: float | None = None,
                overlap: int = OVERLAP, batch_size: int = BATCH_SIZE, csv: Path | None = None, device: str = "auto",
                overwrite: bool = False, shard: Shard | str | None = None, skip_existing: bool = False,
                manifest: Path | None = None) -> list[Path]:
    """Defocus maps (float32 TIFF, dz in um, input size) of images/stacks from the calibrated blur code.

    With `shard`, `skip_existing` or `manifest` the run is a batch run (see `run_batch`)."""
    t0 = time.perf_counter()
    batch = Batch(shard, skip_existing, manifest)
    files, infos, outs = _plan(inputs, output, _focus_name, batch)
    for o in outs:
        if o.suffix.lower() not in TIFF_SUFFIXES:
            raise UserError(f"{o}: defocus maps are written as .tif or .tiff")
    if batch.active:
        pairs = _shard_pairs(files, outs, batch, overwrite)
        if not pairs:
            return []
        if csv is not None:
            if batch.skip_existing:
                _check_replaceable(Path(csv), FOCUS_COLUMNS, files + outs, overwrite, "focus table")
            else:
                _check_outputs([Path(csv)], files + outs, overwrite)
    else:
        _check_outputs(outs, files, overwrite)
        if csv is not None:
            _check_outputs([Path(csv)], files + outs, overwrite)
    model, meta, dev = _load(weights, device)
    cal = _require_calibration(meta, weights, "focus")
    if cal["kind"] == "abs":
        log.warn("the calibration follows |dz| only: maps hold unsigned defocus")
    db = Deblurrer(model, meta, device=dev, scale=scale, overlap=overlap, batch_size=batch_size)
    if batch.active:
        return _focus_batch(db, pairs, batch, csv, overwrite=overwrite, files=files, outs=outs)
    rows = []
    with Outputs(overwrite, files) as written, log.progress("focus", total=sum(i.n_planes for i in infos)) as bar:
        for f, info, o in zip(files, infos, outs):
            file_rows = list(_focus_file(db, f, info, written.add(o), bar))
            rows.extend(file_rows)
            _report_focus(f, file_rows)
        if csv is not None:
            _write_csv(written.add(csv).tmp, rows)
    log.info(f"focus maps for {len(files)} file(s), {len(rows)} plane(s) in {time.perf_counter() - t0:.1f} s -> {output}")
    return outs


def _focus_batch(db: Deblurrer, pairs: list[tuple[Path, Path]], batch: Batch, csv: Path | None, *, overwrite: bool,
                 files: list[Path], outs: list[Path]) -> list[Path]:
    """Batch-mode focus maps; the CSV holds the rows of the inputs this run mapped, plus (with --skip-existing)
    the rows an earlier CSV of the same name held for the inputs skipped now."""
    from .io import AtomicFile

    infos = _tolerant_infos(f for f, o in pairs if not (batch.skip_existing and o.is_file()))
    rows: dict[Path, list[dict]] = {}

    def process(path: Path, out) -> None:
        file_rows = list(_focus_file(db, path, _info_or_raise(infos, path), out, bar))
        rows[path] = file_rows
        _report_focus(path, file_rows)

    try:
        with log.progress("focus", total=_planes_to_do(pairs, infos, batch.skip_existing)) as bar:
            done = run_batch(pairs, process, batch, overwrite=overwrite, files=files, what="focus")
    finally:  # also after failed inputs: the table holds every input that was mapped
        if csv is not None:
            kept = _earlier_rows(Path(csv), {str(f) for f, o in pairs if f not in rows}) if batch.skip_existing else []
            table = kept + [r for f, _ in pairs for r in rows.get(f, [])]
            with AtomicFile(csv, overwrite or batch.skip_existing, files + outs) as f:
                _write_csv(f.tmp, table)
    return [r.output for r in done if r.status != "failed"]


def _earlier_rows(csv: Path, wanted: set[str]) -> list[dict]:
    """Rows of an existing focus table for the given input names (empty when there is none)."""
    if not _has_header(csv, FOCUS_COLUMNS):
        return []
    with open(csv, newline="") as fh:
        return [{**r, "median_dz_um": float(r["median_dz_um"]), "frac_in_focus": float(r["frac_in_focus"])}
                for r in csvlib.DictReader(fh) if r["file"] in wanted]


def _report_focus(path: Path, rows: list[dict]) -> None:
    """One line per input: median dz over its planes, or a warning when no tile carries contrast."""
    known = [r for r in rows if np.isfinite(r["median_dz_um"])]
    if not known:
        log.warn(f"{path}: {NO_CONTRAST} (map and summary are NaN)")
        return
    if len(known) < len(rows):
        log.warn(f"{path}: {len(rows) - len(known)} of {len(rows)} planes: {NO_CONTRAST} (NaN)")
    med = float(np.median([r["median_dz_um"] for r in known]))
    frac = float(np.mean([r["frac_in_focus"] for r in known]))
    log.info(f"{path.name}: median dz {med:+.2f} um, {100 * frac:.0f}% within +/-{IN_FOCUS_UM:g} um of focus")


def _write_csv(path: Path, rows: list[dict]) -> None:
    """Per-plane focus summary table (NaN where a plane has no tile with enough contrast)."""
    with open(path, "w", newline="") as fh:
        w = csvlib.DictWriter(fh, fieldnames=list(FOCUS_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "median_dz_um": f"{r['median_dz_um']:.4f}", "frac_in_focus": f"{r['frac_in_focus']:.4f}"})
