"""Image reading/writing, metadata, dtype restore, streaming and atomic writes."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from microdeblur import image_read as mdio
from microdeblur.atomic import atomic_write_bytes, check_output_path
from microdeblur.errors import UserError
from microdeblur.image_read import iter_planes, read_image, read_info
from microdeblur.image_write import StackWriter, to_dtype, write_tiff
from microdeblur.inputs import expand_inputs, natural_key


def _ramp(shape, dtype) -> np.ndarray:
    """Deterministic test data of a dtype."""
    x = np.arange(np.prod(shape)).reshape(shape) % 251
    return (x * 0.5).astype(dtype) if np.dtype(dtype).kind == "f" else x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("axes,shape", [("YX", (20, 30)), ("ZYX", (4, 20, 30)), ("TZYX", (2, 3, 20, 30))])
def test_round_trip_keeps_values_axes_and_physical_sizes(tmp_path: Path, dtype, axes, shape):
    data = _ramp(shape, dtype)
    out = write_tiff(tmp_path / "a.tif", data, axes, pixel_size_um=0.325, z_step_um=1.5)
    img = read_image(out)
    assert img.data.dtype == dtype and img.dtype == dtype
    assert img.axes == axes and img.shape == shape
    assert np.array_equal(img.data, data)
    assert img.pixel_size_um == pytest.approx(0.325)
    assert img.z_step_um == (pytest.approx(1.5) if "Z" in axes else None)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej


def test_write_kwargs_round_trip_and_unit(tmp_path: Path):
    src = write_tiff(tmp_path / "nm.tif", _ramp((3, 8, 8), np.uint16), "ZYX", pixel_size_um=0.1, z_step_um=0.2,
                     unit="nm", metadata={"finterval": 2.0})
    with tifffile.TiffFile(src) as tif:
        assert tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["spacing"] == pytest.approx(200)
    img = read_image(src)
    assert (img.unit, img.pixel_size_um, img.z_step_um, img.metadata) == ("nm", 0.1, 0.2, {"finterval": 2.0})
    again = read_image(write_tiff(tmp_path / "again.tif", img.data, **img.write_kwargs()))
    assert again.write_kwargs() == img.write_kwargs()


def test_float64_and_int32_are_kept_in_ome(tmp_path: Path):
    f64 = np.linspace(0, 1, 64).reshape(8, 8) + 1e-12  # not representable in float32
    img = read_image(write_tiff(tmp_path / "f.tif", f64, "YX"))
    assert img.dtype == np.float64 and np.array_equal(img.data, f64) and img.ome
    big = np.array([[-(2**31), 2**31 - 1], [5, -7]], dtype=np.int32)
    out = write_tiff(tmp_path / "i.tif", big, "YX", pixel_size_um=0.5)
    img = read_image(out)
    assert img.dtype == np.int32 and np.array_equal(img.data, big) and img.pixel_size_um == 0.5
    wide = read_image(write_tiff(tmp_path / "l.tif", np.array([[2**40, -5]], dtype=np.int64), "YX"))
    assert wide.dtype == np.int32 and wide.data.tolist() == [[2**31 - 1, -5]]


def test_to_dtype_clips_and_rounds_never_wraps():
    x = np.array([-5.0, 1.4, 1.6, 2.5, 70000.7, np.nan, np.inf])
    assert to_dtype(x, np.uint16).tolist() == [0, 1, 2, 2, 65535, 0, 65535]
    assert to_dtype(x, np.uint8).tolist() == [0, 1, 2, 2, 255, 0, 255]
    assert to_dtype(np.array([-1e12, 1e12]), np.int32).tolist() == [-(2**31), 2**31 - 1]
    assert to_dtype(np.array([1e30]), np.int64).item() > 0
    assert to_dtype(np.array([300, -3], dtype=np.int32), np.uint8).tolist() == [255, 0]
    f = np.array([-1.5, 1e9], dtype=np.float32)
    assert to_dtype(f, np.float32) is f


def test_natural_order_and_expand_inputs(tmp_path: Path):
    names = ["day1_z10.tif", "day1_z2.tif", "Day1_z1.tif", "day1_z100.tif"]
    assert sorted(names, key=natural_key) == ["Day1_z1.tif", "day1_z2.tif", "day1_z10.tif", "day1_z100.tif"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in names:
        tifffile.imwrite(folder / n, np.zeros((4, 4), np.uint8))
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.tif").write_bytes(b"")
    assert [p.name for p in expand_inputs([str(folder)])] == sorted(names, key=natural_key)
    assert [p.name for p in expand_inputs([str(folder / "day1_z1*.tif")])] == ["day1_z10.tif", "day1_z100.tif"]
    single = folder / "day1_z2.tif"
    assert expand_inputs([single, str(folder)])[0] == single and len(expand_inputs([single, str(folder)])) == 4
    (tmp_path / "empty").mkdir()
    for bad in ([str(tmp_path / "missing.tif")], [str(tmp_path / "empty")], [str(tmp_path / "*.png")]):
        with pytest.raises(UserError):
            expand_inputs(bad)


def test_png_jpeg_and_rgb_become_grey(tmp_path: Path, capsys):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 100
    iio.imwrite(tmp_path / "c.png", rgb)
    img = read_image(tmp_path / "c.png")
    assert img.axes == "YX" and img.dtype == np.uint8 and img.shape == (10, 12)
    assert np.all(img.data == round(0.2125 * 200 + 0.7154 * 100))
    assert "converted to grey" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").data.shape == (10, 12)
    g16 = _ramp((9, 7), np.uint16) * 200
    iio.imwrite(tmp_path / "g.png", g16)
    assert np.array_equal(read_image(tmp_path / "g.png").data, g16)
    iio.imwrite(tmp_path / "j.jpg", np.full((8, 8), 77, np.uint8))
    assert abs(int(read_image(tmp_path / "j.jpg").data.mean()) - 77) <= 1


def test_colour_notice_is_once_per_folder_and_its_memory_is_bounded():
    notices = mdio._FolderNotices(limit=2)
    a, b, c = Path("a"), Path("b"), Path("c")
    assert notices.first(a) and not notices.first(a) and notices.first(b) and not notices.first(a)
    assert notices.first(c)  # b, seen least recently, is forgotten
    assert not notices.first(a) and notices.first(b)


@pytest.mark.parametrize("content", [b"", b"not a tiff at all" * 10, "truncated"])
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_corrupt_files_give_one_line_user_error(tmp_path: Path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    header_only = [] if content == "truncated" and suffix == ".png" else [read_info]  # PNG header still intact
    if content == "truncated":
        good = tmp_path / f"good{suffix}"
        data = _ramp((5, 32, 40), np.uint16) if suffix == ".tif" else _ramp((32, 40), np.uint8)
        (tifffile.imwrite(good, data, imagej=True, metadata={"axes": "ZYX"}) if suffix == ".tif"
         else iio.imwrite(good, data))
        content = good.read_bytes()[: good.stat().st_size // 2]
    path.write_bytes(content)
    for fn in [read_image, lambda p: list(iter_planes(p))] + header_only:
        with pytest.raises(UserError) as e:
            fn(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_iter_planes_streams_every_layout(tmp_path: Path):
    data = _ramp((5, 16, 12), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "zlib.tif", data, compression="zlib")
    for plane in data:
        tifffile.imwrite(tmp_path / "appended.tif", plane, append=True)
    for name in ("ij.tif", "zlib.tif", "appended.tif"):
        info = read_info(tmp_path / name)
        assert (info.axes, info.n_planes, info.plane_shape) == ("ZYX", 5, (16, 12)), name
        planes = list(iter_planes(tmp_path / name))
        assert [i for i, _ in planes] == list(range(5))
        assert np.array_equal(np.stack([p for _, p in planes]), data), name
        assert np.array_equal(read_image(tmp_path / name).data, data), name


def test_singleton_axes_remembered(tmp_path: Path):
    tifffile.imwrite(tmp_path / "s.tif", _ramp((1, 4, 1, 6, 5), np.uint16), imagej=True, metadata={"axes": "TZCYX"})
    img = read_image(tmp_path / "s.tif")
    assert img.axes == "ZYX" and img.shape == (4, 6, 5)
    assert img.data.reshape(img.full_shape).ndim == len(img.full_axes) and img.full_axes.startswith("TZC")


@pytest.mark.parametrize("shape,axes", [((12, 10, 1), "YX"), ((2, 1, 12, 10), "ZYX"), ((1, 12, 10), "YX"),
                                        ((1, 1, 12, 10), "YX")])
def test_singleton_axes_of_a_plain_tifffile_write_are_squeezed(tmp_path: Path, shape, axes):
    """`tifffile.imwrite(path, array)` keeps singleton axes in its shaped series (not squeezed on read)."""
    x = _ramp(shape, np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", x)
    squeezed = tuple(n for n in shape if n > 1)
    info, img = read_info(tmp_path / "s.tif"), read_image(tmp_path / "s.tif")
    assert (info.axes, info.shape, img.axes, img.data.shape) == (axes, squeezed, axes, squeezed)
    assert np.array_equal(img.data, x.reshape(squeezed))
    assert np.array_equal(np.stack([p for _, p in iter_planes(tmp_path / "s.tif")]).reshape(shape), x)


def test_grey_samples_are_channels_unless_colour_or_alpha(tmp_path: Path):
    """Several grey samples per pixel (MINISBLACK) are channels, refused; RGB and grey + alpha become grey."""
    from microdeblur.run_plan import read_infos

    x = _ramp((12, 10), np.uint16)
    tifffile.imwrite(tmp_path / "three.tif", np.stack([x, x // 2, x // 3]), photometric="minisblack",
                     planarconfig="separate")
    tifffile.imwrite(tmp_path / "two.tif", np.stack([x, x // 2], -1), photometric="minisblack",
                     extrasamples=["unspecified"])
    tifffile.imwrite(tmp_path / "alpha.tif", np.stack([x, x // 2], -1), photometric="minisblack",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([x, x, x], -1), photometric="rgb")
    for name in ("three", "two"):
        with pytest.raises(UserError, match="has a channel axis S"):
            read_infos([tmp_path / f"{name}.tif"])
    assert np.array_equal(read_image(tmp_path / "alpha.tif").data, x)
    assert np.array_equal(read_image(tmp_path / "rgb.tif").data, x)  # luminance of a grey RGB is the grey
    assert read_infos([tmp_path / "rgb.tif"])[0].axes == "YX"


def test_a_compressed_output_too_large_for_classic_tiff(tmp_path: Path, monkeypatch, capsys):
    """Past 4 GiB a compressed OME output is BigTIFF, an ImageJ one uncompressed (limit shrunk to a few planes)."""
    from microdeblur import image_write

    monkeypatch.setattr(image_write, "CLASSIC_TIFF_BYTES", 1000)
    x = _ramp((3, 16, 16), np.uint16)
    for name, ome in (("big.ome.tif", True), ("big_ij.tif", False)):
        with StackWriter(tmp_path / name, x.shape, x.dtype, "ZYX", compression=8, ome=ome, imagej=not ome) as w:
            for plane in x:
                w.write(plane)
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert np.array_equal(tif.asarray(), x)
            assert (tif.is_bigtiff, tif.pages.first.compression == 8) == ((True, True) if ome else (False, False))
    assert "more than a compressed ImageJ TIFF can hold" in capsys.readouterr().err


def test_white_is_zero_and_grey_palettes_are_read_as_shown(tmp_path: Path):
    """Planes are the grey levels a viewer shows (then written black-is-zero): MINISWHITE inverted, a grey palette
    through its ramp; a colour palette's indices stay as stored."""
    x, y = _ramp((2, 12, 10), np.uint16), _ramp((12, 10), np.uint8)
    tifffile.imwrite(tmp_path / "mw.tif", x, photometric="miniswhite")
    inverted = np.tile(np.arange(256, dtype=np.uint16)[::-1] * 257, (3, 1))
    tifffile.imwrite(tmp_path / "grey.tif", y, photometric="palette", colormap=inverted)
    colour = inverted.copy()
    colour[1] = 0
    tifffile.imwrite(tmp_path / "colour.tif", y, photometric="palette", colormap=colour)
    assert np.array_equal(read_image(tmp_path / "mw.tif").data, 65535 - x)
    assert np.array_equal(np.stack([p for _, p in iter_planes(tmp_path / "mw.tif")]), 65535 - x)
    assert np.array_equal(read_image(tmp_path / "grey.tif").data, 255 - y)
    assert np.array_equal(read_image(tmp_path / "colour.tif").data, y)


def test_real_stack_metadata(real_stack_paths):
    info = read_info(real_stack_paths["bfseg_pombe"])
    assert (info.axes, info.shape, info.dtype) == ("ZYX", (34, 63, 60), np.uint16)
    assert info.pixel_size_um == pytest.approx(0.1075, abs=1e-4) and info.z_step_um == pytest.approx(0.3)


def test_output_path_rules(tmp_path: Path):
    src = write_tiff(tmp_path / "in.tif", _ramp((4, 4), np.uint8), "YX")
    with pytest.raises(UserError, match="exists"):
        write_tiff(src, _ramp((4, 4), np.uint8), "YX")
    with pytest.raises(UserError, match="input"):
        check_output_path(tmp_path / "." / "in.tif", overwrite=True, inputs=[src])
    with pytest.raises(UserError, match="folder"):
        check_output_path(tmp_path, overwrite=True)
    write_tiff(src, np.full((4, 4), 9, np.uint8), "YX", overwrite=True)
    assert read_image(src).data.max() == 9
    atomic_write_bytes(tmp_path / "sub" / "x.json", b"{}")
    assert (tmp_path / "sub" / "x.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in.tif", "sub", "x.json"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_stack_writer_holds_no_map_of_its_output(tmp_path: Path, compression):
    """Planes go to the file with plain writes: a memory map kept every written plane resident (0.6 GiB per
    100-plane 2048x1536 uint16 stack). Big-endian float planes and a compressed output come back exact."""
    data = np.random.default_rng(0).normal(size=(3, 6, 7)).astype(">f4")
    kw = {} if compression is None else {"compression": 8}  # ADOBE_DEFLATE
    with StackWriter(tmp_path / "s.tif", data.shape, np.float32, "ZYX", **kw) as w:
        for plane in data:
            w.write(plane)
            assert str(tmp_path) not in Path("/proc/self/maps").read_text()
    assert np.array_equal(read_image(tmp_path / "s.tif").data, data.astype(np.float32))
    with pytest.raises(ValueError, match="shape"), StackWriter(tmp_path / "b.tif", (1, 4, 4), np.uint8, "ZYX") as w:
        w.write(np.zeros((4, 5)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_stack_writer_streams_and_is_atomic(tmp_path: Path):
    out = tmp_path / "s.tif"
    data = np.linspace(-10, 70000, 3 * 8 * 9).reshape(3, 8, 9)
    with StackWriter(out, data.shape, np.uint16, "ZYX", pixel_size_um=0.2, z_step_um=0.7) as w:
        for plane in data:
            w.write(plane)
    img = read_image(out)
    assert np.array_equal(img.data, to_dtype(data, np.uint16))
    assert (img.axes, img.pixel_size_um, img.z_step_um) == ("ZYX", 0.2, 0.7)
    with pytest.raises(RuntimeError):
        with StackWriter(tmp_path / "fail.tif", (2, 4, 4), np.float32, "ZYX") as w:
            w.write(np.zeros((4, 4)))
            raise RuntimeError("interrupted")
    with pytest.raises(ValueError):
        with StackWriter(tmp_path / "short.tif", (2, 4, 4), np.float32, "ZYX") as w:
            w.write(np.zeros((4, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    with pytest.raises(UserError):
        StackWriter(out, (1, 4, 4), np.uint8, "ZYX")


def test_iter_planes_memmap_fallback(tmp_path: Path, monkeypatch):
    data = _ramp((4, 8, 6), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "ZYX"})
    monkeypatch.setattr(mdio, "_page_yx", lambda page: (-1, -1))  # as for ImageJ files > 4 GB: one page indexed
    assert np.array_equal(np.stack([p for _, p in iter_planes(tmp_path / "ij.tif")]), data)


def test_pixel_size_of_one_unit_is_kept_unless_it_is_tifffiles_default(tmp_path: Path):
    data = _ramp((6, 5), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, description="ImageJ=1.54f\nunit=micron\n", resolution=(1, 1),
                     metadata=None)
    assert read_info(tmp_path / "ij.tif").pixel_size_um == 1.0
    assert read_info(write_tiff(tmp_path / "none.tif", data, "YX")).pixel_size_um is None  # tifffile wrote 1/1


def test_lossless_compression_is_kept_by_both_writers(tmp_path: Path):
    data = _ramp((3, 16, 12), np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", data, imagej=True, metadata={"axes": "ZYX"}, compression="zlib",
                     predictor=True)
    info = read_info(tmp_path / "z.tif")
    assert info.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and info.predictor
    with StackWriter(tmp_path / "s.tif", info.shape, info.dtype, **info.write_kwargs()) as w:
        for _, plane in iter_planes(tmp_path / "z.tif"):
            w.write(plane)
    write_tiff(tmp_path / "w.tif", data.astype(np.float32), **info.write_kwargs())
    # float32 gets the floating-point predictor (3) only where imagecodecs provides it, else none (1)
    for name, preds in (("s.tif", {2}), ("w.tif", {1, 3})):
        with tifffile.TiffFile(tmp_path / name) as tif:
            page = tif.pages.first
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.predictor in preds, name
            assert tif.is_imagej and np.array_equal(tif.asarray(), data), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "w.tif", "z.tif"]
    assert read_info(write_tiff(tmp_path / "u.tif", data, "ZYX")).compression is None


def test_output_below_a_file_or_with_a_too_long_name_is_refused(tmp_path: Path):
    f = write_tiff(tmp_path / "f.tif", _ramp((4, 4), np.uint8), "YX")
    for bad in (f / "x.tif", f / "sub" / "x.tif"):
        with pytest.raises(UserError, match="f.tif is a file"):
            check_output_path(bad)
    with pytest.raises(UserError, match="too long"):
        write_tiff(tmp_path / ("n" * 240 + ".tif"), _ramp((4, 4), np.uint8), "YX")
    with pytest.raises(UserError, match="too long"):
        check_output_path(tmp_path / ("d" * 300) / "x.tif")
    assert check_output_path(tmp_path / "new" / ("n" * 200 + ".tif")).name.startswith("n")
