"""Encoder/decoder with separate identity and blur codes (thesis ch. 4 and 5.1.2, CPU-sized; docs/model.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANTS = ("manifold-1d", "manifold", "ml-vae")


@dataclass
class ModelConfig:
    """Architecture settings; `blur_dim`, `id_dim` and `code_size` are derived."""

    variant: str = "manifold-1d"
    tile: int = 128
    widths: tuple[int, ...] = (16, 32)
    head_width: int = 64
    id_channels: int = 16
    film_hidden: int = 32
    unshuffle: int = 2  # space-to-depth factor at the input / depth-to-space at the output (lossless, 3x faster)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown model variant {self.variant!r}: use one of {', '.join(VARIANTS)}")
        if not self.widths or min(self.widths) < 1 or self.head_width < 1 or self.id_channels < 1 or self.unshuffle < 1:
            raise ValueError("widths, head_width, id_channels and unshuffle must be positive")
        if self.tile % self.downsample != 0 or self.tile < self.downsample:
            raise ValueError(f"tile {self.tile} must be a positive multiple of {self.downsample}")

    @property
    def downsample(self) -> int:
        """Total encoder down-sampling factor (space-to-depth, then one max-pool per trunk block)."""
        return self.unshuffle * 2 ** len(self.widths)

    @property
    def code_size(self) -> int:
        """Spatial side of the code maps (8 for 128-px tiles and three trunk blocks)."""
        return self.tile // self.downsample

    @property
    def id_dim(self) -> int:
        """Length of the flattened identity code."""
        return self.id_channels * self.code_size**2

    @property
    def blur_dim(self) -> int:
        """Length of the blur code: 1 for manifold-1d, else the identity length."""
        return 1 if self.variant == "manifold-1d" else self.id_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the stored fields."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict` (derived keys such as `blur_dim` are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


class Codes(NamedTuple):
    """Encoder output: identity [B,Di], blur [B,Db]; log-variances for ml-vae only."""

    identity: Tensor
    blur: Tensor
    id_logvar: Optional[Tensor] = None
    blur_logvar: Optional[Tensor] = None


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """3x3 convolution (stride 1, same padding), batch norm, ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def down_block(cin: int, cout: int) -> nn.Sequential:
    """Thesis encoder block: two conv-BN-ReLU then 2x2 max-pool."""
    return nn.Sequential(*conv_bn_relu(cin, cout), *conv_bn_relu(cout, cout), nn.MaxPool2d(2))


def head_block(cin: int, cout: int) -> nn.Sequential:
    """Identity/blur head block at code resolution: two conv-BN-ReLU (the trunk did the pooling)."""
    return nn.Sequential(*conv_bn_relu(cin, cout), *conv_bn_relu(cout, cout))


class UpBlock(nn.Module):
    """Decoder block: conv, bilinear x2 upsampling, BN-ReLU, conv-BN-ReLU; optional FiLM after the first BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, film: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Convolve, upsample, convolve; `film` = (scale, shift), each [B,C,1,1].

        The first convolution runs before the bilinear upsampling (4x fewer operations)."""
        x = F.interpolate(self.conv1(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.bn1(x)
        if film is not None:
            x = torch.addcmul(film[1], x, 1.0 + film[0])
        x = F.relu(x, inplace=True)
        return F.relu(self.bn2(self.conv2(x)), inplace=True)


class Stem(nn.Module):
    """Decoder entry at code resolution: conv3x3-BN (optional FiLM) -ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, film: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Convolve the code maps; `film` as in `UpBlock`."""
        x = self.bn(self.conv(x))
        if film is not None:
            x = torch.addcmul(film[1], x, 1.0 + film[0])
        return F.relu(x, inplace=True)


class ScalarBlurHead(nn.Module):
    """1-D blur head: conv block, global average pool, small MLP to one unbounded number."""

    def __init__(self, cin: int, width: int, hidden: int) -> None:
        super().__init__()
        self.block = head_block(cin, width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor) -> Tensor:
        """Features [B,C,H,W] -> blur code [B,1] (no activation or normalisation at the output)."""
        return self.mlp(self.block(h).mean(dim=(2, 3)))


class DisentangledAE(nn.Module):
    """Autoencoder whose latent is split into an identity code and a blur code (conv weights channels_last)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        vae = cfg.variant == "ml-vae"
        out_mult = 2 if vae else 1
        trunk, cin = [], cfg.unshuffle**2
        for w in cfg.widths:
            trunk.append(down_block(cin, w))
            cin = w
        self.trunk = nn.Sequential(*trunk)
        self.id_head = nn.Sequential(head_block(cin, cfg.head_width), nn.Conv2d(cfg.head_width, cfg.id_channels * out_mult, 1))
        if cfg.variant == "manifold-1d":
            self.blur_head: nn.Module = ScalarBlurHead(cin, cfg.head_width, cfg.film_hidden)
            dec_in = cfg.id_channels + 1
        else:
            self.blur_head = nn.Sequential(head_block(cin, cfg.head_width), nn.Conv2d(cfg.head_width, cfg.id_channels * out_mult, 1))
            dec_in = 2 * cfg.id_channels
        dec_widths = list(reversed(cfg.widths))
        self.stem = Stem(dec_in, cfg.head_width)
        blocks, cin = [], cfg.head_width
        for w in dec_widths:
            blocks.append(UpBlock(cin, w))
            cin = w
        self.up = nn.ModuleList(blocks)
        self.out = nn.Conv2d(cin, cfg.unshuffle**2, 3 if cfg.unshuffle > 1 else 1, padding=1 if cfg.unshuffle > 1 else 0)
        self.film_channels = [cfg.head_width, *dec_widths]
        if cfg.variant == "manifold-1d":
            self.film = nn.Sequential(nn.Linear(1, cfg.film_hidden), nn.SiLU(), nn.Linear(cfg.film_hidden, 2 * sum(self.film_channels)))
        self.to(memory_format=torch.channels_last)  # 1.3-2x faster than NCHW on CPU (docs/model.md)

    def encode(self, x: Tensor) -> Codes:
        """Images [B,1,T,T] -> Codes (posterior means and log-variances for ml-vae)."""
        cfg = self.config
        h = self.trunk(F.pixel_unshuffle(x, cfg.unshuffle) if cfg.unshuffle > 1 else x)
        ident = self.id_head(h).flatten(1)
        blur = self.blur_head(h).flatten(1)
        if cfg.variant != "ml-vae":
            return Codes(ident, blur)
        id_mu, id_lv = ident.view(-1, 2, cfg.id_dim).unbind(1)
        blur_mu, blur_lv = blur.view(-1, 2, cfg.id_dim).unbind(1)
        return Codes(id_mu, blur_mu, id_lv, blur_lv)

    def _films(self, blur: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-block FiLM (scale, shift) pairs from the scalar blur code."""
        params = self.film(blur).split([c for c in self.film_channels for _ in (0, 1)], dim=1)
        return [(params[2 * i][..., None, None], params[2 * i + 1][..., None, None]) for i in range(len(self.film_channels))]

    def decode(self, identity: Tensor, blur: Tensor) -> Tensor:
        """Codes identity [B,Di], blur [B,Db] -> images [B,1,T,T] (no output activation)."""
        cfg = self.config
        s = cfg.code_size
        ident = identity.reshape(-1, cfg.id_channels, s, s)
        if cfg.variant == "manifold-1d":
            films: list = self._films(blur)
            z = torch.cat([ident, blur.reshape(-1, 1, 1, 1).expand(-1, 1, s, s)], dim=1)
        else:
            films = [None] * len(self.film_channels)
            z = torch.cat([ident, blur.reshape(-1, cfg.id_channels, s, s)], dim=1)
        h = self.stem(z, films[0])
        for block, film in zip(self.up, films[1:]):
            h = block(h, film)
        h = self.out(h)
        return F.pixel_shuffle(h, cfg.unshuffle) if cfg.unshuffle > 1 else h

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction from the (mean) codes."""
        c = self.encode(x)
        return self.decode(c.identity, c.blur)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.inference_mode()
def run_batched(fn: Callable[..., Any], *arrays: np.ndarray, device: torch.device | str = "cpu",
                batch: int = 64) -> list[np.ndarray]:
    """Apply fn to aligned float32 batches of the arrays on device; concatenate each output on the CPU."""
    outs = []
    for i in range(0, len(arrays[0]), batch):
        res = fn(*(torch.from_numpy(np.ascontiguousarray(a[i : i + batch], dtype=np.float32)).to(device) for a in arrays))
        outs.append([r.float().cpu() for r in (res if isinstance(res, tuple) else (res,))])
    return [torch.cat(parts).numpy() for parts in zip(*outs)]


def encode_batched(model: nn.Module, tiles: np.ndarray, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Identity and blur codes (means) of [N,T,T] tiles (any float dtype)."""
    identity, blur = run_batched(lambda x: tuple(model.encode(x[:, None])[:2]), tiles, device=device)
    return identity, blur


def decode_batched(model: nn.Module, identity: np.ndarray, blur: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Decoded [N,T,T] tiles from aligned identity and blur codes."""
    return run_batched(lambda i, b: model.decode(i, b)[:, 0], identity, blur, device=device)[0]
