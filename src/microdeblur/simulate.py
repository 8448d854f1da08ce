"""Physically based bright-field through-focus simulator of plant-protoplast fields.

Each depth layer of the specimen is a thin complex transmittance t = exp(i*phase - absorption).
The scattered field (t - 1) of every layer is propagated with the angular spectrum to the focal
plane, cut by the objective pupil, and imaged for a set of tilted plane waves filling the
condenser aperture (Koehler illumination); intensities are summed over the source points
(partially coherent imaging, Abbe's method). A camera model adds uneven illumination, shot and
read noise, an offset and a 12-bit range.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from . import log
from .errors import UserError

MIN_SIZE = 128


@dataclass(frozen=True)
class Optics:
    """Reference bright-field microscope (thesis set-up): 20x/0.40, condenser 0.20, 6.5 um camera pixels."""

    wavelength_um: float = 0.55
    na: float = 0.40
    condenser_na: float = 0.20
    magnification: float = 20.0
    camera_pixel_um: float = 6.5
    medium_index: float = 1.33
    source_rings: int = 2  # condenser sampled by a centre point plus this many rings

    @property
    def pixel_um(self) -> float:
        """Pixel size at the sample."""
        return self.camera_pixel_um / self.magnification


@dataclass(frozen=True)
class Camera:
    """12-bit camera inside uint16: offset, full-well scaled background, read noise, vignetting."""

    offset: float = 100.0
    background: float = 2600.0  # mean electrons (= ADU, gain 1) of the empty field
    read_noise: float = 4.0
    max_value: int = 4095
    vignetting: float = 0.12  # relative fall-off towards the corners


@dataclass
class Specimen:
    """Per-layer complex transmittances (on the padded canvas) and the ground truth per cell."""

    layers: list[np.ndarray]
    layer_depth_um: list[float]
    cells: list[dict] = field(default_factory=list)


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
            pts.append((r * np.sin(a), r * np.cos(a)))
            wts.append(2 * ring)  # each of 6 points stands for 1/6 of an annulus whose area grows with radius
    w = np.asarray(wts, np.float64)
    return np.asarray(pts, np.float32), (w / w.sum()).astype(np.float32)


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
    back to the reference plane z = 0, and cut by the pupil; only the pupil support is stored, so a
    focal plane costs one phase factor and one inverse FFT per source point.
    """

    def __init__(self, specimen: Specimen, optics: Optics) -> None:
        shape = specimen.layers[0].shape
        self.shape = shape
        fy, fx = _freq_grid(shape, optics.pixel_um)
        pts, self.weights = source_points(optics)
        cutoff2 = (optics.na / optics.wavelength_um) ** 2
        order = np.argsort(specimen.layer_depth_um)
        depths = [float(specimen.layer_depth_um[i]) for i in order]
        layers = [specimen.layers[i] for i in order]
        self.support, self.values, self.kz = [], [], []
        for py, px in pts:
            kz_full = _kz((fy + py) ** 2 + (fx + px) ** 2, optics)
            v = layers[0].copy()
            for prev, depth, t in zip(depths, depths[1:], layers[1:]):
                spec = sfft.fft2(v, workers=-1) * _cis(2 * np.pi * (depth - prev) * kz_full)
                v = sfft.ifft2(spec, workers=-1).astype(np.complex64) * t
            spec = sfft.fft2(v, workers=-1)
            f2 = ((fy + py) ** 2 + (fx + px) ** 2).ravel()
            idx = np.flatnonzero(f2 <= cutoff2)
            kz = kz_full.ravel()[idx]
            vals = spec.ravel()[idx] * _cis(-2 * np.pi * depths[-1] * kz)
            self.support.append(idx)
            self.values.append(vals.astype(np.complex64))
            self.kz.append(kz)
        self._buf = np.zeros(shape, np.complex64)

    def intensity(self, z_um: float, crop: tuple[slice, slice]) -> np.ndarray:
        """Image intensity (empty field = 1) with the focal plane at z_um, cropped to crop."""
        out = None
        flat = self._buf.ravel()
        for idx, vals, kz, w in zip(self.support, self.values, self.kz, self.weights):
            flat[:] = 0
            flat[idx] = vals * _cis(2 * np.pi * z_um * kz)
            u = np.abs(sfft.ifft2(self._buf, workers=-1)[crop])
            u *= u
            u *= w
            if out is None:
                out = u
            else:
                out += u
        return out


# ----------------------------------------------------------------------------- specimen


def _disk_profile(rho: np.ndarray, r: float) -> np.ndarray:
    """Normalised sphere thickness (1 at the centre, 0 outside) with an anti-aliased edge."""
    inside = np.sqrt(np.clip(1.0 - (rho / max(r, 1e-3)) ** 2, 0.0, None))
    edge = np.clip(r - rho + 0.5, 0.0, 1.0)
    return inside * edge


def _stamp(layer: np.ndarray, y: int, x: int, patch: np.ndarray) -> None:
    """Add a complex patch centred at (y, x) into layer (clipped at the borders)."""
    h, w = patch.shape
    y0, x0 = y - h // 2, x - w // 2
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, layer.shape[0]), min(x0 + w, layer.shape[1])
    if ye > ys and xe > xs:
        layer[ys:ye, xs:xe] += patch[ys - y0 : ye - y0, xs - x0 : xe - x0]


def _cell_patch(rng: np.random.Generator, radius_px: float, kind: str, k0: float, px_um: float) -> np.ndarray:
    """Complex log-transmittance (i*phase - absorption) of one protoplast, debris or dividing pair."""
    half = int(np.ceil(radius_px * (2.2 if kind == "dividing" else 1.25))) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    if kind == "dividing":
        a = rng.uniform(0, np.pi)
        d = radius_px * rng.uniform(0.55, 0.85)
        r1, r2 = radius_px * rng.uniform(0.75, 0.95), radius_px * rng.uniform(0.75, 0.95)
        c1 = (d * np.sin(a), d * np.cos(a))
        rho1 = np.hypot(yy - c1[0], xx - c1[1])
        rho2 = np.hypot(yy + c1[0], xx + c1[1])
        return _cell_patch_from(rng, [(c1, rho1, r1), ((-c1[0], -c1[1]), rho2, r2)], yy, xx, k0, px_um)
    theta = np.arctan2(yy, xx)
    wobble = 1.0
    if kind == "irregular":
        for m in (2, 3, 4):
            wobble = wobble + rng.uniform(0.03, 0.12) * np.cos(m * theta + rng.uniform(0, 2 * np.pi))
    else:
        wobble = wobble + rng.uniform(0.0, 0.03) * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(yy, xx) / wobble
    return _cell_patch_from(rng, [((0.0, 0.0), rho, radius_px)], yy, xx, k0, px_um)


def _cell_patch_from(rng, bodies, yy, xx, k0: float, px_um: float) -> np.ndarray:
    """Vacuole body, membrane rim, cortical granules (chloroplasts) for one or two bodies."""
    phase = np.zeros(yy.shape, np.float32)
    absorb = np.zeros(yy.shape, np.float32)
    for (cy, cx), rho, r in bodies:
        r_um = r * px_um
        body = _disk_profile(rho, r)
        phase += k0 * rng.uniform(0.0008, 0.0016) * 2 * r_um * body
        rim = np.exp(-((rho - (r - 1.5)) ** 2) / (2 * 1.2**2)).astype(np.float32) * (rho < r + 3)
        phase += rng.uniform(0.15, 0.35) * rim
        absorb += 0.002 * body
        n_gran = int(rng.integers(25, 60) * (r_um / 16.0) ** 2)
        # Granules sit in the cortex: projected positions biased towards the rim.
        ang = rng.uniform(0, 2 * np.pi, n_gran)
        rad = r * np.sqrt(rng.uniform(0.15, 0.92, n_gran)) ** 0.6
        gy = cy + rad * np.sin(ang)
        gx = cx + rad * np.cos(ang)
        gr = rng.uniform(1.2, 2.6, n_gran) / px_um  # 2.4-5.2 um chloroplasts
        dn = rng.uniform(0.012, 0.025, n_gran)
        ab = rng.uniform(0.01, 0.04, n_gran)
        for y0, x0, rg, d, a in zip(gy, gx, gr, dn, ab):
            sl = (slice(max(int(y0 + yy.shape[0] // 2 - rg - 2), 0), int(y0 + yy.shape[0] // 2 + rg + 3)),
                  slice(max(int(x0 + xx.shape[1] // 2 - rg - 2), 0), int(x0 + xx.shape[1] // 2 + rg + 3)))
            prof = _disk_profile(np.hypot(yy[sl] - y0, xx[sl] - x0), rg)
            phase[sl] += k0 * d * 2 * rg * px_um * prof
            absorb[sl] += a * prof
    return (1j * phase - absorb).astype(np.complex64)


def _debris_patch(rng: np.random.Generator, k0: float, px_um: float) -> np.ndarray:
    """Small irregular dense particle."""
    r = rng.uniform(1.0, 4.0) / px_um
    half = int(r * 1.6) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = np.arctan2(yy, xx)
    rho = np.hypot(yy, xx) / (1 + 0.25 * np.cos(2 * theta + rng.uniform(0, 6.3)) + 0.15 * np.cos(3 * theta))
    prof = _disk_profile(rho, r)
    return (1j * k0 * rng.uniform(0.02, 0.08) * 2 * r * px_um * prof - rng.uniform(0.1, 0.5) * prof).astype(np.complex64)


def _free_position(rng: np.random.Generator, shape: tuple[int, int], r: float,
                   placed: list[tuple[int, int, float]], tries: int = 30) -> tuple[int, int]:
    """A random centre that overlaps earlier cells only slightly (protoplasts touch but rarely stack)."""
    arr = np.asarray(placed, np.float32).reshape(-1, 3)
    for _ in range(tries):
        y, x = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        if not len(arr) or np.all(np.hypot(arr[:, 0] - y, arr[:, 1] - x) >= 0.85 * (arr[:, 2] + r)):
            return y, x
    return y, x


def make_specimen(rng: np.random.Generator, shape: tuple[int, int], optics: Optics,
                  n_cells: int | None = None, n_layers: int = 3) -> Specimen:
    """Crowded field of protoplasts (15-50 um), some irregular or dividing, plus debris, in depth layers."""
    px = optics.pixel_um
    k0 = 2 * np.pi / optics.wavelength_um
    area_um2 = shape[0] * shape[1] * px * px
    if n_cells is None:
        n_cells = max(1, int(0.75 * area_um2 / (np.pi * 14.0**2)))
    depths = np.sort(rng.uniform(-2.5, 2.5, n_layers)).astype(float)
    logt = [np.zeros(shape, np.complex64) for _ in range(n_layers)]
    cells: list[dict] = []
    placed: list[tuple[int, int, float]] = []
    for _ in range(n_cells):
        d_um = float(np.clip(rng.lognormal(np.log(26.0), 0.3), 15.0, 50.0))
        kind = rng.choice(["round", "irregular", "dividing"], p=[0.72, 0.18, 0.10])
        y, x = _free_position(rng, shape, d_um / 2 / px, placed)
        placed.append((y, x, d_um / 2 / px))
        layer = int(rng.integers(0, n_layers))
        _stamp(logt[layer], y, x, _cell_patch(rng, d_um / 2 / px, str(kind), k0, px))
        cells.append({"y_px": y, "x_px": x, "diameter_um": round(d_um, 2), "kind": str(kind),
                      "depth_um": round(depths[layer], 3), "layer": layer})
    for _ in range(int(n_cells * 0.6)):
        layer = int(rng.integers(0, n_layers))
        _stamp(logt[layer], int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])), _debris_patch(rng, k0, px))
    layers = [np.exp(lt).astype(np.complex64) for lt in logt]
    return Specimen(layers=layers, layer_depth_um=list(depths), cells=cells)


# ----------------------------------------------------------------------------- camera


def _illumination(rng: np.random.Generator, shape: tuple[int, int], camera: Camera) -> np.ndarray:
    """Smooth uneven illumination (vignetting plus a gentle tilt), about 1 at the centre."""
    yy = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    tilt = rng.uniform(-0.04, 0.04, 2)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / 2
    return (1.0 - camera.vignetting * r2 + tilt[0] * yy + tilt[1] * xx).astype(np.float32)


def expose(rng: np.random.Generator, intensity: np.ndarray, illum: np.ndarray, camera: Camera) -> np.ndarray:
    """Shot noise, read noise, offset and 12-bit clipping; returns uint16."""
    electrons = rng.poisson(np.clip(intensity * illum * camera.background, 0, None)).astype(np.float32)
    adu = electrons + camera.offset + rng.normal(0.0, camera.read_noise, intensity.shape).astype(np.float32)
    return np.clip(np.rint(adu), 0, camera.max_value).astype(np.uint16)


# ----------------------------------------------------------------------------- days


def plane_positions(planes: int, z_step_um: float) -> tuple[np.ndarray, int]:
    """Focal positions (um) of planes centred on focus (100 planes: -50..+49) and the in-focus index."""
    focus = planes // 2
    return (np.arange(planes) - focus) * z_step_um, focus


def simulate_day(folder: Path, name: str, *, planes: int, size: tuple[int, int], seed: int,
                 z_step_um: float, cells: int | None, optics: Optics = Optics(), camera: Camera = Camera()) -> dict:
    """Write one day: <name>_zNNN.tif per plane, focus.txt and ground_truth.json; returns the truth."""
    import tifffile

    w, h = size
    rng = np.random.default_rng(seed)
    margin = int(np.ceil(60.0 / optics.pixel_um * optics.na)) + 16  # > blur radius at 50 um defocus
    pad_shape = (sfft.next_fast_len(h + 2 * margin), sfft.next_fast_len(w + 2 * margin))
    specimen = make_specimen(rng, pad_shape, optics, n_cells=cells)
    imager = Imager(specimen, optics)
    crop = (slice(margin, margin + h), slice(margin, margin + w))
    illum = _illumination(rng, (h, w), camera)
    z, focus = plane_positions(planes, z_step_um)
    digits = max(3, len(str(planes - 1)))
    res = (1.0 / optics.pixel_um, 1.0 / optics.pixel_um)
    with log.progress(f"simulate {name}", planes) as bar:
        for k, zk in enumerate(z):
            frame = expose(rng, imager.intensity(float(zk), crop), illum, camera)
            tifffile.imwrite(folder / f"{name}_z{k:0{digits}d}.tif", frame, imagej=True, resolution=res,
                             metadata={"axes": "YX", "unit": "um"})
            bar.advance()
    for c in specimen.cells:
        c["y_px"] -= margin
        c["x_px"] -= margin
    truth = {
        "simulator": "microdeblur.simulate", "seed": seed, "size": [w, h], "planes": planes,
        "z_step_um": z_step_um, "focus_plane": focus, "z_um": [float(v) for v in z],
        "optics": asdict(optics) | {"pixel_um": optics.pixel_um},
        "camera": asdict(camera),
        "layer_depth_um": [round(d, 3) for d in specimen.layer_depth_um],
        "cells": [c for c in specimen.cells if -100 < c["y_px"] < h + 100 and -100 < c["x_px"] < w + 100],
    }
    (folder / "focus.txt").write_text(f"{focus}\n# in-focus plane index (z = 0 um), written by microdeblur simulate\n")
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _check_args(out: Path, days: int, planes: int, size: tuple[int, int], z_step_um: float,
                cells: int | None, overwrite: bool) -> None:
    if days < 1:
        raise UserError(f"--days must be at least 1, got {days}")
    if planes < 1:
        raise UserError(f"--planes must be at least 1, got {planes}")
    if min(size) < MIN_SIZE:
        raise UserError(f"--size {size[0]}x{size[1]} is too small: both sides must be at least {MIN_SIZE} px")
    if max(size) > 8192:
        raise UserError(f"--size {size[0]}x{size[1]} is too large (at most 8192 px a side)")
    if not (z_step_um > 0 and math.isfinite(z_step_um)):
        raise UserError(f"--z-step must be a positive number of um, got {z_step_um}")
    if cells is not None and cells < 0:
        raise UserError(f"--cells must be zero or more, got {cells}")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} is not empty (use --overwrite to replace its day folders)")


def simulate_days(out: Path, *, days: int, planes: int, size: tuple[int, int], seed: int,
                  z_step_um: float = 1.0, cells: int | None = None, overwrite: bool = False) -> list[Path]:
    """Simulate `days` fields in the raw layout `prepare` reads; same seed gives identical files.

    Days are built in a hidden staging folder inside `out` and moved into place when all are done
    (io.StagedFolder: no day folder is replaced without overwrite, not even one another run created
    meanwhile); with overwrite only the day folders written (dayNN) are replaced, other entries are left alone.
    """
    from .io import StagedFolder, remove_stale_temps

    out = Path(out)
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
            simulate_day(folder, name, planes=planes, size=size, seed=int(ss.generate_state(1)[0]),
                         z_step_um=z_step_um, cells=cells)
    log.info(f"simulated {days} day(s) x {planes} planes of {size[0]}x{size[1]} in {time.perf_counter() - t0:.1f} s -> {out}")
    return [out / n for n in names]
