"""napari plugin: manifest, the three widgets in an offscreen viewer, bad layers as notifications.

Needs the extra `microdeblur[napari]` plus pytest-qt; napari's canvas needs OpenGL, so on a machine
without a display run under Xvfb (pytest-xvfb starts one). Skipped when any of it is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("napari's canvas needs OpenGL: run under Xvfb (apt-get install xvfb; pip install pytest-xvfb)",
                allow_module_level=True)

from napari.utils.notifications import notification_manager  # noqa: E402

from microdeblur.calibration import dz_to_code, fit_calibration  # noqa: E402
from microdeblur.engine import Deblurrer  # noqa: E402
from microdeblur.napari import _engine as engine  # noqa: E402
from microdeblur.napari._widgets import DeblurWidget, FocusWidget, RefocusWidget  # noqa: E402
from microdeblur.networks import DisentangledAE, ModelConfig  # noqa: E402
from microdeblur.weights import WeightsMeta, load_weights, save_weights  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "microdeblur" / "napari" / "napari.yaml"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny random calibrated manifold-1d model."""
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()
    dz = np.linspace(-20, 20, 41)
    path = tmp_path_factory.mktemp("napari") / "tiny.safetensors"
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=1.0,
                                          focus_blur_code=np.array([0.1], np.float32),
                                          calibration=fit_calibration(0.05 * dz, dz)))
    return path


@pytest.fixture(scope="module")
def db(weights) -> Deblurrer:
    return Deblurrer(*load_weights(weights))


def _image(shape, dtype, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).random(shape)
    return (x * 3 - 1).astype(dtype) if np.dtype(dtype).kind == "f" else (x * 3000 + 100).astype(dtype)


def _dock(viewer, cls, weights: Path):
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget, name=cls.__name__)
    widget.weights.value = str(weights)
    return widget


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _errors_since(n: int) -> list[str]:
    return [str(r.message) for r in notification_manager.records[n:] if r.severity == "error"]


def test_manifest_lists_three_importable_widgets():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert [w.display_name for w in manifest.contributions.widgets] == ["Deblur", "Focus map", "Refocus"]
    for cmd in manifest.contributions.commands:
        module, name = cmd.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[name]), name))


@pytest.mark.parametrize("name,cls", [("Deblur", DeblurWidget), ("Focus map", FocusWidget), ("Refocus", RefocusWidget)])
def test_napari_opens_each_widget_from_the_installed_manifest(make_napari_viewer, name, cls):
    viewer = make_napari_viewer()
    viewer.add_image(_image((32, 32), np.uint16), name="img")
    _dock_widget, widget = viewer.window.add_plugin_dock_widget("microdeblur", name)
    assert isinstance(widget, cls) and widget.layer.value is viewer.layers["img"]


@pytest.mark.parametrize("shape,dtype", [((40, 56), np.uint16), ((3, 48, 40), np.float32)])
def test_deblur_widget_output_layer(make_napari_viewer, qtbot, weights, db, shape, dtype):
    viewer = make_napari_viewer()
    data = _image(shape, dtype)
    scale, translate = (0.5,) * len(shape), tuple(float(v) for v in range(1, len(shape) + 1))
    viewer.add_image(data, name="field", scale=scale, translate=translate)
    widget = _dock(viewer, DeblurWidget, weights)
    assert widget.layer.value is viewer.layers["field"]  # follows the selected layer
    widget.run_button.clicked()
    _wait(qtbot, widget)
    out = viewer.layers["field deblurred"]
    assert out.data.shape == data.shape and out.data.dtype == data.dtype
    assert tuple(out.scale) == scale and tuple(out.translate) == translate
    planes = data.reshape(-1, *shape[-2:])
    expect = np.stack([db.deblur_plane(p) for p in planes]).reshape(shape)
    np.testing.assert_array_equal(out.data, expect)  # the CLI's core, plane by plane


def test_focus_widget_map_colormap_and_summary(make_napari_viewer, qtbot, weights, db):
    viewer = make_napari_viewer()
    data = _image((2, 64, 80), np.uint16, seed=1)
    viewer.add_image(data, name="stack", scale=(2.0, 0.3, 0.3))
    widget = _dock(viewer, FocusWidget, weights)
    widget.run_button.clicked()
    _wait(qtbot, widget)
    out = viewer.layers["stack dz map"]
    assert out.data.shape == data.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == (2.0, 0.3, 0.3)
    lo, hi = out.contrast_limits
    assert lo == -hi and hi >= 2.0  # diverging map centred on focus
    assert out.colormap.name == "microdeblur dz"
    for i in range(2):
        dmap, summary = db.focus_map(data[i])
        np.testing.assert_array_equal(out.data[i], dmap)
        assert widget.rows[i]["median_dz_um"] == pytest.approx(summary["median_dz_um"], nan_ok=True)
    assert widget.table.shape == (2, 4) and widget.summary.value


def test_refocus_slider_encodes_once_and_moving_back_reproduces(make_napari_viewer, qtbot, weights, db, monkeypatch):
    viewer = make_napari_viewer()
    data = _image((3, 48, 64), np.uint16, seed=2)
    viewer.add_image(data, name="stack", scale=(1.0, 0.5, 0.5), translate=(0.0, 3.0, 4.0))
    viewer.dims.set_current_step(0, 1)  # the viewer shows plane 1
    widget = _dock(viewer, RefocusWidget, weights)
    encodes = []
    real_encode = Deblurrer.encode
    monkeypatch.setattr(Deblurrer, "encode", lambda self, plane: encodes.append(1) or real_encode(self, plane))

    widget.run_button.clicked()  # encode plane 1, render dz 0
    _wait(qtbot, widget)
    layer = viewer.layers["stack refocused"]
    first = np.array(layer.data)
    assert first.shape == data.shape[1:] and first.dtype == data.dtype
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3.0, 4.0)

    widget.dz.value = 10.0
    _wait(qtbot, widget)
    moved = np.array(layer.data)
    assert not np.array_equal(moved, first)
    cal = db.meta.calibration
    np.testing.assert_array_equal(moved, db.deblur_plane(data[1], np.atleast_1d(dz_to_code(cal, 10.0)), 10.0))

    widget.dz.value = 0.0
    _wait(qtbot, widget)
    np.testing.assert_array_equal(layer.data, first)  # same identity codes, same decode: the same image
    assert len(encodes) == 1 and widget.session.decodes == 3
    assert widget.render_s is not None and "decoded in" in widget.status.value


def test_refocus_coalesces_fast_moves(make_napari_viewer, qtbot, weights):
    viewer = make_napari_viewer()
    viewer.add_image(_image((48, 48), np.float32), name="img")
    widget = _dock(viewer, RefocusWidget, weights)
    for v in (1.0, 2.0, 3.0, 4.0, 5.0):  # faster than the worker: only the latest value is rendered last
        widget.dz.value = v
    _wait(qtbot, widget)
    qtbot.waitUntil(lambda: widget.rendered == 5.0 and not widget.busy, timeout=WAIT_MS)
    assert viewer.layers["img refocused"].metadata["microdeblur_dz_um"] == 5.0


def test_cancel_stops_a_stack(make_napari_viewer, qtbot, weights):
    viewer = make_napari_viewer()
    viewer.add_image(_image((40, 128, 128), np.uint16), name="big")
    widget = _dock(viewer, DeblurWidget, weights)
    widget.run_button.clicked()
    widget.cancel_button.clicked()
    _wait(qtbot, widget)
    assert "big deblurred" not in viewer.layers and widget.status.value == "cancelled"


BAD = {
    "rgb": (dict(data=np.zeros((32, 32, 3), np.uint8), rgb=True), "RGB(A) layer"),
    "1x1": (dict(data=np.ones((1, 1), np.uint16)), "too small"),
    "all-nan": (dict(data=np.full((32, 32), np.nan, np.float32)), "NaN, infinite or beyond ±1e+30"),
}


@pytest.mark.parametrize("cls", [DeblurWidget, FocusWidget, RefocusWidget])
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_layer_gives_a_notification(make_napari_viewer, qtbot, weights, cls, bad):
    kwargs, words = BAD[bad]
    viewer = make_napari_viewer()
    viewer.add_image(name="bad", **kwargs)
    widget = _dock(viewer, cls, weights)
    n = len(notification_manager.records)
    widget.run_button.clicked()
    _wait(qtbot, widget)
    errors = _errors_since(n)
    assert len(errors) == 1 and errors[0].startswith("bad: ") and words in errors[0]
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    assert [lay.name for lay in viewer.layers] == ["bad"]  # nothing added, nothing crashed
    assert widget.status.value == f"error: {errors[0]}"


def test_missing_weights_file_is_the_cli_message(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(_image((32, 32), np.uint16), name="img")
    widget = _dock(viewer, DeblurWidget, tmp_path / "none.safetensors")
    n = len(notification_manager.records)
    widget.run_button.clicked()
    _wait(qtbot, widget)
    assert _errors_since(n) == [f"weights file not found: {tmp_path / 'none.safetensors'}"]


def test_engine_checks_and_cache(weights):
    with pytest.raises(engine.UserError, match="bool"):
        engine.layer_image("b", np.zeros((32, 32), bool))
    with pytest.raises(engine.UserError, match="shape"):
        engine.layer_image("v", np.zeros(40, np.uint8))
    assert engine.layer_image("m", [np.zeros((32, 40)), np.zeros((16, 20))], multiscale=True).shape == (32, 40)
    assert engine.deblurrer(weights) is engine.deblurrer(str(weights))  # loaded once, shared by the widgets
    assert engine.weights_path("") is None and engine.weights_path(Path(".")) is None


def test_optics_fields_resize_and_convert_dz_as_the_cli_options_do(make_napari_viewer, qtbot, weights, db):
    """NA, wavelength and pixel size in a widget act as deblur/focus --na --wavelength --pixel-size on a file
    without metadata: resize by pixel / working pixel, dz in um of that microscope."""
    from microdeblur.calibration import Microscope, dz_factor
    from microdeblur.weights import training_optics

    viewer = make_napari_viewer()
    data = _image((96, 112), np.uint16, seed=4)
    viewer.add_image(data, name="img")
    deblur = _dock(viewer, DeblurWidget, weights)
    deblur.pixel.value = 0.1625  # half the tiny weights' 0.325 um working pixel: resized by 0.5
    deblur.run_button.clicked()
    _wait(qtbot, deblur)
    np.testing.assert_array_equal(viewer.layers["img deblurred"].data, db.with_scale(0.5).deblur_plane(data))
    factor = dz_factor(training_optics(db.meta), Microscope(0.3, 0.55))
    assert abs(factor - 1) > 0.5
    focus = _dock(viewer, FocusWidget, weights)
    focus.layer.value = viewer.layers["img"]
    focus.na.value, focus.wavelength.value = 0.3, 0.55
    focus.run_button.clicked()
    _wait(qtbot, focus)
    np.testing.assert_allclose(viewer.layers["img dz map"].data, db.focus_map(data)[0] * factor, rtol=1e-5, atol=1e-6)
    refocus = _dock(viewer, RefocusWidget, weights)
    refocus.layer.value = viewer.layers["img"]
    refocus.na.value = 0.3
    refocus.dz.value = 6.0
    _wait(qtbot, refocus)
    qtbot.waitUntil(lambda: refocus.rendered == 6.0 and not refocus.busy, timeout=WAIT_MS)
    code = np.atleast_1d(dz_to_code(db.meta.calibration, 6.0 / factor))
    np.testing.assert_array_equal(viewer.layers["img refocused"].data, db.deblur_plane(data, code, 6.0 / factor))
    n = len(notification_manager.records)
    focus.pixel.value = 5.0  # 15x the working pixel: the resize factor is refused in one line, as by the CLI
    focus.run_button.clicked()
    _wait(qtbot, focus)
    assert len(_errors_since(n)) == 1 and "resize factor" in _errors_since(n)[0]
