"""The PNG figures of an `evaluate` report: example tiles, scores by |Δz|, t-SNE of the codes, interpolation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import PreparedData
from .eval_protocol import SEED, EvalSet, LoadedModel, spread
from .frame_eval import INPUT
from .metrics import bin_labels
from .networks import decode_batched, encode_batched

PERPLEXITIES = (10, 30)
TSNE_IDENTITIES = 8
TSNE_TILES = 30  # per identity (thesis: 30 images of 8 identities)
INTERP_STEPS = 7  # thesis fig. 5.13: ratios 0, 1/6, ..., 1 (0.5 in the middle)


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
