"""The path-level commands `deblur` and `interpolate` on image files and stacks (`focus` is in `focus_runs.py`).

Each command checks its inputs and outputs, loads the weights, builds an `engine.Deblurrer` (all array work:
resizing, tiling, encode/decode, focus maps) and streams planes from the input files into atomic outputs;
with --shard, --skip-existing or --manifest the run goes through `batch_runs.run_batch` instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import calibration, log
from .atomic import Outputs
from .batch_runs import Batch, run_batch, shard_pairs
from .calibration import OpticsOptions
from .engine import OVERLAP, Deblurrer, check_finite, require_calibration
from .errors import UserError, require_number
from .inputs import TIFF_SUFFIXES, Shard
from .normalize import Normalizer, frame_normalizer
from .optics import OpticsRun

# ---------------------------------------------------------------- checks shared by the commands


def _infos(paths: Iterable[Path]) -> list:
    """ImageInfo of every input, refusing channel axes, other than 2-D/one-plane-axis arrays, non-real pixels."""
    from .image_read import read_info

    infos = []
    for p in paths:
        info = read_info(p)
        channel = next((a for a in "CS" if a in info.axes), None)
        if channel is not None:
            raise UserError(f"{p}: has a channel axis {channel} (shape {info.shape}, axes {info.axes}); only "
                            "single-channel bright-field images are processed: split the channels first "
                            "(e.g. Fiji: Image > Color > Split Channels) and pass the bright-field one")
        if 0 in info.shape:
            raise UserError(f"{p}: holds no pixels (shape {info.shape})")
        if len(info.shape) not in (2, 3):
            raise UserError(f"{p}: cannot interpret an array of shape {info.shape} (axes {info.axes}); "
                            "accepted are 2-D images (YX) and stacks with one plane axis (ZYX or TYX)")
        if info.dtype.kind not in "uif":
            kind = "binary (bool)" if info.dtype.kind == "b" else f"{info.dtype}"
            raise UserError(f"{p}: {kind} pixels are not supported; bright-field images hold real intensities "
                            "(integer or float)")
        infos.append(info)
    return infos


def _truth_plane(truth: Path, files: list[Path], infos: list) -> np.ndarray:
    """The first plane of a --truth image (float32), or a UserError before any work: the inputs' checks, the
    inputs' plane size, at least 7 px a side (SSIM's window), finite and not constant."""
    from .image_read import iter_planes

    ref = _infos([truth])[0]
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


def _warn_half(info) -> None:
    """Warn that a float16 input is computed and written as float32."""
    if info.dtype == np.float16:
        log.warn(f"{info.path}: float16 output is written as float32 (TIFF writers here have no half floats)")


def _is_folder_name(output: str | os.PathLike) -> bool:
    """True when the output as typed ends with a path separator ('deblurred/'): always a folder."""
    return isinstance(output, str) and output.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))


def _single_plane_info(path: Path, what: str):
    """ImageInfo of an input that must be a single 2-D image."""
    info = _infos([path])[0]
    if len(info.shape) != 2:
        raise UserError(f"{path}: {what} must be a single 2-D image, got axes {info.axes} shape {info.shape}")
    return info


def _output_paths(files: list[Path], output: Path, name_for: Callable[[Path], str],
                  folder: bool = False) -> list[Path]:
    """Output path per input: `output` itself for one input (unless a folder), else names inside it."""
    from .atomic import check_output_names

    check_output_names(output)
    if len(files) == 1 and not folder and not output.is_dir():
        return [output]
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is a file; " + ("the output ends with a path separator, so it must be a folder"
                                                     if folder else "several inputs need an output folder"))
    if not folder and not output.exists() and output.suffix.lower() in TIFF_SUFFIXES + (".png",):
        raise UserError(f"{output}: looks like a file name, but {len(files)} inputs need an output folder")
    outs = [output / name_for(f) for f in files]
    seen: dict[Path, Path] = {}
    for f, o in zip(files, outs):
        if o in seen:
            raise UserError(f"{f} and {seen[o]} would both be written to {o}; rename one or run them separately")
        seen[o] = f
    return outs


def _check_outputs(outs: Sequence[Path], files: Sequence[Path], overwrite: bool, others: Sequence[Path] = ()) -> None:
    """Every output must be writable under the rules (no input, no folder, overwrite needed)."""
    from .atomic import check_output_path

    for o in outs:
        check_output_path(o, overwrite, files, others)


def _load(weights: Path | None, device: str):
    """(model, meta, torch device) for the requested weights and device."""
    from .devices import resolve_device
    from .weights import load_weights

    dev = resolve_device(device)
    model, meta = load_weights(weights, device=str(dev))
    return model, meta, dev


BACKENDS = ("auto", "torch", "onnx")


def gpu_visible() -> bool:
    """Whether torch could find a GPU here, told without importing torch: an NVIDIA driver (device node or
    nvidia-smi) or Apple silicon (MPS)."""
    import platform
    import shutil
    import sys

    return (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None
            or (sys.platform == "darwin" and platform.machine() == "arm64"))


def load_deblurrer(weights: Path | None, device: str = "auto", backend: str = "auto", precision: str = "auto",
                   **options) -> tuple[Deblurrer, object]:
    """(Deblurrer, weights metadata) on the chosen backend. `auto` takes ONNX Runtime when the run is on the CPU in
    float32, onnxruntime is installed and graphs exported from exactly these weights lie beside them (a process that
    never imports torch: seconds less start-up, docs/benchmarks.md); PyTorch otherwise, and always for a GPU."""
    from . import onnx_runner

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    on_cpu = device.lower() == "cpu" or (device.lower() == "auto" and not gpu_visible())
    if backend == "onnx":
        if not on_cpu:
            raise UserError("--backend onnx runs on the CPU: use --device cpu (PyTorch runs GPUs)")
        if precision not in ("auto", "float32"):
            raise UserError("--backend onnx computes in float32: use --precision auto or float32")
        if not onnx_runner.available():
            raise UserError("--backend onnx needs onnxruntime: pip install onnxruntime")
    if backend == "onnx" or (backend == "auto" and on_cpu and precision in ("auto", "float32") and onnx_runner.available()):
        from .weights import read_meta

        path, meta = read_meta(weights)
        runner, why = onnx_runner.open_runner(meta.config, path)
        if runner is not None:
            log.debug(f"backend: ONNX Runtime ({why})")
            return Deblurrer(runner, meta, **options), meta
        if backend == "onnx":
            raise UserError(f"--backend onnx: {why}; export them with: microdeblur export onnx --weights {path}")
        log.debug(f"backend: PyTorch ({why})")
    model, meta, dev = _load(weights, device)
    return Deblurrer(model, meta, device=dev, precision=precision, **options), meta


def _dz_code(cal: dict, dz: np.ndarray | float, factor: float = 1.0) -> np.ndarray:
    """Blur code(s) at dz (um of the training microscope), warning when dz lies outside the calibrated range
    (named in um of the input's microscope: `factor` = calibration.dz_factor)."""
    lo, hi = calibration.dz_range(cal)
    dzs = np.atleast_1d(np.asarray(dz, dtype=np.float64))
    probe = np.abs(dzs) if cal["kind"] == "abs" else dzs
    if np.any(probe < lo - 1e-9) or np.any(probe > hi + 1e-9):
        log.warn(f"dz outside the calibrated range [{lo * factor:.4g}, {hi * factor:.4g}] um is clipped to it")
    return calibration.dz_to_code(cal, dz)


def _display(plane: np.ndarray) -> np.ndarray:
    """uint8 rendering of a plane (1st-99.8th percentile stretch)."""
    n = frame_normalizer(plane)
    return (np.clip(n.before(plane), 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_png(path: Path, data: np.ndarray) -> None:
    """Write a 2-D array as PNG."""
    import imageio.v3 as iio

    iio.imwrite(path, data, extension=".png")


# ---------------------------------------------------------------- batch mode: per-input infos


def _tolerant_infos(paths: Iterable[Path]) -> dict[Path, object]:
    """ImageInfo per input, or the UserError that refuses it (raised again when that input's turn comes)."""
    out: dict[Path, object] = {}
    for p in paths:
        try:
            out[p] = _infos([p])[0]
        except UserError as e:
            out[p] = e
    return out


def _info_or_raise(infos: dict, path: Path):
    """The input's ImageInfo; its refusal raised."""
    info = infos[path]
    if isinstance(info, Exception):
        raise info
    return info


def _planes_to_do(pairs: Sequence[tuple[Path, Path]], infos: dict, skip_existing: bool) -> int:
    """Planes the batch will process (for the progress bar)."""
    return sum(infos[f].n_planes for f, o in pairs
               if not (skip_existing and o.is_file()) and not isinstance(infos.get(f), Exception))


# ---------------------------------------------------------------- deblur


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
    _warn_half(info)


def _checked_planes(path: Path, info) -> Iterator[tuple[int, np.ndarray]]:
    """(index, plane) of an input, each checked for NaN/inf, read ahead in a background thread."""
    from .image_read import iter_planes
    from .inputs import prefetch

    def read() -> Iterator[tuple[int, np.ndarray]]:
        for i, plane in iter_planes(path):
            yield i, check_finite(plane, path, i if info.n_planes > 1 else None)

    return prefetch(read())


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
        planes = _checked_planes(path, info)
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


def _plan(inputs: Sequence[str], output: str | Path, name_for: Callable[[Path], str],
          batch: Batch | None = None) -> tuple[list[Path], list, list[Path]]:
    """Input files, their infos (none in batch mode: read per input) and their output paths (a trailing separator
    on `output` means a folder; always planned over the whole input list, so every shard names outputs alike)."""
    from .inputs import expand_inputs

    files = expand_inputs(inputs)
    infos = [] if batch is not None and batch.active else _infos(files)
    return files, infos, _output_paths(files, Path(output), name_for, _is_folder_name(output))


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
            self.code = db.as_code(db_ref.mean_blur_code(check_finite(ref.data, Path(reference))))
            log.debug(f"reference blur code from {reference}")
        if dz is None and self.code is None and db.target is None:
            raise UserError(f"{weights or 'the default weights'} hold no in-focus blur code; use --reference or --dz")

    def __call__(self, info) -> tuple[Deblurrer, object, float]:
        db, factor = self.optics.resolve(info)
        if self.dz is None:
            return db, self.code, 0.0  # the stored code and --reference target focus
        dz_train = float(self.dz) / factor
        if factor not in self._codes:
            self._codes[factor] = db.as_code(np.atleast_1d(_dz_code(self.cal, dz_train, factor)))
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
    files, infos, outs = _plan(inputs, output, _deblur_name, batch)
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
        _check_outputs(outs, files, overwrite)
    if save_comparison is not None:
        if Path(save_comparison).suffix.lower() != ".png":
            raise UserError(f"{save_comparison}: --save-comparison must name a .png file")
        _check_outputs([Path(save_comparison)], files, overwrite, others=outs)
    ref_plane = _truth_plane(Path(truth), files, infos) if truth is not None else None
    if focus_gate and (dz is not None or reference is not None):
        raise UserError("--focus-gate applies when deblurring to focus; it cannot be combined with --dz or --reference")
    if reference is not None:
        if dz is not None:
            raise UserError("--dz and --reference cannot be combined")
        _single_plane_info(Path(reference), "--reference")
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
    targets.optics.report()
    log.info(f"deblurred {len(files)} file(s), {n_planes} plane(s) in {time.perf_counter() - t0:.1f} s -> {output}")
    if ref_plane is not None:
        from .metrics import compare_to_truth

        compare_to_truth([(f.name, plane, out) for f, (plane, out) in zip(files, firsts)], ref_plane, Path(truth).name)
    return outs


def _deblur_batch(targets: _Targets, pairs: list[tuple[Path, Path]], batch: Batch, *, overwrite: bool,
                  files: list[Path], t0: float) -> list[Path]:
    """Batch-mode deblurring of a shard's pairs (one atomic output each, failures recorded, manifest)."""
    infos = _tolerant_infos(f for f, o in pairs if not (batch.skip_existing and o.is_file()))

    def process(path: Path, out) -> None:
        info = _info_or_raise(infos, path)
        _check_deblur_output(out.path, info)
        db, code, dz = targets(info)
        _deblur_file(db, path, info, out, code, dz, bar)

    with log.progress("deblur", total=_planes_to_do(pairs, infos, batch.skip_existing)) as bar:
        rows = run_batch(pairs, process, batch, overwrite=overwrite, files=files, what="deblur")
    targets.optics.report()
    log.debug(f"batch of {len(rows)} input(s) in {time.perf_counter() - t0:.1f} s")
    return [r.output for r in rows if r.status != "failed"]


# ---------------------------------------------------------------- interpolate


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
    info_a = _single_plane_info(Path(a), "A")
    _warn_half(info_a)
    if b is not None and by_dz:
        log.warn(f"{b}: not used with --dz-from/--dz-to")
        b = None
    if b is not None:
        info_b = _single_plane_info(Path(b), "B")
        if info_b.shape != info_a.shape:
            raise UserError(f"A and B must show the same field at the same size: {a} is "
                            f"{info_a.shape[1]}x{info_a.shape[0]}, {b} is {info_b.shape[1]}x{info_b.shape[0]}")
    inputs = [Path(a)] + ([Path(b)] if b is not None else [])
    _check_outputs([output], inputs, overwrite)
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
    codes = _dz_code(cal, dzs, factor)
    enc = db.encode(plane_a)
    return (db.decode(enc, np.atleast_1d(c), db.revert_for(enc, float(d))) for c, d in zip(codes, dzs))
