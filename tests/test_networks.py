"""Shapes, variants, the identity pyramid and blur-code dependence of the network (tiny configs)."""

import pytest
import torch

from microdeblur.networks import Codes, DisentangledAE, ModelConfig, count_parameters


def tiny(variant: str, tile: int = 32) -> ModelConfig:
    return ModelConfig(variant=variant, tile=tile, widths=(4, 8, 8), id_channels=(2, 3, 4), blur_width=8, vector_blur_dim=3)


def test_default_config_matches_design():
    cfg = ModelConfig()
    assert (cfg.variant, cfg.tile, cfg.widths, cfg.id_channels) == ("manifold-1d", 128, (32, 48, 64, 96), (16, 24, 32, 48))
    # 64x64 (after space-to-depth), 32x32, 16x16, 8x8 identity maps: about 6 numbers per pixel of the tile
    assert cfg.id_dim == 16 * 64**2 + 24 * 32**2 + 32 * 16**2 + 48 * 8**2 and cfg.blur_dim == 1
    assert cfg.downsample == 16
    assert ModelConfig(variant="manifold").blur_dim == 16 and ModelConfig(variant="ml-vae", vector_blur_dim=5).blur_dim == 5


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="unknown model variant"):
        ModelConfig(variant="vae")
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelConfig(tile=40)
    with pytest.raises(ValueError, match="one positive number per pyramid level"):
        ModelConfig(widths=(8, 8), id_channels=(2,))
    cfg = tiny("manifold", 64)
    assert ModelConfig.from_dict({**cfg.to_dict(), "blur_dim": 999}) == cfg
    # a weights file of the 0.1 single-scale network has no `arch` and is refused by name
    with pytest.raises(ValueError, match="single-scale"):
        ModelConfig.from_dict({"variant": "manifold-1d", "tile": 128, "widths": [16, 32], "head_width": 64})


def test_identity_length_and_side_are_inverse():
    cfg = tiny("manifold-1d")
    for side in (16, 32, 48, 64, 128):
        n = cfg.id_dim_for(side)
        assert n == sum(c * (side // 2 >> k) ** 2 for k, c in enumerate(cfg.id_channels))
        assert cfg.side_for(n) == side
    with pytest.raises(ValueError):
        cfg.side_for(cfg.id_dim + 1)


@pytest.mark.parametrize("variant", ["manifold-1d", "manifold", "ml-vae"])
@pytest.mark.parametrize("side", [16, 32, 48])
def test_shapes_for_any_multiple_of_the_downsampling(variant, side):
    cfg = tiny(variant, 32)
    model = DisentangledAE(cfg)
    x = torch.rand(3, 1, side, side)
    codes = model.encode(x)
    assert isinstance(codes, Codes)
    assert codes.identity.shape == (3, cfg.id_dim_for(side)) and codes.blur.shape == (3, cfg.blur_dim)
    if variant == "ml-vae":
        c, s = model.level_shapes(side)[-1]
        assert codes.id_logvar.shape == (3, c * s * s) and codes.blur_logvar.shape == codes.blur.shape
    else:
        assert codes.id_logvar is None and codes.blur_logvar is None
    assert model.decode(codes.identity, codes.blur).shape == x.shape
    torch.testing.assert_close(model.encode_blur(x), codes.blur)
    assert count_parameters(model) > 0


def test_split_identity_inverts_flatten():
    model = DisentangledAE(tiny("manifold"))
    maps = [torch.randn(2, c, s, s) for c, s in model.level_shapes(32)]
    back = model.split_identity(model.flatten_identity(maps))
    assert all(torch.equal(a, b) for a, b in zip(maps, back))


def test_mlvae_forward_uses_means():
    model = DisentangledAE(tiny("ml-vae")).eval()
    x = torch.rand(2, 1, 32, 32)
    c = model.encode(x)
    torch.testing.assert_close(model(x), model.decode(c.identity, c.blur))


@pytest.mark.parametrize("variant", ["manifold-1d", "manifold", "ml-vae"])
def test_decoder_depends_on_blur_code_at_every_level(variant):
    torch.manual_seed(0)
    model = DisentangledAE(tiny(variant)).eval()
    ident = torch.randn(2, model.config.id_dim)
    d = model.config.blur_dim
    with torch.no_grad():
        a = model.decode(ident, torch.full((2, d), -1.0))
        b = model.decode(ident, torch.full((2, d), 1.0))
        films = model.films(torch.full((2, d), 1.0))
    assert (a - b).abs().mean() > 1e-3
    assert len(films) == model.config.levels  # one modulation per decoder level
    maps = model.split_identity(ident)
    with torch.no_grad():
        base = model.decode_maps(maps, films)
        for k in range(len(films)):  # each level's own modulation reaches the output
            moved = [(s + 0.5, t) if i == k else (s, t) for i, (s, t) in enumerate(films)]
            # an unused modulation would change nothing at all; a deep one reaches the output attenuated
            assert (model.decode_maps(maps, moved) - base).abs().mean() > 1e-7, f"FiLM of decoder level {k} unused"


@pytest.mark.parametrize("head", [0, 16])
def test_shipped_form_decoder_reads_the_blur_code(head):
    """The shipped combination (input skip, source code; optionally a full-resolution level) once its correction is
    non-zero: the target code and every FiLM'd level change the output."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**tiny("manifold-1d").to_dict(), "input_skip": True, "source_code": True, "unshuffle": 1,
                         "head": head})
    model = DisentangledAE(cfg).eval()
    for conv in (model.out, *([model.fine_out] if head else [])):
        torch.nn.init.normal_(conv.weight, std=0.1)
    ident = model.encode(torch.rand(2, 1, 32, 32)).identity
    with torch.no_grad():
        a, b = model.decode(ident, torch.full((2, 1), -1.0)), model.decode(ident, torch.full((2, 1), 1.0))
        films, maps = model.films(torch.zeros(2, 1), model.source_of(ident)), model.split_identity(ident)
        base = model.decode_maps(maps, films)
        for k in range(len(films)):
            moved = [(s + 0.5, t) if i == k else (s, t) for i, (s, t) in enumerate(films)]
            assert (model.decode_maps(maps, moved) - base).abs().mean() > 1e-7, f"FiLM {k} unused"
    assert (a - b).abs().mean() > 1e-3 and len(films) == cfg.levels + bool(head)


def test_every_variant_has_one_network_form_and_one_training_step():
    from microdeblur.model_config import VARIANTS
    from microdeblur.objectives import MLVAE, OBJECTIVES

    assert set(OBJECTIVES) == set(VARIANTS) == {"manifold-1d", "manifold", "ml-vae"}
    assert [n for n, t in VARIANTS.items() if t.scalar_blur] == ["manifold-1d"]  # the thesis's 1-D blur code
    assert [n for n, t in VARIANTS.items() if t.variational] == ["ml-vae"]  # the baseline's group posterior
    for name, traits in VARIANTS.items():
        cfg = tiny(name)
        assert cfg.traits is traits and (cfg.blur_dim == 1) == traits.scalar_blur
        assert isinstance(OBJECTIVES[name], MLVAE) == traits.variational
        codes = DisentangledAE(cfg).encode(torch.rand(1, 1, 32, 32))
        assert (codes.blur_logvar is not None) == traits.variational


def test_fine_identity_level_reaches_the_output():
    """The full-resolution skip carries detail: perturbing only the finest identity level changes the output."""
    torch.manual_seed(0)
    model = DisentangledAE(tiny("manifold-1d")).eval()
    c = model.encode(torch.rand(1, 1, 32, 32))
    n0 = model.level_shapes(32)[0][0] * model.level_shapes(32)[0][1] ** 2
    ident = c.identity.clone()
    ident[:, :n0] += 0.5
    with torch.no_grad():
        assert (model.decode(ident, c.blur) - model.decode(c.identity, c.blur)).abs().mean() > 1e-4


def test_scalar_blur_head_gets_gradient():
    model = DisentangledAE(tiny("manifold-1d"))
    model.encode(torch.rand(4, 1, 32, 32)).blur.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blur_head.parameters())


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    model = DisentangledAE(tiny("manifold")).eval()
    assert model.enc[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.contiguous_format)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_without_space_to_depth():
    cfg = ModelConfig(variant="manifold", tile=32, widths=(4, 8), id_channels=(2, 2), blur_width=8, unshuffle=1)
    assert cfg.downsample == 2
    model = DisentangledAE(cfg)
    x = torch.rand(2, 1, 32, 32)
    assert model.encode(x).identity.shape == (2, 2 * 32 * 32 + 2 * 16 * 16) and model(x).shape == x.shape


def test_input_skip_starts_as_the_identity_map_and_keeps_the_pixels_in_the_identity():
    """With `input_skip` the space-to-depth input is the first identity level and the fresh decoder
    returns its input exactly (zero-initialised correction); the distances see only the learnt levels."""
    cfg = ModelConfig(**{**tiny("manifold-1d").to_dict(), "input_skip": True})
    model = DisentangledAE(cfg).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        c = model.encode(x)
        torch.testing.assert_close(model.decode(c.identity, c.blur), x)
    assert c.identity.shape == (2, cfg.id_dim_for(32)) and cfg.side_for(cfg.id_dim_for(32)) == 32
    assert cfg.id_dim_for(32) == tiny("manifold-1d").id_dim_for(32) + 32 * 32
    learnt, sizes = model.learnt_identity(c.identity, 32)
    assert learnt.shape[1] == sum(sizes) == tiny("manifold-1d").id_dim_for(32)
    assert ModelConfig.from_dict({k: v for k, v in tiny("manifold-1d").to_dict().items() if k != "input_skip"}).input_skip is False


def test_input_skip_decoder_still_depends_on_the_blur_code_once_trained_away_from_zero():
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(**{**tiny("manifold-1d").to_dict(), "input_skip": True})).eval()
    torch.nn.init.normal_(model.out.weight, std=0.1)
    ident = model.encode(torch.rand(2, 1, 32, 32)).identity
    with torch.no_grad():
        a, b = model.decode(ident, torch.full((2, 1), -1.0)), model.decode(ident, torch.full((2, 1), 1.0))
    assert (a - b).abs().mean() > 1e-3


def test_source_code_identity_carries_the_tiles_own_code_and_the_distances_ignore_it():
    cfg = ModelConfig(**{**tiny("manifold-1d").to_dict(), "input_skip": True, "source_code": True})
    model = DisentangledAE(cfg).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        c = model.encode(x)
    assert c.identity.shape == (2, cfg.id_dim_for(32))
    assert cfg.side_for(cfg.id_dim_for(32)) == 32 and torch.equal(model.source_of(c.identity), c.blur)
    plain = ModelConfig(**{**cfg.to_dict(), "source_code": False})
    assert cfg.id_dim_for(48) == plain.id_dim_for(48) + 1
    learnt, sizes = model.learnt_identity(c.identity, 32)
    assert learnt.shape[1] == sum(sizes) == tiny("manifold-1d").id_dim_for(32)
    with pytest.raises(ValueError, match="source_code"):
        ModelConfig(variant="ml-vae", source_code=True)
    assert ModelConfig.from_dict(tiny("manifold-1d").to_dict()).source_code is False  # older weights files


def test_source_code_decoder_reads_target_and_source():
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(**{**tiny("manifold-1d").to_dict(), "source_code": True})).eval()
    ident = model.encode(torch.rand(2, 1, 32, 32)).identity
    moved = ident.clone()
    moved[:, -1] += 1.0
    with torch.no_grad():
        t = torch.zeros(2, 1)
        assert (model.decode(ident, t) - model.decode(moved, t)).abs().mean() > 1e-4
        assert (model.decode(ident, t) - model.decode(ident, t + 1)).abs().mean() > 1e-4
