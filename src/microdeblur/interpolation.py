"""The `interpolate` command: a z-stack walking the blur code of one image toward another's, or across a dz range."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import interrupts, log
from .backends import load_deblurrer
from .calibration import OpticsOptions
from .engine import OVERLAP, Deblurrer, check_finite, require_calibration
from .errors import UserError, require_number
from .inputs import TIFF_SUFFIXES
from .normalize import Normalizer
from .optics import OpticsRun, dz_code_in_range
from .run_plan import check_outputs, single_plane_info, warn_half

MAX_INTERPOLATE_STEPS = 10_000  # a sanity limit: planes are written as they are decoded, not held


def interpolate_paths(a: Path, b: Path | None, output: Path, *, steps: int = 6, dz_from: float | None = None,
                      dz_to: float | None = None, weights: Path | None = None, scale: float | None = None,
                      overlap: int = OVERLAP, batch_size: int | None = None, precision: str = "auto", device: str = "auto",
                      overwrite: bool = False, optics: OpticsOptions = OpticsOptions(), backend: str = "auto") -> Path:
    """Z-stack walking the blur code from A's to B's (per tile) or between two dz (um of A's microscope), with A's
    identity code. B is encoded at A's resize factor (the same field at the same size)."""
    from .image_read import read_image
    from .image_write import StackWriter

    output = Path(output)
    optics = optics.checked()
    if not 2 <= steps <= MAX_INTERPOLATE_STEPS:
        raise UserError(f"--steps must be 2 to {MAX_INTERPOLATE_STEPS:,}, got {steps}")
    require_number("--dz-from", dz_from, optional=True)
    require_number("--dz-to", dz_to, optional=True)
    if (dz_from is None) != (dz_to is None):
        raise UserError("--dz-from and --dz-to must be given together")
    by_dz = dz_from is not None
    if b is None and not by_dz:
        raise UserError("give image B, or --dz-from and --dz-to")
    if output.suffix.lower() not in TIFF_SUFFIXES:
        raise UserError(f"{output}: interpolation output must be a .tif or .tiff file")
    info_a = single_plane_info(Path(a), "A")
    warn_half(info_a)
    if b is not None and by_dz:
        log.warn(f"{b}: not used with --dz-from/--dz-to")
        b = None
    if b is not None:
        info_b = single_plane_info(Path(b), "B")
        if info_b.shape != info_a.shape:
            raise UserError(f"A and B must show the same field at the same size: {a} is "
                            f"{info_a.shape[1]}x{info_a.shape[0]}, {b} is {info_b.shape[1]}x{info_b.shape[0]}")
        if info_b.dtype != info_a.dtype:
            log.warn(f"{b} is {info_b.dtype}, {a} is {info_a.dtype}: the planes are written as A's {info_a.dtype}")
    inputs = [Path(a)] + ([Path(b)] if b is not None else [])
    check_outputs([output], inputs, overwrite)
    db, meta = load_deblurrer(weights, device, backend, precision, scale=scale, overlap=overlap, batch_size=batch_size)
    run = OpticsRun(db, optics, by_dz)
    db, factor = run.resolve(info_a)
    if b is not None:
        run.microscope(info_b)  # B's metadata must agree with the options too
    plane_a = check_finite(read_image(a).data, Path(a))
    if by_dz:
        planes = _walk_dz(db, plane_a, require_calibration(meta, weights, "--dz-from/--dz-to"), dz_from, dz_to, steps,
                          factor)
        z_step = abs(dz_to - dz_from) / (steps - 1) or None  # um of A's microscope
    else:
        planes, z_step = walk_codes(db, plane_a, check_finite(read_image(b).data, Path(b)), steps), None
    kwargs = info_a.write_kwargs() | {"axes": "ZYX", "z_step_um": z_step}
    with StackWriter(output, (steps, *info_a.shape), info_a.dtype, **kwargs, overwrite=overwrite, inputs=inputs) as out, \
            log.progress("interpolate", total=steps) as bar:
        for plane in planes:
            out.write(plane)
            bar.advance()
    interrupts.mark_complete()
    run.report()
    log.info(f"wrote {steps} interpolated planes to {output}")
    return output


def walk_codes(db: Deblurrer, plane_a: np.ndarray, plane_b: np.ndarray, steps: int) -> Iterator[np.ndarray]:
    """Planes decoded with A's identity and blur codes going linearly, per tile, from A's to B's (one at a time;
    both are encoded before the first is given).

    Intensities are reverted with lo/hi interpolated from A's to B's, so the end planes are A's
    reconstruction and (when A and B share identity codes) B's reconstruction.
    """
    enc_a, enc_b = db.encode(plane_a), db.encode(plane_b)
    if enc_a.grid.shape != enc_b.grid.shape:
        raise UserError("A and B must have the same size")
    code_a, code_b = db.read_codes(enc_a), db.read_codes(enc_b)

    def planes() -> Iterator[np.ndarray]:
        for r in np.linspace(0.0, 1.0, steps):
            blur = (1 - r) * code_a + r * code_b
            norm = Normalizer((1 - r) * enc_a.norm.lo + r * enc_b.norm.lo, (1 - r) * enc_a.norm.hi + r * enc_b.norm.hi)
            yield db.decode(enc_a, blur, norm)

    return planes()


def _walk_dz(db: Deblurrer, plane_a: np.ndarray, cal: dict, dz_from: float, dz_to: float,
             steps: int, factor: float = 1.0) -> Iterator[np.ndarray]:
    """Planes at evenly spaced dz from dz_from to dz_to (um of A's microscope: `factor` x the network's um), each
    reverted for its dz (one at a time; A is encoded before the first is given)."""
    dzs = np.linspace(dz_from, dz_to, steps) / factor  # the network's (training microscope's) um
    codes = dz_code_in_range(cal, dzs, factor)
    enc = db.encode(plane_a)
    return (db.decode(enc, np.atleast_1d(c), db.revert_for(enc, float(d))) for c, d in zip(codes, dzs))
