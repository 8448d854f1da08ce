"""The ONNX Runtime backend: graphs exported beside the weights, equal to PyTorch within a tolerance, used only
when they were exported from exactly those weights, and a process that runs on them never imports torch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from cli_helpers import one_error, run_cli, tiny_weights

from microdeblur.calibration import fit_calibration
from microdeblur.onnx_runner import graph_paths

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

DZ = np.linspace(-20, 20, 41)
CAL = fit_calibration(0.05 * DZ, DZ)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny calibrated weights with their graphs exported by the CLI, and two input images."""
    d = tmp_path_factory.mktemp("onnx")
    w = tiny_weights(d / "w.safetensors", CAL)
    res = run_cli("export", "onnx", "--weights", w)
    assert res.exit_code == 0, res.output
    rng = np.random.default_rng(0)
    u16 = d / "u16.tif"
    tifffile.imwrite(u16, (3000 + 800 * rng.random((3, 200, 260))).astype(np.uint16), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    f32 = d / "f32.tif"
    tifffile.imwrite(f32, (rng.random((190, 230)) * 2 - 0.5).astype(np.float32))
    return w, u16, f32


def _deblur(tmp_path, src, w, backend, *extra) -> np.ndarray:
    out = tmp_path / f"{backend}_{src.stem}.tif"
    res = run_cli("deblur", src, "-o", out, "--weights", w, "--backend", backend, "--device", "cpu", *extra)
    assert res.exit_code == 0, res.output
    return tifffile.imread(out)


def test_export_writes_both_graphs_beside_the_weights_and_keeps_existing_ones(exported):
    w = exported[0]
    enc, dec = graph_paths(w)
    assert enc.name == "w.encoder.onnx" and dec.name == "w.decoder.onnx" and enc.is_file() and dec.is_file()
    before = enc.read_bytes()
    one_error(run_cli("export", "onnx", "--weights", w), "already exists", "--overwrite")
    assert enc.read_bytes() == before
    assert run_cli("export", "onnx", "--weights", w, "--overwrite").exit_code == 0


@pytest.mark.parametrize("extra", [(), ("--dz", "6")], ids=["focus", "refocus"])
def test_onnx_output_equals_pytorch_within_tolerance(exported, tmp_path, extra):
    w, u16, f32 = exported
    a, b = _deblur(tmp_path, u16, w, "torch", *extra), _deblur(tmp_path, u16, w, "onnx", *extra)
    assert a.dtype == b.dtype == np.uint16 and a.shape == b.shape == (3, 200, 260)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # 1 DN of 16 bits
    assert np.abs(a.astype(int) - tifffile.imread(u16).astype(int)).max() > 20  # the network does change the image
    a, b = _deblur(tmp_path, f32, w, "torch", *extra), _deblur(tmp_path, f32, w, "onnx", *extra)
    assert np.abs(a - b).max() <= 1e-4 * float(np.ptp(a))


def test_onnx_focus_maps_equal_pytorch(exported, tmp_path):
    w, u16, _ = exported
    maps = []
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.tif"
        res = run_cli("focus", u16, "-o", out, "--weights", w, "--backend", backend, "--na", "0.4", "--wavelength", "0.55")
        assert res.exit_code == 0, res.output
        maps.append(tifffile.imread(out))
    assert np.isfinite(maps[0]).any()
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-3, equal_nan=True)  # um


def test_auto_runs_onnx_in_a_process_that_never_imports_torch(exported, tmp_path):
    w, u16, _ = exported
    out = tmp_path / "auto.tif"
    code = ("import sys; from typer.testing import CliRunner; from microdeblur.cli import app; "
            f"r = CliRunner().invoke(app, ['-v', 'deblur', {str(u16)!r}, '-o', {str(out)!r}, '--weights', {str(w)!r}, "
            "'--device', 'cpu']); print(r.output); print('exit', r.exit_code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "backend: ONNX Runtime" in done.stdout and done.stdout.strip().endswith("exit 0 False"), done.stdout + done.stderr
    assert np.abs(tifffile.imread(out).astype(int) - _deblur(tmp_path, u16, w, "torch").astype(int)).max() <= 1


def test_graphs_of_other_weights_are_never_used(exported, tmp_path):
    w = exported[0]
    other = tiny_weights(tmp_path / "w.safetensors", fit_calibration(0.04 * DZ, DZ))  # other bytes, same name
    for g, h in zip(graph_paths(w), graph_paths(other)):
        shutil.copy(g, h)
    res = run_cli("-v", "deblur", exported[1], "-o", tmp_path / "o.tif", "--weights", other, "--device", "cpu")
    assert res.exit_code == 0 and "exported from other weights" in res.output and "backend: PyTorch" in res.output
    one_error(run_cli("deblur", exported[1], "-o", tmp_path / "p.tif", "--weights", other, "--backend", "onnx"),
              "--backend onnx", "other weights", "export onnx")
    assert not (tmp_path / "p.tif").exists()


def test_backend_errors_are_one_line(exported, tmp_path):
    w, u16, _ = exported
    bare = tiny_weights(tmp_path / "bare.safetensors", CAL)
    out = tmp_path / "o.tif"
    one_error(run_cli("deblur", u16, "-o", out, "--weights", w, "--backend", "tensorrt"), "unknown backend")
    one_error(run_cli("deblur", u16, "-o", out, "--weights", w, "--backend", "onnx", "--device", "cuda"), "CPU")
    one_error(run_cli("deblur", u16, "-o", out, "--weights", w, "--backend", "onnx", "--precision", "bfloat16"),
              "float32")
    one_error(run_cli("deblur", u16, "-o", out, "--weights", bare, "--backend", "onnx"), "no ONNX graphs", "export onnx")
    assert not out.exists()


def test_ctrl_c_while_onnxruntime_imports_is_an_interrupt(tmp_path, monkeypatch):
    """onnxruntime turns a KeyboardInterrupt during its import into an ImportError ('unexpected ImportError', exit 2);
    the import is shielded, so the Ctrl-C arrives after it as itself."""
    import sys

    from microdeblur import onnx_runner

    fake = tmp_path / "onnxruntime"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.05)\n"
        "except KeyboardInterrupt as e:\n"
        "    raise ImportError('onnxruntime import interrupted') from e\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    with pytest.raises(KeyboardInterrupt):
        onnx_runner.session(tmp_path / "missing.onnx")
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
