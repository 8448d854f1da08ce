"""The weights shipped in the package: found without --weights, complete metadata, and they work."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from microdeblur.cli import app
from microdeblur.weights import default_weights_path, load_weights

EXAMPLES = Path(str(resources.files("microdeblur.examples")))
# the example's microscope (example.json): without NA and wavelength `focus` reports unsigned |dz|
EXAMPLE_OPTICS = ("--na", "0.4", "--wavelength", "0.55")
runner = CliRunner()


def test_shipped_weights_load_with_everything_inference_needs():
    assert default_weights_path().exists()
    model, meta = load_weights(None, expect_variant="manifold-1d")
    assert model.config.blur_dim == 1 and meta.scale == 0.5 and meta.z_step_um == 2.0
    assert meta.focus_blur_code.shape == (1,) and model.config.input_skip
    assert meta.calibration["kind"] in ("signed", "abs") and meta.calibration["ok"]
    ratios = meta.normalization["focus_ratios"]
    assert len(ratios["dz_um"]) == len(ratios["lo"]) == len(ratios["hi"]) > 10
    assert meta.training["recipe_hash"]


def test_shipped_onnx_graphs_were_exported_from_the_shipped_weights():
    pytest.importorskip("onnxruntime")
    from microdeblur.onnx_runner import open_runner

    _, meta = load_weights(None)
    runner, why = open_runner(meta.config, default_weights_path())
    assert runner is not None, f"{why}: run `microdeblur export onnx --overwrite` after replacing the weights"


def test_focus_on_the_shipped_example_tells_the_defocus(tmp_path):
    """The calibrated 1-D code reads the example's -10 / 0 / +10 um planes within 4 um."""
    truth = json.loads((EXAMPLES / "example.json").read_text())["files"]
    files = sorted(EXAMPLES.glob("example_*.tif"))
    res = runner.invoke(app, ["focus", *map(str, files), "-o", str(tmp_path / "maps"), "--csv", str(tmp_path / "f.csv"),
                              *EXAMPLE_OPTICS])
    assert res.exit_code == 0, res.output
    rows = [line.split(",") for line in (tmp_path / "f.csv").read_text().splitlines()[1:]]
    for row in rows:
        expected = truth[Path(row[0]).name]
        assert abs(float(row[2]) - expected) < 4.0, (row, expected)


def _minmse_psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """Independent min-MSE PSNR: lstsq gain/offset against the truth normalised by its 1st-99.8th percentiles."""
    lo, hi = np.percentile(truth.astype(np.float64), [1.0, 99.8])
    t = (truth.astype(np.float64) - lo) / (hi - lo)
    a = np.stack([image.astype(np.float64).ravel(), np.ones(image.size)], 1)
    fit = a @ np.linalg.lstsq(a, t.ravel(), rcond=None)[0]
    return float(10 * np.log10(1.0 / np.mean((fit - t.ravel()) ** 2)))


def test_quick_start_command_works(tmp_path):
    """The README's quick start: the printed min-MSE figures equal an independent computation."""
    src, infocus = EXAMPLES / "example_dz+10um.tif", EXAMPLES / "example_infocus.tif"
    res = runner.invoke(app, ["deblur", str(src), "-o", str(tmp_path / "out.tif"), "--save-comparison",
                              str(tmp_path / "c.png"), "--truth", str(infocus)])
    assert res.exit_code == 0, res.output
    out, inp, ref = tifffile.imread(tmp_path / "out.tif"), tifffile.imread(src), tifffile.imread(infocus)
    assert out.shape == inp.shape and out.dtype == inp.dtype and (tmp_path / "c.png").stat().st_size > 0
    before, after = _minmse_psnr(inp, ref), _minmse_psnr(out, ref)
    assert f"min-MSE PSNR {before:.2f} -> {after:.2f} dB" in " ".join(res.output.split())
    assert after > before + 0.5  # what the README promises the command shows
    assert abs(float(np.median(out)) - float(np.median(inp))) < 0.1 * float(np.median(inp))


def _detail(image: np.ndarray, sigma: float) -> float:
    """Mean |Laplacian| (sigma 0) or |Laplacian of Gaussian| of the percentile-normalised image."""
    from scipy.ndimage import gaussian_laplace, laplace

    lo, hi = np.percentile(image.astype(np.float64), [1.0, 99.8])
    x = (image.astype(np.float64) - lo) / (hi - lo)
    return float(np.mean(np.abs(laplace(x) if sigma == 0 else gaussian_laplace(x, sigma))))


def _deblurred_examples(tmp_path):
    ref = tifffile.imread(EXAMPLES / "example_infocus.tif")
    for name in ("example_dz-10um.tif", "example_dz+10um.tif"):
        src, out = EXAMPLES / name, tmp_path / name
        res = runner.invoke(app, ["deblur", str(src), "-o", str(out)])
        assert res.exit_code == 0, res.output
        yield name, tifffile.imread(src), tifffile.imread(out), ref


def test_shipped_weights_move_the_example_toward_focus(tmp_path):
    """On both example planes (-10 and +10 um) the output is closer to the in-focus plane than the input in the
    field's convention (min-MSE PSNR at least 0.5 dB up) and in cell-scale structure (Laplacian of Gaussian,
    sigma 2 px, relative to the in-focus plane nearer 1: defocus inflates it, bright-field halos)."""
    for name, x, y, ref in _deblurred_examples(tmp_path):
        assert _minmse_psnr(y, ref) > _minmse_psnr(x, ref) + 0.5, name
        r_in, r_out = (_detail(v, 2.0) / _detail(ref, 2.0) for v in (x, y))
        assert abs(r_out - 1) < abs(r_in - 1), (name, r_in, r_out)


@pytest.mark.xfail(strict=True, reason="known shortfall (docs/model-card.md): the output is smoother than the "
                   "in-focus plane at the pixel scale; strict, so the day it passes this marker must go")
def test_shipped_weights_restore_pixel_scale_detail(tmp_path):
    """Mean |Laplacian| relative to the in-focus plane moves toward 1 (the issue's sharpness bar)."""
    for name, x, y, ref in _deblurred_examples(tmp_path):
        r_in, r_out = (_detail(v, 0.0) / _detail(ref, 0.0) for v in (x, y))
        assert abs(r_out - 1) < abs(r_in - 1), (name, r_in, r_out)


def _refocus_readings(tmp_path, targets=(-8.0, 8.0)) -> dict[float, float]:
    """`deblur --dz T` of the in-focus example, then `focus --csv` on every output: T -> median reading (µm)."""
    src, outs = EXAMPLES / "example_infocus.tif", []
    for t in targets:
        out = tmp_path / f"refocus_{t:+g}.tif"
        res = runner.invoke(app, ["deblur", str(src), "-o", str(out), "--dz", str(t)])
        assert res.exit_code == 0, res.output
        outs.append(out)
    res = runner.invoke(app, ["focus", *map(str, outs), "-o", str(tmp_path / "maps"), "--csv", str(tmp_path / "r.csv"),
                              *EXAMPLE_OPTICS])
    assert res.exit_code == 0, res.output
    rows = [line.split(",") for line in (tmp_path / "r.csv").read_text().splitlines()[1:]]
    return {t: float(row[2]) for t, row in zip(targets, rows)}


def test_refocused_example_reads_near_its_target(tmp_path):
    """Refocusing lands on the requested side of focus, in order, within 3.5 µm of the target (the shipped
    weights m1dsc18r: -8 -> -7.8, +8 -> +8.5 µm; m1dscr10 -8.2 / +7.6; those of 2026-12-02 needed 5: -6.1 and +12.8;
    benchmarks/refocus_bench.py has the held-out figures)."""
    got = _refocus_readings(tmp_path)
    assert got[-8.0] < -4.0 < 4.0 < got[8.0]
    assert all(abs(v - t) <= 3.5 for t, v in got.items()), got


def test_refocused_example_reads_within_the_focus_error_bar(tmp_path):
    """Issue bar: the re-read defocus of a refocused plane within 1.8 µm of its target (the calibration's
    90th-percentile error on training tiles; on held-out sparse fields the per-tile p90 is 2.2 µm). A strict
    xfail until the weights m1dscr10 of 2026-12-06 (-8 -> -8.2, +8 -> +7.6 µm; m1dsc18r: -7.8 / +8.5)."""
    got = _refocus_readings(tmp_path)
    assert all(abs(v - t) <= 1.8 for t, v in got.items()), got
