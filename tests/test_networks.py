"""Shapes, variants and blur-code dependence of the disentangled autoencoder (tiny configs)."""

import pytest
import torch

from microdeblur.networks import Codes, DisentangledAE, ModelConfig, count_parameters


def tiny(variant: str, tile: int = 32) -> ModelConfig:
    return ModelConfig(variant=variant, tile=tile, widths=(4, 8, 8), head_width=8, id_channels=2, film_hidden=8)


def test_default_config_matches_design():
    cfg = ModelConfig()
    assert (cfg.variant, cfg.tile, cfg.widths, cfg.head_width, cfg.id_channels) == ("manifold-1d", 128, (16, 32), 64, 16)
    assert cfg.code_size == 16 and cfg.id_dim == 16 * 16 * 16 and cfg.blur_dim == 1
    assert ModelConfig(variant="manifold").blur_dim == 16 * 16 * 16
    assert ModelConfig(variant="ml-vae", tile=64).blur_dim == 16 * 8 * 8


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="unknown model variant"):
        ModelConfig(variant="vae")
    with pytest.raises(ValueError, match="multiple of 8"):
        ModelConfig(tile=44)
    cfg = tiny("manifold", 64)
    assert ModelConfig.from_dict({**cfg.to_dict(), "blur_dim": 999}) == cfg


@pytest.mark.parametrize("variant", ["manifold-1d", "manifold", "ml-vae"])
@pytest.mark.parametrize("tile", [32, 64])
def test_shapes(variant, tile):
    cfg = tiny(variant, tile)
    model = DisentangledAE(cfg)
    x = torch.rand(3, 1, tile, tile)
    codes = model.encode(x)
    assert isinstance(codes, Codes)
    assert codes.identity.shape == (3, cfg.id_dim) == (3, 2 * (tile // 16) ** 2)
    assert codes.blur.shape == (3, cfg.blur_dim)
    if variant == "ml-vae":
        assert codes.id_logvar.shape == codes.identity.shape and codes.blur_logvar.shape == codes.blur.shape
    else:
        assert codes.id_logvar is None and codes.blur_logvar is None
    assert model.decode(codes.identity, codes.blur).shape == x.shape
    assert model(x).shape == x.shape
    assert count_parameters(model) > 0


def test_mlvae_forward_uses_means():
    model = DisentangledAE(tiny("ml-vae")).eval()
    x = torch.rand(2, 1, 32, 32)
    c = model.encode(x)
    torch.testing.assert_close(model(x), model.decode(c.identity, c.blur))


def test_decoder_depends_on_scalar_blur_code():
    torch.manual_seed(0)
    model = DisentangledAE(tiny("manifold-1d")).eval()
    ident = torch.randn(2, model.config.id_dim)
    with torch.no_grad():
        a = model.decode(ident, torch.full((2, 1), -1.0))
        b = model.decode(ident, torch.full((2, 1), 1.0))
    assert (a - b).abs().mean() > 1e-3


def test_scalar_blur_head_gets_gradient():
    model = DisentangledAE(tiny("manifold-1d"))
    model.encode(torch.rand(4, 1, 32, 32)).blur.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blur_head.parameters())


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    model = DisentangledAE(tiny("manifold")).eval()
    assert model.trunk[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.contiguous_format)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_without_space_to_depth():
    cfg = ModelConfig(variant="manifold", tile=32, widths=(4, 8), head_width=8, id_channels=2, unshuffle=1)
    assert cfg.downsample == 4 and cfg.code_size == 8
    model = DisentangledAE(cfg)
    x = torch.rand(2, 1, 32, 32)
    assert model.encode(x).identity.shape == (2, 2 * 8 * 8) and model(x).shape == x.shape
