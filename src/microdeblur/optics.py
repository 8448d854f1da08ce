"""The optics of a run: --na / --wavelength / --pixel-size against each file's metadata, the resize factor to the
network's working pixel size and the dz factor between the training microscope and the user's (u = Δz·NA²/λ;
docs/inference.md, "Units, optics and resizing")."""

from __future__ import annotations

import numpy as np

from . import calibration, log
from .calibration import (
    NA_RANGE,
    PIXEL_RANGE_UM,
    REFERENCE,
    WAVELENGTH_RANGE_UM,
    Microscope,
    OpticsOptions,
    agreed_value,
)
from .engine import MIN_FOCUS_PX, Deblurrer
from .resizing import scaled_shape


class OpticsRun:
    """The optics of every input of one run: options against metadata, the resize factor (pixel size / the
    network's working pixel size, unless --scale) and the dz factor (um of the input's microscope per um of the
    training microscope); what falls back to a default is said once per run, by `report` at the end of a run that
    succeeded (a failed run shows its one error line only). `dz` says whether the run reports or asks for dz (only
    then do NA and wavelength matter)."""

    def __init__(self, db: Deblurrer, options: OpticsOptions, dz: bool) -> None:
        self.db, self.options, self.dz = db, options, dz
        self._notes: dict = {}  # key -> [log function, message, first input or None, inputs], in the order first met

    def _once(self, key, message: str, say=None, path=None) -> None:
        note = self._notes.setdefault(key, [say or log.info, message, path, set()])
        if path is not None:
            note[3].add(str(path))

    def report(self) -> None:
        """Say each note of this run once, naming the first input it concerns and how many others (then forget)."""
        for say, message, path, paths in self._notes.values():
            others = len(paths) - 1
            who = "" if path is None else f"{path}{f' and {others} other input(s)' if others > 0 else ''}: "
            say(who + message)
        self._notes = {}

    def microscope(self, info) -> Microscope:
        """The input's NA, wavelength and pixel size (None when unknown) from its metadata and the options."""
        o, path = self.options, info.path
        na = agreed_value(path, "--na", "objective NA", "", o.na, getattr(info, "na", None), NA_RANGE)
        wl = agreed_value(path, "--wavelength", "wavelength", " um", o.wavelength_um, getattr(info, "wavelength_um", None),
                     WAVELENGTH_RANGE_UM)
        px = agreed_value(path, "--pixel-size", "pixel size", " um", o.pixel_size_um, info.pixel_size_um, PIXEL_RANGE_UM)
        if self.dz and (na is None or wl is None):
            gaps = [(w, opt, ref) for w, opt, ref, v in (
                ("NA", "--na", f"NA {REFERENCE.na:.2f}", na),
                ("wavelength", "--wavelength", f"wavelength {REFERENCE.wavelength_um:g} um", wl)) if v is None]
            self._once(("reference", tuple(g[0] for g in gaps)), f"no {' or '.join(g[0] for g in gaps)} given "
                       f"({', '.join(g[1] for g in gaps)}) or in the metadata: dz is converted with the reference "
                       f"microscope's {' and '.join(g[2] for g in gaps)}", path=path)
        return Microscope(na or REFERENCE.na, wl or REFERENCE.wavelength_um, px)

    def resolve(self, info) -> tuple[Deblurrer, float]:
        """(the Deblurrer at this input's resize factor, the input's dz factor)."""
        m = self.microscope(info)
        db = self.db.with_scale(self.db.scale_for(m.pixel_um, info.path))
        if m.pixel_um is None and not self.db.scale_given:
            self._once("pixel", f"no pixel size given (--pixel-size) or in the metadata: resized by the weights' "
                       f"factor {self.db.scale:g}, as for {self.db.optics.working_pixel_um * self.db.scale:g} um pixels",
                       log.debug, info.path)  # as before the pixel size counted
        py = getattr(info, "pixel_size_y_um", None)
        if py and m.pixel_um and not self.db.scale_given and abs(py / m.pixel_um - 1) > 0.01:
            self._once(("aspect", m.pixel_um, py), f"its pixels are not square ({m.pixel_um:g} um along X, {py:g} um "
                       "along Y): both axes are resized by the X size, so the network sees the cells stretched "
                       f"by {py / m.pixel_um:.3g} along Y (the output keeps both sizes)", log.warn, info.path)
        shape = getattr(info, "plane_shape", None)  # napari's layers come without one
        h, w = scaled_shape(shape, db.scale) if shape is not None else (MIN_FOCUS_PX, MIN_FOCUS_PX)
        if min(h, w) < MIN_FOCUS_PX:
            self._once(("small", w, h), f"only {w}x{h} px at the network's working pixel size (resize factor "
                       f"{db.scale:g}), under {MIN_FOCUS_PX} px a side: the network sees a sliver of one {db.tile}-px "
                       "tile, focus readings are left out and a deblurred output is that small image enlarged back "
                       "(check the pixel size, or give --scale)", log.warn, info.path)
        factor = calibration.dz_factor(self.db.optics, m)
        if self.dz and abs(factor - 1) > 1e-9:
            t = self.db.optics
            band = m.band_na(t.working_pixel_um)
            cap = (f", NA counted up to {band:.3g}, the finest detail of its {t.working_pixel_um:g} um pixels"
                   if band < m.na else "")
            self._once(("factor", round(factor, 12)), f"dz in um at NA {m.na:g} and {m.wavelength_um:g} um: "
                       f"{factor:.4g} x the network's um (trained for NA {t.na:.2f} at {t.wavelength_um:g} um; "
                       f"depth of field scales as wavelength / NA^2{cap})")
        log.debug(f"{info.path}: pixel {m.pixel_um} um, resize factor {db.scale:g}, NA {m.na:g}, "
                  f"wavelength {m.wavelength_um:g} um, dz factor {factor:.6g}")
        return db, factor


def dz_code_in_range(cal: dict, dz: np.ndarray | float, factor: float = 1.0) -> np.ndarray:
    """Blur code(s) at dz (um of the training microscope), warning when dz lies outside the calibrated range
    (named in um of the input's microscope: `factor` = calibration.dz_factor)."""
    lo, hi = calibration.dz_range(cal)
    dzs = np.atleast_1d(np.asarray(dz, dtype=np.float64))
    probe = np.abs(dzs) if cal["kind"] == "abs" else dzs
    if np.any(probe < lo - 1e-9) or np.any(probe > hi + 1e-9):
        log.warn(f"dz outside the calibrated range [{lo * factor:.4g}, {hi * factor:.4g}] um is clipped to it")
    return calibration.dz_to_code(cal, dz)
