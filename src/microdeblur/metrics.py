"""Image-quality metrics on normalised tiles, |Δz| binning and the ML-VAE disentanglement score."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.ndimage import uniform_filter
from torch import nn

from .devices import torch_threads

DATA_RANGE = 1.0  # normalised tiles: the plane's 1st..99.8th percentile maps to 0..1
PSNR_CAP_DB = 100.0  # PSNR of identical tiles (MSE 0) is reported as this instead of inf
SSIM_WINDOW = 7  # skimage.metrics.structural_similarity default (uniform window)
BIN_EDGES = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)
NEAR_FOCUS = 15.0  # the "|Δz| <= 15" subset
_CHUNK = 256


def ssim_batch(pred: np.ndarray, target: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-image SSIM of [N,H,W] stacks; equals skimage.metrics.structural_similarity on each pair."""
    return np.concatenate([_ssim_chunk(pred[i : i + _CHUNK], target[i : i + _CHUNK], data_range)
                           for i in range(0, max(len(pred), 1), _CHUNK)])


def _ssim_chunk(pred: np.ndarray, target: np.ndarray, data_range: float) -> np.ndarray:
    """skimage's SSIM (7-px uniform window, sample covariance, border crop) vectorised over axis 0."""
    x, y = pred.astype(np.float64), target.astype(np.float64)
    win = (1, SSIM_WINDOW, SSIM_WINDOW)
    np_ = SSIM_WINDOW**2
    cov_norm = np_ / (np_ - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov_norm * (uniform_filter(x * x, win) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, win) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, win) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    p = (SSIM_WINDOW - 1) // 2
    return s[:, p:-p, p:-p].mean(axis=(1, 2))


def psnr_batch(pred: np.ndarray, target: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-image PSNR (dB) of [N,H,W] stacks, capped at PSNR_CAP_DB (identical images)."""
    diff = pred.astype(np.float64) - target.astype(np.float64)
    mse = np.mean(diff * diff, axis=tuple(range(1, diff.ndim)))
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(data_range**2 / mse)
    return np.minimum(psnr, PSNR_CAP_DB)


def minmse_fit(image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The image after the gain and offset that minimise its MSE to `truth` (CSBDeep's min-MSE convention), float32."""
    x = image.astype(np.float64).ravel()
    t = truth.astype(np.float64).ravel()
    xm, tm = x.mean(), t.mean()
    var = float(np.mean((x - xm) ** 2))
    gain = float(np.mean((x - xm) * (t - tm))) / var if var > 0 else 0.0
    return (gain * (image.astype(np.float64) - xm) + tm).astype(np.float32)


def psnr_minmse(image: np.ndarray, truth: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """PSNR of `image` against `truth` after the min-MSE affine fit."""
    return float(psnr_batch(minmse_fit(image, truth)[None], truth[None], data_range)[0])


def minmse_scores(image: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) after the min-MSE affine fit against a normalised in-focus plane."""
    fit = minmse_fit(image, truth)[None]
    t = truth.astype(np.float32)[None]
    return float(psnr_batch(fit, t)[0]), float(ssim_batch(fit, t)[0])


def summary(ssim: np.ndarray, psnr: np.ndarray) -> dict[str, Any]:
    """Mean and standard deviation of per-tile SSIM and PSNR (None when there are no tiles)."""
    if len(ssim) == 0:
        return {"n": 0, "ssim": None, "ssim_std": None, "psnr": None, "psnr_std": None}
    return {"n": int(len(ssim)), "ssim": float(ssim.mean()), "ssim_std": float(ssim.std()),
            "psnr": float(psnr.mean()), "psnr_std": float(psnr.std())}


def bin_labels(edges: tuple[float, ...] = BIN_EDGES) -> list[str]:
    """Names of the |Δz| bins, e.g. '0-5', plus '>30' for anything beyond the last edge."""
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])] + [f">{edges[-1]:g}"]


def bin_index(abs_dz: np.ndarray, edges: tuple[float, ...] = BIN_EDGES) -> np.ndarray:
    """Bin of each |Δz|: (lo, hi] intervals (the first one also holds 0), the last index past the edges."""
    return np.maximum(np.searchsorted(np.asarray(edges), abs_dz, side="left") - 1, 0)


def deblur_summary(ssim: np.ndarray, psnr: np.ndarray, abs_dz: np.ndarray) -> dict[str, Any]:
    """Overall, |Δz| <= NEAR_FOCUS and per-bin summaries of per-tile deblurring scores."""
    idx = bin_index(abs_dz)
    near = abs_dz <= NEAR_FOCUS
    bins = {label: summary(ssim[idx == b], psnr[idx == b]) for b, label in enumerate(bin_labels())}
    return {"overall": summary(ssim, psnr), "near_focus": summary(ssim[near], psnr[near]),
            "bins": {k: v for k, v in bins.items() if v["n"] > 0}}


def alternate_holdout(labels: np.ndarray) -> np.ndarray:
    """Boolean mask holding out every second tile of each identity (tiles in Δz order within an identity)."""
    order = np.argsort(labels, kind="stable")
    first = np.searchsorted(labels[order], labels[order])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - first
    return rank % 2 == 1


def classifier_accuracy(codes: np.ndarray, labels: np.ndarray, test: np.ndarray, *, epochs: int,
                        seed: int = 0, batch_size: int = 64) -> float:
    """Held-out accuracy of a one-hidden-layer MLP trained (Adam, `epochs` passes) to predict labels from codes."""
    x = torch.as_tensor(codes, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    train = torch.as_tensor(~test)
    mu, sd = x[train].mean(0), x[train].std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mu) / sd
    with torch_threads(1):  # a tiny MLP: threads only add synchronisation overhead
        return _fit_and_score(x[train], y[train], x[~train], y[~train], int(labels.max()) + 1, epochs=epochs,
                              seed=seed, batch_size=batch_size)


def _fit_and_score(xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, n_classes: int, *,
                   epochs: int, seed: int, batch_size: int) -> float:
    """Train the MLP classifier (seeded, global RNG untouched) and return its accuracy on (xv, yv)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(xt.shape[1], 128), nn.ReLU(), nn.Linear(128, n_classes))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            for b in torch.randperm(len(xt)).split(batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
                opt.step()
        with torch.inference_mode():
            return float((net(xv).argmax(1) == yv).float().mean())


def mlvae_score(identity: np.ndarray, blur: np.ndarray, labels: np.ndarray, *, epochs: int,
                seed: int = 0) -> dict[str, Any]:
    """ML-VAE score (thesis eq. 4.10): held-out identity accuracy from identity codes minus from blur codes."""
    test = alternate_holdout(labels)
    acc_id = classifier_accuracy(identity, labels, test, epochs=epochs, seed=seed)
    acc_blur = classifier_accuracy(blur, labels, test, epochs=epochs, seed=seed)
    return {"acc_identity": acc_id, "acc_blur": acc_blur, "score": acc_id - acc_blur,
            "chance": 1.0 / len(np.unique(labels)), "epochs": int(epochs), "n_test": int(test.sum())}


def json_safe(value: Any) -> Any:
    """Recursively turn numpy scalars into Python numbers and NaN/inf into None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def frame_scores(image: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of a whole plane against an in-focus plane, each normalised by its own 1st-99.8th
    percentiles (data range 1, as `evaluate`); what `deblur --truth` prints."""
    from .normalize import frame_normalizer

    x, t = (frame_normalizer(v).before(v.astype(np.float32))[None] for v in (image, truth))
    return float(psnr_batch(x, t)[0]), float(ssim_batch(x, t)[0])


def sharpness(image: np.ndarray) -> float:
    """Mean |Laplacian| of the image normalised by its own 1st-99.8th percentiles (fine-detail energy)."""
    from scipy.ndimage import laplace

    from .normalize import frame_normalizer

    x = frame_normalizer(image).before(np.asarray(image, np.float32))
    return float(np.mean(np.abs(laplace(x.astype(np.float64)))))


def truth_scores(image: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Own-percentile PSNR/SSIM, min-MSE PSNR/SSIM and sharpness relative to the truth of a whole plane."""
    from .normalize import frame_normalizer

    p, s = frame_scores(image, truth)
    t = frame_normalizer(truth).before(truth.astype(np.float32))
    mp, ms = minmse_scores(image, t)
    return {"psnr": p, "ssim": s, "minmse_psnr": mp, "minmse_ssim": ms, "sharpness_ratio": sharpness(image) / max(sharpness(truth), 1e-12)}


def compare_to_truth(firsts: list[tuple[str, np.ndarray, np.ndarray]], ref: np.ndarray,
                     truth_name: str) -> list[dict[str, float]]:
    """Scores of each (name, input's first plane, output's first plane) against an in-focus plane of the same
    field, logged: min-MSE PSNR/SSIM (the field's convention), own-percentile PSNR/SSIM and sharpness."""
    from . import log

    rows = []
    for name, a, b in firsts:
        before, after = truth_scores(np.asarray(a, np.float32), ref), truth_scores(np.asarray(b, np.float32), ref)
        log.info(f"{name} vs {truth_name} (before -> after): min-MSE PSNR {before['minmse_psnr']:.2f} -> "
                 f"{after['minmse_psnr']:.2f} dB, SSIM {before['minmse_ssim']:.3f} -> {after['minmse_ssim']:.3f}; "
                 f"own-percentile PSNR {before['psnr']:.2f} -> {after['psnr']:.2f} dB, SSIM {before['ssim']:.3f} -> "
                 f"{after['ssim']:.3f}; sharpness {before['sharpness_ratio']:.2f} -> {after['sharpness_ratio']:.2f} of focus")
        rows.append({f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()})
    return rows
