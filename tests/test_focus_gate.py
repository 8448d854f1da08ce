"""deblur --focus-gate: the correction applied in proportion to each tile's estimated defocus."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from cli_helpers import run_cli

from microdeblur import calibration, engine
from microdeblur.calibration import fit_calibration
from microdeblur.engine import Deblurrer
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.weights import WeightsMeta, save_weights

DZ = np.linspace(-20, 20, 41)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()
    with torch.no_grad():  # a decoder that really changes the image (the input skip's correction starts at 0)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    meta = WeightsMeta(variant="manifold-1d", config=model.config, scale=1.0,
                       focus_blur_code=np.array([0.1], np.float32), calibration=fit_calibration(0.05 * DZ, DZ))
    path = tmp_path_factory.mktemp("gate") / "w.safetensors"
    save_weights(path, model, meta)
    return path, model, meta


def _plane() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (2000 + 300 * rng.random((200, 260))).astype(np.uint16)


def test_gate_keeps_in_focus_tiles_and_corrects_defocused_ones(weights, monkeypatch):
    _, model, meta = weights
    plane = _plane()
    plain = Deblurrer(model, meta).deblur_plane(plane)
    gated = Deblurrer(model, meta, focus_gate=True)
    assert np.abs(plain.astype(float) - plane).max() > 5  # the correction is visible without the gate
    monkeypatch.setattr(calibration, "code_to_dz", lambda cal, codes: np.zeros_like(codes))  # every tile in focus
    assert np.array_equal(gated.deblur_plane(plane), plane)
    monkeypatch.setattr(calibration, "code_to_dz", lambda cal, codes: np.full_like(codes, 10.0))  # all far out
    assert np.array_equal(gated.deblur_plane(plane), plain)
    half = np.mean(engine.FOCUS_GATE_UM)
    monkeypatch.setattr(calibration, "code_to_dz", lambda cal, codes: np.full_like(codes, -half))  # halfway
    mid = gated.deblur_plane(plane).astype(float)
    np.testing.assert_allclose(mid, (plane.astype(float) + plain) / 2, atol=1.0)
    # the gate applies to deblurring only: a given code (--reference, --dz) is decoded everywhere
    code = gated.target
    assert np.array_equal(gated.deblur_plane(plane, code), Deblurrer(model, meta).deblur_plane(plane, code))


def test_cli_focus_gate_is_opt_in(weights, tmp_path):
    path, model, meta = weights
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _plane())
    for flag in ("--focus-gate", "--no-focus-gate"):
        res = run_cli("deblur", src, "-o", tmp_path / f"{flag}.tif", "-w", path, flag)
        assert res.exit_code == 0, res.output
    res = run_cli("deblur", src, "-o", tmp_path / "default.tif", "-w", path)
    assert res.exit_code == 0, res.output
    default = tifffile.imread(tmp_path / "default.tif")
    assert np.array_equal(default, tifffile.imread(tmp_path / "--no-focus-gate.tif"))
    expect = Deblurrer(model, meta, focus_gate=True).deblur_plane(_plane())
    assert np.array_equal(tifffile.imread(tmp_path / "--focus-gate.tif"), expect)
