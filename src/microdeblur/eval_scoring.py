"""Scoring for `evaluate`: each model's reconstruction, deblurred tiles and codes, the baselines on the same
tiles, and (with --frames) the whole-frame table of frame_eval.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from . import frame_eval, log
from .baselines import deconvolve, richardson_lucy_tiles, unsharp, wiener_tiles
from .eval_protocol import SEED, EvalSet, LoadedModel, stored_focus_code
from .frame_eval import INPUT, UNSHARP
from .metrics import mlvae_score, psnr_batch, ssim_batch, summary
from .networks import run_batched, summarise_batched, swap_batched


def score_model(m: LoadedModel, es: EvalSet, device: torch.device, epochs: int,
                record: Callable[[str, np.ndarray], None]) -> tuple[dict, dict, tuple[np.ndarray, np.ndarray]]:
    """Reconstruction summary, ML-VAE score and codes of one model; its deblurred tiles go to `record`.

    Identity pyramids are large (about 4 numbers per pixel), so they are not kept: the ML-VAE score and the
    plots use `identity_summary` (deepest level whole, finer levels as channel statistics)."""
    recon, identity, blur = summarise_batched(m.model, es.tiles, device)
    for label, code in deblur_codes(m, es, blur).items():
        record(f"{m.name} ({label})", swap_batched(m.model, es.tiles[es.blurry], code, device))
    return (summary(ssim_batch(recon, es.tiles), psnr_batch(recon, es.tiles)),
            mlvae_score(identity, blur, es.label, epochs=epochs, seed=SEED), (identity, blur))


def deblur_codes(m: LoadedModel, es: EvalSet, blur: np.ndarray) -> dict[str, np.ndarray]:
    """Blur codes to swap in per blurry tile: another identity's in-focus code, and the stored focus code."""
    codes = {"reference": blur[es.reference]}
    stored = stored_focus_code(m)
    if stored is not None:
        codes["stored"] = np.broadcast_to(stored, (len(es.blurry), stored.size))
    else:
        log.warn(f"{m.name} has no stored focus blur code; only the reference-code protocol is measured")
    return codes


def baseline_methods(es: EvalSet, pixel_um: np.ndarray | None, unet: nn.Module | None, device: torch.device,
                     rl_iterations: int) -> dict[str, Callable[[], np.ndarray]]:
    """Deblurring baselines on the blurry tiles, as lazily evaluated outputs; deconvolution needs Δz in µm and
    each blurry tile's pixel size (µm, None skips it)."""
    x, dz = es.tiles[es.blurry], es.dz[es.blurry]
    methods: dict[str, Callable[[], np.ndarray]] = {INPUT: lambda: x, UNSHARP: lambda: unsharp(x)}
    if pixel_um is not None:
        rl = partial(richardson_lucy_tiles, iterations=rl_iterations)
        methods[frame_eval.RL] = lambda: deconvolve(x, dz, pixel_um, rl)
        methods[frame_eval.WIENER] = lambda: deconvolve(x, dz, pixel_um, wiener_tiles)
    else:
        log.warn("z step unknown (Δz in planes): Richardson-Lucy and Wiener baselines skipped")
    if unet is not None:
        methods[frame_eval.UNET] = lambda: run_batched(lambda t: unet(t[:, None])[:, 0], x, device=device)[0]
    return methods


def score_whole_frames(days: list, models: list[LoadedModel], unet: nn.Module | None, scale: float,
                       device: torch.device, rl_iterations: int, dz_max: float,
                       peers: dict[str, frame_eval.Method] | None = None) -> dict[str, Any]:
    """Whole-frame table (frame_eval): input, unsharp, Richardson-Lucy, the U-Net and tile-to-tile ONNX peers
    (`peers`, e.g. CAREamics' CARE) through deblur's tiling, and every model through the real deblur path, per
    |Δz| bin, min-MSE and own-percentile scores."""
    from .inference import Deblurrer

    methods = frame_eval.baseline_methods(scale, rl_iterations)
    if unet is not None:
        methods[frame_eval.UNET] = frame_eval.tiled_method(unet, scale, device)
    methods |= peers or {}
    for m in models:
        methods[m.name] = frame_eval.model_method(Deblurrer(m.model, m.meta, device=device))
    log.info(f"whole frames: {len(days)} day(s), {len(methods)} methods")
    rows = frame_eval.score_frames(days, methods, dz_max)
    return frame_eval.summarise(rows, dz_max) | {"days": [d.name for d in days], "rows": rows}
