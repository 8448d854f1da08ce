"""The sign of defocus (issue "Real microscopes"): its reliability measured at training, `focus --sign` and
`focus --confidence`."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import one_error, run_cli, tiny_weights

from microdeblur import training
from microdeblur.calibration import (
    OpticsOptions,
    fit_calibration,
    sign_confidence,
    sign_reliability,
    sign_table,
    tile_sign_confidence,
)
from microdeblur.engine import Deblurrer
from microdeblur.focus_runs import focus_paths
from microdeblur.image_read import read_image
from microdeblur.image_write import write_tiff

DZ = np.linspace(-20, 20, 41)
OPTICS = ("--na", "0.4", "--wavelength", "0.55")


def _table(flip_below: float = 3.0) -> dict:
    """A sign table as training would measure it: the sign is a coin flip below `flip_below` um, right above."""
    rng = np.random.default_rng(0)
    true = rng.uniform(-20, 20, 4000)
    pred = np.where(np.abs(true) < flip_below, np.abs(true) * rng.choice([-1, 1], true.size), true)
    return sign_reliability(pred, true)


def _save(path: Path, *, table: bool = True, kind: str = "signed") -> Path:
    cal = fit_calibration(0.05 * DZ, DZ) if kind == "signed" else fit_calibration(0.05 * np.abs(DZ), DZ)
    if table:
        cal["sign_reliability"] = _table()
    return tiny_weights(path, cal)


@pytest.fixture(scope="module")
def wdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signw")


@pytest.fixture(scope="module")
def weights(wdir) -> Path:
    return _save(wdir / "table.safetensors")


@pytest.fixture(scope="module")
def legacy_weights(wdir) -> Path:
    return _save(wdir / "legacy.safetensors", table=False)


@pytest.fixture(scope="module")
def abs_weights(wdir) -> Path:
    return _save(wdir / "abs.safetensors", kind="abs")


@pytest.fixture
def code_net(monkeypatch):
    """Every tile's blur code is -0.25 (dz -5 um on the training microscope, by the calibration 0.05 dz)."""
    monkeypatch.setattr(Deblurrer, "encode_tiles",
                        lambda self, t: (np.zeros((len(t), 4), np.float32), np.full((len(t), 1), -0.25, np.float32)))


def _image(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 3000 + 1000).astype(np.uint16)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- the two calibration functions


def test_perfect_sign_gives_confidence_one_and_a_random_sign_about_zero():
    rng = np.random.default_rng(1)
    true = rng.uniform(-20, 20, 5000)
    perfect = sign_reliability(true * 1.1, true)
    assert perfect["fraction_correct"] and all(f == 1.0 for f in perfect["fraction_correct"])
    assert np.allclose(sign_confidence(perfect, [4.0, 10.0, 30.0]), 1.0)
    coin = sign_reliability(true * rng.choice([-1, 1], true.size), true)
    assert np.all(np.abs(np.array(coin["fraction_correct"]) - 0.5) < 0.15)
    assert np.all(sign_confidence(coin, [0.5, 4.0, 15.0]) < 0.3)
    wrong = sign_reliability(-true, true)  # always wrong is no better than a coin: clipped to 0
    assert np.all(sign_confidence(wrong, [1.0, 10.0]) == 0.0)


def test_sign_table_bins_interpolation_and_what_is_scored():
    table = _table()
    assert table["abs_dz_um"] == sorted(table["abs_dz_um"]) and len(table["abs_dz_um"]) == len(table["n_tiles"])
    assert table["bin_edges_um"][0] == 0 and sum(table["n_tiles"]) == table["n_scored"]
    conf = sign_confidence(table, [0.0, 1.5, 25.0, -25.0, np.nan])
    assert conf[0] < 0.3 and conf[2] == conf[3] == 1.0 and np.isnan(conf[4])  # flat beyond the ends, |dz| used
    # true dz 0 and non-finite values are not scored; a predicted 0 names no sign
    t = sign_reliability([1.0] * 20 + [0.0] * 20 + [np.nan] * 5, [0.0] * 20 + [1.0] * 20 + [1.0] * 5)
    assert t["n_scored"] == 20 and t["fraction_correct"] == [0.0]
    few = sign_reliability([1.0] * 3, [1.0] * 3)  # a bin with too few tiles is left out
    assert few["abs_dz_um"] == [] and np.isnan(sign_confidence(few, [1.0])).all()
    assert np.isnan(sign_confidence(None, [1.0, 2.0])).all()  # weights without the table
    with pytest.raises(ValueError):
        sign_reliability([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        sign_table({"sign_reliability": {"abs_dz_um": [2.0, 1.0], "fraction_correct": [0.5, 0.6]}})
    assert sign_table({"kind": "signed"}) is None


def test_an_abs_calibration_has_no_sign_confidence():
    cal = fit_calibration(0.05 * np.abs(DZ), DZ)
    assert cal["kind"] == "abs" and np.all(tile_sign_confidence(cal, np.array([1.0, 10.0])) == 0)


def test_finalize_stores_the_sign_table_in_the_calibration(monkeypatch):
    dz = np.repeat(np.linspace(-10, 10, 21), 4)
    tiles = np.broadcast_to(dz[:, None, None], (dz.size, 4, 4)).astype(np.float32)
    monkeypatch.setattr(training, "blur_batched", lambda model, t, device: 0.05 * t.mean(axis=(1, 2))[:, None])
    ids = list(range(dz.size // 4))
    data = SimpleNamespace(stacks=[tiles[4 * i:4 * i + 4] for i in ids], focus_index=[0] * len(ids), tiles=tiles,
                           dz_all=dz, z_step_um=1.0,
                           tile_indices=lambda sel: np.concatenate([np.arange(4 * i, 4 * i + 4) for i in sel]),
                           reference_identities=lambda sel: list(sel))
    model = SimpleNamespace(eval=lambda: None, config=SimpleNamespace(blur_dim=1))
    _, cal = training.finalize(model, data, ids, 0, "cpu")
    table = cal["sign_reliability"]
    assert cal["kind"] == "signed" and table["n_scored"] == int((dz != 0).sum())
    assert table["fraction_correct"] and all(f == 1.0 for f in table["fraction_correct"])


# ---------------------------------------------------------------- --sign


def test_unsigned_map_is_the_absolute_signed_map(tmp_path, weights, code_net):
    src = write_tiff(tmp_path / "in.tif", _image((150, 200)), "YX")
    for mode in ("signed", "unsigned"):
        res = run_cli("focus", src, "-o", tmp_path / f"{mode}.tif", "--csv", tmp_path / f"{mode}.csv", "--sign", mode,
                      "-w", weights, "--device", "cpu")
        assert res.exit_code == 0, res.output
    signed, unsigned = (read_image(tmp_path / f"{m}.tif").data for m in ("signed", "unsigned"))
    assert np.allclose(signed, -5.0) and np.array_equal(unsigned, np.abs(signed))
    s, u = _rows(tmp_path / "signed.csv")[0], _rows(tmp_path / "unsigned.csv")[0]
    assert "median_dz_um" in s and "median_dz_um" not in u
    assert float(s["median_dz_um"]) == pytest.approx(-5.0) and float(u["median_abs_dz_um"]) == pytest.approx(5.0)
    assert "unsigned" in res.output


def test_unsigned_interpolates_each_tiles_magnitude(tmp_path, weights):
    """With the real (tiny) network, whatever the tiles' signs: |dz| of every tile, interpolated (never below the
    magnitude of the signed map, equal where the neighbouring tiles agree in sign)."""
    src = write_tiff(tmp_path / "in.tif", _image((300, 260), 3), "YX")
    signed = focus_paths([str(src)], tmp_path / "s.tif", weights=weights, device="cpu", sign="signed")[0]
    unsigned = focus_paths([str(src)], tmp_path / "u.tif", weights=weights, device="cpu", sign="unsigned")[0]
    s, u = read_image(signed).data, read_image(unsigned).data
    assert np.isfinite(s).all() and np.all(u >= np.abs(s) - 1e-4)
    if np.all(s >= 0) or np.all(s <= 0):
        assert np.allclose(u, np.abs(s), atol=1e-5)


def test_signed_is_todays_map(tmp_path, weights):
    from microdeblur.weights import load_weights

    img = _image((140, 170), 5)
    src = write_tiff(tmp_path / "in.tif", img, "YX")
    out = focus_paths([str(src)], tmp_path / "m.tif", weights=weights, device="cpu", sign="signed")[0]
    model, meta = load_weights(weights)
    dmap, summary = Deblurrer(model, meta, device="cpu").focus_map(img.astype(np.float32))
    assert np.array_equal(read_image(out).data, dmap) and "median_dz_um" in summary


def test_auto_is_unsigned_without_optics_and_signed_with_na_and_wavelength(tmp_path, weights, code_net):
    src = write_tiff(tmp_path / "in.tif", _image((130, 140)), "YX")
    res = run_cli("focus", src, "-o", tmp_path / "auto.tif", "--csv", tmp_path / "auto.csv", "-w", weights,
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert np.allclose(read_image(tmp_path / "auto.tif").data, 5.0)
    assert "median_abs_dz_um" in _rows(tmp_path / "auto.csv")[0]
    text = " ".join(res.output.split())
    assert text.count("the sign of dz is not reported") == 1 and "NA or wavelength" in text
    res = run_cli("focus", src, "-o", tmp_path / "opt.tif", "--csv", tmp_path / "opt.csv", "-w", weights,
                  "--device", "cpu", *OPTICS)
    assert res.exit_code == 0, res.output
    assert np.allclose(read_image(tmp_path / "opt.tif").data, -5.0)
    assert float(_rows(tmp_path / "opt.csv")[0]["median_dz_um"]) == pytest.approx(-5.0)
    assert "not reported" not in res.output
    # only the NA known is still an unknown microscope
    res = run_cli("focus", src, "-o", tmp_path / "na.tif", "-w", weights, "--device", "cpu", "--na", "0.4")
    assert res.exit_code == 0 and "no wavelength given" in " ".join(res.output.split())
    assert np.allclose(read_image(tmp_path / "na.tif").data, 5.0)


def test_auto_with_several_inputs_is_one_choice_named_once(tmp_path, weights, code_net):
    for i in range(3):
        write_tiff(tmp_path / "in" / f"i{i}.tif", _image((130, 140), i), "YX")
    res = run_cli("focus", tmp_path / "in", "-o", tmp_path / "maps", "--csv", tmp_path / "s.csv", "-w", weights,
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("not reported") == 1 and "and 2 other input(s)" in text
    assert all("median_abs_dz_um" in r for r in _rows(tmp_path / "s.csv"))


def test_auto_keeps_the_sign_of_weights_without_a_table_and_drops_it_for_abs(tmp_path, legacy_weights, abs_weights,
                                                                            code_net):
    src = write_tiff(tmp_path / "in.tif", _image((130, 140)), "YX")
    res = run_cli("focus", src, "-o", tmp_path / "legacy.tif", "-w", legacy_weights, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert np.allclose(read_image(tmp_path / "legacy.tif").data, -5.0)
    assert "no measured sign reliability" in " ".join(res.output.split())
    res = run_cli("focus", src, "-o", tmp_path / "abs.tif", "--csv", tmp_path / "abs.csv", "-w", abs_weights,
                  "--device", "cpu", *OPTICS)
    assert res.exit_code == 0, res.output
    assert "median_abs_dz_um" in _rows(tmp_path / "abs.csv")[0] and "|dz| only" in res.output


def test_batch_runs_choose_alike_and_refuse_a_table_of_the_other_sign(tmp_path, weights, code_net):
    for i in range(2):
        write_tiff(tmp_path / "in" / f"i{i}.tif", _image((130, 140), i), "YX")
    common = ("-w", weights, "--device", "cpu", "--csv", tmp_path / "s.csv")
    res = run_cli("focus", tmp_path / "in", "-o", str(tmp_path / "maps") + "/", "--shard", "0/2", *common)
    assert res.exit_code == 0, res.output
    assert [r["median_abs_dz_um"] for r in _rows(tmp_path / "s.csv")] == ["5.0000"]
    res = run_cli("focus", tmp_path / "in", "-o", str(tmp_path / "maps") + "/", "--skip-existing", *common,
                  "--sign", "signed")
    one_error(res, "s.csv", "--sign")


# ---------------------------------------------------------------- --confidence


def test_confidence_map_shape_values_and_nan_where_no_tile_is_usable(tmp_path, weights, code_net):
    img = np.full((128, 384), 2000, np.uint16)
    img[:, 256:] = _image((128, 128), 3)  # one textured tile on the right, two empty ones
    src = write_tiff(tmp_path / "in.tif", img, "YX")
    res = run_cli("focus", src, "-o", tmp_path / "m.tif", "--confidence", tmp_path / "c.tif", "-w", weights,
                  "--device", "cpu", "--overlap", "0")
    assert res.exit_code == 0, res.output
    dmap, conf = read_image(tmp_path / "m.tif"), read_image(tmp_path / "c.tif")
    assert conf.shape == dmap.shape == img.shape and conf.data.dtype == np.float32
    assert np.array_equal(np.isnan(conf.data), np.isnan(dmap.data)) and np.isnan(conf.data[:, :128]).all()
    assert np.isfinite(conf.data[:, -64:]).all()
    known = conf.data[np.isfinite(conf.data)]
    assert known.size and np.all((known >= 0) & (known <= 1))
    assert np.allclose(known, sign_confidence(_table(), 5.0), atol=1e-6)  # the table at the tile's |dz| of 5 um
    # an existing confidence map needs --overwrite, like the map
    res = run_cli("focus", src, "-o", tmp_path / "m2.tif", "--confidence", tmp_path / "c.tif", "-w", weights,
                  "--device", "cpu")
    one_error(res, "c.tif", "--overwrite")
    assert not (tmp_path / "m2.tif").exists()
    res = run_cli("focus", src, "-o", tmp_path / "m.tif", "--confidence", tmp_path / "c.tif", "-w", weights,
                  "--device", "cpu", "--overwrite")
    assert res.exit_code == 0, res.output


def test_confidence_for_a_stack_and_several_inputs(tmp_path, weights):
    write_tiff(tmp_path / "in" / "stk.tif", _image((2, 130, 150)), "ZYX")
    write_tiff(tmp_path / "in" / "img.tif", _image((140, 130), 1), "YX")
    res = run_cli("focus", tmp_path / "in", "-o", tmp_path / "maps", "--confidence", tmp_path / "conf", "-w", weights,
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    for name, shape in (("stk", (2, 130, 150)), ("img", (140, 130))):
        c = read_image(tmp_path / "conf" / f"{name}_conf.tif").data
        assert c.shape == shape and c.dtype == np.float32
        assert np.all(np.isnan(c) | ((c >= 0) & (c <= 1)))


def test_confidence_of_weights_without_a_table_is_nan_with_a_warning(tmp_path, legacy_weights):
    src = write_tiff(tmp_path / "in.tif", _image((130, 140)), "YX")
    res = run_cli("focus", src, "-o", tmp_path / "m.tif", "--confidence", tmp_path / "c.tif", "-w", legacy_weights,
                  "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert np.isnan(read_image(tmp_path / "c.tif").data).all() and "confidence map is NaN" in res.output


# ---------------------------------------------------------------- bad values: one error line, nothing written


@pytest.mark.parametrize("extra, words", [
    (("--sign", "maybe"), ("--sign", "maybe")),
    (("--confidence", "c.png"), ("c.png", ".tif")),
    (("--confidence", "m.tif"), ("m.tif", "confidence")),
    (("--confidence", "c.tif", "--shard", "0/1"), ("--confidence", "--shard")),
])
def test_bad_sign_and_confidence_options_are_one_error_line(tmp_path, weights, extra, words):
    src = write_tiff(tmp_path / "in.tif", _image((60, 60)), "YX")
    res = run_cli("focus", src, "-o", tmp_path / "m.tif", "-w", weights, "--device", "cpu",
                  *[tmp_path / e if e.startswith(("c.", "m.")) else e for e in extra])
    one_error(res, *words)
    assert not (tmp_path / "m.tif").exists() and not (tmp_path / "c.tif").exists()


def test_the_python_api_checks_sign_too(tmp_path, weights):
    from microdeblur.errors import UserError

    src = write_tiff(tmp_path / "in.tif", _image((60, 60)), "YX")
    with pytest.raises(UserError, match="--sign"):
        focus_paths([str(src)], tmp_path / "m.tif", weights=weights, device="cpu", sign="SIGNED",
                    optics=OpticsOptions())
