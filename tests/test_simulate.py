"""Simulator: determinism, layout, optics sanity and the bright-field through-focus signature."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from microdeblur.cli import app
from microdeblur.simulate import Optics, defocus_psf, plane_positions, simulate_days

runner = CliRunner()


def local_contrast(frame: np.ndarray) -> float:
    """Std of the band-passed frame over its mean (flat illumination removed)."""
    f = frame.astype(np.float64)
    band = gaussian_filter(f, 1) - gaussian_filter(f, 25)
    return float(band.std() / f.mean())


@pytest.fixture(scope="module")
def small_day(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "raw"
    simulate_days(out, days=1, planes=21, size=(256, 256), seed=7, z_step_um=1.0)
    return out / "day01"


def test_layout_and_truth(small_day):
    files = sorted(small_day.glob("day01_z*.tif"))
    assert len(files) == 21
    frame = tifffile.imread(files[0])
    assert frame.dtype == np.uint16 and frame.shape == (256, 256)
    assert frame.max() <= 4095
    assert int((small_day / "focus.txt").read_text().split()[0]) == 10
    truth = json.loads((small_day / "ground_truth.json").read_text())
    assert truth["optics"]["na"] == 0.40 and truth["optics"]["condenser_na"] == 0.20
    assert abs(truth["optics"]["pixel_um"] - 0.325) < 1e-9
    assert truth["z_um"][10] == 0.0 and truth["cells"]


def test_same_seed_same_files(tmp_path, small_day):
    simulate_days(tmp_path / "again", days=1, planes=21, size=(256, 256), seed=7, z_step_um=1.0)
    for a in sorted(small_day.glob("*.tif"))[::5]:
        b = tmp_path / "again" / "day01" / a.name
        assert np.array_equal(tifffile.imread(a), tifffile.imread(b))


def test_other_seed_differs(tmp_path, small_day):
    simulate_days(tmp_path / "other", days=1, planes=3, size=(256, 256), seed=8, z_step_um=10.0)
    a = tifffile.imread(small_day / "day01_z010.tif")
    b = tifffile.imread(tmp_path / "other" / "day01" / "day01_z001.tif")
    assert not np.array_equal(a, b)


def test_contrast_minimum_near_focus(small_day):
    """Transparent cells: contrast is lowest near focus and grows with |dz| (as in the real yeast stacks)."""
    files = sorted(small_day.glob("day01_z*.tif"))
    c = np.array([local_contrast(tifffile.imread(f)) for f in files])
    assert abs(int(np.argmin(c)) - 10) <= 2
    assert c[4] > 1.3 * c.min() and c[16] > 1.3 * c.min()


def test_contrast_inverts_across_focus(small_day):
    """Granules dark on one side of focus are bright on the other: band-passed planes anti-correlate."""
    above = tifffile.imread(small_day / "day01_z004.tif").astype(float)
    below = tifffile.imread(small_day / "day01_z016.tif").astype(float)
    band = lambda f: gaussian_filter(f, 1) - gaussian_filter(f, 6)  # noqa: E731
    assert np.corrcoef(band(above).ravel(), band(below).ravel())[0, 1] < -0.2


def test_psf_sums_to_one_and_spreads_with_defocus():
    o = Optics()
    p0, p10 = defocus_psf(o, 0.0, 0.65, 31), defocus_psf(o, 10.0, 0.65, 31)
    assert abs(p0.sum() - 1) < 1e-5 and abs(p10.sum() - 1) < 1e-5
    assert p0.max() > 3 * p10.max()


def test_plane_positions_match_thesis_range():
    z, focus = plane_positions(100, 1.0)
    assert z[0] == -50 and z[-1] == 49 and z[focus] == 0


def test_prepare_accepts_simulated_day(tmp_path, small_day):
    res = runner.invoke(app, ["prepare", str(small_day), str(tmp_path / "data"), "--scale", "0.5", "--tile", "64"])
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    day = index["days"]["day01"]
    assert day["focus_plane"] == 10 and len(day["crops"]) == 4


@pytest.mark.parametrize("args, words", [
    (["--size", "100x300"], "too small"),
    (["--size", "abc"], "WIDTHxHEIGHT"),
    (["--planes", "0"], "--planes"),
    (["--days", "0"], "--days"),
    (["--z-step", "-1"], "--z-step"),
])
def test_bad_arguments(tmp_path, args, words):
    res = runner.invoke(app, ["simulate", str(tmp_path / "o"), *args])
    assert res.exit_code != 0
    assert words in res.output and "Traceback" not in res.output


def test_refuses_non_empty_output(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = runner.invoke(app, ["simulate", str(out), "--planes", "1", "--size", "128x128"])
    assert res.exit_code != 0 and "not empty" in res.output
    assert (out / "keep.txt").read_text() == "x"


def test_overwrite_replaces_only_day_folders(tmp_path):
    out = tmp_path / "o"
    (out / "day01").mkdir(parents=True)
    (out / "day01" / "stale.tif").write_text("old")
    (out / "keep.txt").write_text("x")
    (out / "day09").mkdir()
    res = runner.invoke(app, ["simulate", str(out), "--planes", "2", "--size", "128x128", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "keep.txt").read_text() == "x" and (out / "day09").is_dir()
    assert sorted(p.name for p in (out / "day01").iterdir()) == ["day01_z000.tif", "day01_z001.tif", "focus.txt",
                                                                  "ground_truth.json"]
    assert sorted(p.name for p in out.iterdir()) == ["day01", "day09", "keep.txt"]


def test_simulate_into_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["simulate", ".", "--planes", "1", "--size", "128x128"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day01"]
