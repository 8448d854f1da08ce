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
from .image_meta import rename_sequence_axes, unit_factor

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


def _is_ome_name(path: Path) -> bool:
    """True for a name ending in .ome.tif or .ome.tiff."""
    return path.name.lower().endswith((".ome.tif", ".ome.tiff"))


def _tiff_kwargs(dtype: np.dtype, axes: str, pixel_size_um: float | None, z_step_um: float | None,
                 unit: str, metadata: dict | None, ome: bool = False) -> dict:
    """tifffile keyword arguments: ImageJ hyperstack when dtype/axes allow and OME is not asked for, else OME-TIFF.

    Physical sizes are written only when known: without a pixel size an ImageJ file gets no unit (tifffile's
    1/1 resolution then reads as uncalibrated, not as 1 µm pixels) and an OME file no PhysicalSize."""
    axes = rename_sequence_axes(axes)
    if not ome and dtype in _IMAGEJ_DTYPES and _ijorder(axes):
        name, f = unit_factor(unit) or ("um", 1.0)
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
    dtype = _storable(data.dtype, path)
    if dtype != data.dtype:
        data = to_dtype(data, dtype)
    kw = _tiff_kwargs(dtype, axes, pixel_size_um, z_step_um, unit, metadata, ome or _is_ome_name(Path(path)))
    with atomic_path(path, overwrite, inputs) as tmp:
        tifffile.imwrite(tmp, data, **kw, **_compression_kwargs(compression, predictor, dtype))
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
                 axes: str, *, pixel_size_um: float | None = None, z_step_um: float | None = None,
                 unit: str = "um", metadata: dict | None = None, compression: int | None = None,
                 predictor: bool = False, ome: bool = False, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> None:
        self._own = not isinstance(path, AtomicFile)
        self._file = AtomicFile(path, overwrite, inputs) if self._own else path
        self.path = self._file.path
        self.shape, self.dtype = tuple(shape), _storable(dtype, self.path)
        if len(axes) != len(self.shape):
            raise ValueError(f"axes {axes!r} do not match shape {self.shape}")
        self.n_planes = int(np.prod(self.shape[:-2], dtype=np.int64))
        self._kw = _tiff_kwargs(self.dtype, axes, pixel_size_um, z_step_um, unit, metadata,
                                ome or _is_ome_name(self.path))
        self._compress = _compression_kwargs(compression, predictor, self.dtype)
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
