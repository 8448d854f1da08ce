"""Writing images and stacks: dtype restore (`to_dtype`), ImageJ or OME-TIFF with the input's physical metadata
and lossless compression, atomically (`write_tiff`) or plane by plane through a memory map (`StackWriter`)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tifffile

from . import log
from .atomic import AtomicFile, Transaction, atomic_path, temp_path
from .image_meta import carry_ome, rename_sequence_axes, unit_factor

_IMAGEJ_DTYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32")}
_OME_DTYPES = {np.dtype(t) for t in ("int8", "int32", "uint32", "float64")}


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


CLASSIC_TIFF_BYTES = 2**32 - 2**25  # above this much pixel data tifffile needs BigTIFF (which it never picks itself
# when compressing) or, for ImageJ, its uncompressed contiguous layout


def _sized_compression(compress: dict, kw: dict, nbytes: int, path: Path) -> dict:
    """The compression arguments for an output of `nbytes` pixel data: BigTIFF for a large OME-TIFF; none for a large
    ImageJ TIFF (ImageJ reads no BigTIFF), said as a warning."""
    if not compress or nbytes <= CLASSIC_TIFF_BYTES:
        return compress
    if kw.get("imagej"):
        log.warn(f"{path.name}: {nbytes / 2**30:.1f} GiB of pixels is more than a compressed ImageJ TIFF can hold "
                 "(4 GiB); written uncompressed")
        return {}
    return {**compress, "bigtiff": True}


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


def _storable(dtype: np.dtype, path: str | Path) -> np.dtype:
    """The dtype a TIFF at `path` gets for data of this dtype (half floats → float32, bool → uint8, 64-bit ints →
    32-bit, which ImageJ and OME readers take: said once as a warning)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind in "iu" and dtype.itemsize == 8:
        stored = np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
        log.warn(f"{Path(path).name}: {dtype} stored as {stored} (ImageJ and OME readers take no 64-bit integers; "
                 "values beyond its range are clipped)")
        return stored
    return dtype


def _ijorder(axes: str) -> bool:
    """True when axes are a subsequence of ImageJ's TZCYXS order ending in YX."""
    it = iter("TZCYXS")
    return axes.rstrip("S").endswith("YX") and all(a in it for a in axes) and len(set(axes)) == len(axes)


def _as_ome(path: Path, ome: bool, imagej: bool) -> bool:
    """OME-TIFF when asked (an OME input), or for a name ending in .ome.tif(f) unless the input was ImageJ."""
    return ome or (path.name.lower().endswith((".ome.tif", ".ome.tiff")) and not imagej)


def _tiff_kwargs(dtype: np.dtype, shape: Sequence[int], axes: str, pixel_size_um: float | None,
                 z_step_um: float | None, unit: str, metadata: dict | None, ome: bool = False,
                 ome_xml: str = "", pixel_size_y_um: float | None = None) -> dict:
    """tifffile keyword arguments: ImageJ hyperstack when dtype/axes allow and OME is not asked for, else OME-TIFF."""
    axes = rename_sequence_axes(axes)
    if not ome and dtype in _IMAGEJ_DTYPES and _ijorder(axes):
        return _imagej_kwargs(int(np.prod(shape[:-2], dtype=np.int64)), axes, pixel_size_um, z_step_um, unit,
                              metadata, pixel_size_y_um)
    if dtype not in _IMAGEJ_DTYPES | _OME_DTYPES:
        raise ValueError(f"cannot store dtype {dtype} in a TIFF")
    return _ome_kwargs(dtype, shape, axes, pixel_size_um, z_step_um, ome_xml, pixel_size_y_um)


def _imagej_kwargs(n_planes: int, axes: str, pixel_size_um: float | None, z_step_um: float | None, unit: str,
                   metadata: dict | None, pixel_size_y_um: float | None = None) -> dict:
    """tifffile arguments of an ImageJ hyperstack with the kept ImageJ entries (slice labels only while they count
    the planes). A `unit` only with a known pixel size: without one, tifffile's 1/1 resolution reads as uncalibrated,
    not as 1 µm pixels, and a z step gets a `zunit` alone (which leaves ImageJ's x/y, and z, uncalibrated)."""
    md = dict(metadata or {}, axes=axes)
    if len(md.get("Labels", ())) != n_planes:
        md.pop("Labels", None)
    kw: dict = {"imagej": True, "metadata": md}
    name, f = unit_factor(unit) or ("um", 1.0)
    if pixel_size_um:
        md["unit"] = name
        kw["resolution"] = (f / pixel_size_um, f / (pixel_size_y_um or pixel_size_um))
        if kw["resolution"][0] == 1:  # 1 unit per pixel: the y unit marks it as set (image_meta reads 1/1 as unset)
            md["yunit"] = name
    if z_step_um and "Z" in axes:
        md["spacing"] = z_step_um / f
        if not pixel_size_um:
            md["zunit"] = name
    return kw


def _ome_kwargs(dtype: np.dtype, shape: Sequence[int], axes: str, pixel_size_um: float | None,
                z_step_um: float | None, ome_xml: str, pixel_size_y_um: float | None = None) -> dict:
    """tifffile arguments of an OME-TIFF: tifffile's OME-XML with what still holds of the input's `ome_xml`;
    physical sizes only when known, the pixel size also in the resolution tags (pixels per cm)."""
    md: dict = {}
    pixel_y = pixel_size_y_um or pixel_size_um
    sizes = {"X": pixel_size_um, "Y": pixel_y, "Z": z_step_um if "Z" in axes else None}
    for axis, size in sizes.items():
        if size:
            md.update({f"PhysicalSize{axis}": size, f"PhysicalSize{axis}Unit": "µm"})
    omexml = tifffile.OmeXml()
    omexml.addimage(dtype, tuple(shape), (int(np.prod(shape[:-2], dtype=np.int64)), 1, 1, *shape[-2:], 1),
                    axes=axes, **md)
    xml = carry_ome(ome_xml, omexml.tostring()) if ome_xml else omexml.tostring()
    kw: dict = {"ome": False, "metadata": None, "photometric": "minisblack",  # one page per plane, also for 3 or 4
                "description": f'<?xml version="1.0" encoding="UTF-8"?>{xml}'.encode()}
    if pixel_size_um:
        kw.update(resolution=(1e4 / pixel_size_um, 1e4 / pixel_y), resolutionunit=tifffile.RESUNIT.CENTIMETER)
    return kw


def write_tiff(path: str | Path, data: np.ndarray, axes: str, *, pixel_size_um: float | None = None,
               pixel_size_y_um: float | None = None, z_step_um: float | None = None, unit: str = "um", metadata: dict | None = None,
               compression: int | None = None, predictor: bool = False, ome: bool = False, imagej: bool = False,
               ome_xml: str = "", overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write a TIFF atomically: ImageJ hyperstack, or OME-TIFF when asked (`ome`, an .ome.tif name unless `imagej`)
    or when ImageJ cannot hold the dtype (int8/int32/uint32/float64); float16 → float32. `ome_xml`: the input's
    OME-XML, whose still valid parts an OME output keeps."""
    data = np.asarray(data)
    if len(axes) != data.ndim:
        raise ValueError(f"axes {axes!r} do not match data shape {data.shape}")
    dtype = _storable(data.dtype, path)
    if dtype != data.dtype:
        data = to_dtype(data, dtype)
    kw = _tiff_kwargs(dtype, data.shape, axes, pixel_size_um, z_step_um, unit, metadata,
                      _as_ome(Path(path), ome, imagej), ome_xml, pixel_size_y_um)
    with atomic_path(path, overwrite, inputs) as tmp:
        tifffile.imwrite(tmp, data, **kw, **_sized_compression(_compression_kwargs(compression, predictor, dtype), kw,
                                                                data.nbytes, Path(path)))
    return Path(path)


def _reserve(fd: int, path: Path) -> None:
    """Allocate an open (sparse) file's blocks now, so a full disk is an OSError before the first plane, not after
    hours of them."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    try:
        fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise OSError(e.errno, e.strerror, str(path)) from None


class StackWriter(Transaction):
    """Write a stack plane by plane into a temp TIFF, moved into place on close.

    `path` is a file name (committed on close) or an `AtomicFile` that its owner commits (e.g. with other
    outputs). With a compression the planes are compressed on close (read back one at a time into the output's
    temp file). Use as a context manager; on an exception the temp files are deleted and the final
    name is untouched.
    """

    def __init__(self, path: str | Path | AtomicFile, shape: Sequence[int], dtype: np.dtype | type | str,
                 axes: str, *, pixel_size_um: float | None = None, pixel_size_y_um: float | None = None,
                 z_step_um: float | None = None, unit: str = "um", metadata: dict | None = None, compression: int | None = None,
                 predictor: bool = False, ome: bool = False, imagej: bool = False, ome_xml: str = "",
                 overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self._own = not isinstance(path, AtomicFile)
        self._file = AtomicFile(path, overwrite, inputs) if self._own else path
        self.path = self._file.path
        self.shape, self.dtype = tuple(shape), _storable(dtype, self.path)
        if len(axes) != len(self.shape):
            raise ValueError(f"axes {axes!r} do not match shape {self.shape}")
        self.n_planes = int(np.prod(self.shape[:-2], dtype=np.int64))
        self._kw = _tiff_kwargs(self.dtype, self.shape, axes, pixel_size_um, z_step_um, unit, metadata,
                                _as_ome(self.path, ome, imagej), ome_xml, pixel_size_y_um)
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._compress = _sized_compression(_compression_kwargs(compression, predictor, self.dtype), self._kw, nbytes,
                                            self.path)
        self._raw = temp_path(self.path) if self._compress else self._file.tmp
        self._out = None
        try:
            # tifffile lays out the header and a contiguous data block; planes then go in with plain writes at
            # their offsets (through a memory map every written plane stayed in the process's resident memory:
            # a 100-plane 2048x1536 uint16 stack added 0.6 GiB)
            layout = tifffile.memmap(self._raw, shape=self.shape, dtype=self.dtype, **self._kw)
            self._offset, self._stored = int(layout.offset), layout.dtype
            del layout
            self._out = open(self._raw, "r+b")  # noqa: SIM115 - held open across write() calls, closed in close/abort
            _reserve(self._out.fileno(), self._raw)
        except BaseException as e:
            self.abort()
            raise self._file.error(e) from None
        self._plane_bytes, self._next = int(np.prod(self.shape[-2:])) * self._stored.itemsize, 0

    def write(self, plane: np.ndarray) -> None:
        """Store the next 2-D plane (cast with to_dtype when its dtype differs)."""
        if self._next >= self.n_planes:
            raise ValueError(f"{self.path}: all {self.n_planes} planes already written")
        data = np.ascontiguousarray(to_dtype(plane, self.dtype), dtype=self._stored)
        if data.shape != self.shape[-2:]:
            raise ValueError(f"{self.path}: plane of shape {data.shape}, expected {self.shape[-2:]}")
        self._out.seek(self._offset + self._next * self._plane_bytes)
        self._out.write(memoryview(data).cast("B"))
        self._next += 1

    def _stored_planes(self):
        """The written planes read back one at a time (for compressing them into the output)."""
        count = self._plane_bytes // self._stored.itemsize
        for i in range(self.n_planes):
            yield np.fromfile(self._raw, self._stored, count, offset=self._offset + i * self._plane_bytes
                              ).reshape(self.shape[-2:])

    def close(self) -> Path:
        """Finish the file; commit it when this writer owns it. All planes must have been written."""
        if self._next != self.n_planes:
            self.abort()
            raise ValueError(f"{self.path}: {self._next} of {self.n_planes} planes written")
        try:
            self._out.close()
            self._out = None
            if self._compress:
                tifffile.imwrite(self._file.tmp, data=self._stored_planes(), shape=self.shape, dtype=self.dtype,
                                 **self._kw, **self._compress)
                self._raw.unlink()
            if self._own:
                self._file.commit()
        except BaseException as e:
            self.abort()
            raise self._file.error(e) from None
        return self.path

    def abort(self) -> None:
        """Discard the temp files."""
        if self._out is not None:
            self._out.close()
            self._out = None
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
