"""Typer command line: parses arguments and calls the core; nothing else lives here."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from . import __version__, interrupts, log
from .errors import UserError, one_line
from .interrupts import raise_on_sigterm


def _no_flag_metavars(params: list) -> list:
    """Flags take no value: show none (Typer would show <bool>)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click signature
        return _no_flag_metavars(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click signature
        return _no_flag_metavars(super().get_params(ctx))

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # noqa: ANN002, ANN003, ANN201 - click signature
        """A usage error (unknown or missing option, a value of the wrong type) is one `error:` line, exit 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            if interrupts.run_complete():  # Ctrl-C after every output was in place: the run did finish
                sys.exit(0)
            log.error("interrupted")
            sys.exit(130)
        except Exception as e:  # click's (or Typer's own copy of click's) usage and parameter errors
            if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
                raise
            ctx, message = getattr(e, "ctx", None), e.format_message()
            if message:  # none when a group without its command printed its help
                where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                log.error(f"{message}{where}")
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


class _Typer(typer.Typer):
    """Typer whose commands show no metavar for flags."""

    def command(self, *args, cls=None, **kwargs):  # noqa: ANN001, ANN201 - Typer signature
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Remove out-of-focus blur from bright-field microscopy images (disentangled blur/identity codes).",
)

DeviceOpt = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda or mps.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace existing outputs.")
WeightsOpt = typer.Option(None, "--weights", "-w", help="Weights file (default: shipped manifold-1d).")
ScaleOpt = typer.Option(None, "--scale", help="Resize factor before the network, in [1/64, 8]; wins over the pixel size "
                        "(default: pixel size / the weights' working pixel size, else the weights' factor; "
                        "1 = already at working pixel size).")
NaOpt = typer.Option(None, "--na", help="Objective NA, in (0, 1.6] (default: the file's OME LensNA, else the reference "
                     "microscope's 0.40; a value more than 5 % from the file's is refused); dz values are converted by NA^2/wavelength.")
WavelengthOpt = typer.Option(None, "--wavelength", help="Illumination wavelength in um, in (0.2, 2] (default: the file's "
                             "OME channel wavelength, else 0.55).")
PixelSizeOpt = typer.Option(None, "--pixel-size", help="Pixel size at the sample in um, in (0, 100] (default: the file's "
                            "OME/ImageJ/TIFF metadata; a value more than 5 % from the file's is refused, --scale overrides the "
                            "resize outright); sets the resize factor to the network's working pixel size.")
OverlapOpt = typer.Option(16, "--overlap",  # engine.OVERLAP (not imported: start-up)
                          help="Tile overlap in pixels at working scale (0 to 63 for 128-px tiles; "
                          "tiles start on multiples of the network's stride).")
BatchOpt = typer.Option(None, "--batch-size", help="Tiles per network call (default on CPU: 32 for the default-size network, proportionally fewer for larger ones, 8 for the shipped one; sized to free memory on a GPU).")
PrecisionOpt = typer.Option("auto", "--precision", help="auto (bfloat16 autocast on CUDA GPUs that support it, else float32), float32 or bfloat16.")
BackendOpt = typer.Option("auto", "--backend", help="auto (ONNX Runtime on the CPU when graphs exported from the weights "
                          "lie beside them, see export onnx; else PyTorch), torch or onnx.")
ShardOpt = typer.Option(None, "--shard", metavar="I/N", help="Process only share I of N (I counts from 0) of the sorted "
                        "inputs, for job arrays: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT. Batch mode.")
SkipExistingOpt = typer.Option(False, "--skip-existing", help="Leave outputs that exist already (they are complete: "
                               "writes are atomic), so a rerun only does what is missing. Outputs record no options: "
                               "rerun with the same weights and options (else use a new output folder). Batch mode.")
ManifestOpt = typer.Option(None, "--manifest", help="Write a CSV (input, output, status, seconds, message) of this run; "
                           "replaces an earlier manifest of the same name. Batch mode.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"microdeblur {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    """microdeblur command line."""
    before = log.verbosity()
    log.set_verbosity(0 if quiet else 2 if verbose else 1)
    ctx.call_on_close(lambda: log.set_verbosity(before))  # an in-process caller gets its level back


def _fail(message: str, code: int = 1) -> None:
    log.error(message)
    raise typer.Exit(code)


_VERBOSITY_OPTIONS = [
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--quiet", "-q", help="Only errors (also accepted before the command).")),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--verbose", "-v", help="More detail (also accepted before the command).")),
]


def _with_verbosity_options(wrapper, fn) -> None:
    """Give a command -q/--quiet and -v/--verbose of its own, so they work after the command name too."""
    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *_VERBOSITY_OPTIONS])
    wrapper.__annotations__ = {**fn.__annotations__, "quiet": bool, "verbose": bool}


def _guarded(fn, *args, **kwargs):
    """Run a command: one line on stderr and a non-zero exit for every failure; the traceback only with -v."""
    interrupts.start_run()
    try:
        raise_on_sigterm()
        return fn(*args, **kwargs)
    except (UserError, OSError, MemoryError) as e:
        _fail(one_line(e))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through interrupts.Interrupted
        if interrupts.run_complete():  # it landed after the last commit: the outputs are complete, exit 0
            return None
        _fail("interrupted", getattr(e, "exit_code", 130))
    except Exception as e:  # noqa: BLE001 - last resort: never a bare traceback for users
        if log.verbosity() >= 2:
            raise
        _fail(f"{one_line(e)} (run with --verbose for the traceback; please report it)", 2)


def _user_errors(fn):
    """Wrap a command with _guarded and give it its own -q/-v (the level before it is restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, quiet: bool = False, verbose: bool = False, **kwargs):
        before = log.verbosity()
        if quiet or verbose:
            log.set_verbosity(0 if quiet else 2)
        try:
            return _guarded(fn, *args, **kwargs)
        finally:
            log.set_verbosity(before)

    _with_verbosity_options(wrapper, fn)
    return wrapper


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like WIDTHxHEIGHT (e.g. 2048x1536), got {text!r}") from None
    return w, h


@app.command()
@_user_errors
def prepare(
    raw: list[Path] = typer.Argument(..., help="Day folders (one image per plane), multi-page z-stacks, or folders of those."),
    data: Path = typer.Argument(..., help="Prepared output folder (created, or appended to)."),
    focus_plane: int | None = typer.Option(None, "--focus-plane", help="In-focus plane index for every day (else focus.txt marker, else auto)."),
    scale: float | None = typer.Option(None, "--scale", help="One resize factor for every day (default: each day to the working pixel size from its own pixel size)."),
    working_pixel: float = typer.Option(0.65, "--working-pixel", help="Pixel size at the sample (um) that every day is resized to (the shipped network's)."),
    tile: int = typer.Option(128, "--tile", help="Crop size in pixels."),
    z_step: float | None = typer.Option(None, "--z-step", help="Plane spacing in um (default: from metadata)."),
    na: float | None = NaOpt,
    wavelength: float | None = WavelengthOpt,
    pixel_size: float | None = PixelSizeOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Resize raw through-focus days to the working pixel size and cut them into per-crop z-stacks for training."""
    from .calibration import OpticsOptions
    from .prepare import prepare_days

    prepare_days(raw, data, focus_plane=focus_plane, scale=scale, tile=tile, z_step_um=z_step, overwrite=overwrite,
                 optics=OpticsOptions(na, wavelength, pixel_size), working_pixel_um=working_pixel)


@app.command()
@_user_errors
def simulate(
    out: Path = typer.Argument(..., help="Output folder for the simulated raw days."),
    days: int = typer.Option(1, "--days", help="Number of days (fields) to simulate."),
    planes: int = typer.Option(100, "--planes", help="Planes per day."),
    size: str = typer.Option("2048x1536", "--size", help="Frame size WIDTHxHEIGHT in camera pixels."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same files)."),
    z_step: float | None = typer.Option(None, "--z-step", help="Plane spacing in um (default: the preset's, 1.0 for reference; drawn per day with --randomize)."),
    cells: int | None = typer.Option(None, "--cells", help="Cells per field (default: crowded, scaled to the area)."),
    preset: str | None = typer.Option(None, "--preset", help="Microscope and specimen: reference (default), yeast-40x, budding-yeast-60x, mammalian-10x, bacteria-100x-like or confluent-20x (docs/simulator.md)."),
    randomize: bool = typer.Option(False, "--randomize", help="Draw a new microscope, camera, illumination, dust and specimen family for every day (documented ranges)."),
    specimen: str | None = typer.Option(None, "--specimen", help="Force the specimen family: protoplasts, yeast, mammalian, bacteria or confluent."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Simulate bright-field through-focus days (reference: plant protoplasts; raw layout that prepare reads)."""
    from .simulate import simulate_days

    w, h = _parse_size(size)
    simulate_days(out, days=days, planes=planes, size=(w, h), seed=seed, z_step_um=z_step, cells=cells, overwrite=overwrite,
                  preset=preset, randomize=randomize, specimen=specimen)


def _int_list(name: str, text: str) -> tuple[int, ...]:
    """Comma-separated integers, or a UserError naming the option."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{name} must be comma-separated integers such as 32,48,64,96, got {text!r}") from None


@app.command()
@_user_errors
def train(
    data: Path = typer.Argument(..., help="Folder written by prepare."),
    output: Path = typer.Option(..., "--output", "-o", help="Weights file to write (.safetensors)."),
    variant: str = typer.Option("manifold-1d", "--variant", help="manifold-1d, manifold or ml-vae."),
    epochs: int = typer.Option(1000, "--epochs", help="Epochs (one epoch = as many pairs as training identities)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps (may grow on --resume)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop after this much wall time."),
    batch_size: int = typer.Option(12, "--batch-size", help="Pairs per pair kind per step (groups for ml-vae)."),
    crop: int = typer.Option(64, "--crop", help="Train on random crops of this side (multiple of 16) cut from the tiles."),
    p_focus: float = typer.Option(0.5, "--p-focus", help="Probability that a same-identity pair's partner is the in-focus plane."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate at step 0."),
    lr_halflife: int = typer.Option(6000, "--lr-halflife", help="Steps over which the learning rate halves."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (sampling, initialisation, split)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of identities held out."),
    dz_range: float | None = typer.Option(30.0, "--dz-range", help="Use planes with |dz| <= this (um, or planes if z-step unknown)."),
    widths: str = typer.Option("32,48,64,96", "--widths", help="Channels per pyramid level (each level halves the resolution)."),
    id_channels: str = typer.Option("16,24,32,48", "--id-channels", help="Identity channels per pyramid level (one per width)."),
    unshuffle: int = typer.Option(2, "--unshuffle", help="Space-to-depth factor at the input: 1 convolves the first level at full resolution (1, 2 or 4)."),
    stem: int = typer.Option(0, "--stem", help="Channels of full-resolution convolutions before the space-to-depth and a FiLM-modulated full-resolution head after it (0: none)."),
    head: int = typer.Option(0, "--head", help="Channels of a full-resolution decoder level on the output, the input and the finest decoder features (0: none; with --init, added so that it starts as the same function)."),
    source_code: bool = typer.Option(False, "--source-code", help="Condition the decoder on each tile's own blur code as well as the target code (relative refocusing; with --init, starts as the same function)."),
    input_skip: bool | None = typer.Option(None, "--input-skip/--no-input-skip", help="Input pixels as the finest identity level, decoder output = input + correction (default: on, off for ml-vae)."),
    no_consistency: bool = typer.Option(False, "--no-consistency", help="Drop the consistency term (ablation)."),
    no_contrastive: bool = typer.Option(False, "--no-contrastive", help="Drop the contrastive term (ablation)."),
    no_cross: bool = typer.Option(False, "--no-cross", help="Drop the cross-reconstruction term (ablation)."),
    dz_weight: float | None = typer.Option(None, "--dz-weight", help="Weight of the term tying the 1-D code to known dz (default 0.1 for manifold-1d)."),
    distance_weight: float = typer.Option(0.1, "--distance-weight", help="Weight of the consistency and contrastive terms inside β (thesis: 1)."),
    cycle_weight: float = typer.Option(0.0, "--cycle-weight", help="Weight of the swapped blur code read back from the swap's decoding by the frozen encoder (off by default: 1 diverged)."),
    deblur_weight: float = typer.Option(0.0, "--deblur-weight", help="Weight of the supervised term D(identity(x), 0) -> in-focus plane (manifold-1d: 0 is the dz tie's in-focus code; every pair, from step 0)."),
    deblur_loss: str = typer.Option("l1", "--deblur-loss", help="Distance of that term: l1 (CARE's) or l2 (root mean squared error: the minimiser of the MSE that PSNR scores)."),
    deblur_all: bool = typer.Option(False, "--deblur-all", help="Apply that term to every tile of a step (both members of both pair kinds, 4x the targets), not to one member of the same-identity pairs."),
    ema: float = typer.Option(0.0, "--ema", help="Decay of a moving average of the weights that the probes score and the export writes (0: off; 0.999 averages about the last 1,000 steps)."),
    beta_delay: int | None = typer.Option(None, "--beta-delay", help="Steps of reconstruction only before β starts rising (default 300; 0 with --init)."),
    beta_ramp: int | None = typer.Option(None, "--beta-ramp", help="Steps of the exponential ramp of β from 0 to 1 (default 600; 0 with --init)."),
    perceptual_weights: Path | None = typer.Option(None, "--perceptual-weights", help="Local VGG-16 state dict for a perceptual loss."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between checkpoints."),
    eval_every: int = typer.Option(250, "--eval-every", help="Steps between validation probes (the best one is exported)."),
    resume: Path | None = typer.Option(None, "--resume", help="Checkpoint to continue from."),
    init: Path | None = typer.Option(None, "--init", help="Start from these weights (fine-tuning); 'shipped' = the packaged manifold-1d weights."),
    val_frames: list[Path] | None = typer.Option(None, "--val-frames", help="Held-out simulated days (simulate's output folder; repeat for several): export the step whose deblurred whole frames gain most over the input."),
    workers: int = typer.Option(0, "--workers", help="Torch threads (0: all cores)."),
    device: str = DeviceOpt,
    precision: str = typer.Option("auto", "--precision", help="auto (bfloat16 autocast on CUDA GPUs that support it, else float32), float32 or bfloat16."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a disentangling autoencoder on a prepared folder and write safetensors weights."""
    from .train_config import TrainConfig
    from .training import train as run_train

    cfg = TrainConfig(
        variant=variant, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size,
        crop=crop, p_focus=p_focus, lr=lr, lr_halflife=lr_halflife, seed=seed, val_fraction=val_fraction,
        dz_range=dz_range, widths=_int_list("--widths", widths), id_channels=_int_list("--id-channels", id_channels),
        unshuffle=unshuffle, stem=stem, head=head, source_code=source_code, input_skip=input_skip, beta_delay=beta_delay, beta_ramp=beta_ramp, distance_weight=distance_weight, cycle_weight=cycle_weight,
        deblur_weight=deblur_weight, deblur_loss=deblur_loss, deblur_all=deblur_all, ema=ema,
        consistency=not no_consistency, contrastive=not no_contrastive, cross=not no_cross, dz_weight=dz_weight,
        perceptual_weights=perceptual_weights, checkpoint_every=checkpoint_every, eval_every=eval_every, resume=resume,
        init=init, val_frames=tuple(val_frames or ()), workers=workers, device=device, precision=precision, overwrite=overwrite,
    )
    run_train(data, output, cfg)


@app.command()
@_user_errors
def deblur(
    inputs: list[str] = typer.Argument(..., help="Image files, stacks, folders or globs."),
    output: str = typer.Option(..., "--output", "-o", help="Output file (one input) or folder (several; a trailing / always means a folder)."),
    weights: Path | None = WeightsOpt,
    reference: Path | None = typer.Option(None, "--reference", help="In-focus image whose blur code is used instead of the stored one."),
    scale: float | None = ScaleOpt,
    na: float | None = NaOpt,
    wavelength: float | None = WavelengthOpt,
    pixel_size: float | None = PixelSizeOpt,
    overlap: int = OverlapOpt,
    batch_size: int | None = BatchOpt,
    precision: str = PrecisionOpt,
    backend: str = BackendOpt,
    dz: float | None = typer.Option(None, "--dz", help="Refocus to this dz (um on your microscope: see --na, --wavelength) instead of focus (calibrated manifold-1d weights)."),
    save_comparison: Path | None = typer.Option(None, "--save-comparison", help="Write a side-by-side input/output PNG."),
    focus_gate: bool | None = typer.Option(None, "--focus-gate/--no-focus-gate", help="Apply the correction in proportion to each tile's estimated defocus, by the ramp fitted on validation days that the weights carry (calibrated 1-D weights; with weights that carry none, --focus-gate uses 1-3 um). Default: on when the weights carry a ramp, as the shipped ones do (docs/inference.md)."),
    tta: int = typer.Option(1, "--tta", help="Test-time views averaged per tile: 1 (none), 2, 4 or 8 mirrors/transposes; n views cost n times the network time (measured gain: docs/inference.md)."),
    truth: Path | None = typer.Option(None, "--truth", help="In-focus image of the same field: print PSNR/SSIM of input and output against it."),
    shard: str | None = ShardOpt,
    skip_existing: bool = SkipExistingOpt,
    manifest: Path | None = ManifestOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Deblur images or z-stacks; outputs keep shape, dtype, axes and metadata.

    Batch mode (--shard, --skip-existing or --manifest): each output is moved into place as soon as it is
    complete, and an input that fails is reported and skipped; the exit code is 1 if any input failed."""
    from .calibration import OpticsOptions
    from .inference import deblur_paths

    deblur_paths(inputs, output, weights=weights, reference=reference, scale=scale, overlap=overlap,
                 batch_size=batch_size, precision=precision, dz=dz, save_comparison=save_comparison, device=device,
                 overwrite=overwrite, shard=shard, skip_existing=skip_existing, manifest=manifest,
                 optics=OpticsOptions(na, wavelength, pixel_size), focus_gate=focus_gate, backend=backend, tta=tta,
                 truth=truth)


@app.command()
@_user_errors
def interpolate(
    a: Path = typer.Argument(..., help="Image at the first focus level."),
    b: Path | None = typer.Argument(None, help="Image of the same field at the second focus level (not needed with --dz-from/--dz-to)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output Z-stack (ImageJ TIFF)."),
    steps: int = typer.Option(6, "--steps", help="Number of planes in the output."),
    dz_from: float | None = typer.Option(None, "--dz-from", help="Start dz in um on your microscope (see --na, --wavelength; calibrated manifold-1d weights)."),
    dz_to: float | None = typer.Option(None, "--dz-to", help="End dz in um on your microscope."),
    weights: Path | None = WeightsOpt,
    scale: float | None = ScaleOpt,
    na: float | None = NaOpt,
    wavelength: float | None = WavelengthOpt,
    pixel_size: float | None = PixelSizeOpt,
    overlap: int = OverlapOpt,
    batch_size: int | None = BatchOpt,
    precision: str = PrecisionOpt,
    backend: str = BackendOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Walk the blur code from A's focus level to B's (or between two dz) and write the stack."""
    from .calibration import OpticsOptions
    from .interpolation import interpolate_paths

    interpolate_paths(a, b, output, steps=steps, dz_from=dz_from, dz_to=dz_to, weights=weights, scale=scale,
                      overlap=overlap, batch_size=batch_size, precision=precision, device=device, overwrite=overwrite,
                      optics=OpticsOptions(na, wavelength, pixel_size), backend=backend)


@app.command()
@_user_errors
def focus(
    inputs: list[str] = typer.Argument(..., help="Image files, stacks, folders or globs."),
    output: str = typer.Option(..., "--output", "-o", help="Defocus map TIFF (one input) or folder (several; a trailing / always means a folder)."),
    weights: Path | None = WeightsOpt,
    scale: float | None = ScaleOpt,
    na: float | None = NaOpt,
    wavelength: float | None = WavelengthOpt,
    pixel_size: float | None = PixelSizeOpt,
    overlap: int = OverlapOpt,
    batch_size: int | None = BatchOpt,
    precision: str = PrecisionOpt,
    backend: str = BackendOpt,
    csv: Path | None = typer.Option(None, "--csv", help="Write a per-image summary table."),
    sign: str = typer.Option("auto", "--sign", help="signed (dz), unsigned (|dz|) or auto: signed when the weights' calibration is signed and every input's NA and wavelength are known (metadata or --na/--wavelength), else unsigned; weights without a measured sign reliability stay signed (docs/inference.md)."),
    confidence: str | None = typer.Option(None, "--confidence", help="Also write the per-tile confidence (0..1, NaN: no usable tile) in the sign of dz: a TIFF (one input) or folder of <name>_conf.tif (not with batch mode)."),
    shard: str | None = ShardOpt,
    skip_existing: bool = SkipExistingOpt,
    manifest: Path | None = ManifestOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Estimate the defocus (dz, um on your microscope: see --na, --wavelength) of every tile from the calibrated
    1-D blur code.

    Batch mode (--shard, --skip-existing or --manifest) works as for deblur."""
    from .calibration import OpticsOptions
    from .focus_runs import focus_paths

    focus_paths(inputs, output, weights=weights, scale=scale, overlap=overlap, batch_size=batch_size, precision=precision,
                csv=csv, device=device, overwrite=overwrite, shard=shard, skip_existing=skip_existing, manifest=manifest,
                optics=OpticsOptions(na, wavelength, pixel_size), sign=sign, confidence=confidence,
                backend=backend)


@app.command()
@_user_errors
def evaluate(
    data: Path = typer.Argument(..., help="Folder written by prepare."),
    report_dir: Path = typer.Option(..., "--output", "-o", help="Report folder (metrics.json, report.md, figures)."),
    weights: list[Path] = typer.Option([], "--weights", "-w", help="Weights to compare (repeatable; default: shipped)."),
    unet: Path | None = typer.Option(None, "--unet", help="CARE-style U-Net baseline weights (benchmarks/train_unet.py)."),
    split: str = typer.Option("val", "--split", help="val (held-out identities), train (training identities) or all."),
    identities: int | None = typer.Option(None, "--identities", help="Evaluate at most this many identities, spread over the split."),
    quick: bool = typer.Option(False, "--quick", help="Small subset, few classifier epochs (about a minute)."),
    classifier_epochs: int = typer.Option(300, "--classifier-epochs", help="Epochs of the ML-VAE score classifiers."),
    frames: list[Path] = typer.Option([], "--frames", help="Folder of held-out simulated days: also score whole frames (repeatable)."),
    frames_dz_max: float = typer.Option(15.0, "--frames-dz-max", help="Whole frames with 0 < |dz| <= this (um) are scored."),
    onnx: list[str] = typer.Option([], "--onnx", metavar="NAME=FILE", help="A tile-to-tile ONNX peer scored on whole "
                                   "frames through deblur's tiling, e.g. CAREamics' CARE from benchmarks/care_baseline.py "
                                   "(repeatable; needs --frames)."),
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Measure reconstruction, deblurring and disentanglement against baselines (tiles, and whole frames with --frames)."""
    from .evaluation import evaluate as run_evaluate

    run_evaluate(data, report_dir, weights=weights, unet=unet, split=split, quick=quick,
                 classifier_epochs=classifier_epochs, device=device, overwrite=overwrite, identities=identities,
                 frames=frames, frames_dz_max=frames_dz_max, onnx=onnx)


export_app = _Typer(cls=_Group, no_args_is_help=True, help="Write the model for other tools (bioimage.io, ONNX Runtime).")
app.add_typer(export_app, name="export")


@export_app.command("bioimageio")
@_user_errors
def export_bioimageio(
    output: Path = typer.Option(..., "--output", "-o", help="Package file to write (.zip)."),
    weights: Path | None = WeightsOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Write a bioimage.io model package of the deblur operation (needs the optional bioimageio extra)."""
    from .bioimageio import export_bioimageio as write_package

    out = write_package(output, weights=weights, overwrite=overwrite)
    interrupts.mark_complete()
    log.info(f"wrote {out}; check it with: bioimageio test {out}")


@export_app.command("onnx")
@_user_errors
def export_onnx(
    weights: Path | None = WeightsOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Write the network's ONNX graphs beside its weights (W.encoder.onnx, W.decoder.onnx), so that deblur, focus and
    interpolate run on ONNX Runtime without importing torch (needs the optional onnx extra)."""
    from .onnx_runner import export_graphs
    from .weights import resolve_weights_path

    enc, dec = export_graphs(resolve_weights_path(weights), overwrite=overwrite)
    interrupts.mark_complete()
    log.info(f"wrote {enc} and {dec}")


def run() -> None:
    """Entry point for `python -m microdeblur`."""
    app(prog_name="microdeblur")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
