"""Training losses as pure functions of tensors: reconstruction, consistency, contrastive,
cross-reconstruction (thesis eq. 4.5-4.9), the ML-VAE terms (eq. 4.1-4.4) and the β warm-up.
How a variant combines them in one step lives in `objectives.py`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError

RecFn = Callable[[Tensor, Tensor], Tensor]

_WANG_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003 MS-SSIM scale weights
_C1, _C2 = 0.01**2, 0.03**2  # SSIM stabilisers for data range 1
_CS_FLOOR = 1e-4  # per-scale cs (and last-scale SSIM) means are clamped here before the fractional power


def rms_distance(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-sample δ = ||a-b||_2 / sqrt(D) over all non-batch dims (eq. 4.6/4.7); eps keeps the gradient finite at 0."""
    d2 = (a - b).flatten(1).pow(2).mean(dim=1)
    return torch.sqrt(d2 + eps)


def pyramid_distance(a: Tensor, b: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Per-sample mean over pyramid levels of δ per level (flat codes [B,D] split into `sizes`).

    Every level counts alike, so the full-resolution level (most of the numbers) does not drown the
    coarse ones; `sizes=None` is plain δ."""
    if not sizes or len(sizes) == 1:
        return rms_distance(a, b)
    return torch.stack([rms_distance(p, q) for p, q in zip(a.split(sizes, 1), b.split(sizes, 1))]).mean(0)


def gaussian_window(size: int = 7, sigma: float = 1.5, device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian window."""
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: Tensor, win: Tensor) -> Tensor:
    """Separable Gaussian filter per channel with 'valid' borders (no padding bias)."""
    c = x.shape[1]
    k = win.numel()
    x = F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_terms(x: Tensor, y: Tensor, win: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample mean SSIM and mean contrast-structure term at one scale."""
    c = x.shape[1]
    stats = _blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), win)
    mx, my, xx, yy, xy = stats.split(c, dim=1)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    lum = (2 * mx * my + _C1) / (mx * mx + my * my + _C1)
    cs = (2 * cxy + _C2) / (vx + vy + _C2)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(pred: Tensor, target: Tensor, scales: int = 3, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Per-sample MS-SSIM [B] (Wang et al. 2003) with 3 scales, 7-px σ=1.5 Gaussian, valid borders, data range 1."""
    win = gaussian_window(window, sigma, pred.device).to(pred.dtype)
    weights = _scale_weights(scales)
    out = torch.ones(pred.shape[0], dtype=pred.dtype, device=pred.device)
    for s in range(scales):
        ssim, cs = _ssim_terms(pred, target, win)
        if s == scales - 1:
            out = out * ssim.clamp_min(_CS_FLOOR) ** weights[s]
        else:
            out = out * cs.clamp_min(_CS_FLOOR) ** weights[s]
            pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
    return out


def _scale_weights(scales: int) -> tuple[float, ...]:
    """First `scales` of Wang's five MS-SSIM weights, renormalised to sum to 1 ((0.071, 0.453, 0.476) for 3)."""
    full = _WANG_WEIGHTS[:scales]
    return tuple(w / sum(full) for w in full)


def ms_ssim_l1(pred: Tensor, target: Tensor, alpha: float = 0.84) -> Tensor:
    """Zhao et al. 2017 mix α(1-MS-SSIM) + (1-α)·L1, batch mean (the thesis's γ, eq. 4.9, without VGG).

    L1 is a plain mean over all pixels: for whole tiles Zhao's Gaussian weighting of the per-pixel L1
    only matters near borders, and a uniform weight keeps every pixel supervised."""
    return alpha * (1.0 - ms_ssim(pred, target)).mean() + (1.0 - alpha) * (pred - target).abs().mean()


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all pixels (CARE's loss)."""
    return (pred - target).abs().mean()


def l2_loss(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """Root mean squared error over all pixels: the minimiser of the MSE (what PSNR scores: the conditional
    mean where the blur left the answer uncertain, not L1's median) at L1's gradient scale."""
    return torch.sqrt((pred - target).pow(2).mean() + eps)


DEBLUR_LOSSES = {"l1": l1_loss, "l2": l2_loss}


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256)  # features up to relu3_3 (torchvision indices 0-15)
_VGG_TAPS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3


class PerceptualLoss(nn.Module):
    """VGG-16 feature L1 (relu1_2, relu2_2, relu3_3) from a local torchvision vgg16 state dict; never downloads."""

    def __init__(self, state_dict_path: str | Path) -> None:
        super().__init__()
        path = Path(state_dict_path)
        if not path.is_file():
            raise UserError(f"VGG-16 weights not found: {path}")
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            own = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
            own = {k: v for k, v in own.items() if int(k.split(".")[0]) < len(layers)}
            self.features.load_state_dict(own, strict=True)
        except Exception as e:  # noqa: BLE001 - any failure means the file is not a usable VGG-16 state dict
            raise UserError(f"{path}: not a torchvision-compatible vgg16 state dict ({type(e).__name__})") from e
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean L1 distance between the feature maps of grey images replicated to RGB."""
        h = (torch.cat([pred, target]).expand(-1, 3, -1, -1) - self.mean) / self.std
        loss = pred.new_zeros(())
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG_TAPS:
                a, b = h.chunk(2)
                loss = loss + (a - b).abs().mean()
            if i >= _VGG_TAPS[-1]:
                break
        return loss


def reconstruction_loss(vgg16_path: str | Path | None = None) -> RecFn:
    """The reconstruction loss γ: VGG-16 perceptual loss when a local state dict is given, else MS-SSIM+L1."""
    return PerceptualLoss(vgg16_path) if vgg16_path is not None else ms_ssim_l1


def consistency_loss(stable_orig: Tensor, stable_reencoded: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Eq. 4.6: mean δ between the stable code and the stable code of the re-encoded swap decoding."""
    return pyramid_distance(stable_orig, stable_reencoded, sizes).mean()


def contrastive_loss(za: Tensor, zb: Tensor, equal: bool, margin: float = 0.6, sizes: list[int] | None = None) -> Tensor:
    """Eq. 4.7: mean δ for codes of an equal factor, mean max(m-δ, 0) for an unequal one."""
    d = pyramid_distance(za, zb, sizes)
    return d.mean() if equal else F.relu(margin - d).mean()


def beta_schedule(step: float, delay: float = 300, ramp: float = 600, rate: float = 5.0) -> float:
    """Warm-up weight β of the distance losses (thesis 4.2.4) at optimiser step `step`.

    β = 0 before `delay` steps; then (exp(rate·u) - 1) / (exp(rate) - 1) with u = (step - delay) / ramp,
    reaching 1 at delay + ramp: Fumero's exponential ramp min(exp(k(t - t_full)), 1) shifted to start at 0.
    Counted in steps, so extending a run (`--resume` with more `--max-steps`) never changes steps already planned."""
    if step < delay:
        return 0.0
    if ramp <= 0:
        return 1.0
    u = min((step - delay) / ramp, 1.0)
    return math.expm1(rate * u) / math.expm1(rate)


def group_posterior(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 4.1: product of the K members' Gaussians per group, [G,K,D] -> [G,D] mean and log-variance.

    Computed in precision space: logvar_g = -logsumexp_k(-logvar_k), mu_g = Σ_k softmax_k(-logvar)·mu_k."""
    logvar_g = -torch.logsumexp(-logvar, dim=1)
    mu_g = (torch.softmax(-logvar, dim=1) * mu).sum(dim=1)
    return mu_g, logvar_g


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over the last dim."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample mu + exp(logvar/2)·ε with ε ~ N(0, I)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps
