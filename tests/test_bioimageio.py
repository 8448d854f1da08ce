"""`microdeblur export bioimageio`: the package passes bioimageio.core's model test and reproduces deblur_plane.

The export tests need the extra `microdeblur[bioimageio]` and are skipped without it; the import test
(the core and its commands import no optional extra) always runs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from microdeblur.calibration import fit_calibration
from microdeblur.cli import app
from microdeblur.engine import Deblurrer
from microdeblur.errors import UserError
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.normalize import NORMALIZATION
from microdeblur.weights import WeightsMeta, load_weights, save_weights

RATIOS = {"dz_um": [-10.0, 0.0, 10.0], "lo": [0.7, 0.85, 0.75], "hi": [1.4, 1.15, 1.35]}
runner = CliRunner()

LEAN_CHECK = r"""
import importlib, pkgutil, sys, tempfile
from pathlib import Path
import numpy as np, tifffile, torch
import microdeblur
for m in pkgutil.walk_packages(microdeblur.__path__, "microdeblur."):
    if m.name not in ("microdeblur.__main__", "microdeblur.napari._widgets"):  # runs the CLI / is napari itself
        importlib.import_module(m.name)
from typer.testing import CliRunner
from microdeblur.calibration import fit_calibration
from microdeblur.cli import app
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.weights import WeightsMeta, save_weights
tmp = Path(tempfile.mkdtemp())
model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4)))
dz = np.linspace(-20, 20, 41)
save_weights(tmp / "w.safetensors", model, WeightsMeta(variant="manifold-1d", config=model.config,
             focus_blur_code=np.array([0.1], np.float32), calibration=fit_calibration(0.05 * dz, dz)))
tifffile.imwrite(tmp / "a.tif", (np.random.default_rng(0).random((40, 50)) * 1000).astype(np.uint16))
r = CliRunner()
for args in (["deblur", "a.tif", "-o", "b.tif"], ["focus", "a.tif", "-o", "c.tif"],
             ["interpolate", "a.tif", "-o", "d.tif", "--dz-from", "-5", "--dz-to", "5", "--steps", "2"]):
    res = r.invoke(app, [args[0], *[str(tmp / a) if a.endswith(".tif") else a for a in args[1:]],
                         "-w", str(tmp / "w.safetensors")])
    assert res.exit_code == 0, res.output
assert r.invoke(app, ["export", "bioimageio", "--help"]).exit_code == 0
extras = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "npe2", "magicgui", "vispy", "superqt",
          "app_model", "bioimageio"}
print(",".join(sorted({n.split(".")[0] for n in sys.modules} & extras)))
"""


def test_core_and_cli_import_no_optional_extra():
    res = subprocess.run([sys.executable, "-c", LEAN_CHECK], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1:] in ([], [""]), f"imported: {res.stdout}"


def _weights(path: Path, scale: float = 0.5, ratios: dict | None = RATIOS, gate: dict | None = None,
             full_res: dict | None = None) -> Path:
    """The shipped kind of network (input skip, source code), plus a full-resolution stem (or `full_res`)."""
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4), input_skip=True, source_code=True,
                                       **(full_res or {"stem": 2}))).eval()
    for p in model.parameters():  # the zero-initialised output layers would hide a core that drops the input
        torch.nn.init.normal_(p, std=0.2)
    dz = np.linspace(-20, 20, 41)
    norm = {**NORMALIZATION, **({"focus_ratios": ratios} if ratios else {})}
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=scale, normalization=norm,
                                          focus_blur_code=np.array([0.1], np.float32),
                                          calibration=fit_calibration(0.05 * dz, dz), focus_gate=gate))
    return path


@pytest.fixture(scope="module")
def spec_tools():
    pytest.importorskip("bioimageio.spec")
    return pytest.importorskip("bioimageio.core")


@pytest.fixture(scope="module")
def package(spec_tools, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bioimageio")
    weights = _weights(folder / "tiny.safetensors")
    res = runner.invoke(app, ["export", "bioimageio", "-o", str(folder / "pkg.zip"), "-w", str(weights)])
    assert res.exit_code == 0, res.output
    return folder / "pkg.zip", weights


def _member(pkg: Path, name: str) -> bytes:
    with zipfile.ZipFile(pkg) as z:
        return z.read(name)


def test_package_passes_bioimageio_core_model_test(spec_tools, package):
    summary = spec_tools.test_model(package[0])
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def test_package_output_equals_deblur_plane_on_its_test_tile(package):
    pkg, weights = package
    x = np.load(io.BytesIO(_member(pkg, "test_input.npy")))
    y = np.load(io.BytesIO(_member(pkg, "test_output.npy")))
    assert x.shape == y.shape == (1, 1, 256, 256) and x.dtype == y.dtype == np.float32
    expect = Deblurrer(*load_weights(weights), focus_gate=False).deblur_plane(x[0, 0])
    # float32 round-off only: the same layers, percentiles and revert, computed in torch instead of numpy
    tol = 1e-5 * float(np.ptp(expect)) + 1e-4
    assert np.abs(y[0, 0] - expect).max() <= tol


@pytest.mark.parametrize("full_res", [{"stem": 2}, {"head": 3}])
def test_package_applies_the_weights_focus_gate_as_deblur_does(spec_tools, tmp_path, full_res):
    weights = _weights(tmp_path / "gated.safetensors", gate={"lo_um": 0.0, "hi_um": 40.0}, full_res=full_res)
    res = runner.invoke(app, ["export", "bioimageio", "-o", str(tmp_path / "pkg.zip"), "-w", str(weights)])
    assert res.exit_code == 0, res.output
    x = np.load(io.BytesIO(_member(tmp_path / "pkg.zip", "test_input.npy")))
    y = np.load(io.BytesIO(_member(tmp_path / "pkg.zip", "test_output.npy")))
    model, meta = load_weights(weights)
    gated, plain = (Deblurrer(model, meta, focus_gate=g).deblur_plane(x[0, 0]) for g in (None, False))
    tol = 1e-5 * float(np.ptp(gated)) + 1e-4
    assert np.abs(y[0, 0] - gated).max() <= tol and np.abs(gated - plain).max() > 100 * tol
    with zipfile.ZipFile(tmp_path / "pkg.zip") as z:  # the gate's constants move with the module (.to())
        module = torch.jit.load(z.extract("microdeblur_deblur.pt", tmp_path)).to(torch.float64)
    with torch.no_grad():
        y64 = module(torch.from_numpy(x).double()).numpy()
    assert y64.dtype == np.float64 and np.abs(y64[0, 0] - gated).max() <= 10 * tol


def test_package_model_takes_other_sizes_and_batches(package, tmp_path):
    with zipfile.ZipFile(package[0]) as z:
        module = torch.jit.load(z.extract("microdeblur_deblur.pt", tmp_path))
    x = torch.rand(2, 1, 256 + 32, 256 + 64) * 1000 + 50
    with torch.no_grad():
        y = module(x)
        one = module(x[1:])
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y[1:], one, rtol=1e-5, atol=1e-3)  # each image normalised on its own


def test_rdf_declares_axes_tensors_licence_and_citation(package):
    yaml = pytest.importorskip("yaml")

    rdf = yaml.safe_load(_member(package[0], "rdf.yaml"))
    assert rdf["format_version"].startswith("0.5") and rdf["license"] == "MIT"
    assert [a["type"] for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "space", "space"]
    assert [a.get("id") for a in rdf["inputs"][0]["axes"][2:]] == ["y", "x"]
    assert rdf["inputs"][0]["axes"][2]["size"] == {"min": 256, "step": 16}
    assert "Disentangled Representation Learning Approach for Deblurring" in rdf["cite"][0]["text"]
    assert rdf["weights"]["torchscript"]["source"].endswith(".pt") and rdf["documentation"]["source"] == "README.md"
    assert "# Validation" in _member(package[0], "README.md").decode()


def test_export_refusals_are_one_line_errors(spec_tools, package, tmp_path):
    pkg, weights = package
    res = runner.invoke(app, ["export", "bioimageio", "-o", str(pkg), "-w", str(weights)])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(app, ["export", "bioimageio", "-o", str(tmp_path / "pkg.tif"), "-w", str(weights)])
    assert res.exit_code == 1 and ".zip" in res.output
    odd = _weights(tmp_path / "odd.safetensors", scale=0.4)
    from microdeblur.bioimageio import export_bioimageio

    with pytest.raises(UserError, match="not 1/k"):
        export_bioimageio(tmp_path / "odd.zip", odd)
    assert not (tmp_path / "odd.zip").exists()


@pytest.mark.parametrize("length", [128, 144, 256, 384, 400, 512, 768, 1024, 1536, 2000, 2048])
def test_package_tiles_like_deblur(length):
    from microdeblur.bioimageio import tile_starts
    from microdeblur.engine import OVERLAP
    from microdeblur.tiling import tile_starts as engine_starts

    assert tile_starts(length, 128, OVERLAP, 16) == engine_starts(length, 128, OVERLAP, 16).tolist()


@pytest.mark.parametrize("rows_cols", [(1, 1), (2, 3), (4, 7), (9, 6)])
def test_package_gate_helpers_match_deblur(rows_cols):
    """Per-tile values upsampled between tile centres, and the gate's neighbourhood median, as `deblur` has them."""
    from microdeblur.bioimageio import tile_median, upsample_tiles
    from microdeblur.focus_gate import WINDOW_TILES, tile_defocus
    from microdeblur.tiling import tile_grid, upsample_tile_values

    shape = (rows_cols[0] * 96 + 32, rows_cols[1] * 96 + 32) if rows_cols != (1, 1) else (128, 128)
    grid = tile_grid(shape, 128, 32, 16)
    assert grid.rows_cols == rows_cols
    values = np.random.default_rng(sum(rows_cols)).random(rows_cols).astype(np.float32)
    t = torch.from_numpy(values)[None, None]
    for out in (shape, (2 * shape[0], 2 * shape[1])):
        got = upsample_tiles(t, grid.ys.tolist(), grid.xs.tolist(), 128, list(shape), list(out))[0, 0].numpy()
        np.testing.assert_allclose(got, upsample_tile_values(values, grid, out), atol=1e-6)
    cal = fit_calibration(np.linspace(-1, 1, 41), np.linspace(-10, 10, 41))  # dz = 10 x code
    expect = tile_defocus(cal, values, rows_cols)
    np.testing.assert_allclose(tile_median(10 * t, WINDOW_TILES)[0, 0].numpy(), expect, rtol=1e-5)


def test_package_decoder_reads_deblurs_neighbourhood_codes_on_a_multi_tile_image(tmp_path):
    """On an image of 3 x 4 tiles the FiLM of every tile comes from the same neighbourhood-median source code as
    `deblur`'s (Deblurrer.source_codes), per image of a batch."""
    from microdeblur.bioimageio import DeblurCore, DeblurPackageModel, TileCodes, TileFilms
    from microdeblur.engine import OVERLAP

    model, meta = load_weights(_weights(tmp_path / "w.safetensors"))
    seen: dict[str, torch.Tensor] = {}

    class Recorded(TileFilms):
        def forward(self, sources):
            seen["sources"] = sources.clone()
            return super().forward(sources)

    cfg, db = model.config, Deblurrer(model, meta)
    levels = [[s, c] for s, c in zip(model.film_strides(), model.film_channels)]
    package = DeblurPackageModel(DeblurCore(model), TileCodes(model), Recorded(model, torch.tensor([0.1])),
                                 [cfg.tile, OVERLAP, cfg.downsample], levels, 2, db.pmin, db.pmax, [], [])
    x = (np.random.default_rng(3).random((2, 1, 512, 768)) * 1000 + 50).astype(np.float32)
    with torch.no_grad():
        package(torch.from_numpy(x))
    got = seen["sources"].numpy().reshape(3 * 4, 2)  # tiles row by row, then the batch
    for b in range(2):
        enc = db.encode(x[b, 0])
        assert enc.grid.rows_cols == (3, 4)
        expect = db.source_codes(enc.blur, enc.grid)[:, 0]
        assert not np.allclose(expect, enc.blur[:, 0])
        np.testing.assert_allclose(got[:, b], expect, atol=1e-5)
