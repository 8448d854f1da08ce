"""Physically based bright-field through-focus simulator (reference microscope and domain-randomised labs).

Each depth layer of the specimen is a thin complex transmittance t = exp(i*phase - absorption)
(specimens.py). For every tilted plane wave filling the condenser aperture (Koehler illumination)
the field is carried through the layers by multi-slice angular-spectrum propagation, cut by the
objective pupil and propagated to the focal plane; intensities are summed over the source points
(partially coherent imaging, Abbe's method) and, for broadband light, over wavelengths with their
spectral weights. Far out-of-focus dust adds blurred shadows. A camera model adds uneven
illumination, shot and read noise, gain, an offset and the bit depth.

Sign of dz: light travels towards +z; the focal plane at z > 0 lies beyond the specimen (z = 0)
along the light path (docs/simulator.md, tests/test_simulator_physics.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from . import log
from . import specimens as _specimens
from .errors import UserError
from .specimens import FAMILIES, Specimen, make_specimen  # noqa: F401 - part of this module's API

MIN_SIZE = 128


@dataclass(frozen=True)
class Optics:
    """Reference bright-field microscope (thesis set-up): 20x/0.40, condenser 0.20, 6.5 um camera pixels."""

    wavelength_um: float = 0.55  # the one wavelength, or the mean of a broadband spectrum
    na: float = 0.40
    condenser_na: float = 0.20
    magnification: float = 20.0
    camera_pixel_um: float = 6.5
    medium_index: float = 1.33
    source_rings: int = 2  # condenser sampled by a centre point plus this many rings
    condenser_offset: tuple[float, float] = (0.0, 0.0)  # Koehler misalignment (y, x), fraction of the condenser radius
    source_angle: float = 0.0  # rotation of the source-point pattern (rad)

    @property
    def pixel_um(self) -> float:
        """Pixel size at the sample."""
        return self.camera_pixel_um / self.magnification


@dataclass(frozen=True)
class Camera:
    """Camera and illumination field: 12-bit inside uint16, gain 1 e-/ADU, vignetting and tilt."""

    offset: float = 100.0
    background: float = 2600.0  # mean electrons of the empty field
    read_noise: float = 4.0  # electrons
    max_value: int = 4095
    vignetting: float = 0.12  # relative fall-off towards the corners
    gain: float = 1.0  # electrons per ADU
    full_well: float = 0.0  # electrons at which a pixel saturates (0: only the ADU range clips)
    tilt: float = 0.04  # largest illumination tilt across half the field
    centre_shift: float = 0.3  # largest shift of the vignetting centre (fraction of half the field)
    bit_depth: int = 12

    @property
    def dtype(self) -> type:
        return np.uint8 if self.max_value <= 255 else np.uint16


@dataclass(frozen=True)
class Spectrum:
    """Illumination spectrum as seen by the camera: wavelengths (um) and weights summing to 1."""

    kind: str = "narrowband"  # narrowband, white-led or halogen
    wavelengths_um: tuple[float, ...] = (0.55,)
    weights: tuple[float, ...] = (1.0,)
    detail: tuple[tuple[str, float], ...] = ()  # e.g. (("temperature_K", 3200.0),)


@dataclass(frozen=True)
class DustLayer:
    """Dust or debris on a surface far from the specimen (distance along the light path, um)."""

    distance_um: float
    per_mm2: float  # particles per mm^2 of the field


@dataclass(frozen=True)
class Lab:
    """Everything that differs between microscopes and preparations (one preset or one random draw)."""

    name: str = "reference"
    optics: Optics = Optics()
    camera: Camera = Camera()
    spectrum: Spectrum = Spectrum()
    family: str = "protoplasts"
    family_params: tuple[tuple[str, object], ...] = ()  # what a preset pins; the rest is drawn per day
    index_scale: float = 1.0  # multiplies every refractive-index contrast (phase)
    absorption_scale: float = 1.0  # multiplies every absorption
    dust: tuple[DustLayer, ...] = ()
    z_step_um: float = 1.0


# ----------------------------------------------------------------------------- optics


def _cis(phase: np.ndarray) -> np.ndarray:
    """exp(i*phase) as complex64 (several times faster than np.exp on complex arrays)."""
    out = np.empty(phase.shape, np.complex64)
    out.real = np.cos(phase)
    out.imag = np.sin(phase)
    return out


def _freq_grid(shape: tuple[int, int], pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    fy = sfft.fftfreq(shape[0], d=pixel_um).astype(np.float32)
    fx = sfft.fftfreq(shape[1], d=pixel_um).astype(np.float32)
    return fy[:, None], fx[None, :]


def source_points(optics: Optics) -> tuple[np.ndarray, np.ndarray]:
    """Illumination spatial frequencies (N, 2) inside the condenser NA and their weights (sum 1)."""
    radius = optics.condenser_na / optics.wavelength_um
    pts, wts = [(0.0, 0.0)], [1.0]
    for ring in range(1, optics.source_rings + 1):
        r = radius * ring / (optics.source_rings + 0.5)
        n = 6
        for k in range(n):
            a = 2 * np.pi * (k + 0.5 * (ring % 2)) / n
            if optics.source_angle:
                a += optics.source_angle
            pts.append((r * np.sin(a), r * np.cos(a)))
            wts.append(2 * ring)  # each of 6 points stands for 1/6 of an annulus whose area grows with radius
    w = np.asarray(wts, np.float64)
    p = np.asarray(pts, np.float32)
    oy, ox = optics.condenser_offset
    if oy or ox:  # a decentred condenser aperture shifts every source point alike
        p = p + np.asarray([oy * radius, ox * radius], np.float32)
    return p, (w / w.sum()).astype(np.float32)


def _kz(f2: np.ndarray, optics: Optics) -> np.ndarray:
    """Axial spatial frequency minus its on-axis value (cycles/um) for squared lateral frequency f2."""
    k = optics.medium_index / optics.wavelength_um
    return (np.sqrt(np.maximum(k * k - f2, 0.0)) - k).astype(np.float32)


def defocus_psf(optics: Optics, dz_um: float, pixel_um: float, size: int) -> np.ndarray:
    """Incoherent intensity PSF of the objective defocused by dz_um, sampled at pixel_um (sums to 1)."""
    n = max(int(size), 3) | 1
    pad = 4 * n
    fy, fx = _freq_grid((pad, pad), pixel_um)
    f2 = fy * fy + fx * fx
    pupil = f2 <= (optics.na / optics.wavelength_um) ** 2
    field = np.where(pupil, np.exp(2j * np.pi * dz_um * _kz(f2, optics)), 0).astype(np.complex64)
    psf = np.abs(sfft.fftshift(sfft.ifft2(field))) ** 2
    c = pad // 2
    psf = psf[c - n // 2 : c + n // 2 + 1, c - n // 2 : c + n // 2 + 1]
    return (psf / psf.sum()).astype(np.float32)


class Imager:
    """Partially coherent bright-field imaging of a layered thin specimen at any focal plane.

    For every illumination direction the tilted plane wave is carried through the layers by
    multi-slice angular-spectrum propagation (carrier removed, so the canvas stays periodic), brought
    back to the reference plane z = 0, and cut by the pupil; only the pupil support is stored. A focal
    plane costs one phase factor and one pruned inverse FFT per source point: the first pass (axis 0)
    runs only over the columns the pupil touches and the second only over the rows that are kept,
    which gives the same numbers as a full ifft2 (same 1-D transforms, zeros elsewhere).
    """

    CHUNK_ROWS = 64

    def __init__(self, specimen: Specimen, optics: Optics) -> None:
        shape = specimen.layers[0].shape
        self.shape = shape
        fy, fx = _freq_grid(shape, optics.pixel_um)
        pts, self.weights = source_points(optics)
        cutoff2 = (optics.na / optics.wavelength_um) ** 2
        order = np.argsort(specimen.layer_depth_um)
        depths = [float(specimen.layer_depth_um[i]) for i in order]
        layers = [specimen.layers[i] for i in order]
        # pocketfft scales an inverse ifft2 by 1/N in its first pass, computed in long double.
        self._fct = np.float32(np.longdouble(1) / np.longdouble(shape[0] * shape[1]))
        self.support, self.cols, self.values, self.kz = [], [], [], []
        for py, px in pts:
            f2 = (fy + py) ** 2 + (fx + px) ** 2
            kz_full = _kz(f2, optics)
            v = layers[0].copy()
            for prev, depth, t in zip(depths, depths[1:], layers[1:]):
                spec = sfft.fft2(v, workers=-1, overwrite_x=True)
                spec *= _cis(2 * np.pi * (depth - prev) * kz_full)
                v = sfft.ifft2(spec, workers=-1, overwrite_x=True)
                v *= t
            mask = f2 <= cutoff2
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            sub = mask[rows]
            # fft2 = axis-0 pass, then axis-1 pass; only the rows that meet the pupil are needed.
            spec = sfft.fft(sfft.fft(v, axis=0, workers=-1, overwrite_x=True)[rows], axis=1, workers=-1, overwrite_x=True)
            kz = kz_full[rows][sub]
            vals = spec[sub] * _cis(-2 * np.pi * depths[-1] * kz)
            r_i, c_i = np.nonzero(sub)
            self.support.append(rows[r_i] * len(cols) + np.searchsorted(cols, c_i))
            breaks = np.flatnonzero(np.diff(cols) != 1) + 1  # the pupil's columns as contiguous runs (it wraps)
            self.cols.append([(int(r[0]), int(r[-1]) + 1, int(b)) for r, b in zip(np.split(cols, breaks), np.r_[0, breaks])])
            self.values.append(vals.astype(np.complex64))
            self.kz.append(kz)
        self._sub = self._chunk = None

    @property
    def n_sources(self) -> int:
        return len(self.values)

    def intensity(self, z_um: float, crop: tuple[slice, slice]) -> np.ndarray:
        """Image intensity (empty field = 1) with the focal plane at z_um, cropped to crop."""
        n0, n1 = self.shape
        rows = range(n0)[crop[0]]
        out = np.zeros((len(rows), len(range(n1)[crop[1]])), np.float32)
        width = [sum(e - s for s, e, _ in runs) for runs in self.cols]
        if self._sub is None:
            self._sub = np.zeros(n0 * max(width), np.complex64)
            self._chunk = np.zeros((self.CHUNK_ROWS, n1), np.complex64)
        for idx, runs, nc, vals, kz, w in zip(self.support, self.cols, width, self.values, self.kz, self.weights):
            sub = self._sub[: n0 * nc].reshape(n0, nc)
            sub.ravel()[idx] = vals * _cis(2 * np.pi * z_um * kz)
            a = sfft.ifft(sub, axis=0, norm="forward", workers=-1, overwrite_x=True)[crop[0]]
            a *= self._fct
            for r0 in range(0, a.shape[0], self.CHUNK_ROWS):  # second pass in cache-sized blocks of rows
                blk = self._chunk[: min(self.CHUNK_ROWS, a.shape[0] - r0)]
                blk[:] = 0
                for c0, c1, j in runs:
                    blk[:, c0:c1] = a[r0 : r0 + len(blk), j : j + c1 - c0]
                u = np.abs(sfft.ifft(blk, axis=1, norm="forward", workers=1, overwrite_x=True)[:, crop[1]])
                u *= u
                u *= w
                out[r0 : r0 + len(blk)] += u
            self._sub[: n0 * nc] = 0
        return out


class DustShadow:
    """Blurred shadows of dust on surfaces far from the focal plane (20-200 um), as intensity factors.

    Seen from a plane dz away, every point of a dust layer is lit by the whole condenser cone, so its
    shadow is the particle map convolved with a disc of radius |dz| tan(theta_c) (sin theta_c =
    condenser NA / n), centred -dz tan(theta_o) off axis when the aperture is decentred, and softened by
    Fresnel diffraction (a Gaussian of sqrt(lambda |dz|) / 4). The map is real, so rfft2.
    """

    def __init__(self, layers: list[tuple[float, np.ndarray]], optics: Optics) -> None:
        from scipy.special import j1

        self._j1 = j1
        h, w = layers[0][1].shape
        self.shape = (h, w)
        px, n = optics.pixel_um, optics.medium_index
        fy = sfft.fftfreq(h, d=px)[:, None]
        fx = sfft.rfftfreq(w, d=px)[None, :]
        self.fy, self.fx = fy, fx
        self.f = np.hypot(fy, fx)
        sin_c = min(optics.condenser_na / n, 0.95)
        self.tan_c = sin_c / math.sqrt(1 - sin_c * sin_c)
        oy, ox = optics.condenser_offset
        s_o = np.array([oy, ox]) * optics.condenser_na / n
        self.tan_o = s_o / math.sqrt(max(1 - float(s_o @ s_o), 0.05))
        self.wavelength = optics.wavelength_um
        self.layers = [(d, sfft.rfft2(m.astype(np.float32), workers=-1)) for d, m in layers]

    def transmission(self, z_um: float) -> np.ndarray:
        t = np.ones(self.shape, np.float32)
        for distance, spec in self.layers:
            dz = distance - z_um
            r = abs(dz) * self.tan_c
            x = 2 * np.pi * r * self.f
            with np.errstate(invalid="ignore", divide="ignore"):
                disc = np.where(x > 1e-6, 2 * self._j1(x) / x, 1.0)
            sigma = 0.25 * math.sqrt(self.wavelength * abs(dz))
            sy, sx = -dz * self.tan_o
            otf = disc * np.exp(-2 * (np.pi * sigma * self.f) ** 2 - 2j * np.pi * (self.fy * sy + self.fx * sx))
            shadow = sfft.irfft2(spec * otf, s=self.shape, workers=-1)
            t *= np.clip(1.0 - shadow, 0.0, 1.0).astype(np.float32)
        return t


def _dust_map(rng: np.random.Generator, shape: tuple[int, int], px: float, per_mm2: float) -> tuple[np.ndarray, list[dict]]:
    """Opacity map (0-1) of dust particles and fibres in the frame, and their list."""
    h, w = shape
    n = int(rng.poisson(per_mm2 * h * w * px * px / 1e6))
    m = np.zeros(shape, np.float32)
    parts = []
    for _ in range(n):
        fibre = rng.random() < 0.2
        r = float(np.exp(rng.uniform(np.log(1.0), np.log(15.0))))
        elong = float(rng.uniform(4.0, 10.0)) if fibre else float(rng.uniform(1.0, 1.8))
        op = float(rng.uniform(0.05, 0.6))
        ang = float(rng.uniform(0, np.pi))
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        a_um, b_um = r * (elong if fibre else 1.0), r / (1.0 if fibre else elong)
        if fibre:
            b_um = max(r / elong, 0.5)
        a_um = min(a_um, 0.5 * max(h, w) * px)  # a fibre longer than the frame only needs to cross it
        half = int(np.ceil(a_um / px)) + 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32) * px
        u, v = xx * np.cos(ang) + yy * np.sin(ang), -xx * np.sin(ang) + yy * np.cos(ang)
        q = np.sqrt((u / a_um) ** 2 + (v / b_um) ** 2)
        prof = op * np.clip((1 - q) * b_um / px + 0.5, 0, 1)
        ys = np.arange(y - half, y + half + 1) % h
        xs = np.arange(x - half, x + half + 1) % w
        m[np.ix_(ys, xs)] = np.maximum(m[np.ix_(ys, xs)], prof)  # periodic: the frame wraps like the canvas
        parts.append({"y_px": y, "x_px": x, "size_um": [round(2 * a_um, 2), round(2 * b_um, 2)], "opacity": round(op, 3),
                      "kind": "fibre" if fibre else "particle"})
    return m, parts


# ----------------------------------------------------------------------------- camera


def _illumination(rng: np.random.Generator, shape: tuple[int, int], camera: Camera, info: dict | None = None) -> np.ndarray:
    """Smooth uneven illumination (vignetting plus a gentle tilt), about 1 at the centre."""
    yy = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    cy, cx = rng.uniform(-camera.centre_shift, camera.centre_shift, 2)
    tilt = rng.uniform(-camera.tilt, camera.tilt, 2)
    if info is not None:
        info.update({"vignetting": camera.vignetting, "vignetting_centre": [round(float(cy), 4), round(float(cx), 4)],
                     "tilt": [round(float(tilt[0]), 4), round(float(tilt[1]), 4)]})
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / 2
    return (1.0 - camera.vignetting * r2 + tilt[0] * yy + tilt[1] * xx).astype(np.float32)


def expose(rng: np.random.Generator, intensity: np.ndarray, illum: np.ndarray, camera: Camera) -> np.ndarray:
    """Shot noise, read noise, gain, offset, full well and clipping to the bit depth; uint8 or uint16."""
    electrons = rng.poisson(np.clip(intensity * illum * camera.background, 0, None)).astype(np.float32)
    if camera.full_well:
        np.minimum(electrons, np.float32(camera.full_well), out=electrons)
    if camera.gain == 1.0:
        adu = electrons + camera.offset + rng.normal(0.0, camera.read_noise, intensity.shape).astype(np.float32)
    else:
        noise = rng.normal(0.0, camera.read_noise, intensity.shape).astype(np.float32)
        adu = (electrons + noise) * np.float32(1.0 / camera.gain) + np.float32(camera.offset)
    return np.clip(np.rint(adu), 0, camera.max_value).astype(camera.dtype)


# ----------------------------------------------------------------------------- labs: presets and random draws

# Objective classes: magnification and the NA range of common dry objectives of that power.
OBJECTIVES = ((10.0, 0.25, 0.30), (20.0, 0.40, 0.50), (40.0, 0.60, 0.75), (60.0, 0.70, 0.80))
OBJECTIVE_P = (0.25, 0.35, 0.30, 0.10)
FAMILY_P = (0.2, 0.25, 0.2, 0.15, 0.2)  # protoplasts, yeast, mammalian, bacteria, confluent
BAND_UM = (0.43, 0.69)  # wavelengths a broadband source is integrated over (camera response)


def broadband(kind: str, n: int, **shape: float) -> Spectrum:
    """A white-LED or halogen spectrum times a camera response, integrated over n equal bands.

    Each band becomes one wavelength (its centroid) with the band's share as weight, so a narrow
    LED peak lands in one band at its own wavelength. white-led: blue peak (peak_um, 11 nm wide,
    blue_ratio of the phosphor hump at phosphor_um); halogen: black body at temperature_K."""
    lam = np.linspace(*BAND_UM, 1041)
    response = np.exp(-0.5 * ((lam - 0.56) / 0.11) ** 2)  # monochrome CMOS quantum efficiency, roughly
    if kind == "white-led":
        s = shape["blue_ratio"] * np.exp(-0.5 * ((lam - shape["peak_um"]) / 0.011) ** 2) + \
            np.exp(-0.5 * ((lam - shape["phosphor_um"]) / 0.055) ** 2)
    elif kind == "halogen":
        s = lam ** -5 / np.expm1(14387.77 / (lam * shape["temperature_K"]))  # Planck, c2 = 14388 um K
    else:
        raise ValueError(kind)
    s = s * response
    edges = np.linspace(*BAND_UM, n + 1)
    wl, wt = [], []
    for a, b in zip(edges, edges[1:]):
        m = (lam >= a) & (lam < b)
        wt.append(float(s[m].sum()))
        wl.append(float((s[m] * lam[m]).sum() / s[m].sum()))
    wt = np.asarray(wt) / sum(wt)
    return Spectrum(kind, tuple(round(v, 4) for v in wl), tuple(round(float(v), 4) for v in wt),
                    tuple((k, round(float(v), 4)) for k, v in sorted(shape.items())))


def _mean_wavelength(s: Spectrum) -> float:
    return round(float(np.dot(s.wavelengths_um, s.weights) / sum(s.weights)), 4)


def _camera(bits: int, offset: float, full_well: float, background_fraction: float, read_noise: float,
            vignetting: float = 0.12, tilt: float = 0.04) -> Camera:
    """A camera whose full well maps to the top of its bit range."""
    top = 2**bits - 1
    return Camera(offset=float(offset), background=round(full_well * background_fraction, 1), read_noise=read_noise,
                  max_value=top, vignetting=vignetting, gain=round(full_well / (top - offset), 5),
                  full_well=float(full_well), tilt=tilt, bit_depth=bits)


def _optics(na: float, magnification: float, camera_pixel_um: float, sigma: float, spectrum: Spectrum,
            offset: tuple[float, float] = (0.0, 0.0), angle: float = 0.0) -> Optics:
    return Optics(wavelength_um=_mean_wavelength(spectrum), na=na, condenser_na=round(sigma * na, 4),
                  magnification=magnification, camera_pixel_um=camera_pixel_um,
                  source_rings=2 if len(spectrum.wavelengths_um) == 1 else 1,
                  condenser_offset=offset, source_angle=angle)


REFERENCE = Lab()
_HALOGEN = broadband("halogen", 4, temperature_K=3200.0)
_LED = broadband("white-led", 3, peak_um=0.455, blue_ratio=0.7, phosphor_um=0.57)
_GREEN = Spectrum("narrowband", (0.53,), (1.0,), (("source", 0.53),))
PRESETS: dict[str, Lab] = {
    "reference": REFERENCE,
    "yeast-40x": Lab("yeast-40x", _optics(0.65, 40.0, 6.5, 0.55, _HALOGEN), _camera(16, 100, 30000, 0.5, 1.6),
                     _HALOGEN, "yeast", (("species", "fission"),), z_step_um=0.5),
    "budding-yeast-60x": Lab("budding-yeast-60x", _optics(0.75, 60.0, 6.5, 0.5, _GREEN), _camera(12, 100, 15000, 0.6, 3.0),
                             _GREEN, "yeast", (("species", "budding"),), z_step_um=0.5),
    "mammalian-10x": Lab("mammalian-10x", _optics(0.30, 10.0, 3.45, 0.4, _LED), _camera(12, 64, 10500, 0.55, 2.4, 0.2, 0.06),
                         _LED, "mammalian", dust=(DustLayer(170.0, 15.0),), z_step_um=2.0),
    "bacteria-100x-like": Lab("bacteria-100x-like", _optics(0.80, 100.0, 6.5, 0.65, _GREEN),
                              _camera(16, 100, 30000, 0.45, 1.6), _GREEN, "bacteria", z_step_um=0.5),
    "confluent-20x": Lab("confluent-20x", _optics(0.45, 20.0, 5.86, 0.45, _LED), _camera(8, 4, 9000, 0.55, 6.0, 0.15, 0.05),
                         _LED, "confluent", dust=(DustLayer(-60.0, 25.0),), z_step_um=1.5),
}


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_lab(rng: np.random.Generator, family: str | None = None) -> Lab:
    """One random microscope and preparation; every range is documented in docs/simulator.md."""
    mag, na_lo, na_hi = OBJECTIVES[int(rng.choice(len(OBJECTIVES), p=OBJECTIVE_P))]
    na = round(float(rng.uniform(na_lo, na_hi)), 3)
    cam_px = round(float(rng.uniform(3.45, 6.5)), 2)
    sigma = float(rng.uniform(0.2, 0.9))
    kind = str(rng.choice(["narrowband", "white-led", "halogen"], p=[0.35, 0.35, 0.30]))
    if kind == "narrowband":
        lam = round(float(rng.uniform(0.46, 0.64)), 4)
        spectrum = Spectrum("narrowband", (lam,), (1.0,), (("source", lam),))
    elif kind == "white-led":
        spectrum = broadband(kind, int(rng.integers(3, 6)), peak_um=round(float(rng.uniform(0.445, 0.465)), 4),
                             blue_ratio=round(float(rng.uniform(0.3, 1.2)), 3),
                             phosphor_um=round(float(rng.uniform(0.54, 0.6)), 4))
    else:
        spectrum = broadband(kind, int(rng.integers(3, 6)), temperature_K=round(float(rng.uniform(2800, 3400)), 1))
    offset = (0.0, 0.0)
    if rng.random() < 0.6:  # Koehler misalignment: the condenser aperture is decentred
        r, a = float(rng.uniform(0.05, 0.5)), float(rng.uniform(0, 2 * np.pi))
        offset = (round(r * math.sin(a), 4), round(r * math.cos(a), 4))
    optics = _optics(na, mag, cam_px, sigma, spectrum, offset, round(float(rng.uniform(0, np.pi / 3)), 4))
    bits = int(rng.choice([8, 12, 16], p=[0.25, 0.45, 0.30]))
    well = {8: (4000, 12000), 12: (8000, 30000), 16: (15000, 60000)}[bits]
    off = {8: (0, 10), 12: (50, 250), 16: (100, 1500)}[bits]
    camera = _camera(bits, round(float(rng.uniform(*off))), round(float(rng.uniform(*well))),
                     round(float(rng.uniform(0.3, 0.75)), 3), round(_loguniform(rng, 1.2, 12.0), 2),
                     vignetting=round(float(rng.uniform(0.0, 0.35)), 3), tilt=round(float(rng.uniform(0.0, 0.15)), 3))
    fam = family or str(rng.choice(FAMILIES, p=FAMILY_P))
    dust = tuple(DustLayer(round(float(rng.choice([-1, 1]) * rng.uniform(20.0, 200.0)), 1), round(_loguniform(rng, 5.0, 60.0), 1))
                 for _ in range(int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))))
    return Lab("random", optics, camera, spectrum, fam, (), round(_loguniform(rng, 0.6, 1.6), 3),
               round(_loguniform(rng, 0.3, 4.0), 3), dust, round(float(rng.uniform(0.5, 3.0)), 2))


def lab_for(preset: str | None, randomize: bool, specimen: str | None) -> Lab:
    """The lab of a preset (default reference), or the reference when every day is drawn; UserError if bad."""
    if specimen is not None and specimen not in FAMILIES:
        raise UserError(f"unknown --specimen {specimen!r}: choose from {', '.join(FAMILIES)}")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}: choose from {', '.join(PRESETS)}")
    if preset is not None and randomize:
        raise UserError("--preset and --randomize cannot be combined (--randomize draws the whole microscope per day)")
    lab = PRESETS[preset or "reference"]
    if specimen is not None and specimen != lab.family:
        lab = replace(lab, family=specimen, family_params=())
    return lab


# ----------------------------------------------------------------------------- days


def plane_positions(planes: int, z_step_um: float) -> tuple[np.ndarray, int]:
    """Focal positions (um) of planes centred on focus (100 planes: -50..+49) and the in-focus index."""
    focus = planes // 2
    return (np.arange(planes) - focus) * z_step_um, focus


def _margin(lab: Lab, z: np.ndarray, depths_um: float, size_hw: tuple[int, int]) -> int:
    """Canvas padding (px) beyond the frame: more than the defocus blur radius at the farthest plane."""
    o = lab.optics
    if replace(lab, z_step_um=REFERENCE.z_step_um) == REFERENCE:
        return int(np.ceil(60.0 / o.pixel_um * o.na)) + 16  # the reference: > blur radius at 50 um defocus
    zmax = float(np.max(np.abs(z))) + depths_um
    s = min((o.na + o.condenser_na * (1 + math.hypot(*o.condenser_offset))) / o.medium_index, 0.9)
    need = int(np.ceil((zmax * s / math.sqrt(1 - s * s) + 3.0) / o.pixel_um)) + 16
    return min(need, max(256, max(size_hw) // 2))  # beyond: the blur wraps round the (specimen-filled) periodic canvas


def _transmittance(logt: np.ndarray, phase_factor: float) -> np.ndarray:
    """exp(i*phase_factor*phase - absorption) from a log-transmittance."""
    out = _cis(logt.imag * np.float32(phase_factor))
    out *= np.exp(logt.real)
    return out


def simulate_day(folder: Path, name: str, *, planes: int, size: tuple[int, int], seed: int,
                 z_step_um: float, cells: int | None, optics: Optics = Optics(), camera: Camera = Camera(),
                 lab: Lab | None = None) -> dict:
    """Write one day: <name>_zNNN.tif per plane, focus.txt and ground_truth.json; returns the truth.

    lab: the microscope and preparation (default: the reference with these optics and camera)."""
    import tifffile

    if lab is None:
        lab = replace(REFERENCE, optics=optics, camera=camera)
    lab = replace(lab, z_step_um=z_step_um)
    optics, camera, spectrum = lab.optics, lab.camera, lab.spectrum
    w, h = size
    rng = np.random.default_rng(seed)
    z, focus = plane_positions(planes, z_step_um)
    margin = _margin(lab, z, 9.0, (h, w))
    pad_shape = (sfft.next_fast_len(h + 2 * margin), sfft.next_fast_len(w + 2 * margin))
    k0 = 2 * np.pi / optics.wavelength_um
    logt, depths, cell_list, family_info = _specimens.build(lab.family, rng, pad_shape, optics.pixel_um, k0, cells,
                                                            dict(lab.family_params))
    if lab.index_scale != 1.0 or lab.absorption_scale != 1.0:
        for lt in logt:
            lt.imag *= np.float32(lab.index_scale)
            lt.real *= np.float32(lab.absorption_scale)
    imagers = []
    n_wl = len(spectrum.wavelengths_um)
    for j, (lam, wgt) in enumerate(zip(spectrum.wavelengths_um, spectrum.weights)):
        if n_wl == 1 and lam == optics.wavelength_um:
            layers, o_j = [np.exp(lt).astype(np.complex64) for lt in logt], optics
        else:  # no dispersion: phase scales as 1/lambda; rotate the source pattern per wavelength
            layers = [_transmittance(lt, optics.wavelength_um / lam) for lt in logt]
            o_j = replace(optics, wavelength_um=lam, source_angle=optics.source_angle + j * (np.pi / 3) / n_wl)
        imagers.append((np.float32(wgt), Imager(Specimen(layers, depths), o_j)))
        del layers
    del logt
    crop = (slice(margin, margin + h), slice(margin, margin + w))
    illum_info: dict = {}
    illum = _illumination(rng, (h, w), camera, illum_info)
    dust, dust_truth = None, []
    if lab.dust:
        drng = np.random.default_rng([seed, 2])
        maps = []
        for layer in lab.dust:
            m, parts = _dust_map(drng, (h, w), optics.pixel_um, layer.per_mm2)
            maps.append((layer.distance_um, m))
            dust_truth.append({"distance_um": layer.distance_um, "per_mm2": layer.per_mm2, "particles": parts})
        dust = DustShadow(maps, optics)
    digits = max(3, len(str(planes - 1)))
    res = (1.0 / optics.pixel_um, 1.0 / optics.pixel_um)
    with log.progress(f"simulate {name}", planes) as bar:
        for k, zk in enumerate(z):
            if len(imagers) == 1:
                inten = imagers[0][1].intensity(float(zk), crop)
            else:
                inten = sum(wgt * im.intensity(float(zk), crop) for wgt, im in imagers)
            if dust is not None:
                inten *= dust.transmission(float(zk))
            frame = expose(rng, inten, illum, camera)
            tifffile.imwrite(folder / f"{name}_z{k:0{digits}d}.tif", frame, imagej=True, resolution=res,
                             metadata={"axes": "YX", "unit": "um"})
            bar.advance()
    for c in cell_list:
        c["y_px"] -= margin
        c["x_px"] -= margin
    truth = {
        "simulator": "microdeblur.simulate", "seed": seed, "size": [w, h], "planes": planes,
        "z_step_um": z_step_um, "focus_plane": focus, "z_um": [float(v) for v in z],
        "optics": asdict(optics) | {"pixel_um": optics.pixel_um},
        "camera": asdict(camera) | {"dtype": np.dtype(camera.dtype).name},
        "preset": lab.name, "randomized": lab.name == "random",
        "spectrum": {"kind": spectrum.kind, "wavelengths_um": list(spectrum.wavelengths_um),
                     "weights": list(spectrum.weights), **dict(spectrum.detail)},
        "specimen": {"family": lab.family, "index_scale": lab.index_scale, "absorption_scale": lab.absorption_scale,
                     **family_info},
        "illumination": illum_info | {"source_points": sum(im.n_sources for _, im in imagers),
                                      "condenser_offset": list(optics.condenser_offset)},
        "dust": dust_truth,
        "canvas": {"shape": list(pad_shape), "margin_px": margin},
        "layer_depth_um": [round(d, 3) for d in depths],
        "cells": [c for c in cell_list if -100 < c["y_px"] < h + 100 and -100 < c["x_px"] < w + 100],
    }
    (folder / "focus.txt").write_text(f"{focus}\n# in-focus plane index (z = 0 um), written by microdeblur simulate\n")
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _check_args(out: Path, days: int, planes: int, size: tuple[int, int], z_step_um: float | None,
                cells: int | None, overwrite: bool) -> None:
    if days < 1:
        raise UserError(f"--days must be at least 1, got {days}")
    if planes < 1:
        raise UserError(f"--planes must be at least 1, got {planes}")
    if min(size) < MIN_SIZE:
        raise UserError(f"--size {size[0]}x{size[1]} is too small: both sides must be at least {MIN_SIZE} px")
    if max(size) > 8192:
        raise UserError(f"--size {size[0]}x{size[1]} is too large (at most 8192 px a side)")
    if z_step_um is not None and not (z_step_um > 0 and math.isfinite(z_step_um)):
        raise UserError(f"--z-step must be a positive number of um, got {z_step_um}")
    if cells is not None and cells < 0:
        raise UserError(f"--cells must be zero or more, got {cells}")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} is not empty (use --overwrite to replace its day folders)")


def simulate_days(out: Path, *, days: int, planes: int, size: tuple[int, int], seed: int,
                  z_step_um: float | None = None, cells: int | None = None, overwrite: bool = False,
                  preset: str | None = None, randomize: bool = False, specimen: str | None = None) -> list[Path]:
    """Simulate `days` fields in the raw layout `prepare` reads; same seed gives identical files.

    preset: a named microscope (PRESETS; default reference); randomize: draw a new lab for every day
    (labs.draw_lab); specimen: force the specimen family; z_step_um: None for the preset's (or drawn) step.
    Days are built in a hidden staging folder inside `out` and moved into place when all are done
    (atomic.StagedFolder: no day folder is replaced without overwrite, not even one another run created
    meanwhile); with overwrite only the day folders written (dayNN) are replaced, other entries are left alone.
    """
    from .atomic import StagedFolder, remove_stale_temps

    out = Path(out)
    base = lab_for(preset, randomize, specimen)  # UserError for a bad combination, before touching `out`
    if out.is_dir():
        remove_stale_temps(out)  # a killed run's staging folder does not make `out` non-empty
    _check_args(out, days, planes, size, z_step_um, cells, overwrite)
    t0 = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn(days)
    names = [f"day{d + 1:02d}" for d in range(days)]
    with StagedFolder(out, overwrite) as stage:
        for name, ss in zip(names, seeds):
            folder = stage.path(name)
            folder.mkdir()
            day_seed = int(ss.generate_state(1)[0])
            lab = draw_lab(np.random.default_rng([day_seed, 1]), family=specimen) if randomize else base
            simulate_day(folder, name, planes=planes, size=size, seed=day_seed,
                         z_step_um=lab.z_step_um if z_step_um is None else z_step_um, cells=cells, lab=lab)
    log.info(f"simulated {days} day(s) x {planes} planes of {size[0]}x{size[1]} in {time.perf_counter() - t0:.1f} s -> {out}")
    return [out / n for n in names]
