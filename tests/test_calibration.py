"""1-D blur code <-> dz calibration."""

import json

import numpy as np
import pytest

from microdeblur.calibration import code_to_dz, dz_to_code, fit_calibration, isotonic, spearman

DZ = np.repeat(np.arange(-30.0, 31.0, 2.0), 10)


def test_pava_is_monotone_least_squares():
    y = np.array([1.0, 3.0, 2.0, 4.0, 3.5, 3.0, 6.0])
    fit = isotonic(y)
    assert np.all(np.diff(fit) >= 0)
    np.testing.assert_allclose(fit, [1, 2.5, 2.5, 3.5, 3.5, 3.5, 6])
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)


def test_noisy_linear_recovered_and_json():
    rng = np.random.default_rng(0)
    codes = -0.1 * DZ + 0.3 + rng.normal(0, 0.05, DZ.size)
    cal = fit_calibration(codes, DZ)
    json.dumps(cal)
    assert cal["kind"] == "signed" and cal["ok"] and cal["spearman_rho"] < -0.95
    assert cal["mae_um"] < 1.0 and cal["p90_um"] < 2.0
    assert cal["focus_code"] == pytest.approx(0.3, abs=0.05)
    np.testing.assert_allclose(code_to_dz(cal, [-0.7, 0.3, 1.3]), [10, 0, -10], atol=0.7)


def test_round_trip_and_monotone_and_clipped():
    rng = np.random.default_rng(1)
    cal = fit_calibration(np.tanh(DZ / 20) + rng.normal(0, 0.02, DZ.size), DZ)
    dz = np.linspace(-28, 28, 57)
    np.testing.assert_allclose(code_to_dz(cal, dz_to_code(cal, dz)), dz, atol=1e-6)
    grid = np.linspace(-2, 2, 401)
    assert np.all(np.diff(code_to_dz(cal, grid)) >= 0)
    assert np.all(np.diff(dz_to_code(cal, np.linspace(-40, 40, 81))) >= 0)
    lo, hi = min(cal["knots"]["dz_um"]), max(cal["knots"]["dz_um"])
    assert code_to_dz(cal, 10.0) == pytest.approx(hi) and code_to_dz(cal, -10.0) == pytest.approx(lo)


def test_abs_only_codes_detected():
    rng = np.random.default_rng(2)
    codes = 0.05 * np.abs(DZ) + rng.normal(0, 0.05, DZ.size)
    cal = fit_calibration(codes, DZ)
    assert cal["kind"] == "abs" and "note" in cal and abs(cal["spearman_rho"]) < 0.3
    assert np.all(code_to_dz(cal, codes) >= 0)
    np.testing.assert_allclose(dz_to_code(cal, -10.0), dz_to_code(cal, 10.0))
    np.testing.assert_allclose(code_to_dz(cal, dz_to_code(cal, 12.0)), 12.0, atol=1e-6)


def test_unordered_codes_are_flagged():
    codes = np.random.default_rng(3).normal(size=DZ.size)
    cal = fit_calibration(codes, DZ)
    assert cal["kind"] == "signed" and not cal["ok"]


def test_bad_inputs():
    with pytest.raises(ValueError):
        fit_calibration(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError):
        fit_calibration(np.zeros((5, 2)), np.arange(5.0))
