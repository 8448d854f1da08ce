"""Training losses: reconstruction, consistency, contrastive, cross-reconstruction (thesis eq. 4.5-4.9)
and the ML-VAE terms (eq. 4.1-4.4); the step-level compositions used by the trainer live here too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .networks import DisentangledAE

RecFn = Callable[[Tensor, Tensor], Tensor]

_WANG_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003 MS-SSIM scale weights
_C1, _C2 = 0.01**2, 0.03**2  # SSIM stabilisers for data range 1
_CS_FLOOR = 1e-4  # per-scale cs (and last-scale SSIM) means are clamped here before the fractional power


def rms_distance(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-sample δ = ||a-b||_2 / sqrt(D) over all non-batch dims (eq. 4.6/4.7); eps keeps the gradient finite at 0."""
    d2 = (a - b).flatten(1).pow(2).mean(dim=1)
    return torch.sqrt(d2 + eps)


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


def consistency_loss(stable_orig: Tensor, stable_reencoded: Tensor) -> Tensor:
    """Eq. 4.6: mean δ between the stable code and the stable code of the re-encoded swap decoding."""
    return rms_distance(stable_orig, stable_reencoded).mean()


def contrastive_loss(za: Tensor, zb: Tensor, equal: bool, margin: float = 0.6) -> Tensor:
    """Eq. 4.7: mean δ for codes of an equal factor, mean max(m-δ, 0) for an unequal one."""
    d = rms_distance(za, zb)
    return d.mean() if equal else F.relu(margin - d).mean()


def cross_reconstruction_loss(rec_fn: RecFn, decoded: Tensor, targets: Tensor) -> Tensor:
    """Eq. 4.8: γ between decodings of swapped codes and the images those swaps should reproduce."""
    return rec_fn(decoded, targets)


def beta_schedule(progress: float, delay: float = 0.3, rate: float = 10.0, ramp: float = 0.2) -> float:
    """Warm-up weight β(t) of the distance losses (thesis 4.2.4), t = fraction of training done.

    β = 0 for t < delay; β = (exp(rate·(t-delay)) - 1) / (exp(rate·ramp) - 1), capped at 1, reaching 1 at
    t = delay + ramp: Fumero's min(exp(k(t - t_full)), 1) shifted so it starts exactly at 0."""
    if progress < delay:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(math.expm1(rate * (progress - delay)) / math.expm1(rate * ramp), 1.0)


def group_posterior(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 4.1: product of the K members' Gaussians per group, [G,K,D] -> [G,D] mean and log-variance.

    Computed in precision space: logvar_g = -logsumexp_k(-logvar_k), mu_g = Σ_k softmax_k(-logvar)·mu_k."""
    logvar_g = -torch.logsumexp(-logvar, dim=1)
    mu_g = (torch.softmax(-logvar, dim=1) * mu).sum(dim=1)
    return mu_g, logvar_g


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over the last dim."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)


def reparameterize(mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample mu + exp(logvar/2)·ε with ε ~ N(0, I)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def manifold_losses(
    model: DisentangledAE,
    x1: Tensor,
    x2: Tensor,
    y1: Tensor,
    y2: Tensor,
    *,
    rec_fn: RecFn,
    use_consistency: bool = True,
    use_contrastive: bool = True,
    use_cross: bool = True,
    dz1: Optional[Tensor] = None,
    dz2: Optional[Tensor] = None,
    dz_weight: float = 0.0,
    dz_scale: float = 30.0,
    margin: float = 0.6,
) -> dict[str, Tensor]:
    """Loss terms of one manifold step (eq. 4.5); x pairs share identity, y pairs share Δz.

    Each distance/cross term is the sum over the two pair kinds of the mean over that kind; the trainer
    forms rec + β·(cons + cont + cross) + dz_weight·dz. One encoder call for the inputs, one decoder call
    for own reconstructions and swaps, one encoder call for re-encoding the swaps."""
    b = x1.shape[0]
    xs = torch.cat([x1, x2, y1, y2])
    codes = model.encode(xs)
    ids, blurs = codes.identity, codes.blur
    ix1, ix2, iy1, iy2 = ids.split(b)
    bx1, bx2, by1, by2 = blurs.split(b)
    zero = xs.new_zeros(())
    swaps = use_cross or use_consistency
    if swaps:
        # swaps: D(ix1,bx2)->x2, D(ix2,bx1)->x1, D(iy1,by2)->y1, D(iy2,by1)->y2
        dec = model.decode(torch.cat([ids, ix1, ix2, iy1, iy2]), torch.cat([blurs, bx2, bx1, by2, by1]))
        own, swapped = dec.split(4 * b)
    else:
        own = model.decode(ids, blurs)
    out = {"rec": rec_fn(own, xs), "cons": zero, "cont": zero, "cross": zero, "dz": zero}
    if use_cross:
        sx, sy = swapped.split(2 * b)
        out["cross"] = cross_reconstruction_loss(rec_fn, sx, torch.cat([x2, x1])) + cross_reconstruction_loss(
            rec_fn, sy, torch.cat([y1, y2])
        )
    if use_consistency:
        re = model.encode(swapped)
        # each swap keeps one code fixed: identity of D(ix1,bx2), D(ix2,bx1); blur of D(iy1,by2), D(iy2,by1)
        out["cons"] = consistency_loss(torch.cat([ix1, ix2]), re.identity[: 2 * b]) + consistency_loss(
            torch.cat([by2, by1]), re.blur[2 * b :]
        )
    if use_contrastive:
        out["cont"] = (
            contrastive_loss(ix1, ix2, True, margin)
            + contrastive_loss(bx1, bx2, False, margin)
            + contrastive_loss(by1, by2, True, margin)
            + contrastive_loss(iy1, iy2, False, margin)
        )
    if dz_weight > 0 and model.config.variant == "manifold-1d" and dz1 is not None and dz2 is not None:
        target = torch.cat([dz1, dz2]).to(blurs.dtype).reshape(-1) / dz_scale
        out["dz"] = F.mse_loss(torch.cat([bx1, bx2]).reshape(-1), target)
    return out


def mlvae_losses(
    model: DisentangledAE, groups: Tensor, *, rec_fn: RecFn, generator: Optional[torch.Generator] = None
) -> dict[str, Tensor]:
    """ML-VAE terms (eq. 4.1-4.4) for groups [G,K,1,T,T] of one identity each; the trainer sums them.

    rec is γ averaged over all G·K members. Following Bouchacourt's implementation the identity KL is
    counted once per group and the blur KL once per member, both divided by G; because rec is a mean per
    pixel, both KLs are further divided by K·T·T (nats per pixel), i.e. the ELBO per pixel."""
    g, k = groups.shape[:2]
    t = groups.shape[-1]
    xs = groups.reshape(g * k, *groups.shape[2:])
    codes = model.encode(xs)
    if codes.id_logvar is None or codes.blur_logvar is None:
        raise ValueError("mlvae_losses needs an ml-vae model (codes with log-variances)")
    d = codes.identity.shape[1]
    mu_g, lv_g = group_posterior(codes.identity.view(g, k, d), codes.id_logvar.view(g, k, d))
    ident = reparameterize(mu_g[:, None].expand(g, k, d), lv_g[:, None].expand(g, k, d), generator).reshape(g * k, d)
    blur = reparameterize(codes.blur, codes.blur_logvar, generator)
    recon = model.decode(ident, blur)
    per_pixel = float(k * t * t)
    return {
        "rec": rec_fn(recon, xs),
        "kl_id": kl_standard_normal(mu_g, lv_g).sum() / (g * per_pixel),
        "kl_blur": kl_standard_normal(codes.blur, codes.blur_logvar).sum() / (g * per_pixel),
    }
