"""What an image file says about itself: axes, shape, dtype and physical metadata (pixel size, z step, objective
NA, wavelength) parsed from OME-XML, ImageJ entries and TIFF resolution tags."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

_UNIT_UM = {"um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_TIFFFILE_IJ_VERSION = "1.11a"  # tifffile signs the ImageJ files it writes with this version
# ImageJ entries kept on write (not min/max/Ranges: intensities change); the value calibration (signed 16-bit data
# is stored as uint16 with c0 = -32768) only on outputs of the input's values, not on defocus maps
_IJ_VALUE_KEYS = ("cf", "c0", "c1", "c2", "c3", "c4", "vunit")
_IJ_KEPT = ("finterval", "tunit", "fps", "loop", "xorigin", "yorigin", "zorigin", "Info", "Labels", "Properties", "Overlays",
            "ROI", *_IJ_VALUE_KEYS)
# children of an OME Image that still hold for an output (in schema order, all before Pixels)
_OME_IMAGE_KEPT = ("AcquisitionDate", "Description", "InstrumentRef", "ObjectiveSettings", "ImagingEnvironment",
                   "StageLabel")
_OME_NS_PREFIX = "{http://www.openmicroscopy.org/Schemas/"


@dataclass(kw_only=True)
class ImageInfo:
    """What a file holds, without its pixels: squeezed axes/shape, source dtype, physical metadata."""

    axes: str
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    pixel_size_um: float | None = None  # along X (the one the resize uses)
    pixel_size_y_um: float | None = None  # along Y where it differs from X, else None
    z_step_um: float | None = None
    na: float | None = None  # objective NA (OME Objective LensNA), None when the file does not say
    wavelength_um: float | None = None  # OME channel emission (else excitation) wavelength, µm
    unit: str = "um"
    metadata: dict = field(default_factory=dict)  # extra ImageJ entries kept on write (finterval, Info, Labels)
    compression: int | None = None  # lossless TIFF compression code kept on write (None: uncompressed)
    predictor: bool = False  # the input used a TIFF predictor with that compression
    ome: bool = False  # the input was an OME-TIFF: outputs are written as OME-TIFF too
    imagej: bool = False  # the input was an ImageJ TIFF: outputs stay ImageJ where the dtype allows, whatever their name
    ome_xml: str = ""  # the input's OME-XML: what still holds for an output is carried into it
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

    def write_kwargs(self, values: bool = True) -> dict:
        """Keyword arguments for write_tiff / StackWriter that keep axes and physical metadata (and, with `values`,
        the ImageJ calibration of the pixel values: for outputs of the same quantity as the input)."""
        metadata = {k: v for k, v in self.metadata.items() if values or k not in _IJ_VALUE_KEYS}
        return dict(axes=self.axes, pixel_size_um=self.pixel_size_um, pixel_size_y_um=self.pixel_size_y_um,
                    z_step_um=self.z_step_um,
                    unit=self.unit, metadata=metadata, compression=self.compression,
                    predictor=self.predictor, ome=self.ome, imagej=self.imagej, ome_xml=self.ome_xml)


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


def _ome_physical(xml: str) -> tuple[float | None, float | None, float | None]:
    """Pixel size along X and Y (each the other where one is missing) and PhysicalSizeZ of the first OME image,
    in µm."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, None
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return None, None, None
    x, y = _ome_length(pixels, "PhysicalSizeX", "µm"), _ome_length(pixels, "PhysicalSizeY", "µm")
    return x or y, y or x, _ome_length(pixels, "PhysicalSizeZ", "µm")


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


def _ome_local(tag: str) -> str:
    """An OME tag without its namespace; a tag of another namespace (inside an XMLAnnotation) stays as it is."""
    return _local(tag) if not tag.startswith("{") or tag.startswith(_OME_NS_PREFIX) else tag


def _plain_copy(element: ET.Element) -> ET.Element:
    """A deep copy with namespace-free OME tags."""
    copy = deepcopy(element)
    for e in copy.iter():
        e.tag, e.tail = _ome_local(e.tag), None
    return copy


def _carry_annotations(root: ET.Element, src: ET.Element) -> None:
    """Append the input's structured annotations that `root` references (and those they reference, in the input's
    order); references to annotations the input lacks are dropped."""
    known = [e for block in _children(src, "StructuredAnnotations") for e in block if e.get("ID")]
    by_id = {e.get("ID"): e for e in known}
    wanted, todo = set(), [r.get("ID") for r in root.iter("AnnotationRef")]
    while todo:
        ref = todo.pop()
        if ref in by_id and ref not in wanted:
            wanted.add(ref)
            todo += [r.get("ID") for r in by_id[ref].iter() if _local(r.tag) == "AnnotationRef"]
    for parent in list(root.iter()):
        for ref in [c for c in parent if c.tag == "AnnotationRef" and c.get("ID") not in wanted]:
            parent.remove(ref)
    if wanted:
        block = root.find("StructuredAnnotations")
        if block is None:
            block = ET.Element("StructuredAnnotations")
            root.insert(max(i for i, e in enumerate(root) if e.tag == "Image") + 1, block)
        block.extend(_plain_copy(e) for e in known if e.get("ID") in wanted)


def _children(element: ET.Element | None, name: str) -> list[ET.Element]:
    """Direct children of an element with this local name."""
    return [] if element is None else [e for e in element if _local(e.tag) == name]


def carry_ome(source: str, target: str) -> str:
    """The OME-XML `target` (tifffile's, of one output image) with what still holds of the input's `source` (its first
    image): Name, AcquisitionDate, Description, instruments and objective settings, channel attributes and settings,
    where the Z and T sizes are unchanged TimeIncrement and the Plane elements, and the annotations these reference."""
    try:
        src = ET.fromstring(source)
    except ET.ParseError:
        return target
    image_in = next(iter(_children(src, "Image")), None)
    if image_in is None:
        return target
    out = ET.fromstring(target)
    root = _plain_copy(out)
    root.attrib = {"xmlns": out.tag[1:].split("}")[0], **root.attrib}  # namespace-free tags: tifffile's by default
    image = root.find("Image")
    pixels, pixels_in = image.find("Pixels"), next(iter(_children(image_in, "Pixels")), None)
    if image_in.get("Name"):
        image.set("Name", image_in.get("Name"))
    image[:0] = [_plain_copy(e) for e in image_in if _local(e.tag) in _OME_IMAGE_KEPT]
    at = list(root).index(image)
    root[at:at] = [_plain_copy(e) for e in _children(src, "Instrument")]
    for channel, channel_in in zip(pixels.findall("Channel"), _children(pixels_in, "Channel")):
        kept = _plain_copy(channel_in)
        kept.attrib.pop("SamplesPerPixel", None)
        kept.attrib.update({k: v for k, v in channel.attrib.items() if k in ("ID", "SamplesPerPixel")})
        pixels[list(pixels).index(channel)] = kept
    if pixels_in is not None and all(pixels_in.get(f"Size{a}") == pixels.get(f"Size{a}") for a in "ZT"):
        pixels.attrib.update({k: v for k, v in pixels_in.attrib.items() if k.startswith("TimeIncrement")})
        pixels.extend(_plain_copy(e) for e in _children(pixels_in, "Plane"))
    image.extend(_plain_copy(e) for e in _children(image_in, "AnnotationRef"))  # after Pixels, in schema order
    _carry_annotations(root, src)
    return ET.tostring(root, encoding="unicode")


def tidy(value: float | None) -> float | None:
    """Drop float noise from rational resolution tags (0.2999999999999998 → 0.3)."""
    return None if value is None else float(f"{value:.10g}")


def tiff_physical(tif: tifffile.TiffFile) -> tuple[float | None, float | None, float | None, str, dict]:
    """(pixel size µm along X, along Y, z step µm, unit, extra ImageJ metadata) from OME, ImageJ or resolution
    tags."""
    px, py, dz, unit, extra = _tiff_physical_raw(tif)
    return tidy(px), tidy(py), tidy(dz), unit, extra


def _sizes(factor: float, resolution: tuple[float, float]) -> tuple[float | None, float | None]:
    """Pixel sizes along X and Y from a page's (X, Y) pixels per unit (Y as X where it is missing)."""
    xres, yres = resolution
    yres = yres if yres > 0 else xres
    return (factor / xres, factor / yres) if xres > 0 else (None, None)


def _tiff_physical_raw(tif: tifffile.TiffFile) -> tuple[float | None, float | None, float | None, str, dict]:
    """Physical metadata as stored; a plain TIFF's description (a vendor's acquisition notes) as ImageJ `Info`."""
    if tif.is_ome and tif.ome_metadata:
        return (*_ome_physical(tif.ome_metadata), "um", {})
    page = tif.pages.first
    res = (page.resolution[0] if "XResolution" in page.tags else 0.0,
           page.resolution[1] if "YResolution" in page.tags else 0.0)
    xres = res[0]
    ij = tif.imagej_metadata or {}
    if tif.is_imagej:
        extra = {k: ij[k] for k in _IJ_KEPT if ij.get(k) or (k in _IJ_VALUE_KEYS and ij.get(k) == 0)}  # cf=0: a line
        unit = unit_factor(ij.get("unit"))
        zunit = unit_factor(ij.get("zunit")) or unit  # a z step without a pixel size has a zunit only
        dz = abs(float(ij["spacing"])) * zunit[1] if ij.get("spacing") and zunit else None
        if ij.get("spacing") and zunit is None:  # uncalibrated: a spacing in pixels is kept as it is
            extra["spacing"] = ij["spacing"]
        if unit is None:
            return None, None, dz, zunit[0] if zunit else "um", extra
        name, f = unit
        # tifffile writes XResolution 1/1 when given none; ImageJ writes no tag when uncalibrated; image_write
        # marks a true 1-unit pixel with a y unit
        unset = xres == 1 and str(ij.get("ImageJ", "")) == _TIFFFILE_IJ_VERSION and not ij.get("yunit")
        px, py = _sizes(f, res) if not unset else (None, None)
        return px, py, dz, name, extra
    text = (page.description or "").strip()
    extra = {"Info": text} if text and not tif.is_shaped else {}  # tifffile's shaped JSON is not a note
    if page.resolutionunit == tifffile.RESUNIT.CENTIMETER and xres > 0:
        return *_sizes(1e4, res), None, "um", extra
    return None, None, None, "um", extra  # inch-based resolution is display dpi, not a physical size


def rename_sequence_axes(axes: str) -> str:
    """tifffile's generic page-sequence axes ('I', 'Q') become 'Z' when the file has no Z."""
    for a in "IQ":
        if a in axes and "Z" not in axes:
            axes = axes.replace(a, "Z", 1)
    return axes
