"""Raw through-focus days → prepared folder (index.json + one Z-stack per crop); bright-field focus detection."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from . import interrupts, log
from .atomic import StagedFolder
from .calibration import NA_RANGE, PIXEL_RANGE_UM, REFERENCE, WAVELENGTH_RANGE_UM, Microscope, agreed_value, dz_factor
from .engine import check_finite
from .errors import UserError, require_number
from .image_meta import ImageInfo
from .image_read import iter_planes, read_image, read_info
from .image_write import to_dtype, write_tiff
from .inputs import IMAGE_SUFFIXES, TIFF_SUFFIXES, images_in, natural_key
from .normalize import frame_normalizer
from .resizing import SCALE_RANGE, rescale, scale_ok, scaled_shape

INDEX_NAME = "index.json"
FORMAT, VERSION = "microdeblur-prepared", 1
FOCUS_MARKER = "focus.txt"
GROUND_TRUTH = "ground_truth.json"
MIN_VALLEY = 0.1  # a contrast valley must be this deep, relative to the contrast range, to be trusted
_INFOCUS = re.compile(r"in[-_ ]?focus", re.IGNORECASE)
_PROJECTION = re.compile(r"projection", re.IGNORECASE)


# ---------------------------------------------------------------- frames


def crop_grid(shape: Sequence[int], tile: int) -> tuple[int, int, list[int]]:
    """(rows, cols, [dropped px at bottom, at right]) of non-overlapping crops (tiling.tile_grid overlaps)."""
    h, w = shape[-2], shape[-1]
    return h // tile, w // tile, [h % tile, w % tile]


# ---------------------------------------------------------------- focus


def plane_contrast(frame: np.ndarray) -> float:
    """Normalised contrast: std / mean of the frame after light (sigma 1 px) smoothing against noise."""
    g = ndi.gaussian_filter(np.asarray(frame, dtype=np.float32), 1.0)
    mean = float(g.mean())
    return float(g.std()) / mean if mean > 0 else float(g.std())


@dataclass(frozen=True)
class FocusEstimate:
    """Chosen in-focus plane, the reason in words, and whether the contrast curve supported it clearly."""

    plane: int
    reason: str
    reliable: bool


def focus_from_contrast(contrast: Sequence[float]) -> FocusEstimate:
    """Bright-field focus: the deepest contrast valley between two contrast maxima (see docs/prepare.md)."""
    c = np.asarray(contrast, dtype=np.float64)
    s = ndi.gaussian_filter1d(c, 1.0, mode="nearest") if len(c) >= 7 else c
    best, depth = None, 0.0
    for i in range(1, len(s) - 1):
        if s[i] <= s[i - 1] and s[i] <= s[i + 1]:
            d = min(s[:i].max(), s[i + 1:].max()) - s[i]
            if d > depth:
                best, depth = i, d
    if best is not None and depth >= MIN_VALLEY * (s.max() - s.min()):
        left, right = int(np.argmax(s[:best])), best + 1 + int(np.argmax(s[best + 1:]))
        return FocusEstimate(best, f"contrast minimum between contrast maxima at planes {left} and {right}", True)
    i = int(np.argmin(s))
    return FocusEstimate(i, "lowest contrast, no contrast valley inside the stack (focus may lie outside)", False)


# ---------------------------------------------------------------- finding days


@dataclass(frozen=True)
class Day:
    """One raw through-focus day: a folder of plane files or one stack file, and what is known about it (each
    settings pass returns a new Day)."""

    name: str
    source: Path
    stack: bool
    files: list[Path]
    info: ImageInfo  # of the stack, or of the first plane file
    n_planes: int
    marker: Path  # focus.txt (folder) or <stem>.focus.txt (stack)
    ground_truth: Path
    focus_plane: int | None = None
    focus_method: str = "auto"
    focus_reason: str = ""
    z_step_um: float | None = None
    z_step_from: str = "unknown"
    optics: DayOptics | None = None


@dataclass(frozen=True)
class DayOptics:
    """A day's camera pixel size at the sample, objective NA and wavelength (µm), and where each came from."""

    pixel_um: float | None
    na: float
    wavelength_um: float
    sources: dict[str, str]

    def dz_factor(self, working_pixel_um: float | None) -> float:
        """Reference-microscope µm of defocus per µm on this day's microscope (same u = Δz·NA²/λ, the NAs counted
        up to the band of `working_pixel_um` pixels: calibration.dz_factor)."""
        return 1.0 / dz_factor(replace(REFERENCE, working_pixel_um=working_pixel_um),
                               Microscope(self.na, self.wavelength_um))

    def scale(self, working_pixel_um: float) -> float | None:
        """Resize factor that brings this day to the working pixel size (None when its pixel size is unknown)."""
        return None if self.pixel_um is None else float(f"{self.pixel_um / working_pixel_um:.10g}")

    def to_dict(self, working_pixel_um: float | None) -> dict:
        return {"pixel_um": self.pixel_um, "na": self.na, "wavelength_um": self.wavelength_um,
                "dz_factor": round(self.dz_factor(working_pixel_um), 6), "from": dict(self.sources)}


def _stem(path: Path) -> str:
    """File name without .tif/.tiff (and .ome)."""
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return name[:-4] if name.lower().endswith(".ome") else name


def _stack_day(path: Path) -> Day:
    """A day held in one multi-page TIFF (planes along its only non-YX axis)."""
    info = read_info(path)
    if info.n_planes > 1 and len(info.axes) != 3:
        raise UserError(f"{path}: expected a through-focus stack with one plane axis (ZYX), "
                        f"got axes {info.axes} shape {info.shape}")
    stem = _stem(path)
    return Day(stem, path, True, [path], info, info.n_planes, path.with_name(f"{stem}.{FOCUS_MARKER}"),
               path.with_name(f"{stem}.{GROUND_TRUTH}"))


def _folder_day(folder: Path, files: list[Path]) -> Day:
    """A day held as one image per plane in a folder (natural order of file names)."""
    skipped = [f for f in files if _PROJECTION.search(f.stem)]
    files = [f for f in files if f not in skipped]
    if not files:
        raise UserError(f"{folder}: holds only projection images ({', '.join(f.name for f in skipped)}), "
                        "no through-focus planes")
    if skipped:
        log.info(f"{folder.name}: skipping {', '.join(f.name for f in skipped)} (projection, not a plane)")
    _check_plane_numbers(folder, files)
    return Day(folder.resolve().name, folder, False, files, read_info(files[0]), len(files),
               folder / FOCUS_MARKER, folder / GROUND_TRUTH)


def _check_plane_numbers(folder: Path, files: list[Path]) -> None:
    """Refuse a plane folder whose file names end in plane numbers that rise in unequal steps (a missing plane):
    the planes are counted by position, so every dz after the gap would be wrong."""
    found = [re.search(r"(\d+)$", f.stem) for f in files]
    if len(files) < 3 or not all(found):
        return
    numbers = [int(m[1]) for m in found]
    steps = np.diff(numbers)
    if np.all(steps > 0) and np.any(steps != steps[0]):
        at = int(np.argmax(steps != steps[0]))
        raise UserError(f"{folder}: the plane numbers in the file names jump from {numbers[at]} "
                        f"({files[at].name}) to {numbers[at + 1]} ({files[at + 1].name}); planes are counted by "
                        "position, so a missing plane would shift every dz after it: add it, or prepare the planes "
                        "before the gap as their own day")


def _days_in_folder(folder: Path, nested: bool) -> list[Day]:
    """Days in a folder: itself (plane files), its stack files, or (top level only) its sub-folders."""
    files = images_in(folder)
    subs = [d for d in sorted(folder.iterdir(), key=natural_key) if d.is_dir() and not d.name.startswith(".")]
    if files:
        if subs:
            log.warn(f"{folder}: holds images, so its sub-folders are ignored")
        tiffs = [f for f in files if f.suffix.lower() in TIFF_SUFFIXES]
        if tiffs and read_info(tiffs[0]).n_planes > 1:
            return [_stack_day(f) for f in tiffs]
        return [_folder_day(folder, files)]
    return [d for sub in subs for d in _days_in_folder(sub, nested=False)] if nested else []


def find_days(raw: Sequence[Path]) -> list[Day]:
    """Days from RAW arguments (day folders, stack files, or folders of those); names must be unique."""
    days: list[Day] = []
    for p in map(Path, raw):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        found = [_stack_day(p)] if p.is_file() else _days_in_folder(p, nested=True)
        if not found:
            raise UserError(f"{p}: no images found (expected {'/'.join(IMAGE_SUFFIXES)} planes or stacks, "
                            "or day folders holding them)")
        days.extend(found)
    clash = {n for n in (d.name for d in days) if sum(e.name == n for e in days) > 1}
    days = [replace(d, name=f"{d.source.resolve().parent.name}_{d.name}") if d.name in clash else d for d in days]
    seen: dict[str, Path] = {}
    for d in days:  # names that clash get their parent folder's name in front; a clash left after that is refused
        if d.name in seen:
            raise UserError(f"two days are named '{d.name}' ({seen[d.name]} and {d.source}); "
                            "day names come from folder/file names and must be unique")
        seen[d.name] = d.source
    return days


# ---------------------------------------------------------------- per-day settings


def _read_marker(path: Path) -> int:
    """Plane index on the first line of a focus marker file."""
    try:
        first = (path.read_text(errors="replace").splitlines() or [""])[0].strip()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return int(first)
    except ValueError:
        raise UserError(f"{path}: first line must be the in-focus plane index, got {first!r}") from None


def _with_focus(day: Day, option: int | None) -> Day:
    """The day with its focus from --focus-plane, else the marker file, else an 'infocus' file name; else left
    to auto."""
    named = [i for i, f in enumerate(day.files) if _INFOCUS.search(f.stem)] if not day.stack else []
    if option is not None:
        day = replace(day, focus_plane=option, focus_method="option", focus_reason="--focus-plane")
    elif day.marker.is_file():
        day = replace(day, focus_plane=_read_marker(day.marker), focus_method="marker", focus_reason=str(day.marker))
    elif named:
        if len(named) > 1:
            raise UserError(f"{day.source}: several files are marked in-focus "
                            f"({', '.join(day.files[i].name for i in named)})")
        day = replace(day, focus_plane=named[0], focus_method="marker",
                      focus_reason=f"file name {day.files[named[0]].name}")
    if day.focus_plane is not None and not 0 <= day.focus_plane < day.n_planes:
        raise UserError(f"{day.name}: focus plane {day.focus_plane} (from {day.focus_reason}) is out of range "
                        f"0..{day.n_planes - 1}")
    return day


def _with_z_step(day: Day, option: float | None) -> Day:
    """The day with its z step from --z-step, else image metadata, else ground_truth.json 'z_step_um', else
    unknown."""
    if option is not None:
        return replace(day, z_step_um=option, z_step_from="--z-step")
    if day.info.z_step_um:
        return replace(day, z_step_um=day.info.z_step_um, z_step_from="metadata")
    if day.ground_truth.is_file():
        try:
            value = json.loads(day.ground_truth.read_text()).get("z_step_um")
        except (OSError, ValueError, AttributeError) as e:
            log.warn(f"{day.ground_truth}: ignored ({e})")
            value = None
        if value:
            return replace(day, z_step_um=float(value), z_step_from=day.ground_truth.name)
    return day


def ground_truth_optics(path: Path) -> dict:
    """The simulator's `optics` entry of a ground_truth.json ({} when there is none or it is unreadable)."""
    try:
        optics = json.loads(path.read_text()).get("optics") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return {}
    return optics if isinstance(optics, dict) else {}


def _with_optics(day: Day, options) -> Day:
    """The day with its optics: image metadata, else ground_truth.json, else --pixel-size / --na / --wavelength
    (an option contradicting the file is an error, as in `deblur`), else the reference microscope's."""
    truth = ground_truth_optics(day.ground_truth)
    picked, sources = {}, {}
    for key, option, what, unit, stored, valid, ref in (
            ("pixel_um", "--pixel-size", "pixel size", " um", day.info.pixel_size_um, PIXEL_RANGE_UM, None),
            ("na", "--na", "objective NA", "", day.info.na, NA_RANGE, REFERENCE.na),
            ("wavelength_um", "--wavelength", "wavelength", " um", day.info.wavelength_um, WAVELENGTH_RANGE_UM,
             REFERENCE.wavelength_um)):
        given = getattr(options, "pixel_size_um" if key == "pixel_um" else key)
        from_truth = truth.get(key) if isinstance(truth.get(key), (int, float)) else None
        stored_value, stored_from = (stored, "metadata") if stored else (from_truth, GROUND_TRUTH)
        value = agreed_value(day.source, option, what, unit, given, stored_value, valid,
                             "the file's metadata" if stored_from == "metadata" else str(day.ground_truth))
        if value is not None:
            picked[key], sources[key] = float(value), stored_from if value == stored_value else option
        else:
            picked[key], sources[key] = ref, "reference"
    return replace(day, optics=DayOptics(picked["pixel_um"], picked["na"], picked["wavelength_um"], sources))


def _day_scale(day: Day, scale: float | None, working_pixel_um: float) -> float:
    """--scale when given, else the day's pixel size / the working pixel size, else the reference camera's."""
    if scale is not None:
        return scale
    own = day.optics.scale(working_pixel_um) if day.optics is not None else None
    return own if own is not None else float(f"{REFERENCE.pixel_um / working_pixel_um:.10g}")


def _check_day(day: Day, scale: float, tile: int) -> None:
    """Reject days that cannot give a through-focus crop stack."""
    if day.n_planes < 2:
        raise UserError(f"{day.name}: only one plane in {day.source}; a through-focus day needs at least 2")
    h, w = scaled_shape(day.info.plane_shape, scale)
    if h < tile or w < tile:
        y, x = day.info.plane_shape
        raise UserError(f"{day.name}: frames of {x}x{y} px are {w}x{h} at scale {scale}, smaller than one "
                        f"{tile}-px tile")


# ---------------------------------------------------------------- reading and writing one day


def _day_planes(day: Day) -> Iterator[np.ndarray]:
    """The day's 2-D planes in order, one at a time; all must share the first plane's size and be finite."""
    if day.stack:
        planes = ((f"{day.source} (plane {i})", p) for i, p in iter_planes(day.source))
    else:
        planes = ((str(f), _single_plane(f)) for f in day.files)
    for where, plane in planes:
        if plane.shape != day.info.plane_shape:
            y, x = day.info.plane_shape
            raise UserError(f"{where}: frame size {plane.shape[1]}x{plane.shape[0]} differs from {x}x{y} "
                            f"of {day.files[0].name} (all planes of a day must match)")
        yield check_finite(plane, where)


def _single_plane(path: Path) -> np.ndarray:
    """The one 2-D plane of a plane file."""
    img = read_image(path)
    if img.data.ndim != 2:
        raise UserError(f"{path}: expected one 2-D plane per file, got axes {img.axes} shape {img.shape}")
    return img.data


def _prepare_day(day: Day, stage: Path, scale: float, tile: int) -> dict:
    """Downsize every plane, measure lo/hi and contrast, find focus, write crop stacks into `stage`."""
    h, w = scaled_shape(day.info.plane_shape, scale)
    dtype = np.dtype(np.float32) if day.info.dtype.kind == "f" else day.info.dtype
    rows, cols, dropped = crop_grid((h, w), tile)
    stack = np.empty((day.n_planes, h, w), dtype=dtype)
    lo, hi, contrast = [], [], []
    with log.progress(day.name, total=day.n_planes + rows * cols) as bar:
        bar.set("reading planes")
        for i, plane in enumerate(_day_planes(day)):
            stack[i] = to_dtype(rescale(plane, scale), dtype)
            norm = frame_normalizer(stack[i])
            lo.append(norm.lo)
            hi.append(norm.hi)
            contrast.append(plane_contrast(stack[i]))
            bar.advance()
        if day.focus_plane is None:
            est = focus_from_contrast(contrast)
            day = replace(day, focus_plane=est.plane, focus_reason=est.reason)
            if not est.reliable:
                log.warn(f"{day.name}: auto focus uncertain ({est.reason}); give --focus-plane or {FOCUS_MARKER}")
        bar.set("writing crops")
        native = day.optics.pixel_um if day.optics is not None and day.optics.sources.get("pixel_um") != "reference" else None
        px = native / scale if native else None
        crops = []
        for r in range(rows):
            for c in range(cols):
                y, x = r * tile, c * tile
                write_tiff(stage / f"r{r}_c{c}.tif", stack[:, y:y + tile, x:x + tile], "ZYX",
                           pixel_size_um=px, z_step_um=day.z_step_um)
                crops.append({"file": f"{day.name}/r{r}_c{c}.tif", "row": r, "col": c, "y": y, "x": x})
                bar.advance()
    log.info(f"{day.name}: in-focus plane {day.focus_plane} ({day.focus_method}: {day.focus_reason}); "
             f"z step {day.z_step_um} um ({day.z_step_from})")
    if any(dropped):
        log.info(f"{day.name}: dropped partial tiles, {dropped[0]} px at the bottom and {dropped[1]} px at the right")
    return {"source": str(day.source.resolve()), "n_planes": day.n_planes, "focus_plane": day.focus_plane,
            "focus_method": day.focus_method, "z_step_um": day.z_step_um, "pixel_size_um": px, "scale": scale,
            "optics": None if day.optics is None else day.optics.to_dict(px or REFERENCE.working_pixel_um),
            "frame_shape": [h, w], "dz_planes": [i - day.focus_plane for i in range(day.n_planes)],
            "lo": lo, "hi": hi, "dropped_edge_px": dropped, "crops": crops}


# ---------------------------------------------------------------- the prepared folder


def load_index(folder: Path) -> dict:
    """The checked index.json of a prepared folder (the only reader of it); UserError when there is none."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"prepared folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (expected the output of `microdeblur prepare`)")
    path = folder / INDEX_NAME
    if not path.is_file():
        raise UserError(f"{folder} has no {INDEX_NAME}: is it a folder written by `microdeblur prepare`?")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{path} is not a {FORMAT} index")
    if index.get("version") != VERSION:
        raise UserError(f"{path}: index version {index.get('version')!r} is not supported (expected {VERSION})")
    days = index.get("days")
    if not isinstance(days, dict) or not days or not all(isinstance(d, dict) for d in days.values()):
        raise UserError(f"{path} lists no days")
    return index


def _resize_rule(scale: float | None, working_pixel_um: float) -> dict:
    """How a prepared folder resizes its days: one --scale for all, or each to the working pixel size; `scale`
    is then the resize of an input whose pixel size is unknown (the reference camera's)."""
    if scale is not None:
        return {"scale": scale, "working_pixel_um": None}
    return {"scale": float(f"{REFERENCE.pixel_um / working_pixel_um:.10g}"), "working_pixel_um": working_pixel_um}


def _describe(rule: dict) -> str:
    wp = rule.get("working_pixel_um")
    return f"resize to {wp:g} um pixels" if wp else f"--scale {rule.get('scale')}"


def _open_data(data: Path, rule: dict, tile: int, days: list[Day], overwrite: bool) -> dict:
    """The index to extend (a new one for a new folder); refuse clashes before any work is done."""
    if data.exists() and not data.is_dir():
        raise UserError(f"{data}: exists and is not a folder")
    if not (data / INDEX_NAME).is_file():
        if data.is_dir() and any(not p.name.startswith(".") for p in data.iterdir()):
            raise UserError(f"{data}: folder is not empty and has no {INDEX_NAME}; use an empty or prepared folder")
        return {"format": FORMAT, "version": VERSION, "tile": tile, **rule, "days": {}}
    index = load_index(data)
    was = {"scale": index.get("scale", 0), "working_pixel_um": index.get("working_pixel_um")}
    same_rule = (was["working_pixel_um"] is None) == (rule["working_pixel_um"] is None) and all(
        math.isclose(was[k], rule[k]) for k in rule if rule[k] is not None)
    if index.get("tile") != tile or not same_rule:
        raise UserError(f"{data}: prepared with tile {index.get('tile')} and {_describe(was)}; "
                        f"got tile {tile} and {_describe(rule)}")
    for d in days:
        if (d.name in index["days"] or (data / d.name).exists()) and not overwrite:
            raise UserError(f"day '{d.name}' already exists in {data} (use --overwrite to replace it)")
    return index


def prepare_days(raw: list[Path], data: Path, *, focus_plane: int | None, scale: float | None, tile: int,
                 z_step_um: float | None, overwrite: bool, optics=None,
                 working_pixel_um: float = REFERENCE.working_pixel_um) -> dict:
    """Prepare raw days into DATA (layout in docs/design.md); all-or-nothing; returns a summary dict.

    Each day is resized to `working_pixel_um` from its own pixel size (metadata, ground truth, --pixel-size)
    unless `scale` fixes one factor for all; its NA and wavelength give its dz factor (docs/prepare.md)."""
    from .calibration import OpticsOptions

    start = time.perf_counter()
    if scale is not None and not scale_ok(scale):  # also refuses NaN
        raise UserError(f"--scale must be in {SCALE_RANGE}, got {scale}")
    if not (math.isfinite(working_pixel_um) and PIXEL_RANGE_UM[0] < working_pixel_um <= PIXEL_RANGE_UM[1]):
        raise UserError(f"--working-pixel must be a pixel size in um, got {working_pixel_um:g}")
    if tile < 1:
        raise UserError(f"--tile must be a positive number of pixels, got {tile}")
    require_number("--z-step", z_step_um, 0, open_low=True, optional=True)
    options = (optics or OpticsOptions()).checked()
    data = Path(data)
    rule = _resize_rule(scale, working_pixel_um)
    days, scales = [], {}
    for day in find_days(raw):
        day = _with_optics(_with_z_step(_with_focus(day, focus_plane), z_step_um), options)
        scales[day.name] = _day_scale(day, scale, working_pixel_um)
        if not scale_ok(scales[day.name]):
            raise UserError(f"{day.name}: its pixel size {day.optics.pixel_um:g} um needs a resize of "
                            f"{scales[day.name]:g} to {working_pixel_um:g} um pixels, outside {SCALE_RANGE}; give --scale")
        _check_day(day, scales[day.name], tile)
        days.append(day)
    _open_data(data, rule, tile, days, overwrite)  # refuse clashes before any work
    entries = {}
    with StagedFolder(data, overwrite) as stage:
        for day in days:
            folder = stage.path(day.name)
            folder.mkdir()
            entries[day.name] = _prepare_day(day, folder, scales[day.name], tile)
        with stage.locked():  # another prepare may have added days meanwhile: merge with the index as it is now
            index = _open_data(data, rule, tile, days, overwrite)
            index["days"].update(entries)
            index["days"] = {k: index["days"][k] for k in sorted(index["days"], key=natural_key)}
            stage.path(INDEX_NAME, replace=True).write_text(json.dumps(index, indent=1))
            stage.commit()
    interrupts.mark_complete()
    _report_defaults(days, scale)  # after success: a failed run shows its one error line only
    planes = sum(d.n_planes for d in days)
    crops = sum(len(index["days"][d.name]["crops"]) for d in days)
    seconds = time.perf_counter() - start
    log.info(f"prepared {len(days)} day(s): {planes} planes, {crops} crops in {seconds:.1f} s -> {data}")
    return {"data": str(data), "days": [d.name for d in days], "planes": planes, "crops": crops, "seconds": seconds}


def _report_defaults(days: list[Day], scale: float | None) -> None:
    """Say once which days fall back to the reference microscope's pixel size, NA or wavelength, and warn about
    days without a z step."""
    no_step = [d.name for d in days if d.z_step_um is None]
    if no_step:
        log.warn(f"{', '.join(no_step[:4])}{f' and {len(no_step) - 4} more' if len(no_step) > 4 else ''}: z step "
                 "unknown, so dz is counted in planes (give --z-step UM; `train --init` on the shipped weights, "
                 "whose dz is in um, needs it)")
    for key, what, option in (("pixel_um", "pixel size", "--pixel-size"), ("na", "objective NA", "--na"),
                              ("wavelength_um", "wavelength", "--wavelength")):
        if key == "pixel_um" and scale is not None:
            continue
        names = [d.name for d in days if d.optics.sources.get(key) == "reference"]
        if names:
            ref = {"pixel_um": REFERENCE.pixel_um, "na": REFERENCE.na, "wavelength_um": REFERENCE.wavelength_um}[key]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            log.info(f"{shown}: {what} unknown, using the reference microscope's {ref:g} (give {option})")
