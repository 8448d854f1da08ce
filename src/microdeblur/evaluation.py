"""`evaluate`: reconstruction, deblurring (thesis 4.4.3) and ML-VAE score of models against baselines.

Writes REPORT_DIR/metrics.json, report.md and PNG figures; see docs/evaluation.md for the protocol.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import frame_eval, log
from .baselines import (
    RL_ITERATIONS,
    UNSHARP_AMOUNT,
    UNSHARP_RADIUS,
    WIENER_BALANCE,
    deconvolve,
    load_unet,
    richardson_lucy_tiles,
    unsharp,
    wiener_tiles,
)
from .dataset import PreparedData
from .devices import resolve_device
from .errors import UserError
from .metrics import (
    BIN_EDGES,
    DATA_RANGE,
    NEAR_FOCUS,
    PSNR_CAP_DB,
    bin_labels,
    deblur_summary,
    json_safe,
    mlvae_score,
    psnr_batch,
    ssim_batch,
    summary,
)
from .networks import count_parameters, decode_batched, encode_batched, run_batched, summarise_batched, swap_batched
from .prepare import INDEX_NAME, load_index
from .simulate import Optics
from .weights import load_weights

DZ_RANGE = 30.0  # evaluate planes with |Δz| <= this (µm, or planes when the z step is unknown), as `train`
SEED = 0
BATCH = 64
QUICK_IDENTITIES = 8
SPLITS = ("val", "train", "all")  # PreparedData.split() halves with train's defaults, or every identity
QUICK_PLANES = 7
QUICK_CLASSIFIER_EPOCHS = 30
QUICK_RL_ITERATIONS = 5
PERPLEXITIES = (10, 30)
TSNE_IDENTITIES = 8
TSNE_TILES = 30  # per identity (thesis: 30 images of 8 identities)
INTERP_STEPS = 7  # thesis fig. 5.13: ratios 0, 1/6, ..., 1 (0.5 in the middle)
N_EXAMPLES = 4
INPUT = "input"
REPORT_FILES = ("metrics.json", "report.md", "deblur_examples.png", "deblur_by_dz.png", "interpolation.png",
                "identity_codes_*.png", "blur_codes_*.png")  # what a report writes (glob patterns)


@dataclass
class EvalSet:
    """Evaluated tiles (identity-major, Δz ascending) and the deblurring protocol's index arrays."""

    tiles: np.ndarray  # [N,T,T] normalised planes
    label: np.ndarray  # [N] identity number (index into names)
    dz: np.ndarray  # [N]
    focus: np.ndarray  # [K] tile index of each identity's in-focus plane
    names: list[str]
    days: list[str]  # per identity
    blurry: np.ndarray  # tile indices with Δz != 0 (the tiles to deblur)
    reference: np.ndarray  # per blurry tile: in-focus tile index of a different identity
    examples: np.ndarray  # positions in `blurry` shown in the example figure

    @property
    def target(self) -> np.ndarray:
        """Per blurry tile: index of the in-focus tile of the same identity."""
        return self.focus[self.label[self.blurry]]


@dataclass
class LoadedModel:
    """A disentangling autoencoder to evaluate, with its weights metadata."""

    name: str
    source: str
    model: nn.Module
    meta: Any


def evaluate(data: Path, report_dir: Path, *, weights: Sequence[Path] = (), unet: Path | None = None,
             split: str = "val", quick: bool = False, classifier_epochs: int = 300, device: str = "auto",
             overwrite: bool = False, identities: int | None = None, frames: Sequence[Path] = (),
             frames_dz_max: float = 15.0) -> dict[str, Any]:
    """Evaluate models and baselines on a prepared folder (tiles) and, with `frames`, on whole frames of
    simulated days (frame_eval); write the report folder and return the metrics."""
    data, report_dir = Path(data), Path(report_dir)
    _check_inputs(data, report_dir, split, classifier_epochs, overwrite, identities)
    frame_days = frame_eval.find_frame_days(frames) if frames else []
    index = load_index(data)
    dev = resolve_device(device)
    prepared = PreparedData.load(data, dz_range=DZ_RANGE)
    es = build_eval_set(prepared, split, quick, identities)
    models = load_models(weights, dev, prepared)
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
                               QUICK_RL_ITERATIONS if quick else RL_ITERATIONS, frames_dz_max) if frame_days else None
    metrics = json_safe({
        "format": "microdeblur-evaluation", "version": 2, "frames": whole,
        "protocol": protocol(data, prepared, es, split, quick, unit, pixel_um, assumed, rl_iterations),
        "models": {m.name: model_info(m) for m in models},
        "baselines": baseline_info(rl_iterations, unit, unet, unet_model, unet_info),
        "reconstruction": reconstruction, "deblurring": deblur, "disentanglement": disentanglement,
    })

    def figures(folder: Path) -> list[str]:
        return write_figures(folder, prepared, es, models, codes, shown, metrics, quick, dev)

    write_report(report_dir, metrics, figures, overwrite)
    log.info(f"report written to {report_dir}")
    return metrics


# ----------------------------------------------------------------------------- inputs


def report_files(folder: Path) -> list[Path]:
    """Files in folder that a report writes (REPORT_FILES), sorted."""
    return sorted({p for pattern in REPORT_FILES for p in folder.glob(pattern)}) if folder.is_dir() else []


def _check_inputs(data: Path, report_dir: Path, split: str, classifier_epochs: int, overwrite: bool,
                  identities: int | None = None) -> None:
    """Fail early on a bad option, a report folder that is or holds prepared data or an earlier report, or
    missing optional packages."""
    if split not in SPLITS:
        raise UserError(f"--split must be {', '.join(SPLITS[:-1])} or {SPLITS[-1]}, got {split!r}")
    if identities is not None and identities < 2:
        raise UserError(f"--identities must be at least 2, got {identities}")
    if classifier_epochs < 1:
        raise UserError("--classifier-epochs must be at least 1")
    existing = next((p for p in (report_dir.absolute(), *report_dir.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"report folder {report_dir}: {existing} is a file")
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


def working_pixel_sizes(index: dict[str, Any], days: Sequence[str], scale: float) -> tuple[dict[str, float], list[str]]:
    """Working pixel size (µm) per day from the prepared index; days without one get the reference optics'
    pixel_um / scale and are listed second."""
    given = {day: index["days"].get(day, {}).get("pixel_size_um") for day in sorted(set(days))}
    assumed = [day for day, px in given.items() if not px]
    return {day: px or Optics().pixel_um / scale for day, px in given.items()}, assumed


def plane_subset(dz: np.ndarray, focus: int, quick: bool) -> np.ndarray:
    """Plane indices to evaluate in Δz order: all, or (quick) about QUICK_PLANES spread over Δz plus focus."""
    order = np.argsort(dz, kind="stable")
    if not quick:
        return order
    picked = set(order[spread(len(order), QUICK_PLANES)].tolist()) | {focus}
    return np.asarray(sorted(picked, key=lambda i: dz[i]))


def spread(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def build_eval_set(data: PreparedData, split: str, quick: bool, identities: int | None = None) -> EvalSet:
    """Gather the split's tiles (at most `identities` of them, spread over the split; fewer with quick);
    pair every blurry tile with another identity's in-focus tile (seeded)."""
    train, val = data.split()
    ids = sorted({"val": val, "train": train}.get(split, range(len(data.identities))))
    limit = min(identities or len(ids), QUICK_IDENTITIES if quick else len(ids))
    ids = [ids[i] for i in spread(len(ids), limit)]
    if len(ids) < 2:
        raise UserError(f"the {split} split has {len(ids)} identities; evaluation needs at least 2 "
                        "(use --split all or prepare more data)")
    planes = [plane_subset(data.dz[i], data.focus_index[i], quick) for i in ids]
    tiles = np.concatenate([data.stacks[i][p] for i, p in zip(ids, planes)]).astype(np.float32)
    dz = np.concatenate([data.dz[i][p] for i, p in zip(ids, planes)]).astype(np.float32)
    label = np.repeat(np.arange(len(ids)), [len(p) for p in planes])
    starts = np.cumsum([0] + [len(p) for p in planes[:-1]])
    focus = starts + np.asarray([int(np.flatnonzero(p == data.focus_index[i])[0]) for i, p in zip(ids, planes)])
    blurry = np.flatnonzero(dz != 0)
    if len(blurry) == 0:
        raise UserError("the evaluated identities have no defocused planes (Δz != 0)")
    other = (label[blurry] + np.random.default_rng(SEED).integers(1, len(ids), size=len(blurry))) % len(ids)
    return EvalSet(tiles, label, dz, focus, [data.identities[i] for i in ids], [data.days[i] for i in ids], blurry,
                   focus[other], example_positions(tiles, label, dz, focus, blurry))


def example_positions(tiles: np.ndarray, label: np.ndarray, dz: np.ndarray, focus: np.ndarray,
                      blurry: np.ndarray) -> np.ndarray:
    """Positions in `blurry` of N_EXAMPLES tiles: most textured identities, |Δz| spread over the range."""
    rich = np.argsort(-tiles[focus].std(axis=(1, 2)), kind="stable")
    rich = rich[np.isin(rich, label[blurry])]
    abs_dz = np.abs(dz[blurry])
    wanted = np.linspace(abs_dz.min(), abs_dz.max(), N_EXAMPLES)
    picks = []
    for j, want in enumerate(wanted):
        pos = np.flatnonzero(label[blurry] == rich[j % len(rich)])
        picks.append(pos[np.argmin(np.abs(abs_dz[pos] - want))])
    return np.asarray(picks)


def load_models(paths: Sequence[Path], device: torch.device, data: PreparedData) -> list[LoadedModel]:
    """Load each weights file (the shipped default when none), with unique display names."""
    models, seen = [], set()
    for path in list(paths) or [None]:
        model, meta = load_weights(path, device)
        if model.config.tile != data.tile:
            raise UserError(f"weights {path or 'shipped'} use {model.config.tile}-px tiles but the data has {data.tile}-px tiles")
        if abs(meta.scale - data.scale) > 1e-6:
            log.warn(f"weights {path or 'shipped'} were trained at scale {meta.scale}, the data is at {data.scale}")
        recipe = (meta.training or {}).get("recipe", {})
        if (recipe.get("val_fraction", 0.2), recipe.get("seed", 0)) != (0.2, 0):
            log.warn(f"weights {path or 'shipped'} were trained with another identity split; "
                     "--split val may include their training identities")
        name = base = Path(path).stem if path is not None else f"shipped {meta.variant}"
        n = 2
        while name in seen:
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        models.append(LoadedModel(name, str(path) if path is not None else "shipped", model, meta))
    return models


# ----------------------------------------------------------------------------- running


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


def stored_focus_code(m: LoadedModel) -> np.ndarray | None:
    """The weights' in-focus blur code (what `deblur` uses), or None when the weights hold none."""
    code = np.asarray(m.meta.focus_blur_code, np.float32).reshape(-1)
    return code if code.size == m.model.config.blur_dim else None


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
    methods: dict[str, Callable[[], np.ndarray]] = {INPUT: lambda: x, "unsharp mask": lambda: unsharp(x)}
    if pixel_um is not None:
        rl = partial(richardson_lucy_tiles, iterations=rl_iterations)
        methods["Richardson-Lucy"] = lambda: deconvolve(x, dz, pixel_um, rl)
        methods["Wiener"] = lambda: deconvolve(x, dz, pixel_um, wiener_tiles)
    else:
        log.warn("z step unknown (Δz in planes): Richardson-Lucy and Wiener baselines skipped")
    if unet is not None:
        methods["U-Net"] = lambda: run_batched(lambda t: unet(t[:, None])[:, 0], x, device=device)[0]
    return methods


def score_whole_frames(days: list, models: list[LoadedModel], unet: nn.Module | None, scale: float,
                       device: torch.device, rl_iterations: int, dz_max: float) -> dict[str, Any]:
    """Whole-frame table (frame_eval): input, unsharp, Richardson-Lucy, the U-Net through deblur's tiling and
    every model through the real deblur path, per |Δz| bin, min-MSE and own-percentile scores."""
    from .inference import Deblurrer

    methods = frame_eval.baseline_methods(scale, rl_iterations)
    if unet is not None:
        methods["U-Net"] = frame_eval.tiled_method(unet, scale, device)
    for m in models:
        methods[m.name] = frame_eval.model_method(Deblurrer(m.model, m.meta, device=device))
    log.info(f"whole frames: {len(days)} day(s), {len(methods)} methods")
    rows = frame_eval.score_frames(days, methods, dz_max)
    return frame_eval.summarise(rows, dz_max) | {"days": [d.name for d in days], "rows": rows}


# ----------------------------------------------------------------------------- metadata


def protocol(data: Path, prepared: PreparedData, es: EvalSet, split: str, quick: bool, unit: str,
             pixel_um: dict[str, float], assumed: list[str], rl_iterations: int) -> dict[str, Any]:
    """How the numbers were obtained (stored in metrics.json and shown in the report)."""
    return {"data": str(data), "split": split, "quick": quick, "identities": es.names,
            "n_identities": len(es.names), "n_tiles": len(es.tiles), "n_blurry": len(es.blurry),
            "tile": prepared.tile, "scale": prepared.scale, "z_step_um": prepared.z_step_um, "dz_unit": unit,
            "dz_range": DZ_RANGE, "bins": bin_labels(), "bin_edges": list(BIN_EDGES), "near_focus": NEAR_FOCUS,
            "data_range": DATA_RANGE, "psnr_cap_db": PSNR_CAP_DB, "seed": SEED, "pixel_um": pixel_um,
            "pixel_um_assumed": assumed}


def model_info(m: LoadedModel) -> dict[str, Any]:
    """Weights source, variant and size of an evaluated model."""
    return {"weights": m.source, "variant": m.model.config.variant, "blur_dim": m.model.config.blur_dim,
            "parameters": count_parameters(m.model), "has_focus_blur_code": stored_focus_code(m) is not None}


def baseline_info(rl_iterations: int, unit: str, unet: Path | None, unet_model: nn.Module | None,
                  unet_info: dict[str, Any] | None) -> dict[str, Any]:
    """Settings of each baseline."""
    info: dict[str, Any] = {"unsharp mask": {"radius_px": UNSHARP_RADIUS, "amount": UNSHARP_AMOUNT}}
    if unit == "um":
        psf = "simulate.defocus_psf, reference objective, pixel size protocol.pixel_um"
        info["Richardson-Lucy"] = {"iterations": rl_iterations, "psf": psf}
        info["Wiener"] = {"balance": WIENER_BALANCE, "psf": psf}
    if unet_model is not None:
        info["U-Net"] = {"weights": str(unet), "parameters": count_parameters(unet_model), "training": unet_info}
    return info


# ----------------------------------------------------------------------------- figures


def _slug(name: str) -> str:
    """File-name-safe version of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _figure(rows: int, cols: int, size: tuple[float, float]):
    """A matplotlib Figure (object API, Agg rendering, no global pyplot state) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _show(ax, img: np.ndarray, title: str = "") -> None:
    """Grey image on the normalised 0..1 scale, no ticks."""
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def write_figures(folder: Path, prepared: PreparedData, es: EvalSet, models: list[LoadedModel],
                  codes: dict[str, tuple[np.ndarray, np.ndarray]], shown: dict[str, np.ndarray],
                  metrics: dict[str, Any], quick: bool, device: torch.device) -> list[str]:
    """Write every PNG figure into folder; return their file names."""
    unit = "µm" if metrics["protocol"]["dz_unit"] == "um" else "planes"
    names = [fig_examples(folder / "deblur_examples.png", es, shown, unit),
             fig_by_dz(folder / "deblur_by_dz.png", metrics["deblurring"], unit)]
    perplexities = PERPLEXITIES[:1] if quick else PERPLEXITIES
    subset = tsne_subset(es)
    for m in models:
        identity, blur = codes[m.name]
        names.append(fig_identity_codes(folder / f"identity_codes_{_slug(m.name)}.png", identity[subset],
                                        es.label[subset], perplexities, m.name))
        names.append(fig_blur_codes(folder / f"blur_codes_{_slug(m.name)}.png", blur, es.dz, es.label,
                                    subset, perplexities, m.name, unit))
    names.append(fig_interpolation(folder / "interpolation.png", prepared, es, models, device, unit))
    return names


def fig_examples(path: Path, es: EvalSet, shown: dict[str, np.ndarray], unit: str) -> str:
    """Columns of example tiles; rows: reference in-focus tile, blurry input, target, then every method."""
    ex = es.blurry[es.examples]
    rows = {"reference (other identity)": es.tiles[es.reference[es.examples]], "target (in focus)": es.tiles[es.target[es.examples]]}
    rows = {INPUT: shown[INPUT], **rows, **{k: v for k, v in shown.items() if k != INPUT}}
    fig, axes = _figure(len(rows), len(ex), (1.6 * len(ex) + 1.2, 1.6 * len(rows)))
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(len(ex)):
            _show(axes[r, c], imgs[c], f"Δz = {es.dz[ex[c]]:g} {unit}" if r == 0 else "")
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.savefig(path, dpi=100)
    return path.name


def fig_by_dz(path: Path, deblur: dict[str, Any], unit: str) -> str:
    """SSIM and PSNR per |Δz| bin for every method."""
    labels = [b for b in bin_labels() if b in deblur[INPUT]["bins"]]
    fig, axes = _figure(1, 2, (11, 4))
    for ax, key, ylabel in zip(axes[0], ("ssim", "psnr"), ("SSIM", "PSNR (dB)")):
        for name, res in deblur.items():
            ax.plot(range(len(labels)), [res["bins"][b][key] for b in labels], marker="o", label=name)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(f"|Δz| ({unit})")
        ax.set_ylabel(ylabel)
    axes[0, 1].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path.name


def tsne_subset(es: EvalSet) -> np.ndarray:
    """Tile indices for the latent plots: up to TSNE_TILES tiles of up to TSNE_IDENTITIES identities."""
    ids = spread(len(es.names), TSNE_IDENTITIES)
    return np.concatenate([np.flatnonzero(es.label == k)[spread(int(np.sum(es.label == k)), TSNE_TILES)] for k in ids])


def tsne(codes: np.ndarray, perplexity: float) -> tuple[np.ndarray, float]:
    """2-D exact t-SNE (PCA init, seeded; at most a few hundred points) and the perplexity used (< points)."""
    from sklearn.manifold import TSNE

    p = float(min(perplexity, len(codes) - 1))
    return TSNE(n_components=2, perplexity=p, init="pca", method="exact", random_state=SEED).fit_transform(codes.astype(np.float64)), p


def fig_identity_codes(path: Path, identity: np.ndarray, label: np.ndarray, perplexities: Sequence[int], name: str) -> str:
    """t-SNE of identity codes coloured by identity, one panel per perplexity."""
    fig, axes = _figure(1, len(perplexities), (4.5 * len(perplexities), 4))
    for ax, p in zip(axes[0], perplexities):
        xy, used = tsne(identity, p)
        ax.scatter(xy[:, 0], xy[:, 1], c=label, cmap="tab10", s=12)
        ax.set_title(f"{name}: identity codes, perplexity {used:g}", fontsize=9)
    fig.savefig(path, dpi=100)
    return path.name


def fig_blur_codes(path: Path, blur: np.ndarray, dz: np.ndarray, label: np.ndarray, subset: np.ndarray,
                   perplexities: Sequence[int], name: str, unit: str) -> str:
    """1-D blur codes: code against Δz for every tile; otherwise t-SNE of the subset coloured by Δz."""
    if blur.shape[1] == 1:
        fig, axes = _figure(1, 1, (6, 4))
        ax = axes[0, 0]
        ax.scatter(dz, blur[:, 0], c=label, cmap="tab20", s=8)
        ax.set_xlabel(f"Δz ({unit})")
        ax.set_ylabel("blur code")
        ax.set_title(f"{name}: 1-D blur code vs Δz (colour: identity)", fontsize=9)
    else:
        fig, axes = _figure(1, len(perplexities), (4.8 * len(perplexities), 4))
        for ax, p in zip(axes[0], perplexities):
            xy, used = tsne(blur[subset], p)
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=dz[subset], cmap="coolwarm", s=12)
            ax.set_title(f"{name}: blur codes, perplexity {used:g}", fontsize=9)
        fig.colorbar(sc, ax=axes[0, -1], label=f"Δz ({unit})")
    fig.savefig(path, dpi=100)
    return path.name


def interpolation_planes(prepared: PreparedData, es: EvalSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most textured evaluated identity: (end planes [2,T,T], ground-truth planes [S,T,T], their Δz [S])."""
    k = int(np.argmax(es.tiles[es.focus].std(axis=(1, 2))))
    i = prepared.identities.index(es.names[k])
    stack, dz = prepared.stacks[i], prepared.dz[i]
    a = min(-dz.min(), dz.max()) or max(-dz.min(), dz.max())
    ends = [int(np.argmin(np.abs(dz + a))), int(np.argmin(np.abs(dz - a)))]
    gt = [int(np.argmin(np.abs(dz - v))) for v in np.linspace(dz[ends[0]], dz[ends[1]], INTERP_STEPS)]
    return stack[ends].astype(np.float32), stack[gt].astype(np.float32), dz[gt]


def fig_interpolation(path: Path, prepared: PreparedData, es: EvalSet, models: list[LoadedModel],
                      device: torch.device, unit: str) -> str:
    """Thesis fig. 5.13: ground-truth planes, then each model's decodes along the blur code between the ends."""
    ends, gt, gt_dz = interpolation_planes(prepared, es)
    ratios = np.linspace(0.0, 1.0, INTERP_STEPS, dtype=np.float32)[:, None]
    rows = {"ground truth": gt}
    for m in models:
        identity, blur = encode_batched(m.model, ends, device)
        ident = np.repeat(identity.mean(0, keepdims=True), INTERP_STEPS, axis=0)
        rows[m.name] = decode_batched(m.model, ident, (1 - ratios) * blur[:1] + ratios * blur[1:], device)
    fig, axes = _figure(len(rows), INTERP_STEPS, (1.6 * INTERP_STEPS + 1.2, 1.7 * len(rows)))
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(INTERP_STEPS):
            title = f"Δz = {gt_dz[c]:g} {unit}" if r == 0 else f"ratio {ratios[c, 0]:.2f}"
            _show(axes[r, c], imgs[c], title)
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.savefig(path, dpi=100)
    return path.name


# ----------------------------------------------------------------------------- report


def _fmt(v: float | None, digits: int) -> str:
    """Number for a table cell ('–' when missing)."""
    return "–" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """GitHub markdown table."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def main_table(metrics: dict[str, Any]) -> str:
    """One row per method: deblurring overall and near focus, plus reconstruction and ML-VAE score for models."""
    near = f"|Δz| ≤ {metrics['protocol']['near_focus']:g}"
    header = ["method", "SSIM", "PSNR", f"SSIM {near}", f"PSNR {near}", "recon SSIM", "recon PSNR", "ML-VAE score"]
    rows = []
    for name, res in metrics["deblurring"].items():
        model = next((m for m in metrics["models"] if name.startswith(f"{m} (")), None)
        rec = metrics["reconstruction"].get(model, {})
        dis = metrics["disentanglement"].get(model, {})
        rows.append([name, _fmt(res["overall"]["ssim"], 4), _fmt(res["overall"]["psnr"], 2),
                     _fmt(res["near_focus"]["ssim"], 4), _fmt(res["near_focus"]["psnr"], 2),
                     _fmt(rec.get("ssim"), 4), _fmt(rec.get("psnr"), 2), _fmt(dis.get("score"), 3)])
    return _table(header, rows)


def bin_table(metrics: dict[str, Any], key: str, digits: int) -> str:
    """Rows: all tiles, near focus, each |Δz| bin; columns: every method side by side."""
    deblur = metrics["deblurring"]
    unit = "µm" if metrics["protocol"]["dz_unit"] == "um" else "planes"
    ref = deblur[INPUT]
    keys = [("all", lambda r: r["overall"]), (f"≤ {metrics['protocol']['near_focus']:g}", lambda r: r["near_focus"])]
    keys += [(b, lambda r, b=b: r["bins"].get(b, {})) for b in metrics["protocol"]["bins"] if b in ref["bins"]]
    rows = [[label, str(get(ref)["n"])] + [_fmt(get(r).get(key), digits) for r in deblur.values()] for label, get in keys]
    return _table([f"|Δz| ({unit})", "n", *deblur], rows)


def psf_note(p: dict[str, Any]) -> str:
    """Report paragraph: the pixel size the deconvolution PSFs were sampled at, and where it came from."""
    o = Optics()
    sizes = ", ".join(f"{v:.4g}" for v in sorted(set(p["pixel_um"].values())))
    note = (f"Richardson–Lucy and Wiener use the reference objective's defocus PSF (NA {o.na:g}, "
            f"λ {o.wavelength_um:g} µm) sampled at {sizes} µm per working pixel")
    if p["pixel_um_assumed"]:
        note += (f"; the prepared index has no pixel size for {', '.join(p['pixel_um_assumed'])}, so the reference "
                 f"optics' {o.pixel_um:g} µm / scale {p['scale']:g} was **assumed** there")
    else:
        note += ", from the prepared index"
    return note + ".\n"


def report_markdown(metrics: dict[str, Any]) -> str:
    """The whole report.md: protocol line, tables and linked figures."""
    p = metrics["protocol"]
    models = list(metrics["models"])
    parts = [
        "# microdeblur evaluation\n",
        f"Data `{p['data']}`, split **{p['split']}**{' (quick subset)' if p['quick'] else ''}: {p['n_identities']} identities, "
        f"{p['n_tiles']} tiles, {p['n_blurry']} blurry tiles deblurred. Metrics on normalised tiles, data range "
        f"{p['data_range']:g}, PSNR capped at {p['psnr_cap_db']:g} dB; deblurring compares with the in-focus tile of "
        "the same identity. See docs/evaluation.md.\n",
        *([psf_note(p)] if "Richardson-Lucy" in metrics["baselines"] else []),
        *(["## Whole frames (held-out simulated days)\n",
           f"Days {', '.join(metrics['frames']['days'])}: every frame with 0 < |Δz| ≤ {metrics['frames']['dz_max']:g} µm "
           "through each method whole (models: the real `deblur` path), scored against the day's in-focus frame. "
           "min-MSE: gain and offset fitted to the percentile-normalised in-focus frame (CSBDeep's convention; the "
           "input gets the same fit). Own-percentile: each image normalised by its own 1st–99.8th percentiles.\n",
           frame_eval.markdown(metrics["frames"])] if metrics.get("frames") else []),
        "## Tiles: summary\n", main_table(metrics),
        "\n## Deblurring SSIM by |Δz|\n", bin_table(metrics, "ssim", 4),
        "\n## Deblurring PSNR (dB) by |Δz|\n", bin_table(metrics, "psnr", 2),
        "\n## Reconstruction D(E(x)) vs x\n",
        _table(["", *models], [[k.upper()] + [_fmt(metrics["reconstruction"][m][k], d) for m in models]
                               for k, d in (("ssim", 4), ("psnr", 2))]),
        "\n## Disentanglement (ML-VAE score, thesis eq. 4.10)\n",
        _table(["", *models], [[label] + [_fmt(metrics["disentanglement"][m][k], 3) for m in models]
                               for label, k in (("identity accuracy from identity codes", "acc_identity"),
                                                ("identity accuracy from blur codes", "acc_blur"),
                                                ("ML-VAE score", "score"), ("chance", "chance"))]),
        "\n## Figures\n",
        *[f"![{f}]({f})\n" for f in metrics["figures"]],
    ]
    return "\n".join(parts)


def write_report(folder: Path, metrics: dict[str, Any], figures: Callable[[Path], list[str]], overwrite: bool) -> None:
    """Render `figures(dir)`, metrics.json and report.md in a hidden staging folder inside `folder`, then move each
    file into place (io.StagedFolder: report.md last, none replaced without overwrite, not even one created
    meanwhile); other entries of `folder` are never touched."""
    from .io import StagedFolder

    with StagedFolder(folder, overwrite) as stage:
        metrics["figures"] = figures(stage.root)
        for name in metrics["figures"]:
            stage.path(name)
        stage.path("metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        stage.path("report.md").write_text(report_markdown(metrics))
        clash = stage.clashes()
        if clash:
            raise UserError(f"report folder {folder} already holds {', '.join(clash[:3])}"
                            f"{' ...' if len(clash) > 3 else ''} (use --overwrite to replace the report files)")
