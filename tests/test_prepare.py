"""prepare: raw layouts → index.json + per-crop Z stacks; focus detection; bad inputs via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from typer.testing import CliRunner

from microdeblur import prepare as prep
from microdeblur.cli import app
from microdeblur.errors import UserError
from microdeblur.image_read import read_image
from microdeblur.image_write import to_dtype, write_tiff
from microdeblur.normalize import frame_normalizer
from microdeblur.resizing import rescale


def bf_stack(n: int, focus: int, shape=(64, 96), seed: int = 0) -> np.ndarray:
    """Bright-field-like uint16 stack: contrast grows with |dz| and inverts sign across focus."""
    rng = np.random.default_rng(seed)
    texture = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    texture /= texture.std()
    z = np.arange(n)[:, None, None] - focus
    return (3000 + 40 * z * texture + rng.normal(0, 5, (n, *shape))).astype(np.uint16)


def write_day(folder: Path, stack: np.ndarray, name: str | None = None, focus: int | None = None) -> Path:
    """Raw layout (a): one file per plane, plane number in the name, optional focus.txt."""
    folder.mkdir(parents=True)
    name = name or folder.name
    for i, plane in enumerate(stack):
        tifffile.imwrite(folder / f"{name}_z{i:03d}.tif", plane)
    if focus is not None:
        (folder / "focus.txt").write_text(f"{focus}\n")
    return folder


def run(*args: str):
    """Invoke the CLI (wide console so one-line messages are not wrapped)."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def index_of(data: Path) -> dict:
    return json.loads((data / "index.json").read_text())


def test_folder_day_layout_tiles_and_index(tmp_path: Path):
    stack = bf_stack(6, 2, shape=(136, 200))
    write_day(tmp_path / "raw" / "day1", stack, focus=2)
    (tmp_path / "raw" / "day1" / "ground_truth.json").write_text('{"z_step_um": 1.5}')
    data = tmp_path / "data"
    res = run("prepare", tmp_path / "raw" / "day1", data, "--tile", "32")
    assert res.exit_code == 0, res.output
    index = index_of(data)
    assert (index["format"], index["version"], index["tile"], index["scale"]) == ("microdeblur-prepared", 1, 32, 0.5)
    day = index["days"]["day1"]
    assert day["frame_shape"] == [68, 100] and day["dropped_edge_px"] == [4, 4]
    assert len(day["crops"]) == 2 * 3 and day["n_planes"] == 6
    assert (day["focus_plane"], day["focus_method"], day["z_step_um"]) == (2, "marker", 1.5)
    assert day["dz_planes"] == [-2, -1, 0, 1, 2, 3]
    small = [to_dtype(rescale(p, 0.5), np.uint16) for p in stack]
    assert day["lo"][3] == frame_normalizer(small[3]).lo and day["hi"][3] == frame_normalizer(small[3]).hi
    crop = day["crops"][4]
    assert crop == {"file": "day1/r1_c1.tif", "row": 1, "col": 1, "y": 32, "x": 32}
    img = read_image(data / crop["file"])
    assert (img.axes, img.shape, img.dtype, img.z_step_um) == ("ZYX", (6, 32, 32), np.uint16, 1.5)
    assert np.array_equal(img.data, np.stack(small)[:, 32:64, 32:64])
    assert sorted(p.name for p in data.iterdir()) == ["day1", "index.json"]


def test_binning_matches_skimage_resize_closely():
    from skimage.transform import resize

    frame = bf_stack(1, 5, shape=(96, 128))[0].astype(np.float32)
    ours = rescale(frame, 0.5)
    ref = resize(frame, (48, 64), anti_aliasing=True, preserve_range=True)
    assert ours.shape == (48, 64) and np.abs(ours - ref).mean() < 0.05 * frame.std()
    assert rescale(frame, 0.75).shape == (72, 96)
    assert np.array_equal(rescale(frame, 1.0), frame)


def test_stack_file_with_marker_and_metadata_z_step(tmp_path: Path):
    stack = bf_stack(5, 1, shape=(64, 64))
    write_tiff(tmp_path / "field.ome.tif", stack, "ZYX", pixel_size_um=0.2, z_step_um=0.7)
    (tmp_path / "field.focus.txt").write_text("3\nanything")
    res = run("prepare", tmp_path / "field.ome.tif", tmp_path / "data", "--scale", "1", "--tile", "32")
    assert res.exit_code == 0, res.output
    day = index_of(tmp_path / "data")["days"]["field"]
    assert (day["focus_plane"], day["focus_method"], day["z_step_um"], len(day["crops"])) == (3, "marker", 0.7, 4)
    assert read_image(tmp_path / "data" / "field" / "r1_c1.tif").pixel_size_um == pytest.approx(0.2)


def test_folder_of_days_folder_of_stacks_and_infocus_name(tmp_path: Path):
    raw = tmp_path / "raw"
    write_day(raw / "d2", bf_stack(4, 1, shape=(32, 32), seed=2), focus=1)
    write_day(raw / "d10", bf_stack(4, 2, shape=(32, 32), seed=3))
    (raw / "d10" / "d10_z002.tif").rename(raw / "d10" / "d10_z002_infocus.tif")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for k in (1, 2):
        tifffile.imwrite(stacks / f"s{k}.tif", bf_stack(3, 1, shape=(32, 32), seed=k), photometric="minisblack")
    res = run("prepare", raw, stacks, tmp_path / "data", "--scale", "1", "--tile", "32", "--focus-plane", "1",
              "--z-step", "2")
    assert res.exit_code == 0, res.output
    days = index_of(tmp_path / "data")["days"]
    assert list(days) == ["d2", "d10", "s1", "s2"]
    assert all(d["focus_method"] == "option" and d["z_step_um"] == 2 for d in days.values())
    res = run("prepare", raw / "d10", tmp_path / "data2", "--scale", "1", "--tile", "32")
    assert res.exit_code == 0, res.output
    assert index_of(tmp_path / "data2")["days"]["d10"]["focus_plane"] == 2


def test_auto_focus_on_synthetic_day(tmp_path: Path):
    write_day(tmp_path / "auto", bf_stack(21, 13, shape=(64, 64)))
    res = run("prepare", tmp_path / "auto", tmp_path / "data", "--scale", "1", "--tile", "32")
    assert res.exit_code == 0, res.output
    day = index_of(tmp_path / "data")["days"]["auto"]
    assert day["focus_method"] == "auto" and abs(day["focus_plane"] - 13) <= 1
    assert "in-focus plane" in res.output and "contrast minimum" in res.output


@pytest.mark.parametrize("name,expected", [("bfseg_pombe", range(14, 18)), ("bfautofocus_pombe", range(15, 19))])
def test_auto_focus_on_real_yeast_stacks(real_stack_paths, name, expected):
    stack = tifffile.imread(real_stack_paths[name])
    est = prep.focus_from_contrast([prep.plane_contrast(p) for p in stack])
    assert est.plane in expected and est.reliable
    binned = np.stack([rescale(p[: p.shape[0] // 2 * 2, : p.shape[1] // 2 * 2], 0.5) for p in stack])
    assert prep.focus_from_contrast([prep.plane_contrast(p) for p in binned]).plane in expected
    assert stack[est.plane].std() < stack[0].std()  # max-variance would pick an edge plane


def test_real_stack_through_cli(tmp_path: Path, real_stack_paths):
    res = run("prepare", real_stack_paths["bfseg_pombe"], tmp_path / "data", "--scale", "1", "--tile", "32")
    assert res.exit_code == 0, res.output
    day = index_of(tmp_path / "data")["days"]["BF_zstack_34x0.3um"]
    assert day["focus_method"] == "auto" and 14 <= day["focus_plane"] <= 17
    assert day["z_step_um"] == pytest.approx(0.3) and day["dropped_edge_px"] == [31, 28]


def test_append_day_and_overwrite(tmp_path: Path):
    data = tmp_path / "data"
    write_day(tmp_path / "a", bf_stack(3, 1, shape=(32, 32)), focus=1)
    write_day(tmp_path / "b", bf_stack(3, 1, shape=(32, 64), seed=1), focus=0)
    assert run("prepare", tmp_path / "a", data, "--scale", "1", "--tile", "32").exit_code == 0
    assert run("prepare", tmp_path / "b", data, "--scale", "1", "--tile", "32").exit_code == 0
    index = index_of(data)
    assert list(index["days"]) == ["a", "b"] and len(index["days"]["b"]["crops"]) == 2
    again = run("prepare", tmp_path / "a", data, "--scale", "1", "--tile", "32")
    assert again.exit_code != 0 and "--overwrite" in again.output
    (tmp_path / "a" / "focus.txt").write_text("2")
    res = run("prepare", tmp_path / "a", data, "--scale", "1", "--tile", "32", "--overwrite")
    assert res.exit_code == 0, res.output
    index = index_of(data)
    assert index["days"]["a"]["focus_plane"] == 2 and list(index["days"]) == ["a", "b"]
    assert sorted(p.name for p in data.iterdir()) == ["a", "b", "index.json"]
    other = run("prepare", tmp_path / "b", tmp_path / "data", "--scale", "1", "--tile", "16", "--overwrite")
    assert other.exit_code != 0 and "tile 32" in other.output


def test_failure_midway_leaves_data_untouched(tmp_path: Path, monkeypatch):
    data = tmp_path / "data"
    write_day(tmp_path / "a", bf_stack(3, 1, shape=(32, 32)), focus=1)
    assert run("prepare", tmp_path / "a", data, "--scale", "1", "--tile", "32").exit_code == 0
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    write_day(tmp_path / "b", bf_stack(3, 1, shape=(64, 64)), focus=1)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(args[0]))
        return write_tiff(*args, **kwargs)

    monkeypatch.setattr(prep, "write_tiff", flaky)
    res = run("prepare", tmp_path / "b", tmp_path / "a", data, "--scale", "1", "--tile", "32", "--overwrite")
    assert res.exit_code != 0
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert not any(p.name.startswith(".") for p in data.iterdir())


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list, str]]:
    """Each bad input: (prepare arguments, a word the message must contain)."""
    good = write_day(tmp_path / "good", bf_stack(3, 1, shape=(32, 32)), focus=1)
    (tmp_path / "empty").mkdir()
    write_day(tmp_path / "zero", bf_stack(3, 1, shape=(32, 32)))
    (tmp_path / "zero" / "zero_z001.tif").write_bytes(b"")
    write_day(tmp_path / "corrupt", bf_stack(3, 1, shape=(32, 32)))
    (tmp_path / "corrupt" / "corrupt_z002.tif").write_bytes(b"II*\x00garbage" * 3)
    (tmp_path / "bad.tif").write_bytes(b"\x00" * 50)
    write_day(tmp_path / "sizes", bf_stack(3, 1, shape=(32, 32)))
    tifffile.imwrite(tmp_path / "sizes" / "sizes_z002.tif", np.zeros((32, 40), np.uint16))
    write_day(tmp_path / "small", bf_stack(3, 1, shape=(40, 40)))
    write_day(tmp_path / "range", bf_stack(3, 1, shape=(32, 32)), focus=7)
    (tmp_path / "textfocus").mkdir()
    write_day(tmp_path / "textfocus" / "tf", bf_stack(3, 1, shape=(32, 32)))
    (tmp_path / "textfocus" / "tf" / "focus.txt").write_text("middle")
    write_day(tmp_path / "one", bf_stack(1, 0, shape=(32, 32)))
    tifffile.imwrite(tmp_path / "single.tif", np.zeros((32, 32), np.uint16))
    (tmp_path / "datafile").write_text("x")
    write_day(tmp_path / "multi", bf_stack(3, 1, shape=(32, 32)))
    tifffile.imwrite(tmp_path / "multi" / "multi_z001.tif", bf_stack(2, 1, shape=(32, 32)))
    tifffile.imwrite(tmp_path / "channels.tif", np.zeros((3, 2, 32, 32), np.uint16), imagej=True,
                     metadata={"axes": "ZCYX"})
    (tmp_path / "proj").mkdir()
    tifffile.imwrite(tmp_path / "proj" / "day_max_projection.tif", np.zeros((32, 32), np.uint16))
    nan = bf_stack(3, 1, shape=(32, 32)).astype(np.float32)
    nan[2, 5, 5] = np.nan
    write_day(tmp_path / "nan", nan)
    gap = write_day(tmp_path / "gap", bf_stack(4, 1, shape=(32, 32)), focus=1)
    (gap / "gap_z002.tif").unlink()  # planes 0, 1, 3: a missing plane would shift the dz of plane 3
    inf = nan.copy()
    inf[2, 5, 5] = np.inf
    tifffile.imwrite(tmp_path / "inf.tif", inf, photometric="minisblack")
    out = str(tmp_path / "out")
    return {
        "missing path": ([tmp_path / "nope", out], "no such file"),
        "empty folder": ([tmp_path / "empty", out], "no images"),
        "zero-byte plane": ([tmp_path / "zero", out], "0 bytes"),
        "corrupt plane": ([tmp_path / "corrupt", out], "corrupt_z002.tif"),
        "corrupt stack": ([tmp_path / "bad.tif", out], "bad.tif"),
        "frame sizes differ": ([tmp_path / "sizes", out], "differs"),
        "smaller than tile": ([tmp_path / "small", out, "--scale", "0.5"], "smaller than one"),
        "focus option out of range": ([good, out, "--focus-plane", "3"], "out of range"),
        "focus marker out of range": ([tmp_path / "range", out], "out of range"),
        "focus marker not a number": ([tmp_path / "textfocus", out], "focus.txt"),
        "one plane day": ([tmp_path / "one", out], "only one plane"),
        "one plane stack": ([tmp_path / "single.tif", out], "only one plane"),
        "data is a file": ([good, tmp_path / "datafile"], "not a folder"),
        "non-2D plane": ([tmp_path / "multi", out], "2-D"),
        "stack with channels": ([tmp_path / "channels.tif", out], "ZCYX"),
        "duplicate day names": ([good, good, out], "good"),
        "bad scale": ([good, out, "--scale", "0"], "--scale"),
        "only projections": ([tmp_path / "proj", out], "projection"),
        "NaN pixel in a plane file": ([tmp_path / "nan", out], "nan_z002.tif: 1 pixel(s) are NaN"),
        "inf pixel in a stack": ([tmp_path / "inf.tif", out], "(plane 2): 1 pixel(s) are NaN, infinite"),
        "missing plane number": ([tmp_path / "gap", out], "jump from 1 (gap_z001.tif) to 3 (gap_z003.tif)"),
    }


def test_bad_inputs_one_line_error_and_nothing_written(tmp_path: Path):
    cases = _bad_inputs(tmp_path)
    for label, (args, word) in cases.items():
        res = run("prepare", *args, "--tile", "32", *([] if "--scale" in args else ["--scale", "1"]))
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code != 0, label
        assert len(lines) == 1 and lines[0].startswith("error:"), (label, res.output)
        assert word in lines[0], (label, lines[0])
        assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), label
        assert not (tmp_path / "out").exists(), label


def test_load_index_one_line_errors(tmp_path: Path):
    good = {"format": prep.FORMAT, "version": prep.VERSION, "tile": 32, "scale": 1.0, "days": {"a": {"crops": []}}}
    cases = {"missing": (None, "does not exist"), "file": (None, "not a folder"), "empty": (None, "has no index.json"),
             "badjson": ("{not json\n", "cannot read"), "list": ("[]", "not a microdeblur-prepared index"),
             "format": (dict(good, format="other"), "not a microdeblur-prepared index"),
             "version": (dict(good, version=2), "version 2 is not supported"),
             "nodays": (dict(good, days={}), "lists no days"), "baddays": (dict(good, days=[1]), "lists no days")}
    (tmp_path / "file").write_text("x")
    for name, (content, words) in cases.items():
        folder = tmp_path / name
        if content is not None:
            folder.mkdir()
            (folder / "index.json").write_text(content if isinstance(content, str) else json.dumps(content))
        elif name == "empty":
            folder.mkdir()
        with pytest.raises(UserError) as err:
            prep.load_index(folder)
        assert words in str(err.value) and "\n" not in str(err.value), name
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "index.json").write_text(json.dumps(good))
    assert prep.load_index(tmp_path / "ok") == good


def test_a_day_without_z_step_is_warned_about_and_init_weights_in_um_refuse_it(tmp_path: Path):
    raw = tmp_path / "day.tif"
    tifffile.imwrite(raw, bf_stack(5, 2, shape=(256, 256)))  # no metadata: z step unknown
    (tmp_path / "day.focus.txt").write_text("2\n")
    res = run("prepare", raw, tmp_path / "data", "--scale", "1")
    assert res.exit_code == 0 and "z step unknown, so dz is counted in planes" in res.output, res.output
    res = run("train", tmp_path / "data", "-o", tmp_path / "mine.safetensors", "--init", "shipped", "--max-steps", "1",
              "--val-fraction", "0")
    assert res.exit_code == 1 and "no z step, so their dz is counted in planes" in res.output, res.output
    assert not (tmp_path / "mine.safetensors").exists()
    res = run("prepare", raw, tmp_path / "data_um", "--scale", "1", "--z-step", "2")  # +-4 um: narrower than the shipped +-30
    res = run("train", tmp_path / "data_um", "-o", tmp_path / "mine.safetensors", "--init", "shipped", "--max-steps",
              "1", "--val-fraction", "0")
    assert res.exit_code == 0 and "(the --init weights spanned [-30, 30])" in res.output, res.output


def test_crop_grid_drops_partial_crops():
    assert prep.crop_grid((100, 70), 32) == (3, 2, [4, 6])


def test_focus_valley_survives_contrast_falling_at_extreme_defocus():
    dz = np.arange(-50, 50)
    curve = np.abs(dz) * np.exp(-np.abs(dz) / 15) + 0.05  # rises, then fades far from focus
    est = prep.focus_from_contrast(curve)
    assert est.plane == 50 and est.reliable
    mono = prep.focus_from_contrast(np.linspace(1.0, 2.0, 20))
    assert mono.plane == 0 and not mono.reliable


def test_days_with_the_same_name_in_two_raw_folders_get_the_folder_name(tmp_path: Path):
    """Two labs' raw folders both holding day01: prefixed with their parent folder, both kept."""
    for lab in ("labA", "labB"):
        write_day(tmp_path / lab / "day01", bf_stack(5, 2, shape=(64, 64)), focus=2)
    res = CliRunner().invoke(app, ["-q", "prepare", str(tmp_path / "labA"), str(tmp_path / "labB"),
                                   str(tmp_path / "data"), "--tile", "32", "--scale", "1"])
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "data" / "index.json").read_text())
    assert sorted(index["days"]) == ["labA_day01", "labB_day01"]
    assert (tmp_path / "data" / "labA_day01" / "r0_c0.tif").is_file()
