"""Deblur / interpolate / focus on whole images and stacks, through the core and the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from cli_helpers import tiny_weights
from typer.testing import CliRunner

from microdeblur.calibration import dz_to_code, fit_calibration
from microdeblur.cli import OverlapOpt as CLI_OVERLAP
from microdeblur.cli import app
from microdeblur.engine import OVERLAP, Deblurrer
from microdeblur.errors import UserError
from microdeblur.focus_runs import focus_paths
from microdeblur.image_read import read_image
from microdeblur.image_write import write_tiff
from microdeblur.inference import deblur_paths
from microdeblur.interpolation import interpolate_paths
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.normalize import NORMALIZATION as DEFAULT_NORMALIZATION
from microdeblur.normalize import Normalizer, frame_normalizer
from microdeblur.weights import WeightsMeta, load_weights, save_weights

TINY = dict(widths=(4, 8, 8), id_channels=(2, 3, 4))
runner = CliRunner()


def _save(path: Path, calibrated: bool, scale: float = 1.0, focus_ratios: dict | None = None) -> Path:
    dz = np.linspace(-20, 20, 41)
    cal = fit_calibration(0.05 * dz, dz) if calibrated else None
    norm = {**DEFAULT_NORMALIZATION, **({"focus_ratios": focus_ratios} if focus_ratios else {})}
    return tiny_weights(path, cal, scale=scale, normalization=norm)


@pytest.fixture(scope="module")
def wdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def cal_weights(wdir) -> Path:
    return _save(wdir / "cal.safetensors", True)


@pytest.fixture(scope="module")
def plain_weights(wdir) -> Path:
    return _save(wdir / "plain.safetensors", False)


@pytest.fixture(scope="module")
def half_scale_weights(wdir) -> Path:
    return _save(wdir / "half.safetensors", True, scale=0.5)


@pytest.fixture
def identity_net(monkeypatch):
    """Network replaced by an identity: identity code = the tile, decode returns it."""
    monkeypatch.setattr(Deblurrer, "encode_tiles", lambda self, t: (t.reshape(len(t), -1),
                                                                    np.zeros((len(t), 1), np.float32)))
    monkeypatch.setattr(Deblurrer, "decode_tiles", lambda self, i, b: i.reshape(-1, 1, self.tile, self.tile))


@pytest.fixture
def blur_is_tile_net(monkeypatch):
    """Network whose blur code is the whole tile (identity code constant): walks blend A into B."""
    monkeypatch.setattr(Deblurrer, "encode_tiles", lambda self, t: (np.zeros((len(t), 1), np.float32),
                                                                    t.reshape(len(t), -1)))
    monkeypatch.setattr(Deblurrer, "decode_tiles", lambda self, i, b: np.asarray(b).reshape(-1, 1, self.tile, self.tile))


def _image(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    if np.dtype(dtype).kind == "f":
        return (x * 3 - 1).astype(dtype)
    return (x * np.iinfo(dtype).max * 0.8 + 10).astype(dtype)


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- deblur


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(50, 70), (131, 257)])
def test_identity_model_round_trip_keeps_dtype_and_metadata(tmp_path, identity_net, cal_weights, dtype, shape):
    data = _image(shape, dtype)
    src = write_tiff(tmp_path / "in.tif", data, "YX", pixel_size_um=0.325)
    out = deblur_paths([str(src)], tmp_path / "out.tif", weights=cal_weights, device="cpu")[0]
    img = read_image(out)
    assert img.dtype == dtype and img.shape == shape and img.axes == "YX"
    assert img.pixel_size_um == pytest.approx(0.325)
    tol = 1e-4 * np.abs(data).max() if np.dtype(dtype).kind == "f" else 1
    assert np.abs(img.data.astype(np.float64) - data).max() <= tol


def test_stack_streams_every_plane_and_keeps_axes(tmp_path, identity_net, cal_weights):
    data = _image((5, 60, 90), np.uint16)
    src = write_tiff(tmp_path / "stack.tif", data, "ZYX", pixel_size_um=0.5, z_step_um=0.3)
    out = tmp_path / "o" / "deep" / "stack_out.tif"
    deblur_paths([str(src)], out, weights=cal_weights, batch_size=3, device="cpu", scale=1.0)
    img = read_image(out)
    assert img.axes == "ZYX" and img.shape == data.shape and img.z_step_um == pytest.approx(0.3)
    assert np.abs(img.data.astype(int) - data).max() <= 1


LOSSLESS = dict(widths=(4, 8, 8), id_channels=(4, 3, 4))  # level 0 carries the 4 space-to-depth channels


def lossless_model(offset: float = 10.0) -> DisentangledAE:
    """A real network whose weights pass the finest identity level straight through: D(E(x)) = x.

    The +offset keeps every activation positive (the leaky ReLUs act as identities); the output conv removes it."""
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(**LOSSLESS)).eval()
    eye = torch.zeros(4, 4, 3, 3)
    eye[range(4), range(4), 1, 1] = 1.0
    with torch.no_grad():
        enc = model.enc[0]
        enc.conv1.weight.copy_(eye), enc.conv1.bias.fill_(offset)
        enc.conv2.weight.copy_(eye), enc.conv2.bias.zero_()
        enc.to_id.weight.copy_(torch.eye(4)[:, :, None, None]), enc.to_id.bias.zero_()
        dec = model.dec[-1]  # finest decoder level
        dec.reduce.weight.zero_(), dec.reduce.bias.zero_()
        w = torch.zeros(4, 8, 3, 3)
        w[range(4), range(4, 8), 1, 1] = 1.0  # the identity channels come after the upsampled coarse ones
        dec.conv1.weight.copy_(w), dec.conv1.bias.zero_()
        dec.conv2.weight.copy_(eye), dec.conv2.bias.zero_()
        model.film[-1].weight.zero_(), model.film[-1].bias.zero_()
        model.out.weight.copy_(eye), model.out.bias.fill_(-offset)
    return model


def _save_model(path: Path, model: DisentangledAE, scale: float = 1.0) -> Path:
    dz = np.linspace(-20, 20, 41)
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=scale,
                                          focus_blur_code=np.array([0.1], np.float32), calibration=fit_calibration(0.05 * dz, dz)))
    return path


def test_lossless_network_reproduces_its_input_through_deblur(tmp_path):
    """Real network, real tiling, normalisation and casting: an identity network must give the input back."""
    weights = _save_model(tmp_path / "lossless.safetensors", lossless_model())
    data = _image((75, 101), np.uint16)
    src = write_tiff(tmp_path / "in.tif", data, "YX")
    res = _cli("deblur", src, "-o", tmp_path / "out.tif", "-w", weights, "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "out.tif").data
    assert out.dtype == np.uint16 and out.shape == data.shape
    assert np.abs(out.astype(np.int64) - data).max() <= 2  # float32 rounding of values near 52,000


def test_fresh_input_skip_network_reproduces_its_input_through_deblur(tmp_path):
    """With the input skip a freshly initialised network is the identity map (zero output conv), whatever the
    blur code: deblur must return the input through the real tiling, normalisation and casting."""
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(**TINY, input_skip=True)).eval()
    weights = _save_model(tmp_path / "skip.safetensors", model)
    data = _image((75, 101), np.uint16)
    res = _cli("deblur", write_tiff(tmp_path / "in.tif", data, "YX"), "-o", tmp_path / "out.tif", "-w", weights,
               "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "out.tif").data
    assert out.dtype == np.uint16 and np.abs(out.astype(np.int64) - data).max() <= 2


def test_test_time_views_are_the_squares_eight_symmetries_and_invert():
    from microdeblur.engine import averaged_views, dihedral

    x = np.random.default_rng(0).random((3, 1, 6, 6)).astype(np.float32)
    views = [dihedral(x, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    assert all(np.array_equal(dihedral(v, k, inverse=True), x) for k, v in enumerate(views))
    ramp = np.arange(6, dtype=np.float32)  # a network that is not mirror-symmetric: adds a left-to-right ramp
    out = averaged_views(lambda t: t + ramp, 2)(x)  # averaged with its mirror, the ramp becomes its mean
    np.testing.assert_allclose(out, x + 2.5, atol=1e-6)
    out8 = averaged_views(lambda t: t + ramp, 8)(x)  # the transposed views add it top to bottom: still the mean
    np.testing.assert_allclose(out8, x + 2.5, atol=1e-6)


def test_lossless_network_with_test_time_views_reproduces_its_input(tmp_path):
    weights = _save_model(tmp_path / "lossless.safetensors", lossless_model())
    data = _image((75, 101), np.uint16)
    res = _cli("deblur", write_tiff(tmp_path / "in.tif", data, "YX"), "-o", tmp_path / "out.tif", "-w", weights,
               "--device", "cpu", "--tta", "8")
    assert res.exit_code == 0, res.output
    assert np.abs(read_image(tmp_path / "out.tif").data.astype(np.int64) - data).max() <= 2
    res = _cli("deblur", tmp_path / "in.tif", "-o", tmp_path / "out3.tif", "-w", weights, "--tta", "3")
    assert res.exit_code != 0 and "error: --tta" in res.output and not (tmp_path / "out3.tif").exists()


def test_test_time_views_change_a_real_network_s_output_a_little(cal_weights):
    """A trained-shape network is not exactly mirror-symmetric: 4 views differ from 1, by less than the signal."""
    model, meta = load_weights(cal_weights)
    plane = _image((80, 96), np.float32)
    one = Deblurrer(model, meta, device="cpu").deblur_plane(plane)
    four = Deblurrer(model, meta, device="cpu", tta=4).deblur_plane(plane)
    assert not np.allclose(one, four) and np.abs(four - one).mean() < np.abs(one - one.mean()).mean()


def test_lossless_network_at_half_scale_only_loses_the_resize(tmp_path):
    weights = _save_model(tmp_path / "half.safetensors", lossless_model(), scale=0.5)
    yy, xx = np.mgrid[0:75, 0:101]
    data = (20000 + 15000 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint16)  # smooth: survives 2x resizing
    out = deblur_paths([str(write_tiff(tmp_path / "in.tif", data, "YX"))], tmp_path / "out.tif", weights=weights, device="cpu")[0]
    img = read_image(out).data
    assert img.shape == data.shape and img.dtype == np.uint16
    err = np.abs(img.astype(np.float64) - data)[4:-4, 4:-4]
    assert err.mean() < 0.01 * 15000 and np.corrcoef(img.ravel(), data.ravel())[0, 1] > 0.99
    model, meta = load_weights(weights)
    enc = Deblurrer(model, meta, device="cpu").encode(data)
    identity, blur, grid = enc.identity, enc.blur, enc.grid
    assert grid.shape == (38, 50) and identity.shape == (len(grid), model.config.id_dim) and blur.shape == (len(grid), 1)


def test_several_inputs_go_to_a_folder_keeping_names(tmp_path, identity_net, cal_weights):
    write_tiff(tmp_path / "a.tif", _image((40, 50), np.uint16), "YX")
    iio.imwrite(tmp_path / "b.png", _image((30, 20), np.uint8))
    res = _cli("deblur", tmp_path / "a.tif", tmp_path / "b.png", "-o", tmp_path / "out", "-w", cal_weights,
               "--device", "cpu", "--save-comparison", tmp_path / "cmp.png")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "b.tif"]
    assert read_image(tmp_path / "out" / "b.tif").dtype == np.uint8
    cmp = iio.imread(tmp_path / "cmp.png")
    assert cmp.shape == (40, 100) and cmp.dtype == np.uint8
    assert not list(tmp_path.rglob("*.part*"))


def test_png_output_for_2d_uint8(tmp_path, identity_net, cal_weights):
    data = _image((33, 47), np.uint8)
    iio.imwrite(tmp_path / "in.png", data)
    deblur_paths([str(tmp_path / "in.png")], tmp_path / "out.png", weights=cal_weights, device="cpu")
    assert np.abs(iio.imread(tmp_path / "out.png").astype(int) - data).max() <= 1


def test_reference_and_dz_pick_the_blur_code(tmp_path, cal_weights):
    data, ref = _image((64, 80), np.uint16, 1), _image((70, 60), np.uint16, 2)
    src = write_tiff(tmp_path / "in.tif", data, "YX")
    refp = write_tiff(tmp_path / "ref.tif", ref, "YX")
    model, meta = load_weights(cal_weights)
    db = Deblurrer(model, meta, device="cpu")
    deblur_paths([str(src)], tmp_path / "r.tif", weights=cal_weights, reference=refp, device="cpu")
    assert np.array_equal(read_image(tmp_path / "r.tif").data, db.deblur_plane(data, db.mean_blur_code(ref)))
    deblur_paths([str(src)], tmp_path / "z.tif", weights=cal_weights, dz=5.0, device="cpu")
    expected = db.deblur_plane(data, np.atleast_1d(dz_to_code(meta.calibration, 5.0)), dz=5.0)
    assert np.array_equal(read_image(tmp_path / "z.tif").data, expected)


@pytest.mark.parametrize("ref", [np.full((70, 60), 1000, np.uint16), np.full((1, 1), 1000, np.uint16)],
                         ids=["blank", "one-pixel"])
def test_a_reference_without_contrast_is_refused(tmp_path, cal_weights, ref):
    src = write_tiff(tmp_path / "in.tif", _image((64, 80), np.uint16, 1), "YX")
    refp = write_tiff(tmp_path / "ref.tif", ref, "YX")
    res = CliRunner().invoke(app, ["deblur", str(src), "-o", str(tmp_path / "o.tif"), "-w", str(cal_weights),
                                   "--reference", str(refp), "--device", "cpu"])
    assert res.exit_code != 0 and "error: --reference" in res.output and "contrast" in res.output
    assert not (tmp_path / "o.tif").exists()


def test_focus_ratios_set_the_output_intensity_range(tmp_path, identity_net):
    ratios = {"dz_um": [-10.0, 0.0, 10.0], "lo": [0.5, 0.9, 0.7], "hi": [2.0, 1.1, 1.6]}
    w = _save(tmp_path / "r.safetensors", True, focus_ratios=ratios)
    data = np.random.default_rng(7).uniform(1000, 3000, (60, 90)).astype(np.float32)
    src = write_tiff(tmp_path / "in.tif", data, "YX")
    decoded, med = frame_normalizer(data).before(data), float(np.median(data))  # what the identity net decodes
    out = read_image(deblur_paths([str(src)], tmp_path / "f.tif", weights=w, device="cpu")[0]).data
    np.testing.assert_allclose(np.percentile(out, [1, 99.8]), [0.9 * med, 1.1 * med], rtol=1e-4)
    assert np.percentile(data, 1) < 0.6 * med  # the input's own range is far wider
    for dz, lo, hi in [(10.0, 0.7, 1.6), (5.0, 0.8, 1.35)]:  # --dz: ratios interpolated at dz
        out = deblur_paths([str(src)], tmp_path / f"z{dz}.tif", weights=w, dz=dz, device="cpu")[0]
        np.testing.assert_allclose(read_image(out).data, Normalizer(lo * med, hi * med).after(decoded), rtol=1e-4)
    walk = interpolate_paths(src, None, tmp_path / "w.tif", steps=3, dz_from=0, dz_to=10, weights=w, device="cpu")
    for plane, (lo, hi) in zip(read_image(walk).data, [(0.9, 1.1), (0.8, 1.35), (0.7, 1.6)]):
        np.testing.assert_allclose(plane, Normalizer(lo * med, hi * med).after(decoded), rtol=1e-4)


@pytest.mark.parametrize("offset", [-2000.0, -1999.0, -3000.0])  # median 0, just above 0, below 0
def test_offset_or_signed_data_keep_their_intensity_range(tmp_path, identity_net, offset, capsys):
    """Background-subtracted (signed) data cannot be reverted by ratios to the median: the input's range is kept."""
    ratios = {"dz_um": [-10.0, 0.0, 10.0], "lo": [0.5, 0.9, 0.7], "hi": [2.0, 1.1, 1.6]}
    w = _save(tmp_path / "r.safetensors", True, focus_ratios=ratios)
    data = np.random.default_rng(7).uniform(1000, 3000, (60, 90)).astype(np.float32) + offset
    src = write_tiff(tmp_path / "in.tif", data, "YX")
    out = read_image(deblur_paths([str(src)], tmp_path / "o.tif", weights=w, device="cpu")[0]).data
    np.testing.assert_allclose(np.percentile(out, [1, 99.8]), np.percentile(data, [1, 99.8]), rtol=1e-3, atol=0.5)
    assert "keeps the input's intensity range" in capsys.readouterr().err


def test_failure_leaves_no_partial_outputs(tmp_path, cal_weights):
    write_tiff(tmp_path / "a.tif", _image((40, 50), np.uint16), "YX")
    (tmp_path / "b.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    res = _cli("deblur", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "out", "-w", cal_weights)
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_trailing_separator_means_a_folder_even_for_one_input(tmp_path, identity_net, cal_weights):
    src = write_tiff(tmp_path / "in.tif", _image((40, 50), np.uint16), "YX")
    outs = deblur_paths([str(src)], str(tmp_path / "deblurred") + "/", weights=cal_weights, device="cpu")
    assert outs == [tmp_path / "deblurred" / "in.tif"] and outs[0].is_file()
    maps = focus_paths([str(src)], str(tmp_path / "maps") + "/", weights=cal_weights, device="cpu")
    assert maps == [tmp_path / "maps" / "in_dz.tif"] and maps[0].is_file()
    with pytest.raises(UserError, match="must be a folder"):
        deblur_paths([str(src)], str(src) + "/", weights=cal_weights, device="cpu", overwrite=True)


def test_compression_is_kept(tmp_path, identity_net, cal_weights):
    data = _image((3, 40, 50), np.uint16)
    src = tmp_path / "z.tif"
    tifffile.imwrite(src, data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib", predictor=True)
    out = deblur_paths([str(src)], tmp_path / "o.tif", weights=cal_weights, device="cpu")[0]
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and tif.pages.first.predictor == 2
        assert tif.is_imagej and np.abs(tif.asarray().astype(int) - data).max() <= 1
    assert not list(tmp_path.glob(".*"))


def test_float16_is_computed_and_written_as_float32(tmp_path, identity_net, cal_weights, capsys):
    data = _image((40, 50), np.float16)
    tifffile.imwrite(tmp_path / "h.tif", data)
    out = deblur_paths([str(tmp_path / "h.tif")], tmp_path / "o.tif", weights=cal_weights, device="cpu")[0]
    img = read_image(out)
    assert img.dtype == np.float32 and np.allclose(img.data, data.astype(np.float32), atol=1e-3)
    assert "float16" in capsys.readouterr().err


# ---------------------------------------------------------------- interpolate


def test_interpolate_end_points_reproduce_a_and_b(tmp_path, blur_is_tile_net, cal_weights):
    a, b = _image((60, 150), np.uint16, 3), _image((60, 150), np.uint16, 4)
    pa = write_tiff(tmp_path / "a.tif", a, "YX", pixel_size_um=0.2, metadata={"finterval": 0.5})
    pb = write_tiff(tmp_path / "b.tif", b, "YX")
    out = interpolate_paths(pa, pb, tmp_path / "walk.tif", steps=4, weights=cal_weights, device="cpu", scale=1.0)
    img = read_image(out)
    assert img.axes == "ZYX" and img.shape == (4, 60, 150) and img.dtype == np.uint16
    assert img.pixel_size_um == pytest.approx(0.2) and img.metadata == {"finterval": 0.5}  # A's own entries kept
    assert np.abs(img.data[0].astype(int) - a).max() <= 1 and np.abs(img.data[-1].astype(int) - b).max() <= 1
    mid = img.data[1].astype(float)  # blend of normalised tiles, reverted with interpolated lo/hi
    assert np.corrcoef(mid.ravel(), (2 * a.astype(float) + b).ravel())[0, 1] > 0.999


def test_interpolate_warns_when_b_has_another_dtype(tmp_path, cal_weights):
    pa = write_tiff(tmp_path / "a.tif", _image((50, 70), np.uint16, 5), "YX")
    pb = write_tiff(tmp_path / "b.tif", _image((50, 70), np.uint8, 6), "YX")
    res = CliRunner().invoke(app, ["interpolate", str(pa), str(pb), "-o", str(tmp_path / "w.tif"), "--steps", "3",
                                   "-w", str(cal_weights), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "uint8" in res.output and "written as A's uint16" in res.output
    assert read_image(tmp_path / "w.tif").dtype == np.uint16


def test_interpolate_real_model_start_is_a_reconstruction(tmp_path, cal_weights):
    a, b = _image((50, 70), np.uint16, 5), _image((50, 70), np.uint16, 6)
    pa, pb = write_tiff(tmp_path / "a.tif", a, "YX"), write_tiff(tmp_path / "b.tif", b, "YX")
    out = interpolate_paths(pa, pb, tmp_path / "w.tif", steps=3, weights=cal_weights, device="cpu")
    db = Deblurrer(*load_weights(cal_weights), device="cpu")
    enc = db.encode(a)
    assert np.array_equal(read_image(out).data[0], db.decode(enc, enc.blur))


def test_interpolate_by_dz_sets_spacing(tmp_path, cal_weights):
    pa = write_tiff(tmp_path / "a.tif", _image((50, 70), np.float32), "YX")
    out = interpolate_paths(pa, None, tmp_path / "w.tif", steps=5, dz_from=-4, dz_to=4, weights=cal_weights,
                            device="cpu")
    img = read_image(out)
    assert img.shape == (5, 50, 70) and img.dtype == np.float32 and img.z_step_um == pytest.approx(2.0)


# ---------------------------------------------------------------- focus


def test_focus_maps_for_image_and_stack_with_csv(tmp_path, cal_weights):
    write_tiff(tmp_path / "img.tif", _image((90, 130), np.uint16), "YX")
    write_tiff(tmp_path / "stk.tif", _image((3, 64, 64), np.uint16), "ZYX")
    res = _cli("focus", tmp_path / "img.tif", tmp_path / "stk.tif", "-o", tmp_path / "maps", "-w", cal_weights,
               "--csv", tmp_path / "s.csv", "--device", "cpu")
    assert res.exit_code == 0, res.output
    m2, m3 = read_image(tmp_path / "maps" / "img_dz.tif"), read_image(tmp_path / "maps" / "stk_dz.tif")
    assert m2.shape == (90, 130) and m2.dtype == np.float32 and np.isfinite(m2.data).all()
    assert m3.shape == (3, 64, 64) and m3.axes == "ZYX"
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["plane"] for r in rows] == ["0", "0", "1", "2"]
    assert set(rows[0]) == {"file", "plane", "median_dz_um", "frac_in_focus", "n_tiles", "n_tiles_used"}
    assert int(rows[0]["n_tiles"]) == int(rows[0]["n_tiles_used"]) == 2 and 0 <= float(rows[0]["frac_in_focus"]) <= 1


def test_focus_single_file_and_smooth_map(tmp_path, cal_weights):
    src = write_tiff(tmp_path / "img.tif", _image((300, 200), np.uint16), "YX")
    out = focus_paths([str(src)], tmp_path / "m.tif", weights=cal_weights, device="cpu")[0]
    m = read_image(out).data
    assert m.shape == (300, 200)
    assert np.abs(np.diff(m, axis=0)).max() < 0.5 * (np.ptp(m) + 1e-6)  # interpolated, no tile steps


# ---------------------------------------------------------------- CLI errors


def _fails(res, *words: str) -> None:
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert res.output.count("error:") == 1, res.output
    text = " ".join(res.output.split())  # rich wraps long lines at the console width
    assert all(w in text for w in words), text


def test_cli_errors(tmp_path, cal_weights, plain_weights):
    good = write_tiff(tmp_path / "good.tif", _image((40, 40), np.uint16), "YX")
    w = ["-w", cal_weights, "--device", "cpu"]
    _fails(_cli("deblur", tmp_path / "missing.tif", "-o", tmp_path / "o.tif", *w), "missing.tif")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage" * 3)
    _fails(_cli("deblur", tmp_path / "bad.tif", "-o", tmp_path / "o.tif", *w), "bad.tif")
    four = write_tiff(tmp_path / "four.tif", np.zeros((2, 3, 20, 20), np.uint16), "TZYX")
    _fails(_cli("deblur", four, "-o", tmp_path / "o.tif", *w), "(2, 3, 20, 20)", "accepted")
    (tmp_path / "exists.tif").write_bytes(b"keep me")
    _fails(_cli("deblur", good, "-o", tmp_path / "exists.tif", *w), "--overwrite")
    assert (tmp_path / "exists.tif").read_bytes() == b"keep me"
    other = write_tiff(tmp_path / "other.tif", _image((40, 40), np.uint16), "YX")
    _fails(_cli("deblur", good, other, "-o", tmp_path / "exists.tif", *w), "folder")
    _fails(_cli("deblur", good, other, "-o", tmp_path / "new.tif", *w), "folder")
    _fails(_cli("deblur", good, "-o", good, *w, "--overwrite"), "input")
    (tmp_path / "w.safetensors").write_text("not weights")
    _fails(_cli("deblur", good, "-o", tmp_path / "o.tif", "-w", tmp_path / "w.safetensors"), "safetensors")
    _fails(_cli("deblur", good, "-o", tmp_path / "o.tif", "-w", plain_weights, "--dz", "3"), "calibrat")
    _fails(_cli("focus", good, "-o", tmp_path / "m.tif", "-w", plain_weights), "calibrat")
    small = write_tiff(tmp_path / "small.tif", _image((30, 40), np.uint16), "YX")
    _fails(_cli("interpolate", good, small, "-o", tmp_path / "i.tif", *w), "same")
    _fails(_cli("interpolate", good, "-o", tmp_path / "i.tif", "--dz-from", "1", *w), "together")
    _fails(_cli("deblur", good, "-o", tmp_path / "o.tif", *w, "--precision", "half"), "precision")
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "i.tif").exists()


def test_cli_refuses_bad_inputs_and_output_paths(tmp_path, cal_weights):
    good = write_tiff(tmp_path / "good.tif", _image((40, 40), np.uint16), "YX")
    w = ["-w", cal_weights, "--device", "cpu"]
    cyx = write_tiff(tmp_path / "cyx.tif", _image((5, 40, 40), np.uint16), "CYX")
    tifffile.imwrite(tmp_path / "yxs.tif", _image((40, 40, 5), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    for cmd in ("deblur", "focus"):
        _fails(_cli(cmd, cyx, "-o", tmp_path / "o.tif", *w), "cyx.tif", "channel", "(5, 40, 40)", "CYX", "split")
    _fails(_cli("deblur", tmp_path / "yxs.tif", "-o", tmp_path / "o.tif", *w), "channel", "YXS")
    _fails(_cli("interpolate", cyx, good, "-o", tmp_path / "i.tif", *w), "channel")
    tifffile.imwrite(tmp_path / "c.tif", np.ones((40, 40), np.complex64))
    tifffile.imwrite(tmp_path / "b.tif", np.ones((40, 40), bool))
    _fails(_cli("deblur", tmp_path / "c.tif", "-o", tmp_path / "o.tif", *w), "c.tif", "complex64")
    _fails(_cli("deblur", tmp_path / "b.tif", "-o", tmp_path / "o.tif", *w), "b.tif", "bool")
    _fails(_cli("deblur", good, "-o", good / "x.tif", *w), "good.tif is a file")
    _fails(_cli("interpolate", good, good, "-o", good / "sub" / "x.tif", *w), "is a file")
    _fails(_cli("deblur", good, "-o", tmp_path / ("a" * 250 + ".tif"), *w), "too long")
    _fails(_cli("deblur", good, "-o", tmp_path / ("a" * 300 + ".tif"), *w), "too long")
    _fails(_cli("focus", good, "-o", tmp_path / ("a" * 300) / "m.tif", *w), "too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif", "c.tif", "cyx.tif", "good.tif", "yxs.tif"]


def test_non_finite_pixels_are_refused_naming_file_and_plane(tmp_path, cal_weights):
    w = ["-w", cal_weights, "--device", "cpu"]
    good = write_tiff(tmp_path / "good.tif", _image((40, 50), np.float32), "YX")
    stack = _image((3, 40, 50), np.float32)
    stack[1, 5, 5] = np.nan
    nan = write_tiff(tmp_path / "nan.tif", stack, "ZYX")
    img = _image((40, 50), np.float32)
    img[0, :3] = np.inf
    inf = write_tiff(tmp_path / "inf.tif", img, "YX")
    _fails(_cli("deblur", good, nan, "-o", tmp_path / "out", *w), "nan.tif plane 1", "1 pixel(s)", "NaN")
    _fails(_cli("deblur", good, "-o", tmp_path / "o.tif", "--reference", inf, *w), "inf.tif", "3 pixel(s)")
    _fails(_cli("focus", inf, "-o", tmp_path / "m.tif", *w), "inf.tif")
    _fails(_cli("interpolate", good, inf, "-o", tmp_path / "i.tif", *w), "inf.tif")
    _fails(_cli("interpolate", inf, "-o", tmp_path / "i.tif", "--dz-from", "0", "--dz-to", "2", *w), "inf.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tif", "inf.tif", "nan.tif"]


def test_truth_of_another_size_is_refused_before_writing(tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from microdeblur.cli import app

    tifffile.imwrite(tmp_path / "a.tif", np.full((60, 70), 100, np.uint16))
    tifffile.imwrite(tmp_path / "t.tif", np.full((50, 70), 100, np.uint16))
    res = CliRunner().invoke(app, ["deblur", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o.tif"),
                                   "--truth", str(tmp_path / "t.tif"), "-w", str(tmp_path / "missing.safetensors")])
    assert res.exit_code == 1 and "--truth" in res.output and not (tmp_path / "o.tif").exists()


def test_binning_scale_does_not_import_skimage():
    """The common working scale (2x2 binning) must not pay skimage's import (~0.4 s) on every deblur."""
    code = ("import sys, numpy as np; from microdeblur.resizing import rescale; "
            "rescale(np.ones((300, 400), np.uint16), 0.5); print('skimage' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_deblur_tiles_start_on_the_network_stride(cal_weights):
    model, meta = load_weights(cal_weights)
    db = Deblurrer(model, meta, device="cpu")
    grid = db.grid((300, 500))
    assert db.overlap == OVERLAP == 16 and np.all(grid.ys % model.config.downsample == 0)
    assert CLI_OVERLAP.default == OVERLAP  # the CLI repeats the constant rather than import the engine at start-up
    assert np.all(grid.xs % model.config.downsample == 0) and db.grid((300, 500)) is grid  # built once per shape


def test_fused_deblur_equals_encode_then_decode(cal_weights):
    model, meta = load_weights(cal_weights)
    db = Deblurrer(model, meta, device="cpu", batch_size=5)
    plane = _image((150, 260), np.uint16, seed=5)
    enc = db.encode(plane)
    assert np.array_equal(db.deblur_plane(plane), db.decode(enc, db.target, db.revert_for(enc, 0.0)))


def test_bfloat16_autocast_stays_close_to_float32(cal_weights):
    """The GPU path's bfloat16 autocast (here on CPU) gives the float32 result within bfloat16's precision."""
    model, meta = load_weights(cal_weights)
    plane = _image((150, 260), np.uint16, seed=6)
    ref = Deblurrer(model, meta, device="cpu").deblur_plane(plane).astype(np.float64)
    low = Deblurrer(model, meta, device="cpu", precision="bfloat16").deblur_plane(plane).astype(np.float64)
    assert Deblurrer(model, meta, device="cpu", batch_size=None).batch_size == 32
    assert not np.array_equal(ref, low)  # autocast really ran
    assert np.abs(low - ref).max() <= 0.02 * (ref.max() - ref.min())


def test_cpu_batch_size_keeps_a_calls_memory():
    """The shipped size gets BATCH_SIZE tiles per call; a network whose largest feature map is 4x larger (no
    space-to-depth) a quarter, so one call holds as much memory; small networks no more than BATCH_SIZE."""
    from microdeblur.engine import BATCH_SIZE, cpu_batch_size

    assert cpu_batch_size(ModelConfig()) == BATCH_SIZE
    assert cpu_batch_size(ModelConfig(unshuffle=1)) == BATCH_SIZE // 4
    assert cpu_batch_size(ModelConfig(input_skip=True, head=64)) == 4  # 64 channels at full resolution, at least 4
    assert cpu_batch_size(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))) == BATCH_SIZE
    model = DisentangledAE(ModelConfig(widths=(32, 8), id_channels=(2, 3), unshuffle=1))
    meta = WeightsMeta(variant="manifold-1d", config=model.config)
    assert Deblurrer(model, meta, device="cpu").batch_size == BATCH_SIZE // 4  # the runner's default


def _source_code_deblurrer(tmp_path: Path, **kw) -> Deblurrer:
    """A seeded source-code network whose layers all act (no zero-initialised output), calibrated."""
    torch.manual_seed(1)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4), input_skip=True, source_code=True)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return Deblurrer(*load_weights(_save_model(tmp_path / "sc.safetensors", model)), device="cpu", batch_size=5, **kw)


@pytest.mark.parametrize("tta", [1, 2])
def test_source_code_decoder_reads_the_neighbourhood_median_code(tmp_path, tta):
    """Each tile is encoded once (identities kept with one view), and its decoder reads the median of its
    neighbours' own codes, not its own: the same in the fused path and in encode -> decode."""
    from microdeblur.focus_gate import neighbourhood_median

    db = _source_code_deblurrer(tmp_path, tta=tta)
    plane = _image((300, 420), np.uint16, seed=7)
    encodes, decoded = [], []
    encode, decode = db.encode_tiles, db.decode_tiles
    db.encode_tiles = lambda t: encodes.append(len(t)) or encode(t)
    db.decode_tiles = lambda i, b: decoded.append(i[:, -1].copy()) or decode(i, b)
    out, codes, grid = db.swap_parts(plane, db.target, 0.0)
    rows, cols = grid.rows_cols
    assert rows > 2 and cols > 2 and sum(encodes) == len(grid) * tta  # the plain view's identities are kept
    smoothed = neighbourhood_median(codes.reshape(rows, cols, 1)).reshape(-1)
    assert not np.allclose(smoothed, codes[:, 0])
    for view in range(tta):  # every view's decoder reads the smoothed codes of the plain view
        np.testing.assert_array_equal(np.concatenate(decoded[view::tta]), smoothed)
    if tta == 1:
        enc = db.encode(plane)
        np.testing.assert_array_equal(enc.identity[:, -1], smoothed)
        np.testing.assert_array_equal(db.deblur_plane(plane), db.decode(enc, db.target, db.revert_for(enc, 0.0)))
        db.smooth_codes = False
        assert not np.array_equal(db.deblur_plane(plane), db.decode(enc, db.target, db.revert_for(enc, 0.0)))


@pytest.mark.parametrize("shape,batch", [((300, 420), 5), ((700, 260), 3), ((700, 260), 64), ((140, 900), 4)])
def test_interleaved_encode_decode_equals_encode_then_decode(tmp_path, shape, batch):
    """deblur_plane decodes a batch as soon as its tiles' neighbourhoods are encoded, each tile encoded once: the
    same plane as encoding the whole plane first, on grids of 2 to 7 tile rows and batches across rows."""
    db = _source_code_deblurrer(tmp_path)
    db.batch_size = batch
    plane = _image(shape, np.uint16, seed=8)
    calls = []
    encode, decode = db.encode_tiles, db.decode_tiles
    db.encode_tiles = lambda t: calls.append(("encode", len(t))) or encode(t)
    db.decode_tiles = lambda i, b: calls.append(("decode", len(i))) or decode(i, b)
    out = db.deblur_plane(plane)
    n, (rows, _) = len(db.grid(plane.shape)), db.grid(plane.shape).rows_cols
    assert sum(k for c, k in calls if c == "encode") == n == sum(k for c, k in calls if c == "decode")
    kinds = [c for c, _ in calls]
    if rows > 5 and batch < n / 2:  # tall grids start decoding before the last rows are encoded
        assert kinds.index("decode") < len(kinds) - 1 - kinds[::-1].index("encode")
    db.encode_tiles, db.decode_tiles = encode, decode
    enc = db.encode(plane)
    np.testing.assert_array_equal(out, db.decode(enc, db.target, db.revert_for(enc, 0.0)))


def test_interpolation_starts_at_the_reconstruction_for_a_source_code_network(tmp_path):
    """The walk's first target is the code the identity carries, so plane 0 decodes each tile with target = source."""
    from microdeblur.interpolation import walk_codes

    db = _source_code_deblurrer(tmp_path)
    a, b = _image((300, 420), np.uint16, seed=9), _image((300, 420), np.uint16, seed=10)
    enc = db.encode(a)
    first = next(walk_codes(db, a, b, 3))
    assert np.array_equal(first, db.decode(enc, enc.identity[:, -1:]))
    assert not np.array_equal(first, db.decode(enc, enc.blur))
