"""Loss terms on hand-made tensors with known answers, and the step-level compositions."""

import math

import pytest
import torch
from torch import nn

from microdeblur import losses as L
from microdeblur.networks import Codes, DisentangledAE, ModelConfig
from microdeblur.objectives import StepOptions, frozen, manifold_terms, mlvae_terms


def terms(model, x1, x2, y1, y2, *, rec_fn, dz=None, **opts):
    return manifold_terms(model, x1, x2, y1, y2, rec_fn=rec_fn, opts=StepOptions(**opts), dz=dz)


def tiny(variant: str) -> DisentangledAE:
    torch.manual_seed(0)
    return DisentangledAE(ModelConfig(variant=variant, tile=32, widths=(4, 8, 8), id_channels=(2, 3, 4), blur_width=8, vector_blur_dim=3))


def test_rms_distance():
    a = torch.zeros(2, 4)
    b = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 4.0]])
    torch.testing.assert_close(L.rms_distance(a, b), torch.tensor([2.0, 2.0]))
    a.requires_grad_(True)
    L.rms_distance(a, a.detach()).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_consistency_zero_for_identical_codes():
    z = torch.randn(3, 8)
    assert L.consistency_loss(z, z.clone()) < 1e-5
    torch.testing.assert_close(L.consistency_loss(z, z + 0.5), torch.tensor(0.5))


def test_contrastive_margin():
    za = torch.zeros(2, 4)
    far = torch.full((2, 4), 1.0)  # δ = 1 > margin
    near = torch.full((2, 4), 0.2)  # δ = 0.2
    assert L.contrastive_loss(za, far, equal=False, margin=0.6) == 0
    torch.testing.assert_close(L.contrastive_loss(za, near, equal=False, margin=0.6), torch.tensor(0.4))
    torch.testing.assert_close(L.contrastive_loss(za, near, equal=True), torch.tensor(0.2))


def test_pyramid_distance_weighs_levels_alike():
    a = torch.zeros(1, 5)
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0]])  # level sizes 4 and 1: rms 1 and 3
    torch.testing.assert_close(L.pyramid_distance(a, b, [4, 1]), torch.tensor([2.0]))
    torch.testing.assert_close(L.pyramid_distance(a, b, None), L.rms_distance(a, b))


def test_ms_ssim_l1():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64)
    assert L.ms_ssim_l1(x, x) < 1e-6
    torch.testing.assert_close(L.ms_ssim(x, x), torch.ones(2))
    y = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    loss = L.ms_ssim_l1(y, x)
    assert loss > 0.05
    loss.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    anti = (1.5 - 2 * x).requires_grad_(True)  # anti-correlated: cs < 0 is clamped, no NaN
    L.ms_ssim_l1(anti, x).backward()
    assert torch.isfinite(anti.grad).all()


def test_perceptual_loss_from_local_state_dict(tmp_path):
    torch.manual_seed(0)
    convs = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256)]
    state = {}
    for i, cin, cout in convs:
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3) * 0.05
        state[f"features.{i}.bias"] = torch.zeros(cout)
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "vgg16.pth")
    loss_fn = L.reconstruction_loss(tmp_path / "vgg16.pth")
    x = torch.rand(2, 1, 32, 32)
    assert loss_fn(x, x) == 0 and loss_fn(x, x.flip(-1)) > 0
    with pytest.raises(L.UserError):
        L.PerceptualLoss(tmp_path / "missing.pth")


def test_beta_schedule_counts_steps():
    assert L.beta_schedule(0, 300, 600) == 0 and L.beta_schedule(299, 300, 600) == 0 and L.beta_schedule(300, 300, 600) == 0
    # exponential ramp: (e^(5u) - 1) / (e^5 - 1) at u = 1/2
    assert L.beta_schedule(600, 300, 600) == pytest.approx(math.expm1(2.5) / math.expm1(5.0))
    assert L.beta_schedule(900, 300, 600) == pytest.approx(1.0) and L.beta_schedule(10**6, 300, 600) == 1.0
    assert L.beta_schedule(5, 10, 0) == 0 and L.beta_schedule(10, 10, 0) == 1.0
    values = [L.beta_schedule(t, 300, 600) for t in range(0, 1200, 7)]
    assert values == sorted(values)


def test_group_posterior_two_members_closed_form():
    mu = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])  # G=1, K=2, D=2
    var = torch.tensor([[[1.0, 4.0], [3.0, 4.0]]])
    mu_g, lv_g = L.group_posterior(mu, var.log())
    var_g = 1 / (1 / var[0, 0] + 1 / var[0, 1])
    torch.testing.assert_close(lv_g[0], var_g.log())
    torch.testing.assert_close(mu_g[0], var_g * (mu[0, 0] / var[0, 0] + mu[0, 1] / var[0, 1]))


def test_group_posterior_gradients_reach_all_members():
    mu = torch.randn(2, 3, 4, requires_grad=True)
    lv = torch.randn(2, 3, 4, requires_grad=True)
    mu_g, lv_g = L.group_posterior(mu, lv)
    (mu_g.sum() + lv_g.sum()).backward()
    assert (mu.grad.abs() > 0).all() and (lv.grad.abs() > 0).all()


def test_kl_and_reparameterize():
    torch.testing.assert_close(L.kl_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))
    torch.testing.assert_close(L.kl_standard_normal(torch.ones(1, 2), torch.zeros(1, 2)), torch.tensor([1.0]))
    g = torch.Generator().manual_seed(0)
    s = L.reparameterize(torch.full((20000,), 2.0), torch.full((20000,), math.log(0.25)), g)
    assert abs(s.mean().item() - 2.0) < 0.02 and abs(s.std().item() - 0.5) < 0.02


class SwapIgnoringModel(nn.Module):
    """Fake model: identity = image mean, blur = image std; decode rebuilds a constant image from the identity only."""

    config = ModelConfig(variant="manifold", tile=32)

    def learnt_identity(self, identity, side):
        return identity, [4]

    def encode(self, x):
        m = x.mean(dim=(1, 2, 3))[:, None]
        return Codes(m.expand(-1, 4), x.std(dim=(1, 2, 3))[:, None].expand(-1, 4) * 0)

    def decode(self, identity, blur):
        return identity[:, :1, None, None].expand(-1, 1, 32, 32).contiguous()


def test_consistency_zero_when_encoder_ignores_swapped_code():
    x = [torch.rand(2, 1, 32, 32) for _ in range(4)]
    out = terms(SwapIgnoringModel(), *x, rec_fn=L.ms_ssim_l1, cycle_weight=0.0)
    assert out["cons"] < 1e-5


class LosslessModel(nn.Module):
    """Fake model whose codes are the pixels themselves: decoding then re-encoding returns every code unchanged."""

    config = ModelConfig(variant="manifold", tile=32)

    def learnt_identity(self, identity, side):
        return identity, [512]

    def encode(self, x):
        flat = x.flatten(1)
        return Codes(flat[:, :512], flat[:, 512:])

    def decode(self, identity, blur):
        return torch.cat([identity, blur], dim=1).reshape(-1, 1, 32, 32)


def test_consistency_zero_for_a_lossless_model_with_distinct_blur_codes():
    """Each swap decoding re-encodes to the very codes it was decoded from, so L_cons is exactly 0."""
    x = [torch.rand(3, 1, 32, 32) for _ in range(4)]
    out = terms(LosslessModel(), *x, rec_fn=L.ms_ssim_l1, contrastive=False, cycle_weight=0.0)
    assert out["cons"] < 1e-5


@pytest.mark.parametrize("variant", ["manifold-1d", "manifold"])
def test_manifold_losses_keys_and_gradients(variant):
    model = tiny(variant)
    x1, x2, y1, y2 = (torch.rand(2, 1, 32, 32) for _ in range(4))
    out = terms(model, x1, x2, y1, y2, rec_fn=L.ms_ssim_l1, dz_weight=1.0,
                dz=torch.tensor([-10.0, 5.0, 3.0, 20.0]) if variant == "manifold-1d" else None)
    assert set(out) == {"rec", "cons", "cont", "cross", "cycle", "dz", "deblur"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert out["cons"] > 0 and out["cross"] > 0
    assert (out["dz"] > 0) == (variant == "manifold-1d")
    (out["rec"] + out["cons"] + out["cont"] + out["cross"] + out["dz"]).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_manifold_losses_disabled_terms_are_zero():
    out = terms(tiny("manifold"), *(torch.rand(2, 1, 32, 32) for _ in range(4)), rec_fn=L.ms_ssim_l1,
                consistency=False, contrastive=False, cross=False)
    assert out["cons"] == 0 and out["cont"] == 0 and out["cross"] == 0 and out["dz"] == 0 and out["rec"] > 0


def test_cross_reconstruction_targets_are_swapped_images():
    """With a perfect swap model (identity = image, blur ignored) the x swaps must be compared to the other image."""
    seen = []

    def rec(pred, target):
        seen.append((pred.detach().clone(), target.detach().clone()))
        return (pred - target).abs().mean()

    class CopyModel(nn.Module):
        config = ModelConfig(variant="manifold", tile=32)

        def learnt_identity(self, identity, side):
            return identity, [side * side]

        def encode(self, x):
            return Codes(x.flatten(1), torch.zeros(x.shape[0], 4))

        def decode(self, identity, blur):
            return identity.view(-1, 1, 32, 32)

    x1, x2, y1, y2 = (torch.rand(1, 1, 32, 32) for _ in range(4))
    terms(CopyModel(), x1, x2, y1, y2, rec_fn=rec, consistency=False, contrastive=False, cycle_weight=0.0)
    (_, _), (pred, target) = seen
    # swaps D(id_x1, b_x2), D(id_x2, b_x1), D(id_y1, b_y2), D(id_y2, b_y1) against x2, x1, y1, y2
    torch.testing.assert_close(pred, torch.cat([x1, x2, y1, y2]))
    torch.testing.assert_close(target, torch.cat([x2, x1, y1, y2]))


def test_mlvae_losses():
    model = tiny("ml-vae")
    groups = torch.rand(2, 3, 1, 32, 32)
    out = mlvae_terms(model, groups, rec_fn=L.ms_ssim_l1, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"rec", "kl_id", "kl_blur"}
    assert all(torch.isfinite(v) and v >= 0 for v in out.values())
    sum(out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError):
        mlvae_terms(tiny("manifold"), groups, rec_fn=L.ms_ssim_l1)


def test_cycle_term_reads_the_swapped_blur_code_and_trains_only_the_decoder():
    """cycle = δ(b(x2), E_blur(D(id(x1), b(x2)))) over the x swaps; its gradient reaches the decoder and the
    FiLM, never the encoder (a fixed reader cannot be taught to see what the decoder draws)."""
    model = tiny("manifold-1d")
    x = [torch.rand(2, 1, 32, 32) for _ in range(4)]
    out = terms(model, *x, rec_fn=L.ms_ssim_l1, consistency=False, contrastive=False, cross=False, cycle_weight=1.0)
    with torch.no_grad():
        c1, c2 = model.encode(x[0]), model.encode(x[1])
        read = model.encode_blur(model.decode(torch.cat([c1.identity, c2.identity]), torch.cat([c2.blur, c1.blur])))
    expected = (read - torch.cat([c2.blur, c1.blur])).abs().mean()
    torch.testing.assert_close(out["cycle"], expected, atol=1e-5, rtol=1e-4)
    out["cycle"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dec.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone
    assert terms(model, *x, rec_fn=L.ms_ssim_l1, cycle_weight=0.0)["cycle"] == 0


def test_frozen_reader_passes_gradient_to_its_input_only():
    model = tiny("manifold-1d")
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    with frozen(model.enc, model.blur_head):
        read = model.encode_blur(x)
    read.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
