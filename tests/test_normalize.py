"""Per-frame percentile normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from microdeblur.image_write import to_dtype
from microdeblur.normalize import EXACT_PIXELS, Normalizer, frame_normalizer, frame_statistics


def test_percentiles_and_exact_round_trip():
    rng = np.random.default_rng(0)
    frame = rng.integers(100, 4000, (48, 64)).astype(np.uint16)
    norm = frame_normalizer(frame)
    assert (norm.lo, norm.hi) == tuple(np.percentile(frame, [1.0, 99.8]))
    x = norm.before(frame)
    assert x.dtype == np.float32
    assert np.isclose(np.percentile(x, 1.0), 0.0, atol=1e-6) and np.isclose(np.percentile(x, 99.8), 1.0, atol=1e-6)
    back = norm.after(x)
    assert back.dtype == np.float32
    assert np.array_equal(to_dtype(back, np.uint16), frame)


def test_flat_frame_guard():
    norm = frame_normalizer(np.full((16, 16), 1000, np.uint16))
    assert norm.hi > norm.lo
    x = norm.before(np.full((4, 4), 1000.0))
    assert np.all(np.isfinite(x)) and np.allclose(x, 0.0)
    assert np.allclose(norm.after(x), 1000.0)


def test_huge_frame_subsampled_close_to_exact():
    rng = np.random.default_rng(1)
    frame = rng.normal(1000, 100, (1536, 2048)).astype(np.float32)
    assert frame.size > EXACT_PIXELS
    approx, exact = frame_normalizer(frame), np.percentile(frame, [1.0, 99.8])
    assert abs(approx.lo - exact[0]) < 5 and abs(approx.hi - exact[1]) < 10


def test_normalizer_is_plain_affine():
    n = Normalizer(10.0, 30.0)
    assert np.allclose(n.before(np.array([10.0, 20.0, 30.0])), [0.0, 0.5, 1.0])
    assert np.allclose(n.after(np.array([0.0, 0.5, 1.0])), [10.0, 20.0, 30.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frames_are_refused(bad):
    frame = np.ones((2000, 2000), np.float32)
    frame[1, 1] = bad  # skipped by the percentile subsample, still found
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        frame_normalizer(frame)
    with pytest.raises(ValueError):
        frame_statistics(frame)


def test_frame_statistics_are_the_normalizer_and_the_median():
    rng = np.random.default_rng(2)
    small = rng.normal(1000, 100, (48, 64)).astype(np.float32)
    norm, median = frame_statistics(small)
    assert norm == frame_normalizer(small) and median == pytest.approx(float(np.median(small)), rel=1e-6)
    big = rng.normal(1000, 100, (1536, 2048)).astype(np.float32)
    norm, median = frame_statistics(big)
    assert norm == frame_normalizer(big) and abs(median - float(np.median(big))) < 2


def test_intensity_model_and_spec_round_trip_and_validate():
    import pytest

    from microdeblur.normalize import IntensityModel, NormalizationSpec

    m = IntensityModel.fit({0.0: [(0.5, 1.5), (0.7, 1.3)], -2.0: [(0.2, 2.0)], 2.0: [(0.3, 1.8)]})
    assert m.dz_um == (-2.0, 0.0, 2.0) and m.lo == (0.2, 0.6, 0.3) and m.hi == (2.0, 1.4, 1.8)
    n = m.normalizer(1.0, 100.0)  # halfway between 0 and 2 um: lo 0.45, hi 1.6 times the median
    assert (n.lo, n.hi) == pytest.approx((45.0, 160.0))
    spec = NormalizationSpec(intensity=m)
    assert NormalizationSpec.from_dict(spec.to_dict()) == spec
    # what 0.1 weights stored (no intensity model) reads as the plain percentile spec
    assert NormalizationSpec.from_dict({"method": "frame-percentile", "pmin": 1.0, "pmax": 99.8}).intensity is None
    for bad in ({"method": "zscore"}, {"pmin": 50, "pmax": 10}, {"focus_ratios": {"dz_um": [0, -1], "lo": [1, 1], "hi": [2, 2]}},
                {"focus_ratios": {"dz_um": [0.0], "lo": [2.0], "hi": [1.0]}}, {"focus_ratios": {"lo": [1.0]}}):
        with pytest.raises(ValueError):
            NormalizationSpec.from_dict(bad)
