"""deblur's focus gate: the correction applied in proportion to each tile's estimated defocus, by a ramp the
weights carry (fitted on validation days) or, with --focus-gate and weights without one, the default ramp."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from cli_helpers import run_cli

from microdeblur import calibration, focus_gate
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
    half = np.mean(focus_gate.DEFAULT_RAMP_UM)
    monkeypatch.setattr(calibration, "code_to_dz", lambda cal, codes: np.full_like(codes, -half))  # halfway
    mid = gated.deblur_plane(plane).astype(float)
    np.testing.assert_allclose(mid, (plane.astype(float) + plain) / 2, atol=1.0)
    # the gate applies to deblurring only: a given code (--reference, --dz) is decoded everywhere
    code = gated.target
    assert np.array_equal(gated.deblur_plane(plane, code), Deblurrer(model, meta).deblur_plane(plane, code))


def test_cli_focus_gate_is_off_for_weights_without_a_ramp(weights, tmp_path):
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


def test_weights_with_a_fitted_ramp_gate_by_default_and_round_trip(weights, tmp_path):
    path, model, meta = weights
    from dataclasses import replace

    from microdeblur.weights import load_weights

    gated_path = tmp_path / "gated.safetensors"
    save_weights(gated_path, model, replace(meta, focus_gate={"lo_um": 4.0, "hi_um": 9.0, "frames": 3}))
    m2, meta2 = load_weights(gated_path)
    assert meta2.focus_gate["lo_um"] == 4.0
    db = Deblurrer(m2, meta2)
    assert db.gate_ramp == focus_gate.Ramp(4.0, 9.0)
    assert Deblurrer(m2, meta2, focus_gate=False).gate_ramp is None
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _plane())
    for name, extra in (("default", []), ("off", ["--no-focus-gate"])):
        res = run_cli("deblur", src, "-o", tmp_path / f"{name}.tif", "-w", gated_path, *extra)
        assert res.exit_code == 0, res.output
    assert np.array_equal(tifffile.imread(tmp_path / "default.tif"), db.deblur_plane(_plane()))
    assert np.array_equal(tifffile.imread(tmp_path / "off.tif"), Deblurrer(m2, meta2, focus_gate=False).deblur_plane(_plane()))
    bad = tmp_path / "bad.safetensors"
    save_weights(bad, model, replace(meta, focus_gate={"lo_um": 5.0, "hi_um": 1.0}))
    res = run_cli("deblur", src, "-o", tmp_path / "bad.tif", "-w", bad)
    assert res.exit_code != 0 and "error:" in res.output and "Traceback" not in res.output


def test_tile_defocus_is_a_neighbourhood_median():
    cal = fit_calibration(0.05 * DZ, DZ)
    codes = np.full((6, 7), 0.05 * 8.0)  # every tile reads 8 um ...
    codes[2, 3] = 0.0  # ... but one, which reads in focus
    d = focus_gate.tile_defocus(cal, codes.ravel(), (6, 7))
    np.testing.assert_allclose(d, 8.0, atol=0.05)
    assert focus_gate.Ramp(1.0, 3.0).weight(np.array([0.5, 2.0, -2.0, 9.0])).tolist() == [0.0, 0.5, 0.5, 1.0]
    with pytest.raises(ValueError):
        focus_gate.Ramp(3.0, 3.0)


def test_fit_ramp_keeps_near_focus_frames_and_corrects_far_ones():
    rng = np.random.default_rng(0)
    ref = rng.random((64, 64)).astype(np.float32)
    frames = []
    for dz, est in ((1.0, 0.8), (-2.0, 1.5), (9.0, 8.5), (-12.0, 11.0)):
        near = abs(dz) < 5
        noisy = ref + rng.normal(0, 0.5, ref.shape).astype(np.float32)
        close = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
        plane, corrected = (close, noisy) if near else (noisy, close)  # the network helps far from focus only
        frames.append(focus_gate.GateFrame(plane, corrected, np.full((2, 2), est), lambda w: np.full(ref.shape, w.mean()),
                                           ref, dz))
    ramp, table = focus_gate.fit_ramp(frames)
    assert table[0]["ramp"] is None and max(t["psnr"] for t in table) > table[0]["psnr"] + 5
    assert 1.5 <= ramp.lo_um and ramp.hi_um <= 8.5


def test_an_explicit_focus_gate_that_cannot_apply_is_one_error(weights, tmp_path):
    path, model, meta = weights
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _plane())
    for extra in (["--dz", "3"], ["--reference", str(src)]):
        res = run_cli("deblur", src, "-o", tmp_path / "o.tif", "-w", path, "--focus-gate", *extra)
        assert res.exit_code != 0 and "--focus-gate" in res.output and "Traceback" not in res.output
    vector = DisentangledAE(ModelConfig(variant="manifold", widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()
    vpath = tmp_path / "vector.safetensors"
    save_weights(vpath, vector, WeightsMeta(variant="manifold", config=vector.config,
                                            focus_blur_code=np.zeros(vector.config.blur_dim, np.float32)))
    res = run_cli("deblur", src, "-o", tmp_path / "v.tif", "-w", vpath, "--focus-gate")
    assert res.exit_code != 0 and "manifold-1d" in res.output and "Traceback" not in res.output
    assert run_cli("deblur", src, "-o", tmp_path / "v2.tif", "-w", vpath).exit_code == 0  # default: no gate, silent
