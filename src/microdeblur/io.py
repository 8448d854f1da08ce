"""Reading and writing images and stacks: metadata, plane streaming, atomic writes, dtype restore."""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import logging
import os
import re
import secrets
import shutil
import queue
import socket
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import imageio.v3 as iio
import numpy as np
import tifffile

from . import log
from .errors import UserError
from .interrupts import shielded

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg")
_IMAGEJ_DTYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32")}
_OME_DTYPES = {np.dtype(t) for t in ("int8", "int32", "uint32", "float64")}
_UNIT_UM = {"um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_LUMA = np.array([0.2125, 0.7154, 0.0721])  # Rec. 709, as skimage.color.rgb2gray
_FATAL_TIFF_WARNINGS = ("corrupt", "invalid", "truncat", "failed to reshape")
_LOSSLESS = {"LZW", "ADOBE_DEFLATE", "DEFLATE", "PACKBITS", "LZMA", "ZSTD"}  # compressions kept on write
_TIFFFILE_IJ_VERSION = "1.11a"  # tifffile signs the ImageJ files it writes with this version
_TEMP_NAME_BYTES = 32  # temp and set-aside names add at most this many bytes to an output's name (24 used)
T = TypeVar("T")


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


# ---------------------------------------------------------------- names and inputs


def natural_key(name: str | Path) -> tuple:
    """Sort key where digit runs compare as numbers ('z2' < 'z10'), case-insensitive."""
    parts = re.split(r"(\d+)", str(name).lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def is_image_file(path: Path) -> bool:
    """True for a visible file with a supported image suffix."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside a folder, natural order."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images, natural order) and globs → unique image paths; UserError if none."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = images_in(p)
            if not found:
                raise UserError(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(str(item)):
            found = sorted((Path(m) for m in glob.glob(str(item)) if is_image_file(Path(m))), key=natural_key)
            if not found:
                raise UserError(f"{item}: pattern matches no images")
        else:
            raise UserError(f"{p}: no such file or folder")
        out.extend(found)
    if not out:
        raise UserError("no input images given")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- shards of a batch


@dataclass(frozen=True)
class Shard:
    """Job `index` (0-based) of `count` independent jobs sharing one input list."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"^\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*$")


def parse_shard(text: str) -> Shard:
    """`I/N` (0 <= I < N, I 0-based as SLURM_ARRAY_TASK_ID of an array numbered from 0) -> Shard; UserError else."""
    m = _SHARD.match(str(text))
    if m is None:
        raise UserError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
    i, n = int(m[1]), int(m[2])
    if n < 1:
        raise UserError(f"--shard {text}: N (the number of shards) must be at least 1")
    if not 0 <= i < n:
        raise UserError(f"--shard {text}: I must be 0 to {n - 1} (I counts from 0; for a job array numbered from 1 "
                        "pass $((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN)))")
    return Shard(i, n)


def shard_indices(paths: Sequence[str | Path], shard: Shard) -> list[int]:
    """Indices into `paths` of the shard's share: the list de-duplicated by real path, sorted (natural order of the
    real path) and dealt round-robin, so N jobs given the same inputs in any order cover each exactly once."""
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        first.setdefault(os.path.realpath(p), i)
    ordered = sorted(first, key=natural_key)
    return sorted(first[r] for r in ordered[shard.index::shard.count])


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, up to `depth` items ahead, so reading overlaps the caller's work.

    Exceptions of the producer are raised here in order; closing this iterator stops and joins the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((x, None)):
                    return
            put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((done, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="microdeblur-reader", daemon=True)
    thread.start()
    try:
        while True:
            x, error = q.get()
            if x is done:
                if error is not None:
                    raise error
                return
            yield x
    finally:
        stop.set()
        thread.join()


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


# ---------------------------------------------------------------- output paths and atomic writes


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file (resolving links)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _exists(p: Path) -> bool:
    """Path.exists that is False instead of raising (e.g. for a name too long to stat)."""
    try:
        return p.exists()
    except OSError:
        return False


def check_output_names(path: str | Path) -> Path:
    """Refuse an output below an existing file, or a name the file system cannot hold (with temp suffixes)."""
    p = Path(path)
    existing = next((q for q in p.parents if _exists(q)), Path("."))
    if not existing.is_dir():
        raise UserError(f"{p}: {existing} is a file, not a folder")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for part in p.parts:
        extra = _TEMP_NAME_BYTES if part == p.name else 0
        if len(os.fsencode(part)) + extra > name_max:
            raise UserError(f"{p}: name too long ({len(os.fsencode(part))} bytes, at most {name_max - extra} here)")
    return p


def check_output_path(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an input file, a folder, a path below a file, a too long name, or an existing file without overwrite."""
    p = check_output_names(path)
    if any(_same_file(p, Path(i)) for i in inputs):
        raise UserError(f"{p}: refusing to overwrite an input file; choose another output")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected a file name")
    if p.exists() and not overwrite:
        raise UserError(f"{p}: already exists (use --overwrite to replace it)")
    return p


# ---------------------------------------------------------------- atomic outputs (the one place for them)
#
# Every output is first written under a hidden temp name that carries the writer's PID and a host tag
# (`.STEM.PID.TOKEN.tmp.SUFFIX`, beside the file or, for a folder of entries, a staging folder inside it) and
# then moved onto its final name. An existing final name is replaced only with overwrite: os.link of the temp
# file fails when the name exists, even when another process created it a moment ago. Temp entries of dead
# writers on this host are removed whenever a writer starts in that folder.

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[0-9a-f]{4})[0-9a-f]{6}"
                    r"\.(?P<kind>tmp|old)(?P<suffix>\.[^.]*)?$")
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """4 hex digits naming this host in temp names (a shared disk may hold temps of live writers elsewhere)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]


def _token() -> str:
    """PID and host tag + random part of a temp name."""
    return f"{os.getpid()}.{_host_tag()}{secrets.token_hex(3)}"


def temp_path(final: Path) -> Path:
    """A fresh hidden name beside `final` for writing it: `.STEM.PID.TOKEN.tmp.SUFFIX` (same suffix)."""
    final = Path(final)
    return final.with_name(f".{final.stem}.{_token()}.tmp{final.suffix}")


def _aside_path(final: Path) -> Path:
    """Hidden name an entry being replaced is kept under until the replacement is complete."""
    return final.with_name(f".{final.name}.{_token()}.old")


def _pid_alive(pid: int) -> bool:
    """True unless the process is certainly gone (never probes on Windows, where signal 0 is Ctrl-C)."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by another user
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree; quiet when already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temp entries of this naming scheme in `folder` left by dead writers of this host.

    A set-aside entry (`.NAME.PID.TOKEN.old`) whose NAME is missing is put back instead: its writer died
    between setting it aside and moving the replacement in. Entries of live processes are never touched.
    """
    folder, done = Path(folder), []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return done
    for name in names:
        m = _STALE.match(name)
        if m is None or m["host"] != _host_tag() or _pid_alive(int(m["pid"])):
            continue
        path, final = folder / name, folder / m["name"]
        try:
            if m["kind"] == "old" and not os.path.lexists(final):
                os.rename(path, final)
                log.warn(f"{final}: restored from an interrupted replacement by process {m['pid']}")
            else:
                _remove(path)
                log.debug(f"{path}: removed, left by process {m['pid']} which is gone")
        except OSError:
            continue
        done.append(path)
    return done


def _final_name(path: Path) -> Path:
    """The output a temp or set-aside path stands for (the path itself when it is neither)."""
    m = _STALE.match(path.name)
    return path if m is None else path.with_name(m["name"] + (m["suffix"] or ""))


def _refusal(final: Path) -> UserError:
    return UserError(f"{final}: already exists (use --overwrite to replace it)")


def _link_no_replace(src: Path, final: Path) -> None:
    """Give the finished file `src` the name `final` only if that name is free, then drop `src`.

    os.link fails with FileExistsError on an existing name (whoever created it and when). Where the file
    system has no hard links (FAT, some network mounts) an exists check + rename is used: two writers that
    finish within the same moment may then both succeed (the later one wins)."""
    link = getattr(os, "link", None)
    try:
        if link is None:
            raise OSError(errno.ENOSYS, "no hard links")
        link(src, final)
    except FileExistsError:
        raise _refusal(final) from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        if os.path.lexists(final):
            raise _refusal(final) from None
        os.rename(src, final)  # Windows: fails on an existing name too
        return
    src.unlink()


def _move_in(src: Path, final: Path, overwrite: bool) -> Path | None:
    """Move a finished file or folder `src` onto `final`; an existing `final` is replaced only with overwrite.

    A replaced entry is first set aside (a file: hard-linked, so its name never goes missing; a folder:
    renamed) under `_aside_path` so that it can be put back; returns that path (None: nothing set aside)."""
    folder = src.is_dir() and not src.is_symlink()
    if not overwrite or not os.path.lexists(final):
        if not folder:
            _link_no_replace(src, final)
            return None
        try:
            os.rename(src, final)  # fails on an existing file or non-empty folder
        except OSError as e:
            if os.path.lexists(final) and e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise _refusal(final) from None
            raise
        return None
    old = _aside_path(final)
    if folder or (final.is_dir() and not final.is_symlink()):
        os.rename(final, old)
        try:
            os.rename(src, final)
        except BaseException:
            os.rename(old, final)
            raise
        return old
    try:
        os.link(final, old)
    except (OSError, AttributeError):
        old = None  # no hard links here: a replaced file cannot be put back if a later entry fails
    try:
        os.replace(src, final)
    except BaseException:
        if old is not None:
            old.unlink()
        raise
    return old


def _write_error(e: OSError, final: Path) -> UserError | None:
    """A one-line UserError naming the user's path for an OSError raised on one of its temp entries."""
    if e.filename is not None and _STALE.match(Path(e.filename).name) is None:
        return None
    return UserError(f"{final}: cannot write ({e.strerror or type(e).__name__})")


class _Moves:
    """Entries moved into place one after another, undone in reverse order when a later one fails."""

    def __init__(self) -> None:
        self.done: list[tuple[Path, Path | None, bool]] = []  # (final, set-aside old entry, existed before)

    def move(self, src: Path, final: Path, overwrite: bool) -> None:
        existed = os.path.lexists(final)
        old = _move_in(src, final, overwrite)
        self.done.append((final, old, existed))

    def undo(self) -> None:
        """Take out what was moved in and put set-aside entries back (a replaced file stays new without links)."""
        for final, old, existed in reversed(self.done):
            if old is None and not existed or old is not None and final.is_dir() and not final.is_symlink():
                _remove(final)
            if old is not None:
                os.replace(old, final)
        self.done.clear()

    def finish(self) -> None:
        """Drop the set-aside entries."""
        for _, old, _ in self.done:
            if old is not None:
                _remove(old)


def _commit_all(entries: Sequence[tuple[Path, Path, bool]]) -> None:
    """Move each finished (src, final, overwrite) into place in order: all of them, or on any failure none.

    Ctrl-C/SIGTERM wait for the moves; delivered after them, they undo the moves like any other error."""
    moves = _Moves()
    try:
        with shielded():
            for src, final, overwrite in entries:
                try:
                    moves.move(src, final, overwrite)
                except OSError as e:
                    raise (_write_error(e, final) or e) from None
    except BaseException:
        moves.undo()
        raise
    moves.finish()


class _Transaction:
    """Context-manager protocol of the atomic writers: commit on success; on failure discard the temp
    files and re-raise, translated by `user_error` into a message naming the user's path."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.discard()
        shown = self.user_error(exc)
        if shown is not exc:
            raise shown from None


class AtomicFile(_Transaction):
    """One output file: written at `tmp` (a hidden temp name beside it), moved onto `path` by `commit`.

    Use as a context manager (commit on success; temp removed on any exception, Ctrl-C and SIGTERM included)
    or hand `tmp` to a writer and let an `Outputs` commit it together with others."""

    def __init__(self, path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self.path = check_output_path(path, overwrite, inputs)
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent)
        self.tmp = temp_path(self.path)

    def error(self, e: BaseException) -> BaseException:
        """A UserError naming `path` for an OSError on a temp entry (the user never sees temp names), else `e`."""
        return (_write_error(e, self.path) or e) if isinstance(e, OSError) else e

    def commit(self) -> Path:
        """Move the finished temp file onto `path`; with overwrite=False an existing `path` is never replaced."""
        try:
            _commit_all([(self.tmp, self.path, self.overwrite)])
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        """Remove the temp file (the final name is untouched)."""
        self.tmp.unlink(missing_ok=True)

    def user_error(self, exc: BaseException) -> BaseException:
        """The error to show for a failure inside the block (see `error`)."""
        return self.error(exc)


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield the temp path of an `AtomicFile` for a writer; committed onto `path` on success, removed on error."""
    with AtomicFile(path, overwrite, inputs) as f:
        yield f.tmp


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write bytes atomically (see AtomicFile)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


class Outputs(_Transaction):
    """Several `AtomicFile`s (anywhere) committed together in the order added: all outputs of a run or none."""

    def __init__(self, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self.overwrite, self.inputs = overwrite, list(inputs)
        self.files: list[AtomicFile] = []
        self.created: list[Path] = []

    def add(self, path: str | Path) -> AtomicFile:
        """A new AtomicFile for `path` (its missing parent folders are removed again if the run fails)."""
        p = Path(path)
        self.created.extend(q for q in (p.parent, *p.parent.parents) if not q.exists())
        f = AtomicFile(p, self.overwrite, self.inputs)
        self.files.append(f)
        return f

    def commit(self) -> None:
        """Move every file into place, or none of them."""
        try:
            _commit_all([(f.tmp, f.path, self.overwrite) for f in self.files])
        except BaseException:
            self.discard()
            raise
        self.discard()

    def discard(self) -> None:
        """Remove every temp file and the folders this run created (when left empty)."""
        for f in self.files:
            f.discard()
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                pass

    def user_error(self, exc: BaseException) -> BaseException:
        """An OSError named after the output whose temp file failed (else the one being written)."""
        if not (isinstance(exc, OSError) and self.files):
            return exc
        name = Path(exc.filename).name if exc.filename is not None else None
        return next((f for f in self.files if f.tmp.name == name), self.files[-1]).error(exc)


class StagedFolder:
    """Entries (files or folders) of `target` built in a hidden staging folder inside it, then moved in.

    `path(name)` says where to build entry `name`; `commit` moves the entries in the order they were asked
    for, all or none, each under the no-replace rule (replace=True, e.g. for an index, always replaces).
    Other entries of `target` are never touched; on an exception the staging folder (and `target`, if this
    created it and it is left empty) is removed."""

    def __init__(self, target: str | Path, overwrite: bool = False) -> None:
        self.target, self.overwrite = Path(target), overwrite
        self.created = not self.target.exists()
        self.target.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.target)
        self.root = temp_path(self.target / "staging")
        self.root.mkdir()
        self.entries: dict[str, bool] = {}  # name -> replace an existing entry
        self.committed = False

    def path(self, name: str, replace: bool | None = None) -> Path:
        """Where to build entry `name`, registered for the commit (replace=None: follow overwrite)."""
        self.entries[name] = self.overwrite if replace is None else replace
        return self.root / name

    @contextmanager
    def locked(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Hold an exclusive lock on the target folder (flock on the folder itself, released by the kernel even
        when the holder is killed), e.g. to re-read and merge an index and commit without a concurrent writer.
        Where folders cannot be locked (no fcntl, some network file systems) the block runs unlocked."""
        fd = self._lock(timeout_s)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _lock(self, timeout_s: float) -> int | None:
        """File descriptor of the locked target folder, None where locking is not available."""
        try:
            import fcntl
            fd = os.open(self.target, os.O_RDONLY)
        except (ImportError, OSError):
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise UserError(f"{self.target}: another process has been writing into it for "
                                    f"{timeout_s:.0f} s; try again when it has finished") from None
                time.sleep(0.02)
            except OSError:
                os.close(fd)
                return None

    def clashes(self) -> list[str]:
        """Registered entries that exist in the target already and would not be replaced."""
        return [n for n, rep in self.entries.items() if not rep and os.path.lexists(self.target / n)]

    def commit(self) -> None:
        """Move every registered entry into the target (all or none), then remove the staging folder."""
        try:
            _commit_all([(self.root / n, self.target / n, rep) for n, rep in self.entries.items()])
        except BaseException:
            self.discard()
            raise
        self.committed = True
        _remove(self.root)

    def discard(self) -> None:
        """Remove the staging folder, and the target when this created it and it is left empty."""
        _remove(self.root)
        if self.created:
            try:
                self.target.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "StagedFolder":
        return self

    def error(self, e: BaseException) -> BaseException:
        """The exception to show, naming where a staged path was going (`target/...`), never the staging folder."""
        root = os.path.abspath(self.root)
        if isinstance(e, OSError) and e.filename is not None:
            inside = os.path.abspath(e.filename)
            if inside == root or inside.startswith(root + os.sep):
                final = self.target / _final_name(Path(os.path.relpath(inside, root)))
                return UserError(f"{final}: cannot write ({e.strerror or type(e).__name__})")
        if isinstance(e, UserError) and str(self.root) in str(e):
            return UserError(str(e).replace(str(self.root), str(self.target)))
        return e

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self.committed:
                self.commit()
            return
        self.discard()
        if self.error(exc) is not exc:
            raise self.error(exc) from None


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


class StackWriter(_Transaction):
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
        """_Transaction: a block that ends normally closes (and publishes) the stack."""
        self.close()

    def discard(self) -> None:
        """_Transaction: a failed block aborts the stack."""
        self.abort()

    def user_error(self, exc: BaseException) -> BaseException:
        """The error to show for a failure inside the block (named after the output)."""
        return self._file.error(exc)
