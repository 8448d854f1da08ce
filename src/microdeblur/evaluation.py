"""`evaluate`: reconstruction, deblurring (thesis 4.4.3) and ML-VAE score of models against baselines.

Writes REPORT_DIR/metrics.json, report.md and PNG figures; see docs/evaluation.md for the protocol. This module
is the command (checks, then each step in order); what is evaluated and how is `eval_protocol`, the scores
`eval_scoring`, the figures `eval_figures`, and the report text and folder `eval_report`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import frame_eval, interrupts, log
from .atomic import check_writable_folder
from .baselines import RL_ITERATIONS, load_unet
from .dataset import PreparedData
from .devices import resolve_device
from .errors import UserError, require_number
from .eval_figures import write_figures
from .eval_protocol import (
    DZ_RANGE,
    QUICK_CLASSIFIER_EPOCHS,
    QUICK_RL_ITERATIONS,
    SPLITS,
    baseline_info,
    build_eval_set,
    load_models,
    model_info,
    protocol,
    working_pixel_sizes,
)
from .eval_report import report_files, write_report
from .eval_scoring import baseline_methods, score_model, score_whole_frames
from .metrics import deblur_summary, json_safe, psnr_batch, ssim_batch
from .microscope import Optics
from .prepare import INDEX_NAME, load_index


def evaluate(data: Path, report_dir: Path, *, weights: Sequence[Path] = (), unet: Path | None = None,
             split: str = "val", quick: bool = False, classifier_epochs: int = 300, device: str = "auto",
             overwrite: bool = False, identities: int | None = None, frames: Sequence[Path] = (),
             frames_dz_max: float = 15.0, onnx: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate models and baselines on a prepared folder (tiles) and, with `frames`, on whole frames of
    simulated days (frame_eval), with tile-to-tile ONNX peers given as NAME=FILE; write the report folder and
    return the metrics."""
    data, report_dir = Path(data), Path(report_dir)
    _check_inputs(data, report_dir, split, classifier_epochs, overwrite, identities, frames_dz_max)
    peer_files = onnx_peers(onnx, bool(frames))
    frame_days = frame_eval.find_frame_days(frames) if frames else []
    index = load_index(data)
    dev = resolve_device(device)
    prepared = PreparedData.load(data, dz_range=DZ_RANGE)
    peers = {name: frame_eval.onnx_tiled_method(path, prepared.scale) for name, path in peer_files.items()}
    models = load_models(weights, dev, prepared)
    clash = sorted(set(peers) & {m.name for m in models})
    if clash:
        raise UserError(f"--onnx name {clash[0]!r} is also a model's name: give the peer another name")
    es = build_eval_set(prepared, split, quick, identities)
    unet_model, unet_info = load_unet(unet, dev) if unet is not None else (None, None)
    if unet_model is not None and prepared.tile % 2**unet_model.config.depth:
        raise UserError(f"the U-Net needs tiles divisible by {2**unet_model.config.depth}; the data has {prepared.tile}-px tiles")
    epochs = min(classifier_epochs, QUICK_CLASSIFIER_EPOCHS) if quick else classifier_epochs
    unit = "um" if prepared.z_step_um is not None else "planes"
    log.info(f"evaluating {len(models)} model(s) on {len(es.names)} identities, {len(es.tiles)} tiles "
             f"({len(es.blurry)} to deblur)")

    deblur: dict[str, Any] = {}
    shown: dict[str, np.ndarray] = {}
    targets = es.tiles[es.target]
    abs_dz = np.abs(es.dz[es.blurry])

    def record(name: str, pred: np.ndarray) -> None:
        deblur[name] = deblur_summary(ssim_batch(pred, targets), psnr_batch(pred, targets), abs_dz)
        shown[name] = pred[es.examples]

    pixel_um, assumed = working_pixel_sizes(index, es.days, prepared.scale)
    if assumed and unit == "um":
        log.warn(f"no pixel size in the prepared index for {', '.join(assumed)}: the deconvolution baselines "
                 f"assume the reference optics ({Optics().pixel_um:g} µm / scale {prepared.scale:g})")
    tile_pixel = np.asarray([pixel_um[es.days[k]] for k in es.label[es.blurry]], np.float64)
    rl_iterations = QUICK_RL_ITERATIONS if quick else RL_ITERATIONS
    methods = baseline_methods(es, tile_pixel if unit == "um" else None, unet_model, dev, rl_iterations)
    for name, make in methods.items():
        log.info(f"baseline: {name}")
        record(name, make())

    reconstruction, disentanglement, codes = {}, {}, {}
    for m in models:
        log.info(f"model: {m.name}")
        reconstruction[m.name], disentanglement[m.name], codes[m.name] = score_model(m, es, dev, epochs, record)

    whole = score_whole_frames(frame_days, models, unet_model, prepared.scale, dev,
                               QUICK_RL_ITERATIONS if quick else RL_ITERATIONS, frames_dz_max, peers) if frame_days else None
    metrics = json_safe({
        "format": "microdeblur-evaluation", "version": 2, "frames": whole,
        "protocol": protocol(data, prepared, es, split, quick, unit, pixel_um, assumed, rl_iterations),
        "models": {m.name: model_info(m) for m in models},
        "baselines": baseline_info(rl_iterations, unit, unet, unet_model, unet_info)
                     | {name: {"onnx": str(path), "scored": "whole frames"} for name, path in peer_files.items()},
        "reconstruction": reconstruction, "deblurring": deblur, "disentanglement": disentanglement,
    })

    def figures(folder: Path) -> list[str]:
        return write_figures(folder, prepared, es, models, codes, shown, metrics, quick, dev)

    write_report(report_dir, metrics, figures, overwrite)
    interrupts.mark_complete()
    log.info(f"report written to {report_dir}")
    return metrics


# ----------------------------------------------------------------------------- inputs


def onnx_peers(specs: Sequence[str], with_frames: bool) -> dict[str, Path]:
    """NAME=FILE tile-to-tile ONNX peers -> {name: file}, checked (they are scored on whole frames only)."""
    peers: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise UserError(f"--onnx takes NAME=FILE (e.g. CARE=runs/care.onnx), got {spec!r}")
        if name in peers or frame_eval.is_baseline_row(name):
            raise UserError(f"--onnx name {name!r} is already taken: give each peer its own name")
        if not Path(path).is_file():
            raise UserError(f"--onnx {name}: no such file {path}")
        peers[name] = Path(path)
    if peers and not with_frames:
        raise UserError("--onnx peers are scored on whole frames: give --frames too")
    return peers


def _check_inputs(data: Path, report_dir: Path, split: str, classifier_epochs: int, overwrite: bool,
                  identities: int | None = None, frames_dz_max: float = 15.0) -> None:
    """Fail early on a bad option, a report folder that is or holds prepared data or an earlier report, or
    missing optional packages."""
    require_number("--frames-dz-max", frames_dz_max, 0, open_low=True)
    if split not in SPLITS:
        raise UserError(f"--split must be {', '.join(SPLITS[:-1])} or {SPLITS[-1]}, got {split!r}")
    if identities is not None and identities < 2:
        raise UserError(f"--identities must be at least 2, got {identities}")
    if classifier_epochs < 1:
        raise UserError("--classifier-epochs must be at least 1")
    existing = next((p for p in (report_dir.absolute(), *report_dir.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"report folder {report_dir}: {existing} is a file")
    if existing is not None:
        check_writable_folder(existing, report_dir)
    report, prepared = report_dir.resolve(), data.resolve()
    if report == prepared or prepared in report.parents:
        where = "is" if report == prepared else "is inside"
        raise UserError(f"report folder {report_dir} {where} the prepared folder {data}; choose another -o")
    if (report_dir / INDEX_NAME).exists():
        raise UserError(f"report folder {report_dir} holds prepared data ({INDEX_NAME}); choose another -o")
    clash = report_files(report_dir)
    if clash and not overwrite:
        raise UserError(f"report folder {report_dir} already holds {', '.join(p.name for p in clash[:3])}"
                        f"{' ...' if len(clash) > 3 else ''} (use --overwrite to replace the report files)")
    missing = [p for p in ("sklearn", "matplotlib") if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"evaluate needs {' and '.join(missing)}: pip install 'microdeblur[eval]'")
