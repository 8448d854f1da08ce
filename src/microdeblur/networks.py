"""Pyramid disentangled autoencoder: a multi-scale identity code plus a blur code that modulates every
decoder level (thesis ch. 4 and 5.1.2, rebuilt for detail; docs/model.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model_config import ModelConfig


class Codes(NamedTuple):
    """Encoder output: flat identity [B,Di] (the pyramid, then with source_code the tile's own blur code), blur
    [B,Db]; log-variances for ml-vae only.

    For ml-vae `id_logvar` covers the deepest identity level only (the pyramid's last `level_shapes()[-1]` numbers)."""

    identity: Tensor
    blur: Tensor
    id_logvar: Tensor | None = None
    blur_logvar: Tensor | None = None


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    """k x k convolution with 'same' padding."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def act(x: Tensor) -> Tensor:
    """The network's activation (leaky: no dead units in the small widths)."""
    return F.leaky_relu(x, 0.1, inplace=True)


class EncoderLevel(nn.Module):
    """conv (stride 2 except at level 0) - act - conv - act; identity = 1x1 projection of the features."""

    def __init__(self, cin: int, width: int, id_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv(cin, width, stride=stride), conv(width, width)
        self.to_id = nn.Conv2d(width, id_out, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features for the next level and this level's identity map."""
        h = act(self.conv2(act(self.conv1(x))))
        return h, self.to_id(h)


class DecoderLevel(nn.Module):
    """Upsampled coarser features + this level's identity -> conv - FiLM - act - conv - act."""

    def __init__(self, cin_coarse: int, id_in: int, width: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin_coarse, width, 1) if cin_coarse else None
        self.conv1 = conv(id_in + (width if cin_coarse else 0), width)
        self.conv2 = conv(width, width)

    def forward(self, identity: Tensor, coarse: Tensor | None, film: tuple[Tensor, Tensor]) -> Tensor:
        """`film` = (scale, shift), each [B,C,1,1], applied as x·(1+scale)+shift after the first conv."""
        x = identity
        if coarse is not None and self.reduce is not None:
            up = F.interpolate(self.reduce(coarse), size=identity.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([up, identity], dim=1)
        h = torch.addcmul(film[1], self.conv1(x), 1.0 + film[0])
        return act(self.conv2(act(h)))


class BlurHead(nn.Module):
    """Two strided convs on level-1 features, global mean (with the deepest features' mean) -> MLP."""

    def __init__(self, cin: int, cdeep: int, width: int, out: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv(cin, width, stride=2), conv(width, width, stride=2)
        self.mlp = nn.Sequential(nn.Linear(width + cdeep, width), nn.SiLU(), nn.Linear(width, out))

    def forward(self, mid: Tensor, deep: Tensor) -> Tensor:
        """Features [B,C,H,W] -> [B,out] (unbounded: no activation at the output)."""
        h = act(self.conv2(act(self.conv1(mid))))
        return self.mlp(torch.cat([h.mean(dim=(2, 3)), deep.mean(dim=(2, 3))], dim=1))


class DisentangledAE(nn.Module):
    """Encoder whose skips are the identity (a pyramid of maps) and a decoder modulated by the blur code."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        vae = cfg.traits.variational
        ids = list(cfg.id_channels)
        enc, cin = [], cfg.unshuffle**2 * (1 + cfg.stem)
        if cfg.stem:  # full-resolution features, space-to-depth'd beside the input pixels into level 0
            self.stem = nn.Sequential(conv(1, cfg.stem), nn.LeakyReLU(0.1), conv(cfg.stem, cfg.stem), nn.LeakyReLU(0.1))
            self.head_in, self.head_out = conv(2, cfg.stem), conv(cfg.stem, 1)  # full-res refinement of the output
            nn.init.zeros_(self.head_out.weight)
            nn.init.zeros_(self.head_out.bias)
        if cfg.head:  # a full-resolution decoder level: the output, the input and the finest decoder features
            self.fine_in = conv(2 + cfg.widths[0], cfg.head)
            self.fine_mid, self.fine_out = conv(cfg.head, cfg.head), conv(cfg.head, 1)
            nn.init.zeros_(self.fine_out.weight)  # starts as no change: `with_head` adds it to a trained network
            nn.init.zeros_(self.fine_out.bias)
        for k, (w, c) in enumerate(zip(cfg.widths, ids)):
            deepest = k == cfg.levels - 1
            enc.append(EncoderLevel(cin, w, 2 * c if (vae and deepest) else c, stride=1 if k == 0 else 2))
            cin = w
        self.enc = nn.ModuleList(enc)
        mid = cfg.widths[min(1, cfg.levels - 1)]
        self.blur_head = BlurHead(mid, cfg.widths[-1], cfg.blur_width, cfg.blur_dim * (2 if vae else 1))
        dec = []
        for k in reversed(range(cfg.levels)):
            coarse = cfg.widths[k + 1] if k + 1 < cfg.levels else 0
            dec.append(DecoderLevel(coarse, ids[k], cfg.widths[k]))
        self.dec = nn.ModuleList(dec)  # deepest first
        self.out = conv(cfg.widths[0], cfg.unshuffle**2)
        if cfg.input_skip:  # start as the identity map: the decoder learns a correction of its input
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.film_channels = [cfg.widths[k] for k in reversed(range(cfg.levels))] + [c for c in (cfg.stem, cfg.head) if c]
        film_in = cfg.blur_dim + cfg.source_dim  # target code (and, with source_code, the tile's own code)
        self.film = nn.Sequential(nn.Linear(film_in, cfg.blur_width), nn.SiLU(),
                                  nn.Linear(cfg.blur_width, 2 * sum(self.film_channels)))
        self.to(memory_format=torch.channels_last)  # faster convolutions on CPU

    # -- identity pyramid <-> flat code

    def level_shapes(self, side: int) -> list[tuple[int, int]]:
        """(channels, side) of every identity level for a `side`-px input, finest first (the input level too)."""
        s = side // self.config.unshuffle
        return [(c, s >> k) for c, k in self.config.identity_levels()]

    def learnt_identity(self, identity: Tensor, side: int) -> tuple[Tensor, list[int]]:
        """The learnt part of flat identities (without the input level) and its level sizes: what the
        distance losses act on (the input pixels are data, not a code to pull together)."""
        sizes = [c * s * s for c, s in self.level_shapes(side)]
        start = sizes[0] if self.config.input_skip else 0
        return identity[:, start:sum(sizes)], sizes[1:] if self.config.input_skip else sizes

    def flatten_identity(self, maps: list[Tensor], source: Tensor | None = None) -> Tensor:
        """Identity maps (finest first) [+ the tiles' own blur codes, without gradient, with source_code] -> [B, Di]."""
        flat = [m.reshape(m.shape[0], -1) for m in maps]
        if self.config.source_code:
            if source is None:
                raise ValueError("a source_code network's identity needs the tiles' own blur codes")
            flat.append(source.detach().reshape(source.shape[0], -1).to(flat[0].dtype))
        return torch.cat(flat, dim=1)

    def source_of(self, identity: Tensor) -> Tensor | None:
        """The tiles' own blur codes carried by flat identities [B, Db] (None without source_code)."""
        n = self.config.source_dim
        return identity[:, identity.shape[1] - n:] if n else None

    def split_identity(self, identity: Tensor) -> list[Tensor]:
        """[B, Di] -> identity maps, finest first (channels_last views; a source code is left out)."""
        side = self.config.side_for(identity.shape[1])
        shapes = self.level_shapes(side)
        if self.config.source_dim:
            identity = identity[:, :-self.config.source_dim]
        parts = identity.split([c * s * s for c, s in shapes], dim=1)
        return [p.reshape(-1, c, s, s).contiguous(memory_format=torch.channels_last) for p, (c, s) in zip(parts, shapes)]

    def identity_summary(self, identity: Tensor) -> Tensor:
        """Fixed-size view of identity pyramids for classifiers and plots: the deepest level whole plus the
        channel means and standard deviations of the finer levels."""
        maps = self.split_identity(identity)
        parts = [torch.cat([m.mean(dim=(2, 3)), m.std(dim=(2, 3))], dim=1) for m in maps[:-1]]
        return torch.cat(parts + [maps[-1].reshape(maps[-1].shape[0], -1)], dim=1)

    # -- encode / decode

    def _unshuffle(self, x: Tensor) -> Tensor:
        return F.pixel_unshuffle(x, self.config.unshuffle) if self.config.unshuffle > 1 else x

    def _shuffle(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x, self.config.unshuffle) if self.config.unshuffle > 1 else x

    def _features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        cfg = self.config
        if x.shape[-1] % cfg.downsample or x.shape[-2] % cfg.downsample:
            raise ValueError(f"input sides must be multiples of {cfg.downsample}, got {tuple(x.shape[-2:])}")
        h = self._unshuffle(x)
        feats, maps = [], [h] if cfg.input_skip else []
        if cfg.stem:
            h = torch.cat([h, self._unshuffle(self.stem(x))], dim=1)
        for level in self.enc:
            h, m = level(h)
            feats.append(h)
            maps.append(m)
        return feats, maps

    def _blur(self, feats: list[Tensor]) -> Tensor:
        """The blur head on the encoder features (level 1 and the deepest; both halves for ml-vae)."""
        return self.blur_head(feats[min(1, len(feats) - 1)], feats[-1])

    def identity_maps(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Identity maps (finest first; ml-vae: posterior means) and blur codes (means) of images of any H, W."""
        feats, maps = self._features(x)
        blur = self._blur(feats)
        if self.config.traits.variational:
            maps[-1], blur = maps[-1].chunk(2, dim=1)[0], blur.chunk(2, dim=1)[0]
        return maps, blur

    def encode(self, x: Tensor) -> Codes:
        """Images [B,1,S,S] -> Codes (posterior means and log-variances for ml-vae)."""
        feats, maps = self._features(x)
        blur = self._blur(feats)
        if not self.config.traits.variational:
            return Codes(self.flatten_identity(maps, blur), blur)
        mu, lv = maps[-1].chunk(2, dim=1)
        b_mu, b_lv = blur.chunk(2, dim=1)
        return Codes(self.flatten_identity(maps[:-1] + [mu]), b_mu, lv.reshape(lv.shape[0], -1), b_lv)

    def encode_blur(self, x: Tensor) -> Tensor:
        """Blur codes (means) only, [B,Db]; skips flattening the identity."""
        return self.identity_maps(x)[1]

    def films(self, blur: Tensor, source: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per FiLM'd level (decoder levels deepest first, then a full-resolution head: `film_strides`) the (scale,
        shift) pairs from the target blur code and, with source_code, the tiles' own codes (default: the target
        itself, i.e. a reconstruction)."""
        params = self.film_params(blur, source).split([c for c in self.film_channels for _ in (0, 1)], dim=1)
        return [(params[2 * i][..., None, None], params[2 * i + 1][..., None, None]) for i in range(len(self.film_channels))]

    def film_params(self, blur: Tensor, source: Tensor | None = None) -> Tensor:
        """`films` as one [B, 2·sum(film_channels)] tensor: each level's scales, then its shifts, deepest first."""
        blur = blur.reshape(blur.shape[0], -1)
        if self.config.source_code:
            blur = torch.cat([blur, (blur if source is None else source.reshape(source.shape[0], -1)).to(blur.dtype)], dim=1)
        return self.film(blur)

    def decode(self, identity: Tensor, blur: Tensor) -> Tensor:
        """Codes identity [B,Di], blur [B,Db] -> images [B,1,S,S] (no output activation)."""
        return self.decode_maps(self.split_identity(identity), self.films(blur, self.source_of(identity)))

    def decode_maps(self, maps: list[Tensor], films: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Identity maps (finest first, the input level too) and FiLM pairs -> images (any H, W)."""
        maps = list(maps)
        base = maps.pop(0) if self.config.input_skip else None
        h = None
        for level, film, m in zip(self.dec, films, reversed(maps)):
            h = level(m, h, film)
        y = self._shuffle(self.out(h) if base is None else self.out(h) + base)
        if self.config.head:
            return self._fine(y, self._shuffle(base), h, films[-1])
        if not self.config.stem:
            return y
        scale, shift = films[-1]  # the head: conv - FiLM - act - conv on (output, input) at full resolution
        r = torch.addcmul(shift, self.head_in(torch.cat([y, self._shuffle(base)], dim=1)), 1.0 + scale)
        return y + self.head_out(act(r))

    def _fine(self, y: Tensor, x: Tensor, finest: Tensor, film: tuple[Tensor, Tensor]) -> Tensor:
        """The full-resolution head: output + correction from (output, input, finest decoder features upsampled)."""
        up = F.interpolate(finest, size=y.shape[-2:], mode="bilinear", align_corners=False)
        h = act(torch.addcmul(film[1], self.fine_in(torch.cat([y, x, up], dim=1)), 1.0 + film[0]))
        return y + self.fine_out(act(self.fine_mid(h)))

    def film_strides(self) -> list[int]:
        """Input pixels per pixel of each FiLM'd level, in `films` order (decoder levels deepest first, then the
        full-resolution head of the stem or of `head`)."""
        cfg = self.config
        return [cfg.unshuffle * 2**k for k in reversed(range(cfg.levels))] + [1 for c in (cfg.stem, cfg.head) if c]

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction from the (mean) codes."""
        c = self.encode(x)
        return self.decode(c.identity, c.blur)


def with_source_code(model: DisentangledAE) -> DisentangledAE:
    """A copy of a network whose decoder also reads each tile's own blur code, computing the same function at
    first (the FiLM MLP's new input columns start at zero): how `train --source-code --init` starts."""
    new = DisentangledAE(replace(model.config, source_code=True)).to(next(model.parameters()).device)
    state = model.state_dict()
    w = state["film.0.weight"]
    state["film.0.weight"] = torch.cat([w, w.new_zeros(w.shape[0], new.config.source_dim)], dim=1)
    new.load_state_dict(state)
    return new


def with_head(model: DisentangledAE, channels: int) -> DisentangledAE:
    """A copy of a network with a full-resolution head of `channels` channels, computing the same function at first
    (the head's output conv and its FiLM rows start at zero): how `train --head N --init` starts."""
    new = DisentangledAE(replace(model.config, head=channels)).to(next(model.parameters()).device)
    state = new.state_dict() | model.state_dict()
    for k in ("film.2.weight", "film.2.bias"):
        old = state[k]
        state[k] = torch.cat([old, old.new_zeros(2 * channels, *old.shape[1:])])
    new.load_state_dict(state)
    return new


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
    """Identity and blur codes (means) of [N,T,T] tiles (any float dtype); identities are large (~4x pixels)."""
    identity, blur = run_batched(lambda x: tuple(model.encode(x[:, None])[:2]), tiles, device=device)
    return identity, blur


def blur_batched(model: nn.Module, tiles: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Blur codes (means) of [N,T,T] tiles without keeping identities."""
    return run_batched(lambda x: model.encode_blur(x[:, None]), tiles, device=device)[0]


def decode_batched(model: nn.Module, identity: np.ndarray, blur: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Decoded [N,T,T] tiles from aligned identity and blur codes."""
    return run_batched(lambda i, b: model.decode(i, b)[:, 0], identity, blur, device=device)[0]


def swap_batched(model: nn.Module, tiles: np.ndarray, blur: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """D(identity(tile), blur) for [N,T,T] tiles and blur codes [N,Db] (no identities kept between batches)."""

    def fn(x: Tensor, b: Tensor) -> Tensor:
        return model.decode(model.encode(x[:, None]).identity, b)[:, 0]

    return run_batched(fn, tiles, np.asarray(blur, np.float32), device=device)[0]


def summarise_batched(model: nn.Module, tiles: np.ndarray, device: torch.device | str = "cpu"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reconstructions [N,T,T], compact identity summaries [N,K], blur codes [N,Db]) of tiles."""

    def fn(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = model.encode(x[:, None])
        return model.decode(c.identity, c.blur)[:, 0], model.identity_summary(c.identity), c.blur

    rec, summ, blur = run_batched(fn, tiles, device=device)
    return rec, summ, blur
