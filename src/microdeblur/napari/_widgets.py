"""Docked napari widgets: Deblur, Focus map and Refocus, each on the selected image layer.

Long work runs in a napari worker thread (progress in napari's activity bar, Cancel button); every
failure becomes one napari notification with the CLI's one-line message, never a traceback dialog.
"""

import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, Label, PushButton, Table
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error, show_info

from ..calibration import OpticsOptions
from . import _engine as engine

# Blue below focus, near-white at focus, red above it (three control points of a diverging map).
DZ_COLORMAP = Colormap([[0.23, 0.30, 0.75, 1.0], [0.94, 0.94, 0.94, 1.0], [0.71, 0.02, 0.15, 1.0]],
                       name="microdeblur dz")


OUTPUT_KEY = "microdeblur_output"  # metadata key marking the layers the widgets write


class Failed:
    """What a worker returns instead of raising: the one-line message for a notification."""

    def __init__(self, message: str) -> None:
        self.message = message


def _guard(steps: Callable[[], Generator[Any, None, Any]]) -> Iterator[Any]:
    """Run a step generator in the worker; any exception becomes a returned Failed (no traceback dialog)."""
    try:
        result = yield from steps()
    except Exception as e:  # noqa: BLE001 - every failure is reported as one notification line
        return Failed(engine.error_message(e))
    return result


class _ModelWidget(Container):
    """Image-layer choice, weights file, Run/Cancel and a status line; runs one worker at a time."""

    run_text = "Run"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._worker = None
        self.layer = ComboBox(label="image", choices=self._image_layers, nullable=True)
        self.weights = FileEdit(label="weights", mode="r", filter="*.safetensors", value="")
        self.weights.tooltip = "A .safetensors weights file; empty: the shipped weights."
        self.na = FloatSpinBox(label="NA", value=0.0, min=0.0, max=1.6, step=0.05)
        self.na.tooltip = "Objective NA (0: not given: the reference microscope's); dz is in um of your microscope."
        self.wavelength = FloatSpinBox(label="wavelength (um)", value=0.0, min=0.0, max=2.0, step=0.01)
        self.wavelength.tooltip = "Illumination wavelength in um (0: not given: 0.55)."
        self.pixel = FloatSpinBox(label="pixel (um)", value=0.0, min=0.0, max=100.0, step=0.005)
        self.pixel.tooltip = ("Pixel size at the sample in um (0: unknown: resized by the weights' factor); the layer is "
                              "resized to the network's working pixel size, as deblur --pixel-size does.")
        self.run_button = PushButton(text=self.run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend([self.layer, self.weights, self.na, self.wavelength, self.pixel, self.run_button,
                     self.cancel_button])
        self.run_button.changed.connect(self._on_run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            event.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._follow_selection)
        self._refresh_layers()
        self._follow_selection()

    # -- layer choice

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(lay.name, lay) for lay in self._viewer.layers if isinstance(lay, Image)]

    def _refresh_layers(self, _event: Any = None) -> None:
        self.layer.reset_choices()

    def _follow_selection(self, _event: Any = None) -> None:
        """The combo box follows the viewer's active layer when that is an image layer (not one of our outputs,
        which napari selects when they are added)."""
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and OUTPUT_KEY not in active.metadata and active in self.layer.choices:
            self.layer.value = active

    def source(self) -> tuple[Image, engine.LayerImage]:
        """The chosen layer and its checked planes (UserError when there is none or it cannot be used)."""
        lay = self.layer.value
        if lay is None:
            raise engine.UserError("choose an image layer first")
        return lay, engine.layer_image(lay.name, lay.data, rgb=bool(lay.rgb), multiscale=bool(lay.multiscale))

    def optics(self) -> OpticsOptions:
        """The NA, wavelength and pixel size fields (0: not given) as the CLI's options."""
        return OpticsOptions(self.na.value or None, self.wavelength.value or None, self.pixel.value or None)

    # -- workers

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, steps: Callable[[], Generator[Any, None, Any]], on_done: Callable[[Any], None],
              total: int = 0, desc: str = "") -> None:
        """Run `steps` in a worker; `on_done(result)` in the main thread unless it failed or was cancelled.

        With `desc` napari's activity bar shows the worker (`total` steps, or indeterminate for 0)."""
        progress = {"total": total, "desc": desc} if desc else False
        worker = create_worker(_guard, steps, _progress=progress, _start_thread=False)

        def returned(result: Any) -> None:
            if isinstance(result, Failed):
                self.fail(result.message)
            else:
                on_done(result)

        worker.returned.connect(returned)
        worker.aborted.connect(lambda: self.set_status("cancelled"))
        worker.finished.connect(self._finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        worker.start()

    def _finished(self) -> None:
        self._worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.after_finish()

    def after_finish(self) -> None:
        """Hook for subclasses (the refocus widget starts the next pending render here)."""

    def cancel(self, _value: Any = None) -> None:
        """Ask the running worker to stop at its next step."""
        if self._worker is not None:
            self._worker.quit()

    def fail(self, message: str) -> None:
        """One-line error notification (and in the status line)."""
        self.set_status(f"error: {message}")
        show_error(message)

    def set_status(self, text: str) -> None:
        self.status.value = text

    def _on_run(self, _value: Any = None) -> None:
        if self.busy:
            show_info("microdeblur is still working; cancel it or wait")
            return
        try:
            self.run()
        except Exception as e:  # noqa: BLE001 - a bad layer or file becomes a notification
            self.fail(engine.error_message(e))

    def run(self) -> None:
        raise NotImplementedError

    def add_result(self, source: Image, data: np.ndarray, name: str, ndim: int | None = None, **kwargs: Any) -> Image:
        """Put `data` in the layer `name` (replacing its data) or a new layer with the source's geometry."""
        n = data.ndim if ndim is None else ndim
        kwargs["metadata"] = {OUTPUT_KEY: type(self).__name__, **kwargs.get("metadata", {})}
        if name in self._viewer.layers:
            lay = self._viewer.layers[name]
            lay.data = data
            for key, value in kwargs.items():
                setattr(lay, key, value)
            return lay
        return self._viewer.add_image(data, name=name, scale=tuple(source.scale)[-n:],
                                      translate=tuple(source.translate)[-n:], **kwargs)


class DeblurWidget(_ModelWidget):
    """Deblur the chosen layer (every plane) into '<name> deblurred', same shape, dtype, scale and translation."""

    run_text = "Deblur"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.append(self.status)

    def run(self) -> None:
        lay, image = self.source()
        weights = self.weights.value

        optics = self.optics().checked()

        def steps() -> Generator[int, None, np.ndarray]:
            db, _ = engine.for_optics(engine.deblurrer(weights), optics, lay.name)
            engine.require_focus_code(db, weights)
            return (yield from engine.deblur_steps(db, image))

        def done(out: np.ndarray) -> None:
            self.add_result(lay, out, f"{lay.name} deblurred")
            self.set_status(f"deblurred {image.n_planes} plane(s) in {time.perf_counter() - t0:.2f} s")

        t0 = time.perf_counter()
        self.set_status("deblurring...")
        self.start(steps, done, total=image.n_planes, desc="microdeblur: deblur")


TABLE_COLUMNS = ("plane", "dz um", "focus %", "tiles")


class FocusWidget(_ModelWidget):
    """Defocus map (dz um) of the chosen layer with a diverging colormap centred on focus, and its summary."""

    run_text = "Map focus"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.summary = Label(value="")
        self.table = Table(value={key: [] for key in TABLE_COLUMNS})
        self.table.tooltip = "Per plane: median dz (um) of the map, % of it within 2 um of focus, tiles with contrast."
        self.extend([self.status, self.summary, self.table])
        self.rows: list[dict] = []

    def run(self) -> None:
        lay, image = self.source()
        weights = self.weights.value

        optics = self.optics().checked()

        def steps() -> Generator[int, None, tuple[np.ndarray, list[dict]]]:
            db, factor = engine.for_optics(engine.deblurrer(weights), optics, lay.name)
            return (yield from engine.focus_steps(db, image, factor))

        def done(result: tuple[np.ndarray, list[dict]]) -> None:
            dmap, rows = result
            limit = engine.dz_limit(dmap)
            self.add_result(lay, dmap, f"{lay.name} dz map", colormap=DZ_COLORMAP, contrast_limits=(-limit, limit),
                            metadata={"microdeblur_focus": rows})
            self.show_rows(rows)
            self.set_status(f"mapped {image.n_planes} plane(s) in {time.perf_counter() - t0:.2f} s; "
                            f"colours -{limit:g} (blue) .. +{limit:g} um (red)")

        t0 = time.perf_counter()
        self.set_status("mapping focus...")
        self.start(steps, done, total=image.n_planes, desc="microdeblur: focus map")

    def show_rows(self, rows: list[dict]) -> None:
        """Per-plane summary in the table, the overall one in the summary line."""
        self.rows = rows
        columns = ([r["plane"] for r in rows], [_fmt(r["median_dz_um"], "{:+.2f}") for r in rows],
                   [_fmt(100 * r["frac_in_focus"], "{:.0f}") for r in rows],
                   [f"{r['n_tiles_used']}/{r['n_tiles']}" for r in rows])
        self.table.value = dict(zip(TABLE_COLUMNS, columns))
        self.summary.value = engine.summary_text(rows)


def _fmt(value: float, pattern: str) -> str:
    """Number as text, 'n/a' for NaN (no tile with contrast)."""
    return pattern.format(value) if np.isfinite(value) else "n/a"


class RefocusWidget(_ModelWidget):
    """Drag dz and the chosen plane re-renders: it is encoded once, each move only decodes."""

    run_text = "Encode plane"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        lo, hi = engine.DZ_LIMITS
        self.dz = FloatSlider(label="dz (um)", min=lo, max=hi, step=0.5, value=0.0)
        self.extend([self.dz, self.status])
        self.session: engine.RefocusSession | None = None
        self.rendered: float | None = None  # dz of the image now shown
        self.render_s: float | None = None  # time of the last decode
        self._pending: float | None = None
        self._reencode = False
        self.dz.changed.connect(self._on_dz)

    def _on_run(self, _value: Any = None) -> None:
        """Encode the current plane (again) and render it at the slider's dz, after a render still running."""
        self._reencode, self._pending = True, float(self.dz.value)
        if not self.busy:
            self._on_run_pending()

    def run(self) -> None:
        self._on_run()

    def _on_dz(self, value: float) -> None:
        self._pending = float(value)
        if not self.busy:
            self._on_run_pending()

    def _on_run_pending(self) -> None:
        try:
            self._kick()
        except Exception as e:  # noqa: BLE001
            self._pending = None
            self.fail(engine.error_message(e))

    def after_finish(self) -> None:
        if self._pending is not None and (self._pending != self.rendered or self._reencode):
            self._on_run_pending()
        else:
            self._pending = None

    def plane_index(self, lay: Image, image: engine.LayerImage) -> int:
        """Flat index of the plane the viewer shows now (0 for a 2-D layer)."""
        if not image.lead:
            return 0
        coords = lay.world_to_data(self._viewer.dims.point)[: len(image.lead)]
        idx = [int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(coords, image.lead)]
        return int(np.ravel_multi_index(idx, image.lead))

    def _kick(self) -> None:
        """Start a render of the pending dz (encoding first when the layer, plane or weights changed)."""
        if self.busy or self._pending is None:
            return
        dz, self._pending = self._pending, None
        lay, image = self.source()
        i = self.plane_index(lay, image)
        weights = self.weights.value
        optics = self.optics().checked()
        key = (id(lay), lay.name, i, str(engine.weights_path(weights)), optics)
        reuse = self.session is not None and self.session.key == key and not self._reencode
        session, self._reencode = (self.session if reuse else None), False

        def steps() -> Generator[str, None, tuple]:
            s = session
            if s is None:
                db, factor = engine.for_optics(engine.deblurrer(weights), optics, lay.name)
                s = engine.RefocusSession(db, image.plane(i), key, weights, factor)
                yield "encoded"
            t = time.perf_counter()
            out = s.render(dz)
            return s, dz, out, time.perf_counter() - t

        self.set_status("encoding..." if session is None else f"rendering dz {dz:+.1f} um...")
        self.start(steps, lambda result: self._show(lay, image, result),
                   desc="microdeblur: encode plane" if session is None else "")

    def _show(self, lay: Image, image: engine.LayerImage, result: tuple) -> None:
        """Show a render in '<name> refocused' (2-D, the source's Y/X scale and translation)."""
        session, dz, out, seconds = result
        self.session, self.rendered, self.render_s = session, dz, seconds
        self.add_result(lay, out, f"{lay.name} refocused", ndim=2, metadata={"microdeblur_dz_um": dz})
        lo, hi = session.dz_range
        note = f" (clipped to the calibrated {lo:g}..{hi:g} um)" if not lo - 1e-9 <= dz <= hi + 1e-9 else ""
        where = f"plane {session.key[2]}, " if image.lead else ""
        self.set_status(f"{where}dz {dz:+.1f} um{note}: decoded in {seconds:.2f} s")

    def fail(self, message: str) -> None:
        """Notify once: a failed render drops the renders still waiting."""
        self._pending = None
        super().fail(message)
