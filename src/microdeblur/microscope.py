"""The simulated microscope: optics, the partially coherent imaging model, far dust and the camera.

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

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from .specimens import Specimen


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


# ----------------------------------------------------------------------------- optics


def cis(phase: np.ndarray) -> np.ndarray:
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
                spec *= cis(2 * np.pi * (depth - prev) * kz_full)
                v = sfft.ifft2(spec, workers=-1, overwrite_x=True)
                v *= t
            mask = f2 <= cutoff2
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            sub = mask[rows]
            # fft2 = axis-0 pass, then axis-1 pass; only the rows that meet the pupil are needed.
            spec = sfft.fft(sfft.fft(v, axis=0, workers=-1, overwrite_x=True)[rows], axis=1, workers=-1, overwrite_x=True)
            kz = kz_full[rows][sub]
            vals = spec[sub] * cis(-2 * np.pi * depths[-1] * kz)
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
            sub.ravel()[idx] = vals * cis(2 * np.pi * z_um * kz)
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


def dust_map(rng: np.random.Generator, shape: tuple[int, int], px: float, per_mm2: float) -> tuple[np.ndarray, list[dict]]:
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


def illumination(rng: np.random.Generator, shape: tuple[int, int], camera: Camera, info: dict | None = None) -> np.ndarray:
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
