"""What an image file says about itself: axes, shape, dtype and physical metadata (pixel size, z step, objective
NA, wavelength) parsed from OME-XML, ImageJ entries and TIFF resolution tags."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

_UNIT_UM = {"um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_TIFFFILE_IJ_VERSION = "1.11a"  # tifffile signs the ImageJ files it writes with this version


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


def unit_factor(unit: str | None) -> tuple[str, float] | None:
    """Normalised unit name and its size in µm, or None when not a length unit."""
    if not unit:
        return None
    u = str(unit).strip().lower().replace("\\u00b5", "µ").replace("μ", "µ")
    u = {"micron": "um", "microns": "um", "µm": "um", "micrometer": "um", "nanometer": "nm"}.get(u, u)
    return (u, _UNIT_UM[u]) if u in _UNIT_UM else None


def _ome_length(element: ET.Element | None, name: str, default_unit: str) -> float | None:
    """A positive finite OME length attribute `name` (unit in `name`Unit, OME's default otherwise), in µm."""
    value = None if element is None else element.get(name)
    unit = unit_factor(element.get(f"{name}Unit", default_unit)) if element is not None else None
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


def ome_optics(xml: str) -> tuple[float | None, float | None]:
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


def tidy(value: float | None) -> float | None:
    """Drop float noise from rational resolution tags (0.2999999999999998 → 0.3)."""
    return None if value is None else float(f"{value:.10g}")


def tiff_physical(tif: tifffile.TiffFile) -> tuple[float | None, float | None, str, dict]:
    """(pixel size µm, z step µm, unit, extra ImageJ metadata) from OME, ImageJ or resolution tags."""
    px, dz, unit, extra = _tiff_physical_raw(tif)
    return tidy(px), tidy(dz), unit, extra


def _tiff_physical_raw(tif: tifffile.TiffFile) -> tuple[float | None, float | None, str, dict]:
    """Physical metadata as stored."""
    if tif.is_ome and tif.ome_metadata:
        px, dz = _ome_physical(tif.ome_metadata)
        return px, dz, "um", {}
    page = tif.pages.first
    xres = page.resolution[0] if "XResolution" in page.tags else 0.0
    ij = tif.imagej_metadata or {}
    if tif.is_imagej:
        unit = unit_factor(ij.get("unit"))
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


def rename_sequence_axes(axes: str) -> str:
    """tifffile's generic page-sequence axes ('I', 'Q') become 'Z' when the file has no Z."""
    for a in "IQ":
        if a in axes and "Z" not in axes:
            axes = axes.replace(a, "Z", 1)
    return axes
