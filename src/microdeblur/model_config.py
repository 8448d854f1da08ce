"""The network's architecture settings (no torch: read by weights files, the ONNX runner and the CLI alike)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class VariantTraits:
    """What sets a variant's network apart (its training step is `objectives.OBJECTIVES[name]`, built from these)."""

    scalar_blur: bool  # a 1-D blur code: the dz tie and the supervised deblurring term apply to it
    variational: bool  # ml-vae: posterior means and log-variances on the deepest identity level and the blur code


VARIANTS: dict[str, VariantTraits] = {
    "manifold-1d": VariantTraits(scalar_blur=True, variational=False),
    "manifold": VariantTraits(scalar_blur=False, variational=False),
    "ml-vae": VariantTraits(scalar_blur=False, variational=True),
}
ARCH = "pyramid-1"  # stored in every weights file; files of the single-scale 0.1 network lack it


@dataclass
class ModelConfig:
    """Architecture settings; `id_dim`, `blur_dim` and `levels` are derived."""

    variant: str = "manifold-1d"
    tile: int = 128
    widths: tuple[int, ...] = (32, 48, 64, 96)  # trunk/decoder channels per pyramid level
    id_channels: tuple[int, ...] = (16, 24, 32, 48)  # identity channels per level (the skips)
    blur_width: int = 64  # blur head and FiLM MLP width
    vector_blur_dim: int = 16  # blur code length of manifold and ml-vae (manifold-1d: 1)
    unshuffle: int = 2  # lossless space-to-depth at the input / depth-to-space at the output
    input_skip: bool = False  # the input pixels are the finest identity level; the decoder adds its output to them
    stem: int = 0  # channels of full-resolution convolutions before the space-to-depth and after the output (0: none)
    head: int = 0  # channels of a full-resolution decoder level on the output, the input and the finest decoder features
    # the identity carries the tile's own blur code and the decoder is conditioned on it as well as on the target
    # code (relative refocusing: the correction can depend on how far the tile is from the target)
    source_code: bool = False
    arch: str = ARCH

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.id_channels = tuple(int(c) for c in self.id_channels)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown model variant {self.variant!r}: use one of {', '.join(VARIANTS)}")
        if self.arch != ARCH:
            raise ValueError(f"weights of architecture {self.arch!r} are not supported by this version (needs {ARCH!r})")
        if not self.widths or len(self.id_channels) != len(self.widths):
            raise ValueError("widths and id_channels need one positive number per pyramid level each")
        if self.stem < 0 or (self.stem and not self.input_skip):
            raise ValueError("stem must be 0 or positive, and needs the input skip: its head refines input + correction")
        if self.head < 0 or (self.head and (not self.input_skip or self.stem)):
            raise ValueError("head must be 0 or positive, and needs the input skip and no stem, which has a head of its own")
        if self.source_code and self.traits.variational:
            raise ValueError("source_code needs a manifold variant (ml-vae averages and samples its identity)")
        if min(self.widths + self.id_channels) < 1 or self.blur_width < 1 or self.unshuffle < 1 or self.vector_blur_dim < 1:
            raise ValueError("widths, id_channels, blur_width, vector_blur_dim and unshuffle must be positive")
        if self.tile % self.downsample != 0 or self.tile < self.downsample:
            raise ValueError(f"tile {self.tile} must be a positive multiple of {self.downsample}")

    @property
    def traits(self) -> VariantTraits:
        """The variant's network traits."""
        return VARIANTS[self.variant]

    @property
    def levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.widths)

    @property
    def downsample(self) -> int:
        """Side every input must be a multiple of (space-to-depth times the strided levels)."""
        return self.unshuffle * 2 ** (self.levels - 1)

    def identity_levels(self) -> list[tuple[int, int]]:
        """(channels, halvings below the space-to-depth side) of every identity level, finest first; with
        `input_skip` the first level is the space-to-depth input itself."""
        learnt = [(c, k) for k, c in enumerate(self.id_channels)]
        return ([(self.unshuffle**2, 0)] if self.input_skip else []) + learnt

    @property
    def source_dim(self) -> int:
        """Numbers at the end of a flat identity that hold the tile's own blur code (0 without source_code)."""
        return self.blur_dim if self.source_code else 0

    def id_dim_for(self, side: int) -> int:
        """Length of the flattened identity (pyramid plus source code) of a `side`-px square input."""
        s = side // self.unshuffle
        return sum(c * (s >> k) ** 2 for c, k in self.identity_levels()) + self.source_dim

    def side_for(self, id_dim: int) -> int:
        """Input side whose identity has `id_dim` numbers (inverse of `id_dim_for`)."""
        per = sum(c / 4**k for c, k in self.identity_levels())
        side = int(round(math.sqrt(max(id_dim - self.source_dim, 0) / per))) * self.unshuffle
        if side < 1 or self.id_dim_for(side) != id_dim:
            raise ValueError(f"{id_dim} numbers are not an identity pyramid of this architecture")
        return side

    @property
    def id_dim(self) -> int:
        """Length of the flattened identity code of one tile."""
        return self.id_dim_for(self.tile)

    @property
    def largest_feature_map(self) -> int:
        """Numbers per tile in the network's largest feature map: what the memory of a batch of tiles scales with."""
        return max(self.widths[0] * (self.tile // self.unshuffle) ** 2, max(self.stem, self.head) * self.tile**2)

    @property
    def blur_dim(self) -> int:
        """Length of the blur code: 1 for manifold-1d, else `vector_blur_dim`."""
        return 1 if self.traits.scalar_blur else self.vector_blur_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the stored fields."""
        d = asdict(self)
        d["widths"], d["id_channels"] = list(self.widths), list(self.id_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict` (unknown keys ignored; a file without `arch` is the old single-scale network,
        one without `input_skip` has none)."""
        names = set(cls.__dataclass_fields__)
        return cls(**({"arch": "single-scale-0.1"} | {k: v for k, v in d.items() if k in names}))
