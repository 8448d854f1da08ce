"""Defocus in optical units (issue 13): NA, wavelength and pixel size from options and metadata, the resize they
drive, dz converted between the training microscope and the user's, and the weights' `optics` entry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from cli_helpers import one_error, run_cli

from microdeblur import engine, log
from microdeblur.calibration import REFERENCE, Microscope, OpticsOptions, dz_factor, fit_calibration
from microdeblur.engine import Deblurrer
from microdeblur.errors import UserError
from microdeblur.focus_runs import focus_paths
from microdeblur.image_read import read_image, read_info
from microdeblur.image_write import write_tiff
from microdeblur.inference import deblur_paths
from microdeblur.interpolation import interpolate_paths
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.optics import OpticsRun
from microdeblur.weights import (
    WeightsMeta,
    default_weights_path,
    load_weights,
    optics_of_prepared,
    save_weights,
    training_optics,
)

TINY = dict(widths=(4, 8, 8), id_channels=(2, 3, 4))
OBJ_40X = Microscope(0.75, 0.55)  # 40x/0.75
OBJ_10X = Microscope(0.30, 0.55)  # 10x/0.3


def _save(path: Path, scale: float = 0.5, optics: dict | None = None) -> Path:
    """Tiny calibrated manifold-1d weights (code = 0.05 dz over -20..20 um)."""
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(**TINY)).eval()
    dz = np.linspace(-20, 20, 41)
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=scale,
                                          focus_blur_code=np.array([0.1], np.float32),
                                          calibration=fit_calibration(0.05 * dz, dz), optics=optics))
    return path


@pytest.fixture(scope="module")
def ref_weights(tmp_path_factory) -> Path:
    """Weights without an optics entry, at scale 0.5: read as the reference microscope (0.65 um working pixels)."""
    return _save(tmp_path_factory.mktemp("w") / "ref.safetensors")


def _texture(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 3000 + 1000).astype(np.uint16)


def _ome(path: Path, data: np.ndarray, *, na: float | None = None, wavelength_nm: float | None = None,
         pixel_nm: float | None = None, y_only: bool = False, objectives: tuple = (), settings: str | None = None) -> Path:
    """An OME-TIFF whose XML names an objective (LensNA), a channel wavelength (nm) and a pixel size (nm)."""
    h, w = data.shape
    objs = "".join(f'<Objective ID="Objective:{i}" LensNA="{v}"/>' for i, v in enumerate(objectives or
                                                                                        ((na,) if na else ())))
    ref = f'<ObjectiveSettings ID="{settings}"/>' if settings else ""
    size = "" if pixel_nm is None else (f'PhysicalSizeY="{pixel_nm}" PhysicalSizeYUnit="nm"' if y_only else
                                        f'PhysicalSizeX="{pixel_nm}" PhysicalSizeXUnit="nm" '
                                        f'PhysicalSizeY="{pixel_nm}" PhysicalSizeYUnit="nm"')
    wl = "" if wavelength_nm is None else f'EmissionWavelength="{wavelength_nm}" EmissionWavelengthUnit="nm"'
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           f'<Instrument ID="Instrument:0">{objs}</Instrument><Image ID="Image:0">{ref}'
           f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="{w}" SizeY="{h}" SizeC="1" SizeZ="1" '
           f'SizeT="1" {size}><Channel ID="Channel:0:0" SamplesPerPixel="1" {wl}/><TiffData/></Pixels></Image></OME>')
    tifffile.imwrite(path, data, description=xml, metadata=None)
    return path


# ---------------------------------------------------------------- units


def test_dz_conversion_follows_na_squared_over_wavelength_and_round_trips():
    bare = replace(REFERENCE, working_pixel_um=None)  # no band limit: plain NA^2 / lambda
    f40, f10 = dz_factor(bare, OBJ_40X), dz_factor(bare, OBJ_10X)
    assert f40 == pytest.approx(0.40 ** 2 / 0.75 ** 2) and f10 == pytest.approx(0.40 ** 2 / 0.30 ** 2)
    assert dz_factor(REFERENCE, Microscope(0.40, 0.65)) == pytest.approx(0.65 / 0.55)  # longer wavelength: deeper
    dz = np.linspace(-30, 30, 13)
    for train in (bare, REFERENCE):
        for user in (OBJ_40X, OBJ_10X, REFERENCE):
            back = dz * dz_factor(train, user) * dz_factor(replace(user, working_pixel_um=train.working_pixel_um), train)
            assert np.allclose(back, dz, rtol=1e-12, atol=1e-12)
            # the optical defocus u = dz NA^2 / lambda (in the working band) is the same on both microscopes
            band = train.working_pixel_um
            assert np.allclose(train.optical_units(dz, band), user.optical_units(dz * dz_factor(train, user), band))
    assert dz_factor(REFERENCE, REFERENCE) == 1.0


def test_an_objective_counts_only_up_to_the_na_its_working_pixels_can_show():
    """0.65 um working pixels hold frequencies up to 1/1.3 per um: an NA above lambda/1.3 adds no visible blur."""
    cap = 0.55 / 1.3
    assert REFERENCE.band_na(0.65) == 0.40 and OBJ_10X.band_na(0.65) == 0.30  # below the cap: as they are
    assert OBJ_40X.band_na(0.65) == pytest.approx(cap) and Microscope(1.4, 0.55).band_na(0.65) == pytest.approx(cap)
    assert dz_factor(REFERENCE, OBJ_40X) == pytest.approx(0.40 ** 2 / cap ** 2)
    assert dz_factor(REFERENCE, OBJ_10X) == pytest.approx(0.40 ** 2 / 0.30 ** 2)  # unchanged below the cap
    # finer working pixels show more of a high-NA objective's blur
    fine = replace(REFERENCE, working_pixel_um=0.1625)
    assert dz_factor(fine, OBJ_40X) == pytest.approx(0.40 ** 2 / 0.75 ** 2)


def test_reference_microscope_is_the_simulators():
    from microdeblur.microscope import Optics

    o = Optics()
    assert (REFERENCE.na, REFERENCE.wavelength_um, REFERENCE.pixel_um) == (o.na, o.wavelength_um, o.pixel_um)
    assert REFERENCE.working_pixel_um == pytest.approx(o.pixel_um / 0.5)


# ---------------------------------------------------------------- the weights' optics entry


def test_weights_without_optics_read_as_the_reference_microscope(tmp_path, ref_weights):
    _, meta = load_weights(ref_weights)
    assert meta.optics is None
    assert training_optics(meta) == REFERENCE  # scale 0.5: 0.325 um camera pixels -> 0.65 um working pixels
    _, meta1 = load_weights(_save(tmp_path / "s1.safetensors", scale=1.0))
    assert training_optics(meta1) == Microscope(0.40, 0.55, 0.325, 0.325)
    if default_weights_path().is_file():  # the shipped weights carry the entry: the reference microscope
        _, shipped = load_weights(None)
        assert shipped.optics is not None and training_optics(shipped) == REFERENCE


def test_weights_optics_entry_round_trips_and_is_checked(tmp_path):
    entry = {**Microscope(0.75, 0.6, 0.1625, 0.325).to_dict(), "assumed": []}
    _, meta = load_weights(_save(tmp_path / "o.safetensors", optics=entry))
    assert meta.optics == entry and training_optics(meta) == Microscope(0.75, 0.6, 0.1625, 0.325)
    with pytest.raises(UserError, match="damaged microdeblur metadata"):
        load_weights(_save(tmp_path / "bad.safetensors", optics={**entry, "na": 3.0}))


def _raw_day(folder: Path, truth_optics: dict | None, pixel_um: float | None, planes: int = 5) -> None:
    """A raw day as `simulate` lays it out: plane files (ImageJ resolution), focus.txt, ground_truth.json."""
    folder.mkdir(parents=True)
    res = {} if pixel_um is None else {"resolution": (1 / pixel_um, 1 / pixel_um)}
    for k in range(planes):
        tifffile.imwrite(folder / f"{folder.name}_z{k:03d}.tif", _texture((256, 256), k), imagej=True,
                         metadata={"axes": "YX", **({"unit": "um"} if pixel_um else {})}, **res)
    (folder / "focus.txt").write_text(f"{planes // 2}\n")
    if truth_optics is not None:
        (folder / "ground_truth.json").write_text(json.dumps({"z_step_um": 2.0, "optics": truth_optics}))


def test_optics_of_a_prepared_folder_from_ground_truth_and_index(tmp_path):
    from microdeblur.microscope import Optics

    o = Optics(na=0.75, magnification=40.0)
    _raw_day(tmp_path / "raw" / "d1", {"na": o.na, "wavelength_um": o.wavelength_um, "pixel_um": o.pixel_um},
             o.pixel_um)
    index = {"days": {"d1": {"source": str(tmp_path / "raw" / "d1"), "pixel_size_um": o.pixel_um / 0.5}}}
    entry = optics_of_prepared(index, 0.5)
    assert (entry["na"], entry["wavelength_um"], entry["assumed"]) == (0.75, 0.55, [])
    assert entry["pixel_um"] == pytest.approx(0.1625) and entry["working_pixel_um"] == pytest.approx(0.325)
    # nothing known (raw data moved away, no pixel size): the reference microscope, every value listed as assumed
    entry = optics_of_prepared({"days": {"d": {"source": str(tmp_path / "gone"), "pixel_size_um": None}}}, 0.5)
    assert Microscope.from_dict(entry) == REFERENCE and set(entry["assumed"]) == {"na", "wavelength_um", "pixel_um"}


def test_training_writes_the_optics_entry(tmp_path):
    """Days prepared with their optics train in reference-microscope um: the weights record the reference NA and
    wavelength (u = dz NA^2 / wavelength carries over) and the working pixel size."""
    from microdeblur.train_config import TrainConfig
    from microdeblur.training import train

    for day in ("d1", "d2"):
        _raw_day(tmp_path / "raw" / day, {"na": 0.75, "wavelength_um": 0.6, "pixel_um": 0.1625}, 0.1625)
    res = run_cli("-q", "prepare", tmp_path / "raw", tmp_path / "data", "--tile", "64", "--scale", "0.5")
    assert res.exit_code == 0, res.output
    cfg = TrainConfig(max_steps=2, batch_size=2, crop=32, workers=1, checkpoint_every=2, eval_every=2,
                      widths=(4, 8, 8), id_channels=(2, 3, 4), beta_delay=1, beta_ramp=1)
    train(tmp_path / "data", tmp_path / "w.safetensors", cfg)
    _, meta = load_weights(tmp_path / "w.safetensors")
    assert meta.optics["assumed"] == [] and training_optics(meta) == Microscope(0.4, 0.55, 0.1625, 0.325)


def test_prepare_resizes_each_day_to_the_working_pixel_and_scales_dz_to_reference_units(tmp_path):
    """Without --scale every day is resized by its own pixel size / 0.65 um, and its dz is counted in um of the
    reference microscope (factor NA^2/wavelength over the reference's, an NA counted up to what 0.65 um pixels show,
    0.55/1.3), so two microscopes share one dz axis."""
    from microdeblur.calibration import REFERENCE
    from microdeblur.dataset import PreparedData

    _raw_day(tmp_path / "raw" / "hi", {"na": 0.8, "wavelength_um": 0.55, "pixel_um": 0.1625}, 0.1625, planes=5)
    _raw_day(tmp_path / "raw" / "ref", {"na": 0.4, "wavelength_um": 0.55, "pixel_um": 0.325}, 0.325, planes=5)
    res = run_cli("-q", "prepare", tmp_path / "raw", tmp_path / "data", "--tile", "64")
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    hi, ref = index["days"]["hi"], index["days"]["ref"]
    assert (hi["scale"], ref["scale"], index["working_pixel_um"]) == (0.25, 0.5, 0.65)
    assert hi["frame_shape"] == [64, 64] and ref["frame_shape"] == [128, 128]
    assert hi["pixel_size_um"] == pytest.approx(0.65) and ref["pixel_size_um"] == pytest.approx(0.65)
    factor = (0.55 / 1.3) ** 2 / 0.4 ** 2  # NA 0.8 counts as 0.423 at 0.65 um working pixels
    assert hi["optics"]["dz_factor"] == pytest.approx(factor, abs=1e-6) and ref["optics"]["dz_factor"] == 1.0
    assert hi["optics"]["from"] == {"pixel_um": "metadata", "na": "ground_truth.json", "wavelength_um": "ground_truth.json"}
    data = PreparedData.load(tmp_path / "data")
    by_day = {d: sorted(set(np.round(data.dz_all[data.owner == i], 3))) for i, d in enumerate(data.days)}
    assert np.allclose(by_day["hi"], factor * np.array([-4, -2, 0, 2, 4]), atol=1e-3)
    assert by_day["ref"] == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert optics_of_prepared(index, index["scale"])["na"] == REFERENCE.na
    # a day with no pixel size anywhere falls back to the reference camera (resize 0.5) and says so once
    _raw_day(tmp_path / "raw2" / "bare", None, None, planes=3)
    res = run_cli("prepare", tmp_path / "raw2", tmp_path / "data2", "--tile", "64")
    assert res.exit_code == 0, res.output
    assert "pixel size unknown" in res.output and "objective NA unknown" in res.output
    assert json.loads((tmp_path / "data2" / "index.json").read_text())["days"]["bare"]["scale"] == 0.5
    # appending with another resize rule is refused before any work
    res = run_cli("prepare", tmp_path / "raw2", tmp_path / "data", "--tile", "64", "--scale", "0.5", "--overwrite")
    assert res.exit_code != 0 and "resize to 0.65 um pixels" in res.output and "--scale 0.5" in res.output


def test_prepare_options_fill_in_and_contradictions_fail(tmp_path):
    _raw_day(tmp_path / "raw" / "d", None, 0.325, planes=3)
    res = run_cli("-q", "prepare", tmp_path / "raw", tmp_path / "data", "--tile", "64", "--na", "0.8", "--wavelength", "0.55")
    assert res.exit_code == 0, res.output
    day = json.loads((tmp_path / "data" / "index.json").read_text())["days"]["d"]
    assert day["optics"]["from"] == {"pixel_um": "metadata", "na": "--na", "wavelength_um": "--wavelength"}
    assert day["optics"]["dz_factor"] == pytest.approx((0.55 / 1.3) ** 2 / 0.4 ** 2, abs=1e-6)  # NA 0.8 in the 0.65 um band
    for args, word in ((("--pixel-size", "0.65"), "contradicts"), (("--na", "0"), "--na"),
                       (("--wavelength", "550"), "nanometres")):
        res = run_cli("prepare", tmp_path / "raw", tmp_path / "bad", "--tile", "64", *args)
        one_error(res, word)
        assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- metadata


def test_ome_objective_na_channel_wavelength_and_pixel_size_are_read(tmp_path):
    info = read_info(_ome(tmp_path / "a.ome.tif", _texture((48, 64)), na=0.75, wavelength_nm=550, pixel_nm=162.5))
    assert (info.na, info.wavelength_um, info.pixel_size_um) == (0.75, 0.55, 0.1625)
    info = read_info(_ome(tmp_path / "b.ome.tif", _texture((48, 64)), pixel_nm=325, y_only=True,
                          objectives=(0.3, 0.75), settings="Objective:1"))
    assert (info.na, info.wavelength_um, info.pixel_size_um) == (0.75, None, 0.325)
    info = read_info(_ome(tmp_path / "c.ome.tif", _texture((48, 64)), objectives=(0.3, 0.75)))  # which one? none
    assert (info.na, info.wavelength_um, info.pixel_size_um) == (None, None, None)
    assert read_info(write_tiff(tmp_path / "ij.tif", _texture((48, 64)), "YX", pixel_size_um=0.65)).na is None


# ---------------------------------------------------------------- options against metadata


def _run(weights: Path, options: OpticsOptions = OpticsOptions(), dz: bool = True) -> OpticsRun:
    model, meta = load_weights(weights)
    return OpticsRun(Deblurrer(model, meta), options.checked(), dz)


def test_options_fill_missing_metadata_and_metadata_wins_within_five_percent(tmp_path, ref_weights, capsys):
    plain = read_info(write_tiff(tmp_path / "plain.tif", _texture((48, 64)), "YX"))
    ome = read_info(_ome(tmp_path / "m.ome.tif", _texture((48, 64)), na=0.75, wavelength_nm=600, pixel_nm=325))
    assert _run(ref_weights, OpticsOptions(0.3, 0.5, 0.65)).microscope(plain) == Microscope(0.3, 0.5, 0.65)
    # within 5 %: the file's own values
    assert _run(ref_weights, OpticsOptions(0.74, 0.61, 0.33)).microscope(ome) == Microscope(0.75, 0.6, 0.325)
    assert _run(ref_weights).microscope(ome) == Microscope(0.75, 0.6, 0.325)
    capsys.readouterr()
    run = _run(ref_weights)  # neither: the reference microscope, said once per run
    with log.at_level(2):  # a CLI test with -q before may have left the level at 0; the pixel notice is -v
        assert run.microscope(plain) == Microscope(REFERENCE.na, REFERENCE.wavelength_um, None)
        run.microscope(plain), run.resolve(plain), run.resolve(plain)
        early = capsys.readouterr().err  # said at the end of a run that succeeded, not before an error
        assert "reference microscope" not in early and "no pixel size" not in early, early
        run.report()
        run.report()
    err = capsys.readouterr().err
    assert err.count("reference microscope") == 1 and err.count("no pixel size") == 1, err


@pytest.mark.parametrize("option,value,stored,words", [
    ("--na", "0.4", "na", ("--na 0.4", "0.75")),
    ("--wavelength", "0.45", "wl", ("--wavelength 0.45 um", "0.6 um")),
    ("--pixel-size", "0.65", "px", ("--pixel-size 0.65 um", "0.325 um")),
])
@pytest.mark.parametrize("command", ["deblur", "focus", "interpolate"])
def test_an_option_contradicting_the_metadata_is_an_error_naming_both(tmp_path, ref_weights, command, option, value,
                                                                     stored, words):
    src = _ome(tmp_path / "m.ome.tif", _texture((48, 64)), na=0.75, wavelength_nm=600, pixel_nm=325)
    extra = ["--dz-from", "0", "--dz-to", "4"] if command == "interpolate" else []
    out = tmp_path / "out.tif"
    one_error(run_cli(command, src, *extra, "-o", out, "-w", ref_weights, option, value), *words, "contradicts")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.tif"]


BAD = [
    ("--na", "0", "--na must be"), ("--na", "1.7", "(0, 1.6]"), ("--na", "nan", "--na must be"),
    ("--na", "-0.3", "--na must be"),
    ("--wavelength", "550", "looks like nanometres"), ("--wavelength", "550", "0.55"),
    ("--wavelength", "0.1", "(0.2, 2]"), ("--wavelength", "2.5", "--wavelength must be"),
    ("--wavelength", "inf", "--wavelength must be"),
    ("--pixel-size", "0", "--pixel-size must be"), ("--pixel-size", "-0.5", "(0, 100]"),
    ("--pixel-size", "101", "--pixel-size must be"), ("--pixel-size", "inf", "--pixel-size must be"),
    ("--pixel-size", "nan", "--pixel-size must be"),
]


@pytest.mark.parametrize("option,value,words", BAD)
@pytest.mark.parametrize("command", ["deblur", "focus", "interpolate"])
def test_bad_optics_values_are_one_error_line_and_nothing_written(tmp_path, ref_weights, command, option, value,
                                                                  words):
    src = write_tiff(tmp_path / "in.tif", _texture((48, 64)), "YX", pixel_size_um=0.65)
    extra = ["--dz-from", "0", "--dz-to", "4"] if command == "interpolate" else []
    out = tmp_path / "out" / "o.tif"
    one_error(run_cli(command, src, *extra, "-o", out, "-w", ref_weights, option, value), words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_the_nanometre_hint_suggests_micrometres():
    with pytest.raises(UserError, match=r"looks like nanometres; give micrometres, e\.g\. --wavelength 0\.633"):
        OpticsOptions(wavelength_um=633).checked()
    OpticsOptions(1.6, 2.0, 100.0).checked()  # the upper ends are allowed
    OpticsOptions(0.01, 0.2001, 1e-3).checked()


# ---------------------------------------------------------------- pixel size drives the resize


@pytest.fixture
def scales(monkeypatch) -> list[float]:
    """The resize factor of every plane that goes through the engine's rescale."""
    seen: list[float] = []
    real = engine.rescale

    def spy(plane, scale):
        seen.append(scale)
        return real(plane, scale)

    monkeypatch.setattr(engine, "rescale", spy)
    return seen


@pytest.mark.parametrize("pixel,option,scale_opt,expected", [
    (0.65, None, None, 1.0),     # 0.65 um pixels are the reference weights' working pixels: no resize
    (0.325, None, None, 0.5),    # the shipped examples' pixel size: the weights' own factor
    (None, None, None, 0.5),     # unknown: the weights' factor, as before
    (None, 1.3, None, 2.0),      # --pixel-size fills the gap
    (0.65, None, 0.25, 0.25),    # --scale wins over the pixel size
    (0.26, None, None, 0.4),
])
def test_pixel_size_drives_the_resize(tmp_path, ref_weights, scales, pixel, option, scale_opt, expected):
    src = write_tiff(tmp_path / "in.tif", _texture((96, 128)), "YX", pixel_size_um=pixel)
    deblur_paths([str(src)], tmp_path / "out.tif", weights=ref_weights, device="cpu", scale=scale_opt,
                 optics=OpticsOptions(pixel_size_um=option))
    assert scales == [expected]
    out = read_image(tmp_path / "out.tif")
    assert out.shape == (96, 128) and out.pixel_size_um == (pixel or None)


def test_pixel_size_far_from_the_networks_is_an_error_before_writing(tmp_path, ref_weights):
    src = write_tiff(tmp_path / "in.tif", _texture((48, 64)), "YX", pixel_size_um=20.0)  # factor 30.8
    one_error(run_cli("deblur", src, "-o", tmp_path / "o.tif", "-w", ref_weights), "20 um", "outside [1/64, 8]", "--scale")
    assert not (tmp_path / "o.tif").exists()
    assert run_cli("deblur", src, "-o", tmp_path / "o.tif", "-w", ref_weights, "--scale", "1").exit_code == 0


def test_a_plane_too_small_at_the_working_pixel_size_is_warned_about_once(tmp_path, ref_weights):
    small = write_tiff(tmp_path / "small.tif", _texture((2, 96, 128)), "ZYX", pixel_size_um=0.13)  # 19x26 px working
    large = write_tiff(tmp_path / "large.tif", _texture((96, 128)), "YX", pixel_size_um=0.325)  # 48x64 px working
    res = run_cli("deblur", small, large, "-o", tmp_path / "out", "-w", ref_weights, "--device", "cpu")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if "working pixel size" in line]
    assert warned == [f"warning: {small}: only 26x19 px at the network's working pixel size (resize factor 0.2), "
                      "under 32 px a side: the network sees a sliver of one 128-px tile, focus readings are left out "
                      "and a deblurred output is that small image enlarged back (check the pixel size, or give --scale)"]
    assert read_image(tmp_path / "out" / "small.tif").shape == (2, 96, 128)


def test_weights_trained_at_another_pixel_size_resize_to_it(tmp_path, scales):
    entry = {**Microscope(0.75, 0.55, 0.1625, 0.325).to_dict(), "assumed": []}
    w = _save(tmp_path / "w40.safetensors", optics=entry)
    src = write_tiff(tmp_path / "in.tif", _texture((96, 128)), "YX", pixel_size_um=0.65)
    deblur_paths([str(src)], tmp_path / "out.tif", weights=w, device="cpu")
    assert scales == [2.0]


# ---------------------------------------------------------------- dz in the user's um


def test_focus_map_at_other_optics_scales_by_the_na2_over_wavelength_ratio(tmp_path, ref_weights):
    data = _texture((160, 200), 3)
    plain = write_tiff(tmp_path / "plain.tif", data, "YX", pixel_size_um=0.325)
    ome = _ome(tmp_path / "m.ome.tif", data, na=0.75, wavelength_nm=550, pixel_nm=325)
    focus_paths([str(plain)], tmp_path / "ref.tif", weights=ref_weights, device="cpu", csv=tmp_path / "ref.csv")
    focus_paths([str(plain)], tmp_path / "opt.tif", weights=ref_weights, device="cpu", csv=tmp_path / "opt.csv",
                optics=OpticsOptions(na=0.75, wavelength_um=0.55))
    focus_paths([str(ome)], tmp_path / "meta.tif", weights=ref_weights, device="cpu")
    ref, opt, meta = (read_image(tmp_path / f"{n}.tif").data for n in ("ref", "opt", "meta"))
    factor = 0.40 ** 2 / (0.55 / 1.3) ** 2  # NA 0.75 counts as 0.423, the finest detail of 0.65 um pixels
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.5
    assert np.allclose(opt, ref * factor, rtol=1e-5, atol=1e-6) and np.array_equal(meta, opt)
    med = [float(next(iter(_rows(tmp_path / f"{n}.csv")))["median_dz_um"]) for n in ("ref", "opt")]
    assert med[1] == pytest.approx(med[0] * factor, abs=1e-3)


def _rows(path: Path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def code_net(monkeypatch):
    """Network whose output tile is its blur code everywhere: outputs show which code a dz asked for."""
    monkeypatch.setattr(Deblurrer, "encode_tiles", lambda self, t: (np.zeros((len(t), 1), np.float32),
                                                                    np.zeros((len(t), 1), np.float32)))
    monkeypatch.setattr(Deblurrer, "decode_tiles", lambda self, i, b: np.asarray(b, np.float32)[:, :, None, None]
                        * np.ones((1, 1, self.tile, self.tile), np.float32))


def test_deblur_dz_is_in_the_users_um(tmp_path, ref_weights, code_net):
    src = write_tiff(tmp_path / "in.tif", _texture((96, 128), 4), "YX", pixel_size_um=0.325)
    factor = dz_factor(REFERENCE, OBJ_10X)
    deblur_paths([str(src)], tmp_path / "ref.tif", weights=ref_weights, device="cpu", dz=6.0)
    deblur_paths([str(src)], tmp_path / "10x.tif", weights=ref_weights, device="cpu", dz=6.0 * factor,
                 optics=OpticsOptions(na=0.30, wavelength_um=0.55))
    deblur_paths([str(src)], tmp_path / "10x_same_um.tif", weights=ref_weights, device="cpu", dz=6.0,
                 optics=OpticsOptions(na=0.30, wavelength_um=0.55))
    ref, x10, same = (read_image(tmp_path / f"{n}.tif").data.astype(int) for n in ("ref", "10x", "10x_same_um"))
    assert np.abs(ref - x10).max() <= 1  # the same optical defocus gives the same output (float rounding of dz)
    assert np.abs(ref - same).min() > 100  # 6 um on the 10x is less blur than 6 um on the reference


def test_interpolate_dz_range_and_z_step_are_in_the_users_um(tmp_path, ref_weights, code_net):
    src = write_tiff(tmp_path / "a.tif", _texture((96, 128), 5), "YX", pixel_size_um=0.325)
    factor = dz_factor(REFERENCE, OBJ_40X)
    interpolate_paths(src, None, tmp_path / "ref.tif", steps=3, dz_from=0.0, dz_to=8.0, weights=ref_weights,
                      device="cpu")
    interpolate_paths(src, None, tmp_path / "40x.tif", steps=3, dz_from=0.0, dz_to=8.0 * factor, weights=ref_weights,
                      device="cpu", optics=OpticsOptions(na=0.75))
    ref, x40 = read_image(tmp_path / "ref.tif"), read_image(tmp_path / "40x.tif")
    assert np.abs(ref.data.astype(int) - x40.data).max() <= 1
    assert np.abs(np.diff(ref.data.astype(int), axis=0)).min() > 100  # each plane has its own code
    assert ref.z_step_um == pytest.approx(4.0) and x40.z_step_um == pytest.approx(4.0 * factor, rel=1e-4)


def test_dz_range_warning_is_named_in_the_users_um(tmp_path, ref_weights, capsys):
    src = write_tiff(tmp_path / "in.tif", _texture((48, 64)), "YX", pixel_size_um=0.325)
    with log.at_level(1):
        deblur_paths([str(src)], tmp_path / "o.tif", weights=ref_weights, device="cpu", dz=30.0,
                     optics=OpticsOptions(na=0.75))
    err = capsys.readouterr().err
    hi = 20 * dz_factor(REFERENCE, Microscope(0.75, 0.55))
    assert f"[{-hi:.4g}, {hi:.4g}] um is clipped" in err and "0.8939 x the network's um" in err, err
    assert "NA counted up to 0.423" in err, err
