"""The `deblur` command on image files and stacks (`interpolate` is in `interpolation.py`, `focus` in `focus_runs.py`).

It plans and checks its inputs and outputs (`run_plan`), loads the weights on a backend (`backends`), builds an
`engine.Deblurrer` (all array work: resizing, tiling, encode/decode, focus maps) and streams planes from the input
files into atomic outputs; with --shard, --skip-existing or --manifest the run goes through `batch_runs.run_batch`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import interrupts, log
from .atomic import Outputs
from .backends import load_deblurrer
from .batch_runs import Batch, run_batch, shard_pairs
from .calibration import OpticsOptions
from .engine import OVERLAP, Deblurrer, check_finite, require_calibration
from .errors import UserError, require_number
from .inputs import TIFF_SUFFIXES, Shard
from .normalize import frame_normalizer
from .optics import OpticsRun, dz_code_in_range
from .run_plan import (
    check_outputs,
    checked_planes,
    info_or_raise,
    plan_run,
    planes_to_do,
    read_infos,
    single_plane_info,
    tolerant_infos,
    warn_half,
)


def _truth_plane(truth: Path, files: list[Path], infos: list) -> np.ndarray:
    """The first plane of a --truth image (float32), or a UserError before any work: the inputs' checks, the
    inputs' plane size, at least 7 px a side (SSIM's window), finite and not constant."""
    from .image_read import iter_planes

    ref = read_infos([truth])[0]
    for p, info in zip(files, infos):
        if tuple(info.plane_shape) != tuple(ref.plane_shape):
            raise UserError(f"--truth {truth} is {ref.plane_shape[1]}x{ref.plane_shape[0]} but {p} is "
                            f"{info.plane_shape[1]}x{info.plane_shape[0]}")
    if min(ref.plane_shape) < 7:
        raise UserError(f"--truth {truth}: {ref.plane_shape[1]}x{ref.plane_shape[0]} is too small to score (at least 7x7)")
    planes = iter_planes(truth)
    try:
        plane = check_finite(next(planes)[1], truth)
    finally:
        planes.close()
    if plane.min() == plane.max():
        raise UserError(f"--truth {truth}: its (first) plane is constant, so there is nothing to score against")
    return plane.astype(np.float32)


def _display(plane: np.ndarray) -> np.ndarray:
    """uint8 rendering of a plane (1st-99.8th percentile stretch)."""
    n = frame_normalizer(plane)
    return (np.clip(n.before(plane), 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_png(path: Path, data: np.ndarray) -> None:
    """Write a 2-D array as PNG."""
    import imageio.v3 as iio

    iio.imwrite(path, data, extension=".png")


def _deblur_name(path: Path) -> str:
    """Output file name for an input inside an output folder (TIFF, same stem)."""
    return path.name if path.suffix.lower() in TIFF_SUFFIXES else path.stem + ".tif"


def _check_deblur_output(out: Path, info) -> None:
    """Output format rules: TIFF always; PNG only for 2-D uint8/uint16."""
    suffix = out.suffix.lower()
    if suffix == ".png":
        if len(info.shape) != 2 or info.dtype not in (np.uint8, np.uint16):
            raise UserError(f"{out}: PNG output holds only 2-D uint8/uint16 images; "
                            f"{info.path} is {info.dtype} with shape {info.shape} (use .tif)")
    elif suffix not in TIFF_SUFFIXES:
        raise UserError(f"{out}: output must end with .tif, .tiff or .png")
    warn_half(info)


def _deblur_file(db: Deblurrer, path: Path, info, out, code, dz: float, bar) -> tuple[np.ndarray, np.ndarray]:
    """Deblur every plane of one input into the AtomicFile `out` (code targeting dz um); returns the first
    input/output planes."""
    from .image_read import read_image
    from .image_write import StackWriter

    if out.path.suffix.lower() == ".png":
        plane = check_finite(read_image(path).data, path)
        result = db.deblur_plane(plane, code, dz)
        _write_png(out.tmp, result)
        bar.advance()
        return plane, result
    first = None
    with StackWriter(out, info.shape, info.dtype, **info.write_kwargs()) as writer:
        planes = checked_planes(path, info)
        try:
            for i, plane in planes:
                result = db.deblur_plane(plane, code, dz)
                writer.write(result)
                if first is None:
                    first = (plane, result)
                bar.advance()
                log.debug(f"{path.name}: plane {i + 1}/{info.n_planes}")
        finally:
            planes.close()
    return first


class _Targets:
    """Per input: (Deblurrer at its resize factor, the blur code every tile is decoded with, the dz in the
    network's um that code stands for): from --dz (um of the input's microscope, converted), from --reference
    (encoded at its own resize factor), else the weights' in-focus code."""

    def __init__(self, db: Deblurrer, optics: OpticsRun, meta, weights: Path | None, reference: Path | None,
                 dz: float | None) -> None:
        self.optics, self.dz, self.code = optics, dz, None
        self._codes: dict[float, object] = {}
        self.cal = require_calibration(meta, weights, "--dz") if dz is not None else None
        if reference is not None:
            from .image_read import read_image

            ref = read_image(reference)
            db_ref, _ = optics.resolve(ref)
            self.code = db.as_code(db_ref.mean_blur_code(check_finite(ref.data, Path(reference)),
                                                            f"--reference {reference}"))
            log.debug(f"reference blur code from {reference}")
        if dz is None and self.code is None and db.target is None:
            raise UserError(f"{weights or 'the default weights'} hold no in-focus blur code; use --reference or --dz")

    def __call__(self, info) -> tuple[Deblurrer, object, float]:
        db, factor = self.optics.resolve(info)
        if self.dz is None:
            return db, self.code, 0.0  # the stored code and --reference target focus
        dz_train = float(self.dz) / factor
        if factor not in self._codes:
            self._codes[factor] = db.as_code(np.atleast_1d(dz_code_in_range(self.cal, dz_train, factor)))
        return db, self._codes[factor], dz_train


def deblur_paths(inputs: Sequence[str], output: str | Path, *, weights: Path | None = None,
                 reference: Path | None = None, scale: float | None = None, overlap: int = OVERLAP,
                 batch_size: int | None = None, precision: str = "auto", dz: float | None = None, save_comparison: Path | None = None,
                 device: str = "auto", overwrite: bool = False, shard: Shard | str | None = None,
                 skip_existing: bool = False, manifest: Path | None = None,
                 optics: OpticsOptions = OpticsOptions(), focus_gate: bool | None = None, backend: str = "auto",
                 tta: int = 1, truth: Path | None = None) -> list[Path]:
    """Deblur images/stacks into `output` (a file for one input; a folder for several or 'name/'); returns outputs.

    `dz` is in um of the inputs' microscope (`optics` and metadata; see OpticsRun). With `shard`, `skip_existing`
    or `manifest` the run is a batch run (see `run_batch`): it returns the outputs of its shard that exist at the
    end. With `truth` (an in-focus image of the same field) each input's and output's first plane are scored
    against it and logged (metrics.compare_to_truth)."""
    t0 = time.perf_counter()
    optics = optics.checked()
    batch = Batch(shard, skip_existing, manifest)
    require_number("--dz", dz, optional=True)
    files, infos, outs = plan_run(inputs, output, _deblur_name, batch)
    if batch.active:
        for option, value in (("--save-comparison", save_comparison), ("--truth", truth)):
            if value is not None:
                raise UserError(f"{option} cannot be combined with --shard, --skip-existing or --manifest")
        pairs = shard_pairs(files, outs, batch, overwrite)
        if not pairs:
            return []
    else:
        for o, info in zip(outs, infos):
            _check_deblur_output(o, info)
        check_outputs(outs, files, overwrite)
    if save_comparison is not None:
        if Path(save_comparison).suffix.lower() != ".png":
            raise UserError(f"{save_comparison}: --save-comparison must name a .png file")
        check_outputs([Path(save_comparison)], files, overwrite, others=outs)
    ref_plane = _truth_plane(Path(truth), files, infos) if truth is not None else None
    if focus_gate and (dz is not None or reference is not None):
        raise UserError("--focus-gate applies when deblurring to focus; it cannot be combined with --dz or --reference")
    if reference is not None:
        if dz is not None:
            raise UserError("--dz and --reference cannot be combined")
        single_plane_info(Path(reference), "--reference")
    db, meta = load_deblurrer(weights, device, backend, precision, scale=scale, overlap=overlap, batch_size=batch_size,
                              focus_gate=focus_gate, tta=tta)
    targets = _Targets(db, OpticsRun(db, optics, dz is not None), meta, weights, reference, dz)
    if batch.active:
        return _deblur_batch(targets, pairs, batch, overwrite=overwrite, files=files, t0=t0)
    n_planes = sum(i.n_planes for i in infos)
    per_file = [targets(info) for info in infos]  # every input's optics checked before anything is written
    with Outputs(overwrite, files) as written, log.progress("deblur", total=n_planes) as bar:
        firsts = [_deblur_file(db_f, f, info, written.add(o), code, target_dz, bar)
                  for f, info, o, (db_f, code, target_dz) in zip(files, infos, outs, per_file)]
        if save_comparison is not None:
            plane, out = firsts[0]
            _write_png(written.add(save_comparison).tmp, np.concatenate([_display(plane), _display(out)], axis=1))
    interrupts.mark_complete()
    targets.optics.report()
    log.info(f"deblurred {len(files)} file(s), {n_planes} plane(s) in {time.perf_counter() - t0:.1f} s -> {output}")
    if ref_plane is not None:
        from .metrics import compare_to_truth

        compare_to_truth([(f.name, plane, out) for f, (plane, out) in zip(files, firsts)], ref_plane, Path(truth).name)
    return outs


def _deblur_batch(targets: _Targets, pairs: list[tuple[Path, Path]], batch: Batch, *, overwrite: bool,
                  files: list[Path], t0: float) -> list[Path]:
    """Batch-mode deblurring of a shard's pairs (one atomic output each, failures recorded, manifest)."""
    infos = tolerant_infos(f for f, o in pairs if not (batch.skip_existing and o.is_file()))

    def process(path: Path, out) -> None:
        info = info_or_raise(infos, path)
        _check_deblur_output(out.path, info)
        db, code, dz = targets(info)
        _deblur_file(db, path, info, out, code, dz, bar)

    with log.progress("deblur", total=planes_to_do(pairs, infos, batch.skip_existing)) as bar:
        rows = run_batch(pairs, process, batch, overwrite=overwrite, files=files, what="deblur")
    targets.optics.report()
    log.debug(f"batch of {len(rows)} input(s) in {time.perf_counter() - t0:.1f} s")
    return [r.output for r in rows if r.status != "failed"]
