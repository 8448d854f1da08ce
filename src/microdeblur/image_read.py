"""Reading images and stacks (TIFF: plain, multi-page, ImageJ, OME; PNG/JPEG): headers, whole images and plane
streaming, colour to grey, corrupt files turned into one-line errors."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from . import log
from .errors import UserError
from .image_meta import ImageData, ImageInfo, ome_optics, rename_sequence_axes, tidy, tiff_physical
from .image_write import to_dtype
from .inputs import IMAGE_SUFFIXES, TIFF_SUFFIXES

_LUMA = np.array([0.2125, 0.7154, 0.0721])  # Rec. 709, as skimage.color.rgb2gray
_FATAL_TIFF_WARNINGS = ("corrupt", "invalid", "truncat", "failed to reshape")
_LOSSLESS = {"LZW", "ADOBE_DEFLATE", "DEFLATE", "PACKBITS", "LZMA", "ZSTD"}  # compressions kept on write


class _FolderNotices:
    """Folders a once-per-folder notice was given for. Bounded: it remembers the `limit` folders seen last, so a
    long-lived process (napari, a batch job over many folders) does not grow it forever; a forgotten folder gets
    the notice again."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._seen: dict[Path, None] = {}  # insertion order: least recently seen first
        self._lock = threading.Lock()  # planes are also read in prefetch threads

    def first(self, folder: Path) -> bool:
        """True when `folder` is not remembered (it is from now on), False when it is."""
        with self._lock:
            known = folder in self._seen
            self._seen.pop(folder, None)
            self._seen[folder] = None
            if len(self._seen) > self.limit:
                del self._seen[next(iter(self._seen))]
            return not known


_RGB_NOTICES = _FolderNotices()  # colour input converted to grey: a warning once per folder, then debug lines


class _TiffGuard(logging.Handler):
    """Collects tifffile's warnings while reading; those that mean corruption become UserError."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.WARNING)
        self.path, self.messages = path, []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def check(self) -> None:
        """Raise UserError for a fatal warning seen so far; others go to log.debug."""
        for msg in self.messages:
            if any(w in msg.lower() for w in _FATAL_TIFF_WARNINGS):
                raise UserError(f"{self.path}: corrupt or truncated TIFF ({_one_line(msg)})")
            log.debug(f"{self.path}: {_one_line(msg)}")
        self.messages.clear()


_REPRS = ((re.compile(r"<[^<>]*>\s*"), ""),  # <tifffile.TiffFile 'x.tif'>, <TiffTag.fromfile>
          (re.compile(r":?\s*(?:\w+=)?(?<!\w)b([\x22\x27]).*?\1"), ""),  # header=b'this'
          (re.compile(r"\b(\w+(?:Error|Exception))\(([\x22\x27])(.*?)\2\)"), r"\1: \3"),  # X('why')
          (re.compile(r"^raised\s+"), ""))


def _one_line(text: str, limit: int = 120) -> str:
    """First line of a message without Python reprs of objects or bytes, shortened."""
    line = (str(text).strip().splitlines() or [""])[0].strip()
    for pattern, repl in _REPRS:
        line = pattern.sub(repl, line)
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextmanager
def _reading(path: Path) -> Iterator[_TiffGuard]:
    """Check the path, silence tifffile's logger, and turn any read failure into a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unsupported image format (use {', '.join(IMAGE_SUFFIXES)})")
    logger = logging.getLogger("tifffile")
    guard, propagate = _TiffGuard(path), logger.propagate
    logger.addHandler(guard)
    logger.propagate = False
    try:
        yield guard
        guard.check()
    except (UserError, MemoryError):
        raise
    except Exception as e:  # corrupt files raise anything from struct.error to zlib.error
        reason = _one_line(e) or type(e).__name__
        kind = "TIFF" if path.suffix.lower() in TIFF_SUFFIXES else path.suffix.lstrip(".").upper()
        detail = "" if str(path) in reason or "uri" in reason or "backend" in reason else f" ({reason})"
        raise UserError(f"{path}: cannot read, corrupt or unsupported {kind} file{detail}") from None
    finally:
        logger.removeHandler(guard)
        logger.propagate = propagate


_SERIES_WARNED: set[str] = set()


def _uniform_plane_series(tif: tifffile.TiffFile) -> bool:
    """True when a file holds several 2-D series of one shape (single pages appended one by one)."""
    ss = tif.series
    return (len(ss) > 1 and not (tif.is_ome or tif.is_imagej)
            and all(s.ndim == 2 and s.shape == ss[0].shape and s.dtype == ss[0].dtype for s in ss))


def _squeezed(series) -> tuple[str, tuple[int, ...]]:
    """A series' axes and shape without singleton axes (tifffile keeps them in files it wrote with a plain
    `imwrite(path, array)`, e.g. (96, 96, 1))."""
    return series.get_axes(True), tuple(series.get_shape(True))


def _tiff_info(tif: tifffile.TiffFile, path: Path) -> ImageInfo:
    """ImageInfo of the first series (or of a run of uniform 2-D series), RGB counted as grey."""
    s = tif.series[0]
    axes, shape = _squeezed(s)
    full_axes, full_shape = s.get_axes(False), tuple(s.get_shape(False))
    if _uniform_plane_series(tif):
        axes, shape = "Z" + axes, (len(tif.series),) + shape
        full_axes, full_shape = axes, shape
    elif len(tif.series) > 1 and str(path) not in _SERIES_WARNED:  # said once per file, however often it is read
        _SERIES_WARNED.add(str(path))
        shapes = "" if len({tuple(x.shape) for x in tif.series}) == 1 else " of different shapes"
        log.warn(f"{path}: holds {len(tif.series)} image series{shapes}; only the first "
                 f"({'x'.join(map(str, shape))}, axes {axes}) is read")
    if _is_colour(axes, shape, _colour_page(tif.pages.first)):
        i, j = axes.index("S"), full_axes.index("S")
        axes, shape = axes[:i] + axes[i + 1:], shape[:i] + shape[i + 1:]
        full_axes, full_shape = full_axes[:j] + full_axes[j + 1:], full_shape[:j] + full_shape[j + 1:]
    px, py, dz, unit, extra = tiff_physical(tif)
    na, wavelength = ome_optics(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else (None, None)
    page = tif.pages.first
    compression = _kept_compression(page, path)
    return ImageInfo(axes=rename_sequence_axes(axes), shape=shape, dtype=np.dtype(s.dtype), pixel_size_um=px,
                     pixel_size_y_um=py if py and px and abs(py / px - 1) > 1e-6 else None,
                     z_step_um=dz, na=tidy(na), wavelength_um=tidy(wavelength), unit=unit, metadata=extra,
                     path=path, compression=compression,
                     predictor=compression is not None and page.predictor != 1, ome=bool(tif.is_ome),
                     imagej=bool(tif.is_imagej), ome_xml=(tif.ome_metadata or "") if tif.is_ome else "",
                     full_axes=rename_sequence_axes(full_axes), full_shape=full_shape)


def _kept_compression(page, path: Path) -> int | None:
    """The page's compression code when it is lossless and tifffile can encode it here, else None."""
    try:
        name = tifffile.COMPRESSION(int(page.compression)).name
    except ValueError:
        return None
    if name not in _LOSSLESS:
        return None
    try:
        tifffile.TIFF.COMPRESSORS[int(page.compression)]
    except Exception:  # tifffile raises KeyError when the codec needs the imagecodecs package
        log.debug(f"{path}: {name} compression cannot be written here; outputs are uncompressed")
        return None
    return int(page.compression)


def _is_colour(axes: str, shape: Sequence[int], colour: bool = True) -> bool:
    """True for a samples axis of 2-4 channels (grey+alpha, RGB, RGBA) that are colour (`colour`: the file says so)."""
    return colour and "S" in axes and 2 <= shape[axes.index("S")] <= 4


def _colour_page(page) -> bool:
    """True when a TIFF page's samples are colour (RGB, YCbCr) or grey + alpha; the samples of any other page
    (several grey samples per pixel, e.g. channels stored as samples) are a channel axis."""
    extra = tuple(page.extrasamples or ())
    alpha = page.samplesperpixel == 2 and extra[:1] in ((tifffile.EXTRASAMPLE.ASSOCALPHA,),
                                                          (tifffile.EXTRASAMPLE.UNASSALPHA,))
    return page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR) or alpha


def _to_grey(x: np.ndarray, path: Path) -> np.ndarray:
    """Luminance of an array whose last axis holds 2-4 colour samples, in the source dtype."""
    first = _RGB_NOTICES.first(path.parent)
    (log.warn if first else log.debug)(f"{path}: colour image converted to grey (luminance)"
                                       + ("; same for further files in this folder" if first else ""))
    if x.shape[-1] == 2:  # grey + alpha
        return np.ascontiguousarray(x[..., 0])
    return to_dtype(x[..., :3].astype(np.float32) @ _LUMA.astype(np.float32), x.dtype)


def _samples_last(x: np.ndarray, axes: str, colour: bool = True) -> np.ndarray:
    """Move a colour samples axis to the end (planar-separate TIFFs store it first)."""
    return np.moveaxis(x, axes.index("S"), -1) if _is_colour(axes, x.shape, colour) else x


def _shown_grey(page, path: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The map from a page's stored values to the grey levels a viewer shows, where it is not the identity:
    white-is-zero integers (max - x) and a grey palette (its ramp). Planes are processed, and written
    black-is-zero, as shown. None for the identity (a colour palette's indices are kept as they are)."""
    kind = page.photometric
    if kind == tifffile.PHOTOMETRIC.MINISWHITE and np.dtype(page.dtype).kind in "iu":
        top = np.iinfo(page.dtype).max

        def shown(x: np.ndarray) -> np.ndarray:
            return (top - x.astype(np.int64)).astype(x.dtype) if x.dtype.kind == "i" else top - x
    elif kind == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
        cmap = np.asarray(page.colormap)
        if not (np.array_equal(cmap[0], cmap[1]) and np.array_equal(cmap[0], cmap[2])):
            return None
        ramp = (cmap[0] >> 8).astype(np.uint8) if np.dtype(page.dtype) == np.uint8 else cmap[0].astype(page.dtype)

        def shown(x: np.ndarray) -> np.ndarray:
            return ramp[x]
    else:
        return None
    log.debug(f"{path}: stored as {kind.name.lower()}: processed and written as the grey levels it shows")
    return shown


def _page_yx(page) -> tuple[int, int]:
    """(Y, X) size of a TIFF page whatever its sample layout."""
    return page.shape[page.axes.index("Y")], page.shape[page.axes.index("X")]


def _tiff_plane_getter(tif: tifffile.TiffFile, info: ImageInfo, path: Path) -> Callable[[int], np.ndarray]:
    """Function returning plane i (Y, X[, S]), as shown (`_shown_grey`), without loading the rest of the stack."""
    get, shown = _stored_plane_getter(tif, info, path), _shown_grey(tif.pages.first, path)
    return get if shown is None else (lambda i: shown(np.asarray(get(i))))


def _stored_plane_getter(tif: tifffile.TiffFile, info: ImageInfo, path: Path) -> Callable[[int], np.ndarray]:
    """Function returning stored plane i (Y, X[, S]) without loading the rest of the stack."""
    n = info.n_planes
    if _uniform_plane_series(tif):
        return lambda i: tif.series[i].asarray()
    s, colour = tif.series[0], _colour_page(tif.pages.first)  # frames after the first page keep only its tags
    pages = s.pages
    if len(pages) == n and all(p is not None and _page_yx(p) == info.plane_shape for p in pages):
        return lambda i: _samples_last(pages[i].asarray(), pages[i].axes, colour)
    whole = tifffile.memmap(path, mode="r") if s.dataoffset is not None else s.asarray()
    axes, shape = _squeezed(s)
    whole = _samples_last(whole.reshape(shape), axes, colour)
    samples = whole.shape[-1:] if whole.ndim == len(info.shape) + 1 else ()
    flat = whole.reshape((n, *info.plane_shape, *samples))
    return lambda i: flat[i]


@contextmanager
def _open_tiff(path: Path, guard) -> Iterator[tuple[tifffile.TiffFile, ImageInfo]]:
    """An open TIFF and its checked header (inside `_reading`, whose guard names the file on failure)."""
    with tifffile.TiffFile(path) as tif:
        info = _tiff_info(tif, path)
        guard.check()
        yield tif, info


def read_info(path: str | Path) -> ImageInfo:
    """Axes, shape, dtype and physical metadata of an image file, reading only its header."""
    path = Path(path)
    with _reading(path) as guard:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with _open_tiff(path, guard) as (_, info):
                return info
        props = iio.improps(path, plugin="pillow")
        shape = tuple(props.shape)
        axes = "YXS"[: len(shape)]
        if _is_colour(axes, shape):
            axes, shape = "YX", shape[:2]
        return ImageInfo(axes=axes, shape=shape, dtype=np.dtype(props.dtype), path=path)


def iter_planes(path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, 2-D grey plane) one at a time, so huge stacks stream with bounded memory."""
    path = Path(path)
    with _reading(path) as guard:
        if path.suffix.lower() not in TIFF_SUFFIXES:
            yield 0, read_image(path).data
            return
        with _open_tiff(path, guard) as (tif, info):
            get = _tiff_plane_getter(tif, info, path)
            guard.check()
            for i in range(info.n_planes):
                plane = np.asarray(get(i))
                guard.check()
                yield i, _to_grey(plane, path) if plane.ndim == 3 else plane


def read_image(path: str | Path) -> ImageData:
    """Read a TIFF (plain, multi-page, ImageJ, OME) or PNG/JPEG; colour becomes grey; singletons squeezed."""
    path = Path(path)
    with _reading(path) as guard:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with _open_tiff(path, guard) as (tif, info):
                if _uniform_plane_series(tif):
                    data = np.stack([s.asarray() for s in tif.series])
                else:
                    axes, shape = _squeezed(tif.series[0])
                    data = _samples_last(tif.series[0].asarray().reshape(shape), axes, _colour_page(tif.pages.first))
                shown = _shown_grey(tif.pages.first, path)
                data = data if shown is None else shown(data)
        else:
            data = np.asarray(iio.imread(path, plugin="pillow"))
            info = ImageInfo(axes="YX", shape=data.shape[:2], dtype=data.dtype, path=path)
            if data.ndim == 3 and data.shape[-1] not in (2, 3, 4):
                raise UserError(f"{path}: unsupported image shape {data.shape}")
        if data.ndim == len(info.shape) + 1:
            data = _to_grey(data, path)
        data = data.reshape(info.shape)
    return ImageData(data=data, **{f.name: getattr(info, f.name) for f in fields(info)})
