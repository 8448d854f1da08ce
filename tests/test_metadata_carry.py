"""What outputs keep of the input's metadata: OME elements that still hold, ImageJ Info/Labels/spacing, the input's
format (ImageJ or OME) whatever the output's name, resolution tags of OME outputs, and no invented unit."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import run_cli, tiny_weights

from microdeblur.calibration import fit_calibration
from microdeblur.image_meta import carry_ome
from microdeblur.image_read import read_info

NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Tiny calibrated weights (code = 0.05 dz over -20..20 um)."""
    dz = np.linspace(-20, 20, 41)
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors", fit_calibration(0.05 * dz, dz))


def _texture(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 3000 + 1000).astype(np.uint16)


def _ome_xml(planes: int, *, second_image: bool = False) -> str:
    """OME-XML of a ZYX uint16 stack (64x64, 0.25 um pixels, 2 um z step) with objective, channel and planes."""
    image = ('<Image ID="Image:{i}" Name="{name}"><AcquisitionDate>2024-01-02T03:04:05</AcquisitionDate>'
             '<Description>sample 42</Description><InstrumentRef ID="Instrument:0"/>'
             '<ObjectiveSettings ID="Objective:0:0"/><Pixels ID="Pixels:{i}" DimensionOrder="XYZCT" Type="uint16" '
             f'SizeX="64" SizeY="64" SizeZ="{planes}" SizeC="1" SizeT="1" PhysicalSizeX="250" PhysicalSizeXUnit="nm" '
             'PhysicalSizeY="250" PhysicalSizeYUnit="nm" PhysicalSizeZ="2"><Channel ID="Channel:{i}:0" Name="{ch}" '
             'SamplesPerPixel="1" EmissionWavelength="600" EmissionWavelengthUnit="nm" ExcitationWavelength="480"/>'
             f'<TiffData IFD="{{ifd}}" PlaneCount="{planes}"/>'
             + "".join(f'<Plane TheZ="{z}" TheC="0" TheT="0" PositionZ="{10 + 2 * z}"/>' for z in range(planes))
             + '</Pixels><AnnotationRef ID="Annotation:{i}"/><AnnotationRef ID="Annotation:9"/></Image>')
    images = image.format(i=0, name="MyField_A01", ch="BF", ifd=0)
    if second_image:
        images += image.format(i=1, name="Other", ch="GFP", ifd=planes)
    return ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            '<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" LensNA="0.75" NominalMagnification="40">'
            '<AnnotationRef ID="Annotation:0"/></Objective></Instrument>' + images +
            '<StructuredAnnotations><CommentAnnotation ID="Annotation:0"><AnnotationRef ID="Annotation:2"/>'
            '<Value>c</Value></CommentAnnotation><CommentAnnotation ID="Annotation:1"><Value>other</Value>'
            '</CommentAnnotation><XMLAnnotation ID="Annotation:2"><Value><lab:well xmlns:lab="urn:lab">A01</lab:well>'
            '</Value></XMLAnnotation></StructuredAnnotations></OME>')


def _write_ome(path: Path, data: np.ndarray) -> Path:
    """An OME-TIFF of a ZYX stack described by _ome_xml."""
    tifffile.imwrite(path, data, description=_ome_xml(len(data)), metadata=None, photometric="minisblack")
    return path


def _ome_tree(path: Path) -> ET.Element:
    """The OME-XML of a file that tifffile reads as OME, parsed."""
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and not tif.is_imagej, path
        return ET.fromstring(tif.ome_metadata)


def _one(root: ET.Element, tag: str) -> ET.Element:
    """The single element of this tag anywhere in the tree."""
    found = root.findall(f".//{NS}{tag}")
    assert len(found) == 1, (tag, found)
    return found[0]


def _assert_image_kept(root: ET.Element) -> None:
    """The input image's name, date, description, objective (with its reference), channel and annotations are in `root`."""
    image = _one(root, "Image")
    assert image.get("Name") == "MyField_A01"
    assert _one(root, "AcquisitionDate").text == "2024-01-02T03:04:05" and _one(root, "Description").text == "sample 42"
    assert _one(root, "Objective").get("LensNA") == "0.75" and _one(root, "ObjectiveSettings").get("ID") == "Objective:0:0"
    assert _one(root, "InstrumentRef").get("ID") == _one(root, "Instrument").get("ID")
    channel = _one(root, "Channel")
    assert (channel.get("Name"), channel.get("EmissionWavelength"), channel.get("EmissionWavelengthUnit"),
            channel.get("ExcitationWavelength")) == ("BF", "600", "nm", "480")
    _assert_annotations_kept(root)


def _assert_annotations_kept(root: ET.Element) -> None:
    """The first image's annotations (and the one its comment names) are carried with their content; the second
    image's and the dangling reference (Annotation:9) are not, and every reference resolves."""
    kept = {e.get("ID"): e for e in _one(root, "StructuredAnnotations")}
    assert sorted(kept) == ["Annotation:0", "Annotation:2"]
    assert kept["Annotation:0"].find(f"{NS}Value").text == "c"
    assert kept["Annotation:2"].find(f"{NS}Value/{{urn:lab}}well").text == "A01"  # foreign namespace untouched
    refs = [(parent.tag, r.get("ID")) for parent in root.iter() for r in parent if r.tag == f"{NS}AnnotationRef"]
    assert sorted(refs) == [(f"{NS}CommentAnnotation", "Annotation:2"), (f"{NS}Image", "Annotation:0"),
                            (f"{NS}Objective", "Annotation:0")]
    image = _one(root, "Image")
    assert [e.tag for e in image][-2:] == [f"{NS}Pixels", f"{NS}AnnotationRef"]  # schema order: refs after Pixels
    assert list(root)[-1].tag == f"{NS}StructuredAnnotations"


def test_deblur_and_focus_outputs_keep_the_input_ome_metadata(tmp_path: Path, weights: Path):
    src = _write_ome(tmp_path / "in.ome.tif", _texture((3, 64, 64)))
    out, dmap = tmp_path / "out.ome.tif", tmp_path / "out_dz.tif"
    assert run_cli("deblur", src, "-o", out, "-w", weights, "--device", "cpu").exit_code == 0
    root = _ome_tree(out)
    _assert_image_kept(root)
    assert [p.get("PositionZ") for p in root.iter(f"{NS}Plane")] == ["10", "12", "14"]
    pixels = _one(root, "Pixels")
    assert (pixels.get("PhysicalSizeX"), pixels.get("SizeZ"), pixels.get("Type")) == ("0.25", "3", "uint16")
    before, after = read_info(src), read_info(out)
    assert (after.na, after.wavelength_um, after.pixel_size_um, after.z_step_um) == (0.75, 0.6, 0.25, 2.0)
    assert (after.na, after.wavelength_um) == (before.na, before.wavelength_um)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].shape == (3, 64, 64) and tif.series[0].axes == "ZYX" and len(tif.pages) == 3
    res = run_cli("-v", "focus", out, "-o", dmap, "-w", weights, "--device", "cpu")  # the chained command
    assert res.exit_code == 0 and "NA 0.75, wavelength 0.6 um" in res.output, res.output
    _assert_image_kept(_ome_tree(dmap))


def test_ome_outputs_carry_the_pixel_size_in_the_resolution_tags(tmp_path: Path, weights: Path):
    src = _write_ome(tmp_path / "in.ome.tif", _texture((3, 64, 64)))
    bare = tmp_path / "bare.ome.tif"
    tifffile.imwrite(bare, _texture((64, 64)), ome=True, metadata={"axes": "YX"})
    for source, out in ((src, tmp_path / "out.tif"), (bare, tmp_path / "bare_out.tif")):
        assert run_cli("deblur", source, "-o", out, "-w", weights, "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        page = tif.pages.first
        assert tif.is_ome and page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((4e4, 4e4))  # 0.25 um pixels: 40,000 per cm
    with tifffile.TiffFile(tmp_path / "bare_out.tif") as tif:  # no pixel size: tifffile's default tags, no unit
        assert tif.is_ome and tif.pages.first.resolution == (1, 1)
        assert tif.pages.first.resolutionunit == tifffile.RESUNIT.NONE
    assert read_info(tmp_path / "bare_out.tif").pixel_size_um is None


def test_interpolate_keeps_the_image_metadata_but_not_the_planes(tmp_path: Path, weights: Path):
    src = _write_ome(tmp_path / "a.ome.tif", _texture((1, 64, 64)))
    out = tmp_path / "c.tif"
    assert run_cli("interpolate", src, "-o", out, "--dz-from", "-2", "--dz-to", "2", "--steps", "3", "-w", weights,
                   "--device", "cpu").exit_code == 0
    root = _ome_tree(out)
    _assert_image_kept(root)
    assert not root.findall(f".//{NS}Plane")  # the input's one plane position does not hold for three new planes
    pixels = _one(root, "Pixels")
    assert (pixels.get("SizeZ"), pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeX")) == ("3", "2.0", "0.25")


def test_carry_ome_takes_the_first_image_and_ignores_bad_xml():
    target = tifffile.OmeXml()
    target.addimage("uint16", (3, 64, 64), (3, 1, 1, 64, 64, 1), axes="ZYX")
    xml = target.tostring()
    root = ET.fromstring(carry_ome(_ome_xml(3, second_image=True), xml))
    _assert_image_kept(root)  # one Image, one Channel: the first image's
    assert _one(root, "Channel").get("ID") == "Channel:0:0" and _one(root, "TiffData").get("PlaneCount") == "3"
    assert len(root.findall(f".//{NS}Plane")) == 3
    assert carry_ome("<OME", xml) == xml and carry_ome("<OME/>", xml) == xml


def test_imagej_info_labels_and_a_spacing_without_unit_are_kept(tmp_path: Path, weights: Path):
    info = "Objective=20x/0.40\nExposure=10ms"
    src = tmp_path / "ij.tif"
    tifffile.imwrite(src, _texture((3, 64, 64)), imagej=True, resolution=(4.0, 4.0), metadata={
        "axes": "ZYX", "unit": "um", "spacing": 0.5, "min": 800.0, "max": 4000.0, "Info": info,
        "Labels": ["z=-1", "z=0", "z=1"], "Ranges": (800.0, 4000.0)})
    unitless = tmp_path / "spacing_only.tif"
    tifffile.imwrite(unitless, _texture((2, 64, 64)), imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    for source in (src, unitless):
        assert run_cli("deblur", source, "-o", tmp_path / f"out_{source.name}", "-w", weights,
                       "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "out_ij.tif") as tif:
        md = tif.imagej_metadata
        assert md["Info"] == info and md["Labels"] == ["z=-1", "z=0", "z=1"]
        assert (md["unit"], md["spacing"]) == ("um", 0.5) and tif.pages.first.resolution == pytest.approx((4.0, 4.0))
        assert not {"min", "max", "Ranges"} & set(md)  # intensities changed
    with tifffile.TiffFile(tmp_path / "out_spacing_only.tif") as tif:
        assert tif.imagej_metadata["spacing"] == 2.0 and "unit" not in tif.imagej_metadata
    assert read_info(tmp_path / "out_spacing_only.tif").z_step_um is None  # pixels, not um


def test_imagej_time_unit_origins_and_properties_are_kept(tmp_path: Path, weights: Path):
    src = tmp_path / "t.tif"
    kept = {"finterval": 5.0, "tunit": "min", "xorigin": 10.0, "fps": 3.0, "Properties": {"Objective": "20x"}}
    tifffile.imwrite(src, _texture((3, 64, 64)), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TYX", "unit": "um", **kept})
    assert run_cli("deblur", src, "-o", tmp_path / "out.tif", "-w", weights, "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert {k: tif.imagej_metadata.get(k) for k in kept} == kept  # a 5 min interval stays 5 min


def test_imagej_value_calibration_stays_on_deblurred_planes_not_on_defocus_maps(tmp_path: Path, weights: Path):
    src = tmp_path / "signed.tif"  # ImageJ's signed 16-bit: uint16 with c0 = -32768
    calibration = {"cf": 0, "c0": -32768.0, "c1": 1.0, "vunit": "Gray Value"}
    tifffile.imwrite(src, _texture((2, 64, 64)) + 30000, imagej=True, metadata={"axes": "ZYX", **calibration})
    assert run_cli("deblur", src, "-o", tmp_path / "out.tif", "-w", weights, "--device", "cpu").exit_code == 0
    assert run_cli("focus", src, "-o", tmp_path / "dz.tif", "-w", weights, "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert {k: tif.imagej_metadata.get(k) for k in calibration} == calibration  # before: shown 32768 too high
    with tifffile.TiffFile(tmp_path / "dz.tif") as tif:
        assert not set(calibration) & set(tif.imagej_metadata)  # the map holds um, not the input's values


def test_a_plain_tiff_description_becomes_the_imagej_info(tmp_path: Path, weights: Path):
    note, plain, shaped = "Acquired by LabScope; exposure=12ms", tmp_path / "plain.tif", tmp_path / "shaped.tif"
    tifffile.imwrite(plain, _texture((64, 64)), metadata=None, description=note)
    tifffile.imwrite(shaped, _texture((64, 64)))  # tifffile's own JSON shape description is not a note
    for src in (plain, shaped):
        assert run_cli("deblur", src, "-o", tmp_path / f"out_{src.name}", "-w", weights, "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "out_plain.tif") as tif:
        assert tif.imagej_metadata["Info"] == note  # before: dropped
    with tifffile.TiffFile(tmp_path / "out_shaped.tif") as tif:
        assert "Info" not in tif.imagej_metadata


def test_a_one_micrometre_pixel_survives_the_round_trip(tmp_path: Path, weights: Path):
    src = tmp_path / "p.tif"  # 1 um pixels in ImageJ's own spelling: resolution 1/1 (tifffile's "unset" too)
    tifffile.imwrite(src, _texture((64, 64)), metadata=None, resolution=(1, 1),
                     description="ImageJ=1.54f\nunit=micron\n")
    assert read_info(src).pixel_size_um == 1.0
    assert run_cli("deblur", src, "-o", tmp_path / "out.tif", "-w", weights, "--device", "cpu").exit_code == 0
    assert read_info(tmp_path / "out.tif").pixel_size_um == 1.0  # before: read back as unknown


def test_non_square_pixels_are_kept_and_warned_about(tmp_path: Path, weights: Path):
    ij, ome = tmp_path / "ij.tif", tmp_path / "o.ome.tif"
    tifffile.imwrite(ij, _texture((2, 256, 256)), imagej=True, resolution=(1 / 0.2, 1 / 0.4),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 1.0})
    tifffile.imwrite(ome, _texture((2, 256, 256)), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4})
    for src in (ij, ome):
        res = run_cli("deblur", src, "-o", tmp_path / f"out_{src.name}", "-w", weights, "--device", "cpu")
        assert res.exit_code == 0 and "not square (0.2 um along X, 0.4 um along Y)" in res.output, res.output
        out = read_info(tmp_path / f"out_{src.name}")
        assert (out.pixel_size_um, out.pixel_size_y_um) == (0.2, 0.4)  # before: Y became 0.2
    with tifffile.TiffFile(tmp_path / "out_o.ome.tif") as tif:
        assert _one(ET.fromstring(tif.ome_metadata), "Pixels").get("PhysicalSizeY") == "0.4"
        assert tif.pages.first.resolution == pytest.approx((5e4, 2.5e4))


def test_imagej_input_named_ome_tif_stays_imagej(tmp_path: Path, weights: Path):
    src = tmp_path / "stack.ome.tif"  # an ImageJ hyperstack, as some microscopes name them
    tifffile.imwrite(src, _texture((3, 64, 64)), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.5})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, _texture((64, 64)))
    for source, out in ((src, tmp_path / "out.ome.tif"), (plain, tmp_path / "plain_out.ome.tif")):
        assert run_cli("deblur", source, "-o", out, "-w", weights, "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        assert tif.is_imagej and not tif.is_ome
        assert (tif.imagej_metadata["unit"], tif.imagej_metadata["spacing"]) == ("um", 0.5)
    info = read_info(tmp_path / "out.ome.tif")
    assert (info.pixel_size_um, info.z_step_um, info.shape) == (0.25, 0.5, (3, 64, 64))
    with tifffile.TiffFile(tmp_path / "plain_out.ome.tif") as tif:  # a plain input: the name still asks for OME
        assert tif.is_ome


def test_interpolate_without_pixel_size_writes_no_unit(tmp_path: Path, weights: Path):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _texture((64, 64)), imagej=True, metadata={"Info": "camera=X", "Labels": ["only"]})
    calibrated = tmp_path / "cal.tif"
    tifffile.imwrite(calibrated, _texture((64, 64)), imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})
    for source in (src, calibrated):
        assert run_cli("interpolate", source, "-o", tmp_path / f"c_{source.name}", "--dz-from", "-5", "--dz-to", "5",
                       "--steps", "3", "-w", weights, "--device", "cpu").exit_code == 0
    with tifffile.TiffFile(tmp_path / "c_a.tif") as tif:
        md = tif.imagej_metadata
        assert "unit" not in md  # not 1 um pixels: ImageJ reads it uncalibrated
        assert (md["zunit"], md["spacing"]) == ("um", 5.0)  # the z step, in a unit of its own
        assert md["Info"] == "camera=X" and "Labels" not in md  # one label does not name three new planes
    info = read_info(tmp_path / "c_a.tif")
    assert (info.pixel_size_um, info.z_step_um) == (None, 5.0)
    with tifffile.TiffFile(tmp_path / "c_cal.tif") as tif:
        assert (tif.imagej_metadata["unit"], tif.imagej_metadata["spacing"]) == ("um", 5.0)
