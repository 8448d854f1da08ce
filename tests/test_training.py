"""Dataset loading, pair sampling guarantees, few-step training per variant, export and resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from microdeblur.cli import app
from microdeblur.dataset import PairSampler, PreparedData
from microdeblur.errors import UserError
from microdeblur.prepare import load_index
from microdeblur.simulate import simulate_days
from microdeblur.train_config import TrainConfig
from microdeblur.training import data_hash, note_data, train
from microdeblur.weights import load_weights

runner = CliRunner()
TINY = dict(widths=(4, 8, 8), id_channels=(2, 3, 4), batch_size=2, crop=32, workers=1, checkpoint_every=2, eval_every=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 simulated days of 256x256, 7 planes at 2 um, prepared into 64-px tiles (12 identities)."""
    root = tmp_path_factory.mktemp("train")
    simulate_days(root / "raw", days=3, planes=7, size=(256, 256), seed=5, z_step_um=2.0)
    res = runner.invoke(app, ["-q", "prepare", str(root / "raw"), str(root / "data"), "--tile", "64"])
    assert res.exit_code == 0, res.output
    return root / "data"


def test_load_normalises_and_orders(data):
    d = PreparedData.load(data)
    assert len(d.identities) == 12 and d.tiles.shape == (84, 64, 64)
    assert d.z_step_um == 2.0 and list(d.dz[0]) == [-6, -4, -2, 0, 2, 4, 6]
    assert all(d.dz[i][d.focus_index[i]] == 0 for i in range(12))
    assert -0.5 < float(np.median(d.tiles.astype(np.float32))) < 1.5
    assert PreparedData.load(data, dz_range=2.0).tiles.shape == (36, 64, 64)


def test_split_never_mixes_identities(data):
    d = PreparedData.load(data)
    tr, va = d.split(0.25, seed=3)
    assert not set(tr) & set(va) and len(tr) + len(va) == 12 and len(va) == 3
    assert d.split(0.25, seed=3) == (tr, va)


def test_pair_guarantees(data):
    d = PreparedData.load(data)
    tr, _ = d.split(0.25)
    s = PairSampler(d, tr, np.random.default_rng(0), augment=False)
    for _ in range(5):
        a, b, _ = s._same_identity(32)
        assert np.all(d.owner[a] == d.owner[b]) and np.all(d.dz_all[a] != d.dz_all[b])
        c, e = s._same_dz(32)
        assert np.all(d.owner[c] != d.owner[e]) and np.all(d.dz_all[c] == d.dz_all[e])
        assert set(d.owner[np.concatenate([a, b, c, e])]) <= set(tr)
    batch = s.pairs(4)
    assert batch.x1.shape == (4, 1, 64, 64) and batch.dz1.shape == (4,)
    assert s.groups(3, 4).shape == (3, 4, 1, 64, 64)


def test_with_focus_adds_the_in_focus_plane_of_x1s_identity_and_draws_the_same_pairs(data):
    d = PreparedData.load(data)
    tr, _ = d.split(0.25)
    plain = PairSampler(d, tr, np.random.default_rng(4)).pairs(6, crop=32, p_focus=0.5)
    s = PairSampler(d, tr, np.random.default_rng(4))
    b = s.pairs(6, crop=32, p_focus=0.5, with_focus=True)
    assert plain.f1 is None and torch.equal(plain.x1, b.x1) and torch.equal(plain.y2, b.y2)
    a, _, f = PairSampler(d, tr, np.random.default_rng(9), augment=False)._same_identity(64, 0.5)
    assert np.all(d.owner[a] == d.owner[f]) and np.all(d.dz_all[f] == 0)
    # same window and same flip/rotation as x1: an in-focus x1 comes back as itself
    s = PairSampler(d, tr, np.random.default_rng(2))
    for _ in range(20):
        b = s.pairs(8, crop=32, with_focus=True)
        at_focus = b.dz1 == 0
        if at_focus.any():
            assert torch.equal(b.f1[at_focus], b.x1[at_focus])
            break
    else:
        pytest.fail("no in-focus x1 drawn")


def test_objective_sample_makes_the_in_focus_plane_the_swap_partner_at_p_focus(data):
    """The operation `deblur` ships, D(id(x_dz), b_focus) -> x_focus, is a frequent cross-reconstruction target:
    at p_focus 0.5 half of the second members are in focus (7 planes: 6/7 x (0.5 + 0.5/6) = 0.5), not the 1/7 of
    uniform draws (the 0.1 sampler's few per cent)."""
    from microdeblur.objectives import OBJECTIVES, StepOptions

    d = PreparedData.load(data)
    tr, _ = d.split(0.25)
    share = {}
    for p in (0.0, 0.5):
        s = PairSampler(d, tr, np.random.default_rng(1), augment=False)
        batch = OBJECTIVES["manifold-1d"].sample(s, StepOptions(batch_size=3000, crop=32, p_focus=p))
        dz1, dz2 = batch["dz"].chunk(2)
        assert not torch.any(dz1 == dz2)
        share[p] = float((dz2 == 0).float().mean())
    assert abs(share[0.5] - 0.5) < 0.03 and abs(share[0.0] - 1 / 7) < 0.03


def _tiny_skip_model():
    """A tiny input-skip manifold network with a non-zero correction, so its decode depends on the blur code."""
    from microdeblur.model_config import ModelConfig
    from microdeblur.networks import DisentangledAE

    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(tile=64, widths=(4, 8, 8), id_channels=(2, 3, 4), input_skip=True))
    with torch.no_grad():
        model.out.weight.normal_(0, 0.1)
    return model


def test_deblur_term_is_the_in_focus_decode_and_enters_the_total(data):
    from microdeblur.losses import l1_loss, ms_ssim_l1
    from microdeblur.objectives import OBJECTIVES, StepOptions

    model = _tiny_skip_model()
    d = PreparedData.load(data)
    s = PairSampler(d, list(range(12)), np.random.default_rng(3))
    obj = OBJECTIVES["manifold-1d"]
    opts = StepOptions(batch_size=4, crop=32, deblur_weight=2.0)
    batch = obj.sample(s, opts)
    parts = obj.losses(model, batch, opts, ms_ssim_l1, beta=1.0)
    ids = model.encode(batch["x1"]).identity  # decoded at the code the dz tie gives an in-focus plane
    expect = l1_loss(model.decode(ids, torch.zeros(4, 1)), batch["f1"])
    assert torch.allclose(parts["deblur"], expect, rtol=1e-4) and parts["deblur"] > 0
    off = obj.losses(model, batch, StepOptions(batch_size=4, crop=32, deblur_weight=0.0), ms_ssim_l1, beta=1.0)
    assert torch.allclose(parts["total"] - off["total"], 2.0 * parts["deblur"], rtol=1e-4, atol=1e-6)


def test_focus_all_adds_the_in_focus_planes_of_the_same_dz_pairs_and_draws_the_same_pairs(data):
    d = PreparedData.load(data)
    tr, _ = d.split(0.25)
    one = PairSampler(d, tr, np.random.default_rng(4)).pairs(6, crop=32, p_focus=0.5, with_focus=True)
    b = PairSampler(d, tr, np.random.default_rng(4)).pairs(6, crop=32, p_focus=0.5, with_focus=True, focus_all=True)
    assert one.fy is None and b.fy.shape == (12, 1, 32, 32)
    assert all(torch.equal(getattr(one, k), getattr(b, k)) for k in ("x1", "x2", "y1", "y2", "f1"))
    # same window and transform as its tile: an in-focus y comes back as itself, a defocused one does not
    s = PairSampler(d, tr, np.random.default_rng(2))
    seen = False
    for _ in range(40):
        b = s.pairs(8, crop=32, with_focus=True, focus_all=True)
        ys, at_focus = torch.cat([b.y1, b.y2]), torch.cat([b.dzy, b.dzy]) == 0
        assert not any(torch.equal(b.fy[i], ys[i]) for i in range(16) if not at_focus[i])
        if at_focus.any():
            assert all(torch.equal(b.fy[i], ys[i]) for i in range(16) if at_focus[i])
            seen = True
    assert seen, "no in-focus y drawn"


def test_deblur_all_puts_every_tile_of_the_step_in_the_term(data):
    from microdeblur.losses import l1_loss, ms_ssim_l1
    from microdeblur.objectives import OBJECTIVES, StepOptions

    model = _tiny_skip_model()
    s = PairSampler(PreparedData.load(data), list(range(12)), np.random.default_rng(3))
    obj = OBJECTIVES["manifold-1d"]
    opts = StepOptions(batch_size=4, crop=32, deblur_weight=1.0, deblur_all=True)
    batch = obj.sample(s, opts)
    assert obj.tiles_per_step(opts) == 28 and batch["fy"].shape[0] == 8
    parts = obj.losses(model, batch, opts, ms_ssim_l1, beta=1.0)
    xs = torch.cat([batch[k] for k in ("x1", "x2", "y1", "y2")])
    expect = l1_loss(model.decode(model.encode(xs).identity, torch.zeros(16, 1)),
                     torch.cat([batch["f1"], batch["f1"], batch["fy"]]))
    assert torch.allclose(parts["deblur"], expect, rtol=1e-4)


def test_deblur_term_leaves_the_blur_code_alone(data):
    """The in-focus code is read, not trained, by the deblurring term: no gradient reaches the blur head."""
    from microdeblur.losses import ms_ssim_l1
    from microdeblur.objectives import OBJECTIVES, StepOptions

    model = _tiny_skip_model()
    s = PairSampler(PreparedData.load(data), list(range(12)), np.random.default_rng(3))
    opts = StepOptions(batch_size=4, crop=32, deblur_weight=1.0)
    parts = OBJECTIVES["manifold-1d"].losses(model, OBJECTIVES["manifold-1d"].sample(s, opts), opts, ms_ssim_l1, beta=1.0)
    parts["deblur"].backward()
    head = [p.grad for p in model.blur_head.parameters()]
    assert all(g is None or not g.any() for g in head)
    assert any(p.grad is not None and p.grad.any() for p in model.dec.parameters())


def test_training_with_the_deblur_term_logs_it(tmp_path, data):
    out = tmp_path / "w.safetensors"
    res = runner.invoke(app, ["-q", "train", str(data), "-o", str(out), "--max-steps", "4", "--deblur-weight", "1",
                              "--widths", "4,8,8", "--id-channels", "2,3,4", "--batch-size", "2", "--crop", "32",
                              "--workers", "1", "--eval-every", "4"])
    assert res.exit_code == 0, res.output
    _, meta = load_weights(out)
    assert meta.training["recipe"]["deblur_weight"] == 1.0 and meta.training["last"]["deblur"] > 0


def test_deblur_all_reaches_the_recipe_needs_the_term_and_old_recipes_read_it_as_off(tmp_path, data):
    from microdeblur.checkpoints import with_defaults

    out = tmp_path / "w.safetensors"
    args = ["-q", "train", str(data), "-o", str(out), "--max-steps", "2", "--widths", "4,8,8", "--id-channels", "2,3,4",
            "--batch-size", "2", "--crop", "32", "--workers", "1", "--eval-every", "2", "--deblur-all"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "error: --deblur-all needs --deblur-weight" in res.output and not out.exists()
    res = runner.invoke(app, args + ["--deblur-weight", "1"])
    assert res.exit_code == 0, res.output
    _, meta = load_weights(out)
    assert meta.training["recipe"]["deblur_all"] is True and meta.training["last"]["deblur"] > 0
    assert TrainConfig(deblur_weight=1.0, deblur_all=True).step_options().deblur_all
    assert with_defaults({"lr": 1e-3})["deblur_all"] is False


def test_l2_deblur_term_is_the_rms_error_and_resumes_from_old_recipes(tmp_path, data):
    """--deblur-loss l2 makes the term the root mean squared error (the MSE's minimiser); the option is recorded,
    and a recipe written before it existed reads back as l1."""
    from microdeblur.checkpoints import with_defaults
    from microdeblur.losses import DEBLUR_LOSSES

    a, b = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    b[0, 0, 0, :2] = 4.0  # errors 4, 4 and 30 zeros: L1 0.25, RMS sqrt(32/32) = 1
    assert float(DEBLUR_LOSSES["l1"](a, b)) == pytest.approx(0.25)
    assert float(DEBLUR_LOSSES["l2"](a, b)) == pytest.approx(1.0)
    out = tmp_path / "w.safetensors"
    res = runner.invoke(app, ["-q", "train", str(data), "-o", str(out), "--max-steps", "2", "--deblur-weight", "1",
                              "--deblur-loss", "l2", "--widths", "4,8,8", "--id-channels", "2,3,4", "--batch-size", "2",
                              "--crop", "32", "--workers", "1", "--eval-every", "2"])
    assert res.exit_code == 0, res.output
    _, meta = load_weights(out)
    assert meta.training["recipe"]["deblur_loss"] == "l2" and meta.training["last"]["deblur"] > 0
    assert with_defaults({"lr": 1e-3})["deblur_loss"] == "l1"


def test_full_resolution_first_level_trains_and_deblurs(tmp_path, data):
    out = tmp_path / "u1.safetensors"
    cfg = TrainConfig(max_steps=4, unshuffle=1, **TINY)
    train(data, out, cfg)
    model, meta = load_weights(out)
    assert meta.config.unshuffle == 1 and meta.config.downsample == 4
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        c = model.encode(x)
        assert model.decode(c.identity, c.blur).shape == x.shape


def test_full_resolution_stem_trains_starts_lossless_and_its_head_follows_the_code(tmp_path, data):
    from microdeblur.model_config import ModelConfig
    from microdeblur.networks import DisentangledAE

    x = torch.rand(2, 1, 64, 64)
    fresh = DisentangledAE(ModelConfig(tile=64, widths=(4, 8, 8), id_channels=(2, 3, 4), input_skip=True, stem=3))
    with torch.no_grad():
        c = fresh.encode(x)
        assert torch.equal(fresh.decode(c.identity, c.blur), x)  # zero-initialised output and head: the input
        fresh.head_out.weight.normal_(0, 0.5)
        a, b = (fresh.decode(c.identity, torch.full_like(c.blur, v)) for v in (-1.0, 1.0))
    assert (a - b).abs().max() > 1e-4  # the head is modulated by the blur code
    out = tmp_path / "stem.safetensors"
    train(data, out, TrainConfig(max_steps=4, stem=3, **TINY))
    model, meta = load_weights(out)
    assert meta.config.stem == 3 and meta.training["recipe"]["stem"] == 3
    with torch.no_grad():
        c = model.encode(x)
        assert model.decode(c.identity, c.blur).shape == x.shape


def test_source_code_init_keeps_the_function_and_training_uses_the_tiles_own_code(tmp_path, data):
    """--source-code --init: the widened network computes what its base did, training reaches the FiLM input of
    the tile's own blur code (carried at the end of the identity), and the weights record it."""
    from microdeblur.networks import with_source_code

    base = tmp_path / "base.safetensors"
    train(data, base, TrainConfig(max_steps=2, **TINY))
    src, _ = load_weights(base)
    wide = with_source_code(src).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        c, w = src.eval().encode(x), wide.encode(x)
        assert w.identity.shape[1] == c.identity.shape[1] + 1 and torch.equal(w.identity[:, -1], w.blur[:, 0])
        torch.testing.assert_close(wide.decode(w.identity, torch.zeros(2, 1)), src.decode(c.identity, torch.zeros(2, 1)))
    out = tmp_path / "src.safetensors"
    train(data, out, TrainConfig(max_steps=4, init=base, source_code=True, **{**TINY, "eval_every": 2}))
    model, meta = load_weights(out)
    assert meta.config.source_code and meta.training["recipe"]["source_code"]
    assert model.film[0].weight[:, 1].abs().max() > 0  # the new input (the tile's own code) was trained


def test_head_init_keeps_the_function_and_training_moves_the_head(tmp_path, data):
    """--head N --init: the network with a new full-resolution head computes what its base did (output conv and
    FiLM rows at zero), the head's output conv learns, it follows the blur code, and the weights record it."""
    from microdeblur.networks import with_head

    base = tmp_path / "base.safetensors"
    train(data, base, TrainConfig(max_steps=2, **TINY))
    src, _ = load_weights(base)
    headed = with_head(src, 3).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(headed(x), src.eval()(x), rtol=0, atol=0)
    out = tmp_path / "head.safetensors"
    train(data, out, TrainConfig(max_steps=4, init=base, head=3, **{**TINY, "eval_every": 2}))
    model, meta = load_weights(out)
    assert meta.config.head == 3 and meta.training["recipe"]["head"] == 3
    assert model.fine_out.weight.abs().max() > 0
    with torch.no_grad():
        c = model.encode(x)
        a, b = (model.decode(c.identity, torch.full_like(c.blur, v)) for v in (-1.0, 1.0))
        model.fine_out.weight.zero_()
        model.fine_out.bias.zero_()
        a0, b0 = (model.decode(c.identity, torch.full_like(c.blur, v)) for v in (-1.0, 1.0))
    assert (a - b - (a0 - b0)).abs().max() > 0  # the head adds a code-dependent correction of its own
    with pytest.raises(UserError, match="--head"):
        train(data, tmp_path / "bad.safetensors", TrainConfig(max_steps=1, head=3, stem=2, **TINY))


def test_augmentation_keeps_pairs_aligned(data):
    d = PreparedData.load(data)
    s = PairSampler(d, list(range(12)), np.random.default_rng(1))
    x = torch.rand(16, 1, 64, 64)
    a, b = s._augment(x, x.clone())
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


@pytest.mark.parametrize("variant", ["manifold-1d", "manifold", "ml-vae"])
def test_few_steps_reduce_loss_and_export(tmp_path, data, variant):
    out = tmp_path / f"{variant}.safetensors"
    cfg = TrainConfig(variant=variant, max_steps=24, beta_delay=12, beta_ramp=6, seed=1, **TINY)
    train(data, out, cfg)
    model, meta = load_weights(out, expect_variant=variant)
    assert meta.scale == 0.5 and meta.z_step_um == 2.0 and meta.focus_blur_code.size == model.config.blur_dim
    hist = meta.training["last"]
    assert hist["step"] == 24 and 4 <= meta.training["exported_step"] <= 24
    assert meta.training["software"]["torch"] == torch.__version__
    rows = (tmp_path / f"{variant}.log.csv").read_text().splitlines()
    first, last = (dict(zip(rows[0].split(","), r.split(","))) for r in (rows[1], rows[-1]))
    assert float(last["rec"]) < float(first["rec"])
    assert (meta.calibration is not None) == (variant == "manifold-1d")


def test_dz_term_orders_the_blur_code(tmp_path, data):
    """The optional dz tie gives a 1-D code ordered by dz within a few steps (no collapse; 40 steps were
    seed- and machine-dependent, 80 gave rho 0.75-0.89 for seeds 0-3)."""
    out = tmp_path / "dz.safetensors"
    cfg = TrainConfig(max_steps=60, dz_weight=1.0, dz_range=6.0, lr=3e-3, seed=2, **(TINY | {"batch_size": 4}))
    train(data, out, cfg)
    _, meta = load_weights(out)
    assert meta.calibration["kind"] == "signed" and abs(meta.calibration["spearman_rho"]) > 0.6


def _ckpt_model(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_a_signal_is_bit_for_bit(tmp_path, data, monkeypatch):
    """SIGINT mid-step lets the step finish, saves, exits 130; resuming gives the uninterrupted run exactly."""
    import os
    import signal

    cfg = dict(max_steps=12, seed=4, **TINY)
    train(data, tmp_path / "a.safetensors", TrainConfig(**cfg))
    calls = {"n": 0}
    original = PairSampler.pairs

    def interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # not at a checkpoint boundary (every 2 steps)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PairSampler, "pairs", interrupt)
    with pytest.raises(SystemExit) as exc:
        train(data, tmp_path / "b.safetensors", TrainConfig(**cfg))
    assert exc.value.code == 130 and not (tmp_path / "b.safetensors").exists()
    assert torch.load(tmp_path / "b.ckpt", weights_only=True)["step"] == 5
    monkeypatch.setattr(PairSampler, "pairs", original)
    train(data, tmp_path / "b.safetensors", TrainConfig(resume=tmp_path / "b.ckpt", **cfg))
    _same_state(_ckpt_model(tmp_path / "a.ckpt"), _ckpt_model(tmp_path / "b.ckpt"))
    _same_state(load_weights(tmp_path / "a.safetensors")[0].state_dict(), load_weights(tmp_path / "b.safetensors")[0].state_dict())


def test_extending_a_run_keeps_the_planned_steps(tmp_path, data):
    """Schedules count steps: 8 steps then --resume to 12 equals 12 steps in one go."""
    train(data, tmp_path / "a.safetensors", TrainConfig(max_steps=12, seed=3, **TINY))
    train(data, tmp_path / "b.safetensors", TrainConfig(max_steps=8, seed=3, **TINY))
    (tmp_path / "b.safetensors").unlink()
    train(data, tmp_path / "b.safetensors", TrainConfig(max_steps=12, seed=3, resume=tmp_path / "b.ckpt", **TINY))
    _same_state(_ckpt_model(tmp_path / "a.ckpt"), _ckpt_model(tmp_path / "b.ckpt"))
    assert load_weights(tmp_path / "b.safetensors")[1].training["data_hashes"] == [data_hash(load_index(data))]


def test_resume_on_regenerated_data_records_both_hashes(tmp_path, data):
    """Data prepared again with slightly different pixels (another numpy, say) resume, and the export names both."""
    train(data, tmp_path / "a.safetensors", TrainConfig(max_steps=4, seed=3, **TINY))
    (tmp_path / "a.safetensors").unlink()
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    index = json.loads((moved / "index.json").read_text())
    next(iter(index["days"].values()))["hi"][0] += 0.5
    (moved / "index.json").write_text(json.dumps(index))
    train(moved, tmp_path / "a.safetensors", TrainConfig(max_steps=6, seed=3, resume=tmp_path / "a.ckpt", **TINY))
    hashes = load_weights(tmp_path / "a.safetensors")[1].training["data_hashes"]
    assert hashes == [data_hash(load_index(data)), data_hash(index)] and hashes[0] != hashes[1]


def test_note_data_appends_only_changes():
    assert note_data([], "a") == ["a"] and note_data(["a"], "a") == ["a"] and note_data(["a"], "b") == ["a", "b"]


def test_ema_exports_the_average_and_resumes_bit_for_bit(tmp_path, data):
    """--ema: the export is the moving average (not the last step's weights), it is kept in the checkpoint, and
    8 steps then --resume to 12 equal 12 steps in one go, average included."""
    ema = TINY | {"eval_every": 12}  # one probe, at the last step: the export is the average there
    train(data, tmp_path / "a.safetensors", TrainConfig(max_steps=12, seed=3, ema=0.5, **ema))
    ck = torch.load(tmp_path / "a.ckpt", map_location="cpu", weights_only=True)
    live, avg = ck["model"], {k.removeprefix("module."): v for k, v in ck["ema"].items() if k != "n_averaged"}
    exported = load_weights(tmp_path / "a.safetensors")[0].state_dict()
    assert int(ck["ema"]["n_averaged"]) == 12
    assert any(not torch.allclose(live[k], avg[k]) for k in live)  # the average lags the last step
    for k, v in exported.items():
        assert torch.equal(v, avg[k]), k
    train(data, tmp_path / "c.safetensors", TrainConfig(max_steps=12, seed=3, ema=0.5, **TINY))  # probes at 4, 8, 12
    train(data, tmp_path / "b.safetensors", TrainConfig(max_steps=8, seed=3, ema=0.5, **TINY))
    (tmp_path / "b.safetensors").unlink()
    train(data, tmp_path / "b.safetensors", TrainConfig(max_steps=12, seed=3, ema=0.5, resume=tmp_path / "b.ckpt", **TINY))
    kb, kc = (torch.load(tmp_path / f"{n}.ckpt", map_location="cpu", weights_only=True) for n in "bc")
    _same_state(ck["model"], kb["model"])
    _same_state(kc["ema"], kb["ema"])
    _same_state(*(load_weights(tmp_path / f"{n}.safetensors")[0].state_dict() for n in "bc"))


def test_init_fine_tunes_from_weights(tmp_path, data):
    """With a vanishing learning rate the fine-tuned weights stay the --init weights, unlike a fresh start."""
    train(data, tmp_path / "base.safetensors", TrainConfig(max_steps=4, **TINY))
    tiny_lr = TINY | {"checkpoint_every": 1}
    train(data, tmp_path / "ft.safetensors", TrainConfig(max_steps=1, lr=1e-12, seed=9, init=tmp_path / "base.safetensors", **tiny_lr))
    train(data, tmp_path / "fresh.safetensors", TrainConfig(max_steps=1, lr=1e-12, seed=9, **tiny_lr))
    base, ft, fresh = (load_weights(tmp_path / f"{n}.safetensors")[0].state_dict() for n in ("base", "ft", "fresh"))
    assert all(torch.allclose(base[k], ft[k], atol=1e-6) for k in base)
    assert not all(torch.allclose(base[k], fresh[k], atol=1e-3) for k in base)


@pytest.mark.parametrize("args, words", [
    (["--variant", "vae"], "unknown --variant"),
    (["--batch-size", "0"], "--batch-size"),
    (["--variant", "manifold", "--dz-weight", "1"], "--dz-weight"),
    (["--precision", "half"], "--precision"),
    (["--cycle-weight", "nan"], "--cycle-weight"),
    (["--deblur-weight", "-1"], "--deblur-weight"),
    (["--unshuffle", "3"], "--unshuffle"),
    (["--variant", "ml-vae", "--deblur-weight", "1"], "--deblur-weight"),
    (["--variant", "manifold", "--deblur-weight", "1"], "--deblur-weight"),
    (["--stem", "-1"], "--stem"),
    (["--variant", "ml-vae", "--stem", "4"], "--stem"),
    (["--dz-weight", "0", "--deblur-weight", "1"], "--deblur-weight"),
    (["--variant", "ml-vae", "--source-code"], "--source-code"),
    (["--deblur-loss", "huber"], "--deblur-loss"),
    (["--ema", "1"], "--ema"),
    (["--ema", "-0.1"], "--ema"),
])
def test_bad_options(tmp_path, data, args, words):
    res = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "w.safetensors"), *args])
    assert res.exit_code != 0 and words in res.output and "Traceback" not in res.output


def test_bad_data_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for p, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "index.json"),
                     (tmp_path / "file.txt", "not a folder")):
        res = runner.invoke(app, ["train", str(p), "-o", str(tmp_path / "w.safetensors")])
        assert res.exit_code == 1 and words in res.output, res.output


def test_refuses_existing_output(tmp_path, data):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"keep")
    res = runner.invoke(app, ["train", str(data), "-o", str(out), "--max-steps", "1"])
    assert res.exit_code == 1 and "exists" in res.output and out.read_bytes() == b"keep"


def test_init_refuses_other_tile_size(tmp_path, data):
    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.weights import WeightsMeta, save_weights

    cfg = ModelConfig(tile=32, widths=(4, 8), id_channels=(2, 3), blur_width=8)
    save_weights(tmp_path / "w32.safetensors", DisentangledAE(cfg), WeightsMeta(variant=cfg.variant, config=cfg))
    with pytest.raises(UserError, match="32-px tiles"):
        train(data, tmp_path / "ft.safetensors", TrainConfig(max_steps=1, init=tmp_path / "w32.safetensors", **TINY))


def test_focus_ratios_show_lowest_contrast_at_focus(data):
    from microdeblur.training import intensity_model

    d = PreparedData.load(data)
    r = intensity_model(d, list(range(12))).to_dict()
    assert r["dz_um"] == [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
    span = np.array(r["hi"]) - np.array(r["lo"])
    assert all(lo < 1 < hi for lo, hi in zip(r["lo"], r["hi"]))
    assert span[3] < span[0] and span[3] < span[-1]


def test_checkpoint_of_an_earlier_run_is_not_clobbered(tmp_path, data):
    out = tmp_path / "sub" / "w.safetensors"  # the folder is created
    train(data, out, TrainConfig(max_steps=2, **TINY))
    out.unlink()
    before = (tmp_path / "sub" / "w.ckpt").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        train(data, out, TrainConfig(max_steps=2, **TINY))
    assert (tmp_path / "sub" / "w.ckpt").read_bytes() == before
    with pytest.raises(UserError, match=r"trained with --batch-size \d+: resume with the run's whole command"):
        train(data, out, TrainConfig(max_steps=2, resume=tmp_path / "sub" / "w.ckpt", **(TINY | {"batch_size": 3})))


@pytest.mark.parametrize("args, words", [
    (["--widths", "abc"], "--widths"),
    (["--widths", "0,4"], "--widths"),
    (["--max-minutes", "0"], "--max-minutes"),
    (["--workers", "-1"], "--workers"),
    (["--beta-delay", "-1"], "--beta-delay"),
    (["--lr", "nan"], "--lr"),
    (["--p-focus", "1.5"], "--p-focus"),
    (["--crop", "40"], "--crop"),
])
def test_more_bad_options(tmp_path, data, args, words):
    res = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "w.safetensors"), *args])
    assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output


def test_data_hash_ignores_where_the_raw_days_were():
    from microdeblur.training import data_hash

    index = {"tile": 128, "days": {"day01": {"source": "/a/raw/day01", "lo": [1.0], "hi": [2.0]}}}
    moved = {"tile": 128, "days": {"day01": {"source": "/b/elsewhere/day01", "lo": [1.0], "hi": [2.0]}}}
    changed = {"tile": 128, "days": {"day01": {"source": "/a/raw/day01", "lo": [1.5], "hi": [2.0]}}}
    assert data_hash(index) == data_hash(moved) != data_hash(changed)


def test_bfloat16_autocast_trains_and_exports_float32_weights(tmp_path, data):
    """The GPU mixed-precision path (bfloat16 autocast, no loss scaling) runs on CPU too; the weights stay
    float32 and deblur within a loose tolerance of the same model run in float32."""
    out = train(data, tmp_path / "bf.safetensors", TrainConfig(max_steps=6, precision="bfloat16", seed=4, **TINY))
    model, meta = load_weights(out)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert meta.training["precision"] == "bfloat16" and np.isfinite(meta.training["last"]["total"])
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert (low - ref).abs().max() < 0.05


def test_checkpoint_from_before_an_option_existed_resumes_with_its_default(tmp_path, data):
    """A checkpoint whose recipe predates --cycle-weight resumes at the default (0 = the old behaviour) and is
    refused with any other value."""
    out = tmp_path / "w.safetensors"
    train(data, out, TrainConfig(max_steps=2, **TINY))
    ckpt = tmp_path / "w.ckpt"
    ck = torch.load(ckpt, weights_only=True)
    del ck["recipe"]["cycle_weight"]
    torch.save(ck, ckpt)
    with pytest.raises(UserError, match="--cycle-weight 0.0"):
        train(data, tmp_path / "x.safetensors", TrainConfig(max_steps=4, cycle_weight=1.0, resume=ckpt, **TINY))
    train(data, tmp_path / "y.safetensors", TrainConfig(max_steps=4, resume=ckpt, **TINY))
    assert load_weights(tmp_path / "y.safetensors")[1].training["steps"] == 4


def test_val_frames_pick_the_export_by_whole_frame_gain(tmp_path, data):
    """--val-frames: every probe deblurs held-out whole frames through deblur's path; for manifold-1d (a dz tie) the
    exported step is the one with the largest bin-balanced min-MSE gain over the input after the focus gate fitted on
    those frames through the tie, for a variant without a tie the ungated gain; the weights say which."""
    import csv

    from microdeblur.calibration import code_to_dz
    from microdeblur.focus_gate import candidates
    from microdeblur.frame_probe import tie_calibration

    simulate_days(tmp_path / "val", days=1, planes=7, size=(320, 320), seed=77, z_step_um=2.0)
    for variant, key in (("manifold-1d", "val_frame_gated_gain"), ("manifold", "val_frame_gain")):
        out = tmp_path / f"{variant}.safetensors"
        cfg = TrainConfig(variant=variant, max_steps=12, beta_delay=4, beta_ramp=4, seed=2, val_frames=(tmp_path / "val",), **TINY)
        train(data, out, cfg)
        _, meta = load_weights(out)
        rows = list(csv.DictReader(open(out.with_suffix(".log.csv"))))
        gains = {int(r["step"]): float(r[key]) for r in rows}
        assert len(gains) == 3 and all(np.isfinite(list(gains.values())))
        assert all(float(r["val_frame_input"]) == float(rows[0]["val_frame_input"]) for r in rows)  # same frames each time
        assert meta.training["selected_by"] == key
        assert meta.training["exported_step"] == max(gains, key=gains.get)
        has_gate = "val_gate_lo_um" in rows[0]
        assert has_gate == (variant == "manifold-1d")
        if has_gate:
            ramps = {(r.lo_um, r.hi_um) for r in candidates()}
            assert all((float(r["val_gate_lo_um"]), float(r["val_gate_hi_um"])) in ramps for r in rows)
    assert np.allclose(code_to_dz(tie_calibration(30.0), np.array([-0.5, 0.0, 0.1])), [-15.0, 0.0, 3.0])
    # resuming a checkpoint whose best step was picked by the tile probe starts a fresh frame-probe selection
    plain = tmp_path / "p.safetensors"
    train(data, plain, TrainConfig(max_steps=8, beta_delay=4, beta_ramp=4, seed=2, **TINY))
    ck = tmp_path / "p.ckpt"
    resumed = TrainConfig(max_steps=12, beta_delay=4, beta_ramp=4, seed=2, val_frames=(tmp_path / "val",), resume=ck,
                          overwrite=True, **TINY)
    train(data, plain, resumed)
    _, meta = load_weights(plain)
    assert meta.training["selected_by"] == "val_frame_gated_gain" and meta.training["exported_step"] == 12


def test_calibration_days_are_the_reference_microscopes_when_there_are_enough(data):
    """finalize fits the dz calibration on days whose dz is exactly reference um (dz factor 1) when the folder
    holds enough of them; otherwise on every training identity."""
    d = PreparedData.load(data)
    ids = list(range(len(d.identities)))
    assert d.dz_factor and set(d.dz_factor.values()) == {1.0} and d.reference_identities(ids, at_least=1) == ids
    other = d.days[0]
    d.dz_factor[other] = 2.5  # as if the first day came from a 40x objective
    kept = d.reference_identities(ids, at_least=1)
    assert kept and all(d.days[i] != other for i in kept)
    assert d.reference_identities(ids, at_least=len(ids)) == ids  # too few reference identities: all of them
