"""Deblurring baselines on normalised tiles: unsharp masking, Richardson-Lucy, Wiener, CARE-style U-Net."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from skimage.filters import unsharp_mask
from skimage.restoration import richardson_lucy, uft, wiener
from torch import Tensor, nn

from .atomic import atomic_path
from .errors import UserError
from .microscope import Optics, defocus_psf

UNSHARP_RADIUS = 1.0  # px at working scale (skimage defaults)
UNSHARP_AMOUNT = 1.0
RL_ITERATIONS = 10
WIENER_BALANCE = 1.0
UNET_KIND = "unet-baseline"
_PREFIX = "microdeblur."


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """3x3 convolution (same padding, no bias), batch norm, ReLU: the CARE-style U-Net's unit."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def unsharp(tiles: np.ndarray) -> np.ndarray:
    """Unsharp masking of each [N,H,W] tile (Gaussian radius UNSHARP_RADIUS px, amount UNSHARP_AMOUNT)."""
    return unsharp_mask(tiles, radius=(0.0, UNSHARP_RADIUS, UNSHARP_RADIUS), amount=UNSHARP_AMOUNT,
                        preserve_range=True).astype(np.float32)


def psf_size(dz_um: float, pixel_um: float, optics: Optics) -> int:
    """Odd PSF side covering the geometric defocus blur disc (radius |Δz|·tan(asin(NA/n))) with margin."""
    tan = math.tan(math.asin(min(optics.na / optics.medium_index, 0.99)))
    return 2 * math.ceil(1.25 * abs(dz_um) * tan / pixel_um) + 9


def richardson_lucy_tiles(tiles: np.ndarray, psf: np.ndarray, iterations: int = RL_ITERATIONS) -> np.ndarray:
    """Richardson-Lucy on each [N,H,W] tile (reflect-padded by the PSF radius; negative inputs clipped to 0)."""
    r = psf.shape[-1] // 2
    padded = np.pad(np.maximum(tiles, 0.0), ((0, 0), (r, r), (r, r)), mode="reflect")
    out = richardson_lucy(padded, psf[None], num_iter=iterations, clip=False)
    return out[:, r:-r, r:-r].astype(np.float32)


def wiener_tiles(tiles: np.ndarray, psf: np.ndarray, balance: float = WIENER_BALANCE) -> np.ndarray:
    """Wiener-Hunt deconvolution (2-D Laplacian prior) of each [N,H,W] tile, reflect-padded by the PSF radius."""
    r = psf.shape[-1] // 2
    padded = np.pad(tiles, ((0, 0), (r, r), (r, r)), mode="reflect")
    reg, _ = uft.laplacian(2, padded.shape[1:], is_real=True)
    out = wiener(padded, psf[None], balance, reg=reg, is_real=True, clip=False)
    return out[:, r:-r, r:-r].astype(np.float32)


LINEAR_RINGS = 128  # frequency rings of the learned linear filter
LINEAR_PAD = 64  # reflected border (px) around a frame before its FFT: keeps the wrap-around out of the frame


def _padded_spectrum(x: np.ndarray) -> np.ndarray:
    return np.fft.rfft2(np.pad(np.asarray(x, np.float64), LINEAR_PAD, mode="reflect"))


def _rings(spectrum_shape: tuple[int, int], n_rings: int) -> np.ndarray:
    """Ring (0..n_rings-1) of every rfft2 frequency, by radial frequency in cycles per pixel (DC 0, corner last)."""
    fy = np.fft.fftfreq(spectrum_shape[0])[:, None]
    fx = np.fft.rfftfreq(2 * (spectrum_shape[1] - 1))[None, :]
    return np.minimum((np.hypot(fy, fx) / np.sqrt(0.5) * n_rings).astype(int), n_rings - 1)


@dataclass
class LinearFilterFit:
    """Least-squares sums of a ring-wise linear filter from blurry to in-focus frames (accumulate, then `gains`)."""

    n_rings: int = LINEAR_RINGS
    num: np.ndarray | None = None
    den: np.ndarray | None = None

    def add(self, blurry: np.ndarray, focus: np.ndarray) -> None:
        """Add one pair of same-shape normalised frames (a defocused one and its in-focus frame)."""
        b, t = _padded_spectrum(blurry), _padded_spectrum(focus)
        rings = _rings(b.shape, self.n_rings).ravel()
        num = np.bincount(rings, (t * b.conj()).real.ravel(), self.n_rings)
        den = np.bincount(rings, (np.abs(b) ** 2).ravel(), self.n_rings)
        self.num, self.den = (num, den) if self.num is None else (self.num + num, self.den + den)

    def gains(self) -> np.ndarray:
        """Real gain per ring minimising sum |T - g B|^2 (a defocus PSF is even, so its transfer is real)."""
        return self.num / np.maximum(self.den, 1e-12)


def linear_filter(x: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Apply a ring-wise gain (LinearFilterFit.gains) to a 2-D frame."""
    spec = _padded_spectrum(x)
    out = np.fft.irfft2(spec * gains[_rings(spec.shape, len(gains))], s=tuple(n + 2 * LINEAR_PAD for n in x.shape))
    return out[LINEAR_PAD:-LINEAR_PAD, LINEAR_PAD:-LINEAR_PAD].astype(np.float32)


def deconvolve(tiles: np.ndarray, dz_um: np.ndarray, pixel_um: float | np.ndarray,
               method: Callable[[np.ndarray, np.ndarray], np.ndarray], optics: Optics | None = None) -> np.ndarray:
    """Apply `method(tiles, psf)` with the objective's defocus PSF at each tile's |Δz| and pixel size (µm; one
    value or one per tile); `optics` defaults to the reference microscope."""
    optics = optics or Optics()
    out = np.empty_like(tiles, dtype=np.float32)
    keys = np.stack(np.broadcast_arrays(np.abs(np.asarray(dz_um, np.float64)), np.asarray(pixel_um, np.float64)), 1)
    groups, which = np.unique(keys, axis=0, return_inverse=True)
    for g, (d, px) in enumerate(groups):
        idx = np.flatnonzero(which.reshape(-1) == g)
        out[idx] = method(tiles[idx], defocus_psf(optics, float(d), float(px), psf_size(float(d), float(px), optics)))
    return out


@dataclass
class UNetConfig:
    """U-Net size: `base` channels at full resolution, doubled at each of `depth` down-samplings."""

    base: int = 16
    depth: int = 3

    @property
    def widths(self) -> list[int]:
        """Channels per level, full resolution first."""
        return [self.base * 2**i for i in range(self.depth + 1)]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two conv-BN-ReLU layers."""
    return nn.Sequential(*_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout))


class UNet(nn.Module):
    """CARE-style residual U-Net: max-pool down, bilinear up, skip concatenation; predicts x + residual."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        w = cfg.widths
        self.down = nn.ModuleList(_double_conv(cin, cout) for cin, cout in zip([1, *w[:-1]], w))
        self.up = nn.ModuleList(_double_conv(w[i + 1] + w[i], w[i]) for i in reversed(range(cfg.depth)))
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Blurry tiles [B,1,H,W] (H, W multiples of 2**depth) -> estimated in-focus tiles."""
        skips, h = [], x
        for i, block in enumerate(self.down):
            h = block(F.max_pool2d(h, 2) if i else h)
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skips.pop()], dim=1))
        return x + self.out(h)


def unet_config_for(n_params: int, depth: int = 3) -> UNetConfig:
    """The UNetConfig of the given depth whose parameter count is closest to n_params (base 4..64)."""
    def count(base: int) -> int:
        return sum(p.numel() for p in UNet(UNetConfig(base, depth)).parameters())
    bases = range(4, 65)
    i = min(bisect.bisect_left(bases, n_params, key=count), len(bases) - 1)  # count grows with base
    return UNetConfig(min(bases[max(i - 1, 0) : i + 1], key=lambda b: abs(count(b) - n_params)), depth)


def save_unet(path: Path, model: UNet, training: dict[str, Any], overwrite: bool = False) -> None:
    """Write the U-Net state dict with its config and training summary as safetensors metadata (atomic)."""
    meta = {f"{_PREFIX}format_version": "1", f"{_PREFIX}kind": UNET_KIND,
            f"{_PREFIX}unet_config": json.dumps(asdict(model.config)), f"{_PREFIX}training": json.dumps(training)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, overwrite) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_unet(path: Path, device: torch.device | str = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Load a U-Net written by save_unet, in eval mode on `device`; returns (model, training summary)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"U-Net weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"cannot read U-Net weights {path}: {e}") from e
    if meta.get(f"{_PREFIX}kind") != UNET_KIND:
        raise UserError(f"{path} is not a U-Net baseline file (written by benchmarks/train_unet.py)")
    model = UNet(UNetConfig(**json.loads(meta[f"{_PREFIX}unet_config"])))
    model.load_state_dict(state)
    return model.to(device).eval(), json.loads(meta.get(f"{_PREFIX}training", "{}"))
