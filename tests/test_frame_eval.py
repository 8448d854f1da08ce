"""Whole-frame scoring: days found from the simulator's ground truth, min-MSE fit checked against lstsq."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from microdeblur import frame_eval
from microdeblur.errors import UserError
from microdeblur.metrics import minmse_fit, psnr_minmse
from microdeblur.normalize import frame_normalizer
from microdeblur.simulate import simulate_days


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    simulate_days(root / "raw", days=1, planes=5, size=(192, 160), seed=11, z_step_um=3.0)
    return root / "raw"


def test_minmse_fit_is_the_least_squares_affine_map():
    rng = np.random.default_rng(0)
    x, t = rng.random((20, 30)), rng.random((20, 30))
    a = np.stack([x.ravel(), np.ones(x.size)], 1)
    want = (a @ np.linalg.lstsq(a, t.ravel(), rcond=None)[0]).reshape(x.shape)
    np.testing.assert_allclose(minmse_fit(x, t), want, atol=1e-5)
    # an affine copy of the truth scores the PSNR cap; a flat image gets the truth's mean
    assert psnr_minmse(3 * t + 7, t) == 100.0
    np.testing.assert_allclose(minmse_fit(np.ones_like(t), t), np.full_like(t, t.mean()), atol=1e-6)


def test_days_and_scores(raw, tmp_path):
    days = frame_eval.find_frame_days([raw])
    assert len(days) == 1 and list(days[0].dz) == [-6, -3, 0, 3, 6] and days[0].focus == 2
    ref = tifffile.imread(days[0].files[2]).astype(np.float32)
    perfect = lambda plane, dz, px: ref  # noqa: E731 - returns the in-focus frame whatever the input
    rows = frame_eval.score_frames(days, {"input": lambda p, dz, px: p.astype(np.float32), "perfect": perfect}, dz_max=3.0)
    assert [(r["method"], r["dz_um"]) for r in rows] == [("input", -3.0), ("perfect", -3.0), ("input", 3.0), ("perfect", 3.0)]
    assert all(r["minmse_psnr"] == 100.0 and r["pct_psnr"] == 100.0 for r in rows if r["method"] == "perfect")
    # the input's min-MSE figure, computed independently with lstsq against the normalised in-focus frame
    plane = tifffile.imread(days[0].files[1]).astype(np.float64)
    t = frame_normalizer(ref).before(ref).astype(np.float64)
    a = np.stack([plane.ravel(), np.ones(plane.size)], 1)
    fit = a @ np.linalg.lstsq(a, t.ravel(), rcond=None)[0]
    want = 10 * np.log10(1.0 / np.mean((fit - t.ravel()) ** 2))
    assert rows[0]["minmse_psnr"] == pytest.approx(want, abs=1e-3)
    summary = frame_eval.summarise(rows, dz_max=3.0)
    assert summary["bins"] == ["0-2", "2-5"] and summary["methods"]["input"]["bins"]["2-5"]["n"] == 2
    assert "min-MSE PSNR" in frame_eval.markdown(summary)
    written, text = frame_eval.write_report(rows, 3.0, tmp_path / "f.json", tmp_path / "f.md")
    assert written == summary and (tmp_path / "f.md").read_text() == text == frame_eval.markdown(summary)
    assert json.loads((tmp_path / "f.json").read_text())["rows"] == rows


def test_baselines_keep_the_frame_shape(raw):
    days = frame_eval.find_frame_days([raw])
    plane = tifffile.imread(days[0].files[0])
    for name, method in frame_eval.baseline_methods(0.5, rl_iterations=2).items():
        out = method(plane, -6.0, days[0].pixel_um)
        assert out.shape == plane.shape and out.dtype == np.float32 and np.isfinite(out).all(), name


def test_not_simulated_days_are_refused(tmp_path):
    with pytest.raises(UserError, match="no simulated days"):
        frame_eval.find_frame_days([tmp_path])


def test_tiled_method_with_an_identity_network_returns_the_frame(raw):
    import torch

    days = frame_eval.find_frame_days([raw])
    plane = tifffile.imread(days[0].files[0])
    out = frame_eval.tiled_method(torch.nn.Identity(), scale=1.0)(plane, -6.0, None)  # None: resize by `scale`
    np.testing.assert_allclose(out, plane.astype(np.float32), rtol=1e-4, atol=0.05)


def test_defocused_frames_are_the_scored_planes_with_the_normalised_focus(raw):
    days = frame_eval.find_frame_days([raw])
    got = list(frame_eval.defocused_frames(days, dz_max=3.0))
    want = [(d.name, float(z)) for d in days for z in d.dz if 0 < abs(z) <= 3.0]
    assert [(d.name, dz) for d, dz, _, _ in got] == want and want
    day, dz, plane, ref = got[0]
    assert plane.dtype == np.float32 and plane.shape == ref.shape
    assert np.array_equal(plane, day.plane(int(np.flatnonzero(day.dz == dz)[0])).astype(np.float32))
    assert np.percentile(ref, 1) == pytest.approx(0.0, abs=1e-3) and np.percentile(ref, 99.8) == pytest.approx(1.0, abs=1e-3)


def test_linear_filter_learns_an_isotropic_transfer_and_inverts_it():
    """Pairs related by a known isotropic gain give back that gain per ring (its inverse filter from blurry to
    focus), and applying it restores the frame; gain 1 is the identity."""
    from scipy.ndimage import gaussian_filter

    from microdeblur.baselines import LinearFilterFit, linear_filter

    rng = np.random.default_rng(1)
    focus = gaussian_filter(rng.random((96, 128)), 1.0)
    blurry = 0.5 * focus
    fit = LinearFilterFit(n_rings=16)
    fit.add(blurry, focus)
    np.testing.assert_allclose(fit.gains(), 2.0, rtol=1e-6)
    np.testing.assert_allclose(linear_filter(blurry, fit.gains()), focus, atol=1e-5)
    np.testing.assert_allclose(linear_filter(focus, np.ones(16)), focus, atol=1e-5)


def test_linear_filter_method_is_fitted_per_dz_and_keeps_the_frame(raw):
    days = frame_eval.find_frame_days([raw])
    method = frame_eval.linear_filter_method(days, scale=0.5)
    plane = days[0].plane(1)
    out = method(plane, -3.0, days[0].pixel_um)
    assert out.shape == plane.shape and out.dtype == np.float32 and np.isfinite(out).all()
    ref = frame_normalizer(days[0].plane(2).astype(np.float32)).before(days[0].plane(2).astype(np.float32))
    # fitted on this very day, the filter moves the frame toward focus (min-MSE)
    assert psnr_minmse(out, ref) > psnr_minmse(plane.astype(np.float32), ref)
    with pytest.raises(UserError, match="no defocused frames"):
        frame_eval.linear_filter_method(days, scale=0.5, dz_max=0.5)
