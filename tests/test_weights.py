"""safetensors save/load round trip, metadata and error messages."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from microdeblur.errors import UserError
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.weights import WeightsMeta, default_weights_path, load_weights, save_weights


def make(variant: str = "manifold-1d"):
    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant, tile=32, widths=(4, 8, 8), id_channels=(2, 3, 4), blur_width=8, vector_blur_dim=3)
    model = DisentangledAE(cfg)
    model.train()(torch.rand(4, 1, 32, 32))  # move BN running stats away from their defaults
    meta = WeightsMeta(variant=variant, config=cfg, scale=0.5, z_step_um=1.0,
                       focus_blur_code=np.full(cfg.blur_dim, 0.25, np.float32),
                       calibration={"kind": "signed", "knots": {"code": [-1.0, 1.0], "dz_um": [-20.0, 20.0]}},
                       training={"steps": 10})
    return model.eval(), meta


def test_round_trip(tmp_path):
    model, meta = make()
    p = tmp_path / "w.safetensors"
    save_weights(p, model, meta)
    loaded, meta2 = load_weights(p, expect_variant="manifold-1d")
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert meta2.config == meta.config and meta2.variant == meta.variant
    assert np.array_equal(meta2.focus_blur_code, meta.focus_blur_code) and meta2.focus_blur_code.dtype == np.float32
    assert (meta2.normalization, meta2.scale, meta2.z_step_um, meta2.calibration, meta2.training) == (
        meta.normalization, meta.scale, meta.z_step_um, meta.calibration, meta.training)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_metadata_strings(tmp_path):
    model, meta = make("manifold")
    p = tmp_path / "w.safetensors"
    save_weights(p, model, meta)
    with safe_open(str(p), "pt") as f:
        md = f.metadata()
        assert all(f.get_tensor(k).dtype in (torch.float32, torch.int64) for k in f.keys())
    assert md["microdeblur.format_version"] == "1" and md["microdeblur.variant"] == "manifold"
    assert json.loads(md["microdeblur.config"])["widths"] == [4, 8, 8]
    assert json.loads(md["microdeblur.normalization"])["method"] == "frame-percentile"


def test_refuses_to_overwrite(tmp_path):
    model, meta = make()
    p = tmp_path / "w.safetensors"
    save_weights(p, model, meta)
    with pytest.raises(UserError, match="exists"):
        save_weights(p, model, meta)
    save_weights(p, model, meta, overwrite=True)
    assert [q.name for q in tmp_path.iterdir()] == ["w.safetensors"]


def test_wrong_variant(tmp_path):
    model, meta = make("ml-vae")
    p = tmp_path / "w.safetensors"
    save_weights(p, model, meta)
    with pytest.raises(UserError, match="ml-vae"):
        load_weights(p, expect_variant="manifold-1d")


def test_not_safetensors_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_weights(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="no microdeblur metadata"):
        load_weights(foreign)
    with pytest.raises(UserError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_version_and_tensor_mismatch(tmp_path):
    model, meta = make()
    p = tmp_path / "w.safetensors"
    save_weights(p, model, meta)
    with safe_open(str(p), "pt") as f:
        md = dict(f.metadata())
    tensors = load_file(str(p))
    save_file(tensors, str(tmp_path / "v2.safetensors"), metadata={**md, "microdeblur.format_version": "2"})
    with pytest.raises(UserError, match="format version 2"):
        load_weights(tmp_path / "v2.safetensors")
    tensors.pop("out.weight")
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata=md)
    with pytest.raises(UserError, match="do not match"):
        load_weights(tmp_path / "short.safetensors")


def test_half_storage(tmp_path):
    model, meta = make("manifold")
    p = tmp_path / "w16.safetensors"
    save_weights(p, model, meta, half=True)
    save_weights(tmp_path / "w32.safetensors", model, meta)
    loaded, _ = load_weights(p)
    assert p.stat().st_size < (tmp_path / "w32.safetensors").stat().st_size
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=2e-2, rtol=2e-2)


def test_default_path(monkeypatch, tmp_path):
    assert default_weights_path().name == "manifold-1d.safetensors"
    assert default_weights_path().parent.name == "models"
    monkeypatch.setattr("microdeblur.weights.default_weights_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(UserError, match="no shipped weights found; pass --weights"):
        load_weights()


def test_saved_weights_are_readable_by_others(tmp_path):
    import stat

    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.weights import WeightsMeta, save_weights

    cfg = ModelConfig(tile=32, widths=(4, 8), id_channels=(2, 3), blur_width=8)
    save_weights(tmp_path / "w.safetensors", DisentangledAE(cfg), WeightsMeta(variant=cfg.variant, config=cfg))
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) & 0o044 == 0o044
