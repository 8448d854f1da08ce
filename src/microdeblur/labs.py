"""Simulated labs: the reference microscope, named presets and domain-randomised draws of objective,
condenser, light source, camera, specimen family and dust (what `simulate --preset/--randomize` images with)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import UserError
from .microscope import Camera, DustLayer, Optics, Spectrum
from .specimens import FAMILIES


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
