"""Physically based bright-field through-focus simulator: writes days of planes with their ground truth.

The imaging model is in microscope.py, the reference microscope, presets and random labs in labs.py, the
specimens in specimens.py; this module lays out the focal planes and writes each day (`microdeblur simulate`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from . import interrupts, log
from . import specimens as _specimens
from .errors import UserError, require_number
from .labs import REFERENCE, Lab, draw_lab, lab_for
from .microscope import Camera, DustShadow, Imager, Optics, cis, dust_map, expose, illumination
from .provenance import software_versions
from .specimens import Specimen

MIN_SIZE = 128


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
    out = cis(logt.imag * np.float32(phase_factor))
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
    illum = illumination(rng, (h, w), camera, illum_info)
    dust, dust_truth = None, []
    if lab.dust:
        drng = np.random.default_rng([seed, 2])
        maps = []
        for layer in lab.dust:
            m, parts = dust_map(drng, (h, w), optics.pixel_um, layer.per_mm2)
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
        "software": software_versions(),
    }
    (folder / "focus.txt").write_text(f"{focus}\n# in-focus plane index (z = 0 um), written by microdeblur simulate\n")
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


MAX_PLANES = 10_000  # a through-focus day longer than this is a typo, not an experiment
MAX_CELLS = 100_000  # per field; a crowded 2048x1536 reference field holds a few hundred


def _check_args(out: Path, days: int, planes: int, size: tuple[int, int], z_step_um: float | None,
                cells: int | None, overwrite: bool) -> None:
    if days < 1:
        raise UserError(f"--days must be at least 1, got {days}")
    if not 1 <= planes <= MAX_PLANES:
        raise UserError(f"--planes must be 1 to {MAX_PLANES:,}, got {planes}")
    if min(size) < MIN_SIZE:
        raise UserError(f"--size {size[0]}x{size[1]} is too small: both sides must be at least {MIN_SIZE} px")
    if max(size) > 8192:
        raise UserError(f"--size {size[0]}x{size[1]} is too large (at most 8192 px a side)")
    require_number("--z-step", z_step_um, 0, open_low=True, optional=True)
    if cells is not None and not 0 <= cells <= MAX_CELLS:
        raise UserError(f"--cells must be 0 to {MAX_CELLS:,}, got {cells}")
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
    interrupts.mark_complete()
    log.info(f"simulated {days} day(s) x {planes} planes of {size[0]}x{size[1]} in {time.perf_counter() - t0:.1f} s -> {out}")
    return [out / n for n in names]
