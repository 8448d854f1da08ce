"""Qt-free work behind the napari widgets: layer checks, a weights cache, plane loops and refocus sessions.

Everything here goes through `microdeblur.engine.Deblurrer` (the CLI's core object), so a widget's
output equals what `microdeblur deblur` / `focus` / `deblur --dz` give for the same plane.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, one_line

MIN_SIDE = 16  # px per side below which a plane shows too little to judge blur (the network's size step)
DZ_LIMITS = (-30.0, 30.0)  # refocus slider range (um)


# ---------------------------------------------------------------- messages


def error_message(exc: BaseException) -> str:
    """The one line the CLI prints for an exception (without 'error: '); unexpected ones also go to stderr."""
    if isinstance(exc, (UserError, OSError, MemoryError)):
        return one_line(exc, "try smaller images")
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    return f"{one_line(exc)} (the traceback is on the terminal; please report it)"


# ---------------------------------------------------------------- weights


def weights_path(value: Any) -> Path | None:
    """A chosen weights file, or None for the shipped default (empty text or '.')."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else Path(text).expanduser()


@lru_cache(maxsize=2)
def _load(path: str | None, stamp: int, device: str):
    """Deblurrer for one weights file version on PyTorch (cached: the three widgets share it)."""
    from ..backends import load_deblurrer

    return load_deblurrer(None if path is None else Path(path), device, backend="torch")[0]


def deblurrer(weights: Any = None, device: str = "auto"):
    """Deblurrer for the chosen weights (None/empty: shipped), reloaded when the file changes."""
    path = weights_path(weights)
    stamp = path.stat().st_mtime_ns if path is not None and path.is_file() else 0
    return _load(None if path is None else str(path.resolve()), stamp, device)


def for_optics(db, options, name: str) -> tuple[Any, float]:
    """(the Deblurrer at a layer's resize factor, the layer's dz factor) from the widget's NA, wavelength and pixel
    size (`calibration.OpticsOptions`, as the CLI's options for a file without metadata; unset: the reference
    microscope and the weights' resize factor)."""
    from types import SimpleNamespace

    from ..optics import OpticsRun

    info = SimpleNamespace(path=name, pixel_size_um=None, na=None, wavelength_um=None)
    return OpticsRun(db, options.checked(), True).resolve(info)


def weights_name(weights: Any) -> str:
    """How messages name the weights."""
    path = weights_path(weights)
    return "the default weights" if path is None else str(path)


# ---------------------------------------------------------------- layers


@dataclass
class LayerImage:
    """A layer's pixels as planes: any array (numpy, dask, zarr) whose last two axes are Y, X."""

    name: str
    data: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def lead(self) -> tuple[int, ...]:
        """Shape of the plane axes (empty for a 2-D image)."""
        return self.shape[:-2]

    @property
    def n_planes(self) -> int:
        return math.prod(self.lead)

    def index(self, i: int) -> tuple[int, ...]:
        """Leading-axes index of flat plane number i."""
        return tuple(int(v) for v in np.unravel_index(i, self.lead)) if self.lead else ()

    def plane(self, i: int) -> np.ndarray:
        """Plane i as a numpy array, refused (CLI message) when it holds NaN, inf or values beyond ±1e30."""
        from ..engine import check_finite

        plane = np.asarray(self.data[self.index(i)])
        return check_finite(plane, self.name, i if self.n_planes > 1 else None)


def layer_image(name: str, data: Any, *, rgb: bool = False, multiscale: bool = False) -> LayerImage:
    """The checked planes of an image layer; UserError (one line) for what the model cannot take."""
    if multiscale:
        data = data[0]  # full resolution
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if rgb:
        raise UserError(f"{name}: is an RGB(A) layer; only single-channel bright-field images are processed: "
                        "split the channels first (right-click the layer > Split RGB) and choose the bright-field one")
    if len(shape) < 2:
        raise UserError(f"{name}: cannot interpret an array of shape {shape}; accepted are 2-D images and stacks of them")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "uif":
        kind = "binary (bool)" if dtype.kind == "b" else f"{dtype}"
        raise UserError(f"{name}: {kind} pixels are not supported; bright-field images hold real intensities "
                        "(integer or float)")
    h, w = shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise UserError(f"{name}: planes of {w}x{h} px are too small to judge blur; "
                        f"at least {MIN_SIDE}x{MIN_SIDE} px are needed")
    return LayerImage(name, data)


# ---------------------------------------------------------------- plane loops (generators: one yield per step)


def require_focus_code(db, weights: Any) -> None:
    """UserError when the weights hold no in-focus blur code (deblurring needs it)."""
    if db.target is None:
        raise UserError(f"{weights_name(weights)} hold no in-focus blur code; use the Refocus widget instead")


def deblur_steps(db, image: LayerImage) -> Generator[int, None, np.ndarray]:
    """Deblur every plane with `deblur_plane` (the CLI's call); yields after each plane, returns the stack
    (input shape, dtype as `deblur_plane` gives it)."""
    out = None
    for i in range(image.n_planes):
        plane = db.deblur_plane(image.plane(i))
        if out is None:
            out = np.empty(image.shape, plane.dtype)
        out[image.index(i)] = plane
        yield i + 1
    return out


def focus_steps(db, image: LayerImage, dz_factor: float = 1.0) -> Generator[int, None, tuple[np.ndarray, list[dict]]]:
    """Defocus map (dz um of the layer's microscope: `dz_factor`, float32) of every plane and one summary row per
    plane; yields after each plane."""
    out = np.empty(image.shape, np.float32)
    rows = []
    for i in range(image.n_planes):
        dmap, summary = db.focus_map(image.plane(i), dz_factor)
        out[image.index(i)] = dmap
        rows.append({"plane": i, **summary})
        yield i + 1
    return out, rows


def dz_limit(dmap: np.ndarray) -> float:
    """Symmetric colour limit (um) of a defocus map: its 99th |dz| percentile, at least 2 um, rounded up."""
    known = np.abs(dmap[np.isfinite(dmap)])
    top = float(np.percentile(known, 99)) if known.size else 0.0
    return float(max(2.0, math.ceil(top)))


def summary_text(rows: Sequence[dict]) -> str:
    """One line over all planes: median dz and fraction in focus (planes without contrast left out)."""
    known = [r for r in rows if np.isfinite(r["median_dz_um"])]
    if not known:
        from ..engine import NO_CONTRAST

        return f"{NO_CONTRAST} (map is NaN)"
    med = float(np.median([r["median_dz_um"] for r in known]))
    frac = float(np.mean([r["frac_in_focus"] for r in known]))
    text = f"median dz {med:+.2f} um, {100 * frac:.0f}% in focus"
    return text if len(rows) == 1 else f"{len(rows)} planes: {text}"


# ---------------------------------------------------------------- refocus


class RefocusSession:
    """One plane encoded once; `render(dz)` only decodes its identity codes with the blur code for dz (um of the
    layer's microscope: dz / `dz_factor` in the network's um)."""

    def __init__(self, db, plane: np.ndarray, key: tuple, weights: Any = None, dz_factor: float = 1.0) -> None:
        from ..engine import require_calibration

        self.db, self.key, self.dz_factor = db, key, float(dz_factor)
        self.cal = require_calibration(db.meta, weights_path(weights), "refocus")
        if db.config.blur_dim != 1:
            raise UserError("refocus needs a 1-D blur code (manifold-1d weights)")
        self.enc = db.encode(plane)
        self.decodes = 0

    @property
    def dz_range(self) -> tuple[float, float]:
        """dz (um of the layer's microscope) the calibration covers; requests outside are clipped to it."""
        from ..calibration import dz_range

        lo, hi = dz_range(self.cal)
        return lo * self.dz_factor, hi * self.dz_factor

    def code(self, dz: float) -> np.ndarray:
        """Blur code [1] for dz (clipped to the calibrated range; |dz| for an unsigned calibration)."""
        from ..calibration import dz_to_code

        dz = dz / self.dz_factor
        return np.atleast_1d(dz_to_code(self.cal, abs(dz) if self.cal["kind"] == "abs" else dz)).astype(np.float32)

    def render(self, dz: float) -> np.ndarray:
        """The plane refocused to dz um: what `microdeblur deblur --dz` gives for it."""
        self.decodes += 1
        return self.db.decode(self.enc, self.code(dz), self.db.revert_for(self.enc, float(dz) / self.dz_factor))
