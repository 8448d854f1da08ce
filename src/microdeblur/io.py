"""Reading and writing images and stacks: metadata, plane streaming, dtype restore, TIFF writing (through
atomic.py's safe outputs)."""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from . import log
from .atomic import AtomicFile, Transaction, atomic_path, temp_path
from .errors import UserError
from .inputs import IMAGE_SUFFIXES, TIFF_SUFFIXES

_IMAGEJ_DTYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32")}
_OME_DTYPES = {np.dtype(t) for t in ("int8", "int32", "uint32", "float64")}
_UNIT_UM = {"um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_LUMA = np.array([0.2125, 0.7154, 0.0721])  # Rec. 709, as skimage.color.rgb2gray
_FATAL_TIFF_WARNINGS = ("corrupt", "invalid", "truncat", "failed to reshape")
_LOSSLESS = {"LZW", "ADOBE_DEFLATE", "DEFLATE", "PACKBITS", "LZMA", "ZSTD"}  # compressions kept on write
_TIFFFILE_IJ_VERSION = "1.11a"  # tifffile signs the ImageJ files it writes with this version


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



# ---------------------------------------------------------------- image metadata


@dataclass(kw_only=True)
class ImageInfo:
    """What a file holds, without its pixels: squeezed axes/shape, source dtype, physical metadata."""

    axes: str
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    na: float | None = None  # objective NA (OME Objective LensNA), None when the file does not say
    wavelength_um: float | None = None  # OME channel emission (else excitation) wavelength, µm
    unit: str = "um"
    metadata: dict = field(default_factory=dict)  # extra ImageJ entries kept on write (e.g. finterval)
    compression: int | None = None  # lossless TIFF compression code kept on write (None: uncompressed)
    predictor: bool = False  # the input used a TIFF predictor with that compression
    ome: bool = False  # the input was an OME-TIFF: outputs are written as OME-TIFF too
    path: Path | None = None
    full_axes: str = ""  # before squeezing singleton axes (grey: no 'S')
    full_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.full_axes = self.full_axes or self.axes
        self.full_shape = tuple(self.full_shape or self.shape)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(Y, X) of one plane."""
        return self.shape[-2], self.shape[-1]

    @property
    def n_planes(self) -> int:
        """Number of 2-D planes (product of all non-YX axes)."""
        return int(np.prod(self.shape[:-2], dtype=np.int64))

    def unsqueeze(self, x: np.ndarray) -> np.ndarray:
        """Re-insert the singleton axes removed on reading (x has `shape`)."""
        return x.reshape(self.full_shape)

    def write_kwargs(self) -> dict:
        """Keyword arguments for write_tiff / StackWriter that keep axes and physical metadata."""
        return dict(axes=self.axes, pixel_size_um=self.pixel_size_um, z_step_um=self.z_step_um,
                    unit=self.unit, metadata=dict(self.metadata), compression=self.compression,
                    predictor=self.predictor, ome=self.ome)


@dataclass(kw_only=True)
class ImageData(ImageInfo):
    """An image or stack in memory (grey, singleton axes squeezed) with its metadata."""

    data: np.ndarray

    def __post_init__(self) -> None:
        self.shape = tuple(self.shape or self.data.shape)
        self.dtype = np.dtype(self.dtype or self.data.dtype)
        super().__post_init__()


def _unit_factor(unit: str | None) -> tuple[str, float] | None:
    """Normalised unit name and its size in µm, or None when not a length unit."""
    if not unit:
        return None
    u = str(unit).strip().lower().replace("\\u00b5", "µ").replace("μ", "µ")
    u = {"micron": "um", "microns": "um", "µm": "um", "micrometer": "um", "nanometer": "nm"}.get(u, u)
    return (u, _UNIT_UM[u]) if u in _UNIT_UM else None


def _ome_length(element: ET.Element | None, name: str, default_unit: str) -> float | None:
    """A positive finite OME length attribute `name` (unit in `name`Unit, OME's default otherwise), in µm."""
    value = None if element is None else element.get(name)
    unit = _unit_factor(element.get(f"{name}Unit", default_unit)) if element is not None else None
    try:
        v = float(value) * unit[1] if value and unit else None
    except ValueError:
        return None
    return v if v is not None and np.isfinite(v) and v > 0 else None


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _ome_physical(xml: str) -> tuple[float | None, float | None]:
    """Pixel size (PhysicalSizeX, else PhysicalSizeY) and PhysicalSizeZ of the first OME image, in µm."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return None, None
    px = _ome_length(pixels, "PhysicalSizeX", "µm") or _ome_length(pixels, "PhysicalSizeY", "µm")
    return px, _ome_length(pixels, "PhysicalSizeZ", "µm")


def _ome_optics(xml: str) -> tuple[float | None, float | None]:
    """(objective NA, wavelength µm) of the first OME image: LensNA of the Objective its ObjectiveSettings name
    (or of the only objective listed), and its first channel's EmissionWavelength, else ExcitationWavelength
    (OME's default unit: nm). None for what the file does not say."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    objectives = {e.get("ID"): e for e in root.iter() if _local(e.tag) == "Objective"}
    image = next((e for e in root.iter() if _local(e.tag) == "Image"), None)
    settings = None if image is None else next((e for e in image if _local(e.tag) == "ObjectiveSettings"), None)
    objective = objectives.get(settings.get("ID")) if settings is not None else None
    if objective is None and len(objectives) == 1:
        objective = next(iter(objectives.values()))
    na = None
    try:
        na = float(objective.get("LensNA")) if objective is not None and objective.get("LensNA") else None
    except ValueError:
        pass
    na = na if na is not None and np.isfinite(na) and na > 0 else None
    pixels = None if image is None else next((e for e in image.iter() if _local(e.tag) == "Pixels"), None)
    channel = None if pixels is None else next((e for e in pixels if _local(e.tag) == "Channel"), None)
    wavelength = _ome_length(channel, "EmissionWavelength", "nm") or _ome_length(channel, "ExcitationWavelength", "nm")
    return na, wavelength


def _tidy(value: float | None) -> float | None:
    """Drop float noise from rational resolution tags (0.2999999999999998 → 0.3)."""
    return None if value is None else float(f"{value:.10g}")


def _tiff_physical(tif: tifffile.TiffFile) -> tuple[float | None, float | None, str, dict]:
    """(pixel size µm, z step µm, unit, extra ImageJ metadata) from OME, ImageJ or resolution tags."""
    px, dz, unit, extra = _tiff_physical_raw(tif)
    return _tidy(px), _tidy(dz), unit, extra


def _tiff_physical_raw(tif: tifffile.TiffFile) -> tuple[float | None, float | None, str, dict]:
    """Physical metadata as stored."""
    if tif.is_ome and tif.ome_metadata:
        px, dz = _ome_physical(tif.ome_metadata)
        return px, dz, "um", {}
    page = tif.pages.first
    xres = page.resolution[0] if "XResolution" in page.tags else 0.0
    ij = tif.imagej_metadata or {}
    if tif.is_imagej:
        unit = _unit_factor(ij.get("unit"))
        if unit is None:
            return None, None, "um", {}
        name, f = unit
        # tifffile writes XResolution 1/1 when given none; ImageJ writes no tag when uncalibrated
        unset = xres == 1 and str(ij.get("ImageJ", "")) == _TIFFFILE_IJ_VERSION
        px = f / xres if xres > 0 and not unset else None
        dz = abs(float(ij["spacing"])) * f if ij.get("spacing") else None
        extra = {"finterval": float(ij["finterval"])} if ij.get("finterval") else {}
        return px, dz, name, extra
    if page.resolutionunit == tifffile.RESUNIT.CENTIMETER and xres > 0:
        return 1e4 / xres, None, "um", {}
    return None, None, "um", {}  # inch-based resolution is display dpi, not a physical size


# ---------------------------------------------------------------- reading


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


def _rename_sequence_axes(axes: str) -> str:
    """tifffile's generic page-sequence axes ('I', 'Q') become 'Z' when the file has no Z."""
    for a in "IQ":
        if a in axes and "Z" not in axes:
            axes = axes.replace(a, "Z", 1)
    return axes


def _uniform_plane_series(tif: tifffile.TiffFile) -> bool:
    """True when a file holds several 2-D series of one shape (single pages appended one by one)."""
    ss = tif.series
    return (len(ss) > 1 and not (tif.is_ome or tif.is_imagej)
            and all(s.ndim == 2 and s.shape == ss[0].shape and s.dtype == ss[0].dtype for s in ss))


def _tiff_info(tif: tifffile.TiffFile, path: Path) -> ImageInfo:
    """ImageInfo of the first series (or of a run of uniform 2-D series), RGB counted as grey."""
    s = tif.series[0]
    axes, shape = s.axes, tuple(s.shape)
    full_axes, full_shape = s.get_axes(False), tuple(s.get_shape(False))
    if _uniform_plane_series(tif):
        axes, shape = "Z" + axes, (len(tif.series),) + shape
        full_axes, full_shape = axes, shape
    if _is_colour(axes, shape):
        i, j = axes.index("S"), full_axes.index("S")
        axes, shape = axes[:i] + axes[i + 1:], shape[:i] + shape[i + 1:]
        full_axes, full_shape = full_axes[:j] + full_axes[j + 1:], full_shape[:j] + full_shape[j + 1:]
    px, dz, unit, extra = _tiff_physical(tif)
    na, wavelength = _ome_optics(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else (None, None)
    page = tif.pages.first
    compression = _kept_compression(page, path)
    return ImageInfo(axes=_rename_sequence_axes(axes), shape=shape, dtype=np.dtype(s.dtype), pixel_size_um=px,
                     z_step_um=dz, na=_tidy(na), wavelength_um=_tidy(wavelength), unit=unit, metadata=extra,
                     path=path, compression=compression,
                     predictor=compression is not None and page.predictor != 1, ome=bool(tif.is_ome),
                     full_axes=_rename_sequence_axes(full_axes), full_shape=full_shape)


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


def _is_colour(axes: str, shape: Sequence[int]) -> bool:
    """True for a samples axis of 2-4 channels (grey+alpha, RGB, RGBA)."""
    return "S" in axes and 2 <= shape[axes.index("S")] <= 4


def _to_grey(x: np.ndarray, path: Path) -> np.ndarray:
    """Luminance of an array whose last axis holds 2-4 colour samples, in the source dtype."""
    first = _RGB_NOTICES.first(path.parent)
    (log.warn if first else log.debug)(f"{path}: colour image converted to grey (luminance)"
                                       + ("; same for further files in this folder" if first else ""))
    if x.shape[-1] == 2:  # grey + alpha
        return np.ascontiguousarray(x[..., 0])
    return to_dtype(x[..., :3].astype(np.float32) @ _LUMA.astype(np.float32), x.dtype)


def _samples_last(x: np.ndarray, axes: str) -> np.ndarray:
    """Move a colour samples axis to the end (planar-separate TIFFs store it first)."""
    return np.moveaxis(x, axes.index("S"), -1) if _is_colour(axes, x.shape) else x


def _page_yx(page) -> tuple[int, int]:
    """(Y, X) size of a TIFF page whatever its sample layout."""
    return page.shape[page.axes.index("Y")], page.shape[page.axes.index("X")]


def _tiff_plane_getter(tif: tifffile.TiffFile, info: ImageInfo, path: Path) -> Callable[[int], np.ndarray]:
    """Function returning raw plane i (Y, X[, S]) without loading the rest of the stack."""
    n = info.n_planes
    if _uniform_plane_series(tif):
        return lambda i: tif.series[i].asarray()
    s = tif.series[0]
    pages = s.pages
    if len(pages) == n and all(p is not None and _page_yx(p) == info.plane_shape for p in pages):
        return lambda i: _samples_last(pages[i].asarray(), pages[i].axes)
    whole = tifffile.memmap(path, mode="r") if s.dataoffset is not None else s.asarray()
    whole = _samples_last(whole.reshape(s.shape), s.axes)
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
                    s = tif.series[0]
                    data = _samples_last(s.asarray(), s.axes)
        else:
            data = np.asarray(iio.imread(path, plugin="pillow"))
            info = ImageInfo(axes="YX", shape=data.shape[:2], dtype=data.dtype, path=path)
            if data.ndim == 3 and data.shape[-1] not in (2, 3, 4):
                raise UserError(f"{path}: unsupported image shape {data.shape}")
        if data.ndim == len(info.shape) + 1:
            data = _to_grey(data, path)
        data = data.reshape(info.shape)
    return ImageData(data=data, **{f.name: getattr(info, f.name) for f in fields(info)})


# ---------------------------------------------------------------- dtypes


def to_dtype(x: np.ndarray, dtype: np.dtype | type | str) -> np.ndarray:
    """Cast to dtype; integers are clipped to the dtype range then rounded (never wrap), floats pass."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.asarray(x, dtype=dtype)
    if dtype.kind == "b":
        return np.asarray(x) > 0.5
    info = np.iinfo(dtype)
    x = np.asarray(x)
    if x.dtype == dtype:
        return x
    if x.dtype.kind == "b":
        return x.astype(dtype)
    if x.dtype.kind in "iu":
        src = np.iinfo(x.dtype)
        return np.clip(x, max(info.min, src.min), min(info.max, src.max)).astype(dtype)
    work = np.float32 if dtype.itemsize <= 2 and x.dtype.itemsize <= 4 else np.float64
    lo, hi = float(info.min), float(info.max)
    if hi > info.max:  # float rounding of 2**63-1 etc. would wrap
        hi = float(np.nextafter(hi, -np.inf))
    y = np.nan_to_num(np.asarray(x, dtype=work), nan=0.0, posinf=hi, neginf=lo)
    return np.rint(np.clip(y, lo, hi)).astype(dtype)


def _compression_kwargs(compression: int | None, predictor: bool, dtype: np.dtype) -> dict:
    """tifffile arguments for a kept compression (and predictor, where one exists here for the dtype)."""
    if compression is None:
        return {}
    kw: dict = {"compression": compression}
    if predictor:
        code = 2 if np.dtype(dtype).kind in "iu" else 3  # horizontal / floating point
        try:
            tifffile.TIFF.PREDICTORS[code]
            kw["predictor"] = code
        except Exception:  # the floating-point predictor needs imagecodecs
            pass
    return kw


def _storable(dtype: np.dtype) -> np.dtype:
    """The dtype a TIFF gets for data of this dtype (half floats → float32, bool → uint8, 64-bit ints → 32-bit)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind in "iu" and dtype.itemsize == 8:
        return np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
    return dtype


# ---------------------------------------------------------------- TIFF writing


def _ijorder(axes: str) -> bool:
    """True when axes are a subsequence of ImageJ's TZCYXS order ending in YX."""
    it = iter("TZCYXS")
    return axes.rstrip("S").endswith("YX") and all(a in it for a in axes) and len(set(axes)) == len(axes)


def _is_ome_name(path: Path) -> bool:
    """True for a name ending in .ome.tif or .ome.tiff."""
    return path.name.lower().endswith((".ome.tif", ".ome.tiff"))


def _tiff_kwargs(dtype: np.dtype, axes: str, pixel_size_um: float | None, z_step_um: float | None,
                 unit: str, metadata: dict | None, ome: bool = False) -> dict:
    """tifffile keyword arguments: ImageJ hyperstack when dtype/axes allow and OME is not asked for, else OME-TIFF.

    Physical sizes are written only when known: without a pixel size an ImageJ file gets no unit (tifffile's
    1/1 resolution then reads as uncalibrated, not as 1 µm pixels) and an OME file no PhysicalSize."""
    axes = _rename_sequence_axes(axes)
    if not ome and dtype in _IMAGEJ_DTYPES and _ijorder(axes):
        name, f = _unit_factor(unit) or ("um", 1.0)
        md = dict(metadata or {}, axes=axes)
        if pixel_size_um or (z_step_um and "Z" in axes):
            md["unit"] = name
        if z_step_um and "Z" in axes:
            md["spacing"] = z_step_um / f
        kw: dict = {"imagej": True, "metadata": md}
        if pixel_size_um:
            kw["resolution"] = (f / pixel_size_um, f / pixel_size_um)
        return kw
    if dtype not in _IMAGEJ_DTYPES | _OME_DTYPES:
        raise ValueError(f"cannot store dtype {dtype} in a TIFF")
    md: dict = {"axes": axes}
    sizes = {"X": pixel_size_um, "Y": pixel_size_um, "Z": z_step_um if "Z" in axes else None}
    for axis, size in sizes.items():
        if size:
            md.update({f"PhysicalSize{axis}": size, f"PhysicalSize{axis}Unit": "µm"})
    return {"ome": True, "metadata": md}


def write_tiff(path: str | Path, data: np.ndarray, axes: str, *, pixel_size_um: float | None = None,
               z_step_um: float | None = None, unit: str = "um", metadata: dict | None = None,
               compression: int | None = None, predictor: bool = False, ome: bool = False,
               overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write a TIFF atomically: ImageJ hyperstack, or OME-TIFF when asked (`ome`, an .ome.tif name) or when
    ImageJ cannot hold the dtype (int8/int32/uint32/float64); float16 → float32."""
    data = np.asarray(data)
    if len(axes) != data.ndim:
        raise ValueError(f"axes {axes!r} do not match data shape {data.shape}")
    dtype = _storable(data.dtype)
    if dtype != data.dtype:
        if data.dtype.kind in "iu":
            log.warn(f"{Path(path).name}: {data.dtype} stored as {dtype} (values clipped)")
        data = to_dtype(data, dtype)
    kw = _tiff_kwargs(dtype, axes, pixel_size_um, z_step_um, unit, metadata, ome or _is_ome_name(Path(path)))
    with atomic_path(path, overwrite, inputs) as tmp:
        tifffile.imwrite(tmp, data, **kw, **_compression_kwargs(compression, predictor, dtype))
    return Path(path)


def _reserve(path: Path) -> None:
    """Allocate a (sparse) file's blocks now, so a full disk is an OSError here, not a crash (SIGBUS) while
    writing through a memory map."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


class StackWriter(Transaction):
    """Write a stack plane by plane into a memory-mapped temp TIFF, moved into place on close.

    `path` is a file name (committed on close) or an `AtomicFile` that its owner commits (e.g. with other
    outputs). With a compression the planes are compressed on close (streamed from the memory map into the
    output's temp file). Use as a context manager; on an exception the temp files are deleted and the final
    name is untouched.
    """

    def __init__(self, path: str | Path | AtomicFile, shape: Sequence[int], dtype: np.dtype | type | str,
                 axes: str, *, pixel_size_um: float | None = None, z_step_um: float | None = None,
                 unit: str = "um", metadata: dict | None = None, compression: int | None = None,
                 predictor: bool = False, ome: bool = False, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> None:
        self._own = not isinstance(path, AtomicFile)
        self._file = AtomicFile(path, overwrite, inputs) if self._own else path
        self.path = self._file.path
        self.shape, self.dtype = tuple(shape), _storable(dtype)
        if len(axes) != len(self.shape):
            raise ValueError(f"axes {axes!r} do not match shape {self.shape}")
        self.n_planes = int(np.prod(self.shape[:-2], dtype=np.int64))
        self._kw = _tiff_kwargs(self.dtype, axes, pixel_size_um, z_step_um, unit, metadata,
                                ome or _is_ome_name(self.path))
        self._compress = _compression_kwargs(compression, predictor, self.dtype)
        self._raw = temp_path(self.path) if self._compress else self._file.tmp
        self._mm = self._planes = None
        try:
            mm = tifffile.memmap(self._raw, shape=self.shape, dtype=self.dtype, **self._kw)
            _reserve(self._raw)
        except BaseException as e:
            self.abort()
            raise self._file.error(e) from None
        self._mm, self._planes, self._next = mm, mm.reshape((self.n_planes,) + self.shape[-2:]), 0

    def write(self, plane: np.ndarray) -> None:
        """Store the next 2-D plane (cast with to_dtype when its dtype differs)."""
        if self._next >= self.n_planes:
            raise ValueError(f"{self.path}: all {self.n_planes} planes already written")
        self._planes[self._next] = to_dtype(plane, self.dtype)
        self._next += 1

    def close(self) -> Path:
        """Flush and finish the file; commit it when this writer owns it. All planes must have been written."""
        if self._next != self.n_planes:
            self.abort()
            raise ValueError(f"{self.path}: {self._next} of {self.n_planes} planes written")
        try:
            self._mm.flush()
            planes, self._mm, self._planes = self._planes, None, None
            if self._compress:
                tifffile.imwrite(self._file.tmp, data=iter(planes), shape=self.shape, dtype=self.dtype,
                                 **self._kw, **self._compress)
            del planes
            if self._compress:
                self._raw.unlink()
            if self._own:
                self._file.commit()
        except BaseException as e:
            self.abort()
            raise self._file.error(e) from None
        return self.path

    def abort(self) -> None:
        """Discard the temp files."""
        self._mm = self._planes = None
        self._raw.unlink(missing_ok=True)
        self._file.discard()

    def commit(self) -> None:
        """Transaction: a block that ends normally closes (and publishes) the stack."""
        self.close()

    def discard(self) -> None:
        """Transaction: a failed block aborts the stack."""
        self.abort()

    def user_error(self, exc: BaseException) -> BaseException:
        """The error to show for a failure inside the block (named after the output)."""
        return self._file.error(exc)
