"""Inputs that once passed silently or ended in an 'unexpected' error (session-22 audit): usage errors, weights
that cannot work, absurd pixel sizes and values, --truth, outputs named twice, train's own inputs and logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import one_error, run_cli, tiny_weights
from safetensors.numpy import load_file, save_file

from microdeblur import atomic
from microdeblur.calibration import fit_calibration
from microdeblur.simulate import simulate_days

TINY_TRAIN = ["--max-steps", "1", "--widths", "4,8,8", "--id-channels", "2,3,4", "--batch-size", "2", "--crop", "32",
              "--workers", "1", "--eval-every", "1", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    dz = np.linspace(-20, 20, 41)
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors", fit_calibration(0.05 * dz, dz))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(500, 4000, (96, 128)).astype(np.uint16))
    return path


def _damaged(weights, tmp_path, name, tensors=None, **meta):
    """A copy of `weights` with some metadata entries (JSON text) or all tensors replaced."""
    from safetensors import safe_open

    with safe_open(str(weights), "np") as f:
        md = dict(f.metadata())
    md.update({f"microdeblur.{k}": v for k, v in meta.items()})
    t = load_file(str(weights))
    if tensors is not None:
        t = {k: tensors(v) for k, v in t.items()}
    save_file(t, str(tmp_path / name), metadata=md)
    return tmp_path / name


@pytest.mark.parametrize("args, words", [
    (["deblur"], ["Missing argument", "deblur --help"]),
    (["deblur", "x.tif"], ["Missing option", "--output"]),
    (["deblur", "x.tif", "-o", "y.tif", "--overlap", "abc"], ["Invalid value for '--overlap'"]),
    (["deblur", "x.tif", "-o", "y.tif", "--bogus"], ["No such option: --bogus"]),
    (["nocommand"], ["No such command"]),
    (["simulate", "s", "--seed", "-1"], ["--seed"]),
])
def test_usage_errors_are_one_error_line(args, words):
    res = run_cli(*args)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("name, change, words", [
    ("nan.safetensors", dict(tensors=lambda v: np.full_like(v, np.nan)), ["NaN or infinite", "diverged"]),
    ("code.safetensors", dict(focus_blur_code="[NaN]"), ["damaged", "focus_blur_code"]),
    ("length.safetensors", dict(focus_blur_code="[1, 2, 3]"), ["damaged", "focus_blur_code"]),
    ("scale.safetensors", dict(scale="-1"), ["damaged", "scale"]),
    ("cal.safetensors", dict(calibration=json.dumps({"kind": "signed", "knots": {"code": [], "dz": []}})),
     ["damaged", "calibration"]),
])
def test_weights_that_cannot_work_are_refused(weights, image, tmp_path, name, change, words):
    bad = _damaged(weights, tmp_path, name, **change)
    out = tmp_path / "out.tif"
    one_error(run_cli("deblur", image, "-o", out, "-w", bad, "--backend", "torch"), str(bad), *words)
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--scale", "0.01"), ("--pixel-size", "1e-9")])
def test_absurd_resize_factors_are_refused(weights, image, tmp_path, option, value):
    one_error(run_cli("deblur", image, "-o", tmp_path / "o.tif", "-w", weights, option, value), "[1/64, 8]")


def test_huge_float_pixels_and_empty_images_are_refused(weights, tmp_path):
    huge, empty = tmp_path / "huge.tif", tmp_path / "empty.tif"
    tifffile.imwrite(huge, np.random.default_rng(1).random((64, 64)).astype(np.float32) * 3e38)
    with pytest.warns(UserWarning):  # tifffile: a zero-size array is a nonconformant TIFF
        tifffile.imwrite(empty, np.zeros((0, 10), np.uint16))
    one_error(run_cli("deblur", huge, "-o", tmp_path / "o.tif", "-w", weights), "beyond ±1e+30")
    one_error(run_cli("focus", empty, "-o", tmp_path / "f.tif", "-w", weights), "holds no pixels")


def test_truth_is_checked_before_any_work(weights, image, tmp_path):
    nan, tiny, flat = tmp_path / "nan.tif", tmp_path / "tiny.tif", tmp_path / "flat.tif"
    t = np.random.default_rng(2).random((96, 128)).astype(np.float32)
    t[5, 5] = np.nan
    tifffile.imwrite(nan, t)
    tifffile.imwrite(flat, np.full((96, 128), 7, np.uint16))
    tifffile.imwrite(tiny, np.ones((1, 1), np.uint16))
    out = tmp_path / "out.tif"
    one_error(run_cli("deblur", image, "-o", out, "-w", weights, "--truth", nan), "NaN")
    one_error(run_cli("deblur", image, "-o", out, "-w", weights, "--truth", flat), "constant")
    one_error(run_cli("deblur", tiny, "-o", out, "-w", weights, "--truth", tiny), "too small")
    for batch in (["--skip-existing"], ["--shard", "1/2"]):  # a batch run's outputs need not pair with its inputs
        one_error(run_cli("deblur", image, "-o", out, "-w", weights, "--truth", image, *batch), "--truth cannot be combined")
    assert not out.exists()


def test_one_name_for_two_outputs_is_named_as_such(weights, image, tmp_path):
    png, tif, conf = tmp_path / "a.png", tmp_path / "m.tif", tmp_path / "c.tif"
    one_error(run_cli("deblur", image, "-o", png, "-w", weights, "--save-comparison", png), "two of this run's outputs")
    one_error(run_cli("focus", image, "-o", tif, "-w", weights, "--csv", tif), "two of this run's outputs")
    one_error(run_cli("focus", image, "-o", tif, "-w", weights, "--confidence", conf, "--csv", conf),
              "two of this run's outputs")
    assert not any(p.exists() for p in (png, tif, conf))


def test_series_of_other_shapes_are_said_and_64_bit_ints_warned(weights, tmp_path):
    mixed, wide = tmp_path / "mixed.tif", tmp_path / "i64.tif"
    a = np.random.default_rng(3).integers(500, 4000, (64, 96)).astype(np.uint16)
    with tifffile.TiffWriter(mixed) as w:
        w.write(a)
        w.write(a[:32, :32])
    tifffile.imwrite(wide, a.astype(np.int64))
    res = run_cli("deblur", mixed, "-o", tmp_path / "m_out.tif", "-w", weights)
    assert res.exit_code == 0 and res.output.count("only the first (64x96") == 1, res.output
    res = run_cli("deblur", wide, "-o", tmp_path / "w_out.tif", "-w", weights)
    assert res.exit_code == 0 and "int64 stored as int32" in res.output, res.output
    assert tifffile.imread(tmp_path / "w_out.tif").dtype == np.int32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    simulate_days(root / "raw", days=1, planes=5, size=(256, 256), seed=3, z_step_um=2.0)
    assert run_cli("-q", "prepare", root / "raw", root / "data", "--tile", "64").exit_code == 0
    return root / "data"


def test_train_keeps_its_inputs_and_an_earlier_log(prepared, tmp_path):
    w = tmp_path / "w.safetensors"
    assert run_cli("-q", "train", prepared, "-o", w, *TINY_TRAIN).exit_code == 0
    before = w.read_bytes()
    one_error(run_cli("train", prepared, "-o", w, "--init", w, "--overwrite", *TINY_TRAIN), "input file")
    assert w.read_bytes() == before
    log = tmp_path / "v.log.csv"
    log.write_text("an earlier run's log\n")
    one_error(run_cli("train", prepared, "-o", tmp_path / "v.safetensors", *TINY_TRAIN), "v.log.csv", "--overwrite")
    assert log.read_text() == "an earlier run's log\n"
    res = run_cli("-q", "train", prepared, "-o", tmp_path / "x.safetensors", "--resume", log, *TINY_TRAIN)
    one_error(res, "not a readable microdeblur training checkpoint")
    import torch

    foreign = tmp_path / "foreign.ckpt"  # a pickle of other objects: torch's message would advise running it
    torch.save({"where": Path("x")}, foreign)
    res = run_cli("-q", "train", prepared, "-o", tmp_path / "y.safetensors", "--resume", foreign, *TINY_TRAIN)
    assert "weights_only" not in one_error(res, "not a readable microdeblur training checkpoint")


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder nobody may write in; as root (where permissions do not bind) os.access is told so."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access
        monkeypatch.setattr(atomic.os, "access", lambda p, mode: real(p, mode) and Path(p) != folder)
    yield folder
    folder.chmod(0o755)


def test_unwritable_output_folders_are_refused_before_any_work(weights, image, prepared, locked, tmp_path):
    one_error(run_cli("deblur", image, "-o", locked / "o.tif", "-w", weights), "cannot write in", str(locked))
    one_error(run_cli("focus", image, "-o", tmp_path / "f.tif", "-w", weights, "--csv", locked / "f.csv"),
              "cannot write in")
    one_error(run_cli("train", prepared, "-o", locked / "sub" / "w.safetensors", *TINY_TRAIN), "cannot write in")
    one_error(run_cli("evaluate", prepared, "-o", locked / "report", "-w", weights), "cannot write in")
    assert list(locked.iterdir()) == [] and not (tmp_path / "f.tif").exists()


@pytest.mark.parametrize("args, words", [
    (["simulate", "{tmp}/s", "--planes", "20000"], ["--planes must be 1 to 10,000"]),
    (["simulate", "{tmp}/s", "--cells", "1000000"], ["--cells must be 0 to 100,000"]),
    (["interpolate", "{image}", "-o", "{tmp}/i.tif", "--dz-from", "-2", "--dz-to", "2", "--steps", "20000",
      "-w", "{weights}"], ["--steps must be 2 to 10,000"]),
])
def test_huge_requests_are_refused(weights, image, tmp_path, args, words):
    filled = [a.format(tmp=tmp_path, image=image, weights=weights) for a in args]
    one_error(run_cli(*filled), *words)
    assert not (tmp_path / "s").exists() and not (tmp_path / "i.tif").exists()


def test_require_number_takes_numpy_scalars_and_names_the_option():
    from microdeblur.errors import UserError, require_number

    require_number("--dz", np.int64(3))
    require_number("--z-step", np.float32(2.5), 0, open_low=True)
    require_number("--dz", None, optional=True)
    with pytest.raises(UserError, match=r"^--dz must be a finite number, got nan$"):
        require_number("--dz", float("nan"))
    with pytest.raises(UserError, match=r"--z-step must be a finite number > 0, got 0.0"):
        require_number("--z-step", 0.0, 0, open_low=True)
    for bad in (True, "3", None):
        with pytest.raises(UserError):
            require_number("--x", bad)


@pytest.mark.parametrize("command", ["deblur", "focus"])
def test_empty_paths_are_refused_not_read_as_this_folder(weights, image, tmp_path, monkeypatch, command):
    """An unset shell variable gives "": never the current folder's images, never an output named ''."""
    monkeypatch.chdir(image.parent)
    one_error(run_cli(command, "", "-o", tmp_path / "out/", "-w", weights), "input path is empty")
    one_error(run_cli(command, image, "-o", "", "-w", weights), "output path (-o) is empty")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_skip_existing_into_the_input_folder_is_refused(weights, tmp_path):
    """Outputs named as the inputs are inputs, also when --skip-existing would skip them as done."""
    folder = tmp_path / "day"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(folder / name, np.random.default_rng(1).integers(500, 4000, (64, 80)).astype(np.uint16))
    one_error(run_cli("deblur", folder, "-o", f"{folder}/", "--skip-existing", "-w", weights),
              "refusing to overwrite an input")


def test_float16_planes_are_checked_without_overflow_warnings():
    import warnings

    from microdeblur.engine import check_finite
    from microdeblur.errors import UserError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_finite(np.full((8, 8), 60000, np.float16), "half.tif")
        with pytest.raises(UserError, match="half.tif: 1 pixel"):
            check_finite(np.array([[1, np.inf]], np.float16), "half.tif")
