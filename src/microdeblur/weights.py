"""Model weights as safetensors with `microdeblur.*` string metadata; shipped default weights."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open

from .atomic import atomic_path, check_output_path
from .calibration import REFERENCE, Microscope, check_calibration
from .errors import UserError
from .model_config import ModelConfig
from .normalize import NORMALIZATION

if TYPE_CHECKING:  # torch is imported only where tensors are read or written (the ONNX backend never needs it)
    import torch

    from .networks import DisentangledAE

FORMAT_VERSION = "1"
PREFIX = "microdeblur."
DEFAULT_WEIGHTS_NAME = "manifold-1d.safetensors"


@dataclass
class WeightsMeta:
    """Everything stored next to the tensors; `focus_blur_code` is the mean blur code of in-focus tiles."""

    variant: str
    config: ModelConfig
    normalization: dict = field(default_factory=lambda: dict(NORMALIZATION))
    scale: float = 1.0
    z_step_um: float | None = None
    focus_blur_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    calibration: dict | None = None
    training: dict = field(default_factory=dict)
    optics: dict | None = None  # the microscope trained for (training_optics); None: the reference microscope
    focus_gate: dict | None = None  # the fitted correction ramp (focus_gate.Ramp: lo_um, hi_um, how it was fitted)

    def __post_init__(self) -> None:
        self.focus_blur_code = np.asarray(self.focus_blur_code, dtype=np.float32).reshape(-1)
        if self.variant != self.config.variant:
            raise ValueError(f"meta variant {self.variant!r} differs from config variant {self.config.variant!r}")


def default_weights_path() -> Path:
    """The shipped manifold-1d weights inside package data `microdeblur.models` (may not exist)."""
    return Path(str(resources.files("microdeblur.models") / DEFAULT_WEIGHTS_NAME))


def meta_to_strings(meta: WeightsMeta) -> dict[str, str]:
    """WeightsMeta -> safetensors `str -> str` metadata under the `microdeblur.` prefix."""
    values: dict[str, Any] = {
        "variant": meta.variant,
        "config": meta.config.to_dict(),
        "normalization": meta.normalization,
        "scale": float(meta.scale),
        "z_step_um": None if meta.z_step_um is None else float(meta.z_step_um),
        "focus_blur_code": [float(v) for v in meta.focus_blur_code],
        "calibration": meta.calibration,
        "training": meta.training,
    }
    if meta.optics is not None:  # files without the entry (written before it existed) read as the reference
        values["optics"] = meta.optics
    if meta.focus_gate is not None:
        values["focus_gate"] = meta.focus_gate
    out = {PREFIX + "format_version": FORMAT_VERSION}
    out.update({PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()})
    return out


def meta_from_strings(md: dict[str, str]) -> WeightsMeta:
    """Inverse of `meta_to_strings` (raises KeyError/ValueError on malformed entries)."""

    def get(key: str) -> Any:
        return json.loads(md[PREFIX + key])

    config = ModelConfig.from_dict(get("config"))
    scale, code = get("scale"), np.asarray(get("focus_blur_code"), dtype=np.float32).reshape(-1)
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if code.size and (code.shape != (config.blur_dim,) or not np.isfinite(code).all()):
        raise ValueError(f"focus_blur_code must be {config.blur_dim} finite number(s), got {code.tolist()}")
    return WeightsMeta(
        variant=md[PREFIX + "variant"],
        config=config,
        normalization=get("normalization"),
        scale=scale,
        z_step_um=get("z_step_um"),
        focus_blur_code=code,
        calibration=None if get("calibration") is None else check_calibration(get("calibration")),
        training=get("training"),
        optics=_checked_optics(get("optics")) if PREFIX + "optics" in md else None,
        focus_gate=_checked_gate(get("focus_gate")) if PREFIX + "focus_gate" in md else None,
    )


def _checked_gate(entry: Any) -> dict | None:
    """The `focus_gate` entry as stored, after checking it (ValueError when malformed); null reads as absent."""
    from .focus_gate import Ramp

    if entry is None:
        return None
    try:
        Ramp.from_meta(entry)
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed focus_gate entry: {e}") from None
    return entry


def _checked_optics(entry: Any) -> dict | None:
    """The `optics` entry as stored, after checking it (ValueError when malformed); null reads as absent."""
    if entry is None:
        return None
    Microscope.from_dict(entry)
    return entry


def training_optics(meta) -> Microscope:
    """The microscope the weights were trained for: their `optics` entry, else (weights written before it existed,
    or test stand-ins) the reference microscope, whose 0.325 µm camera pixels the weights' scale resized."""
    entry = getattr(meta, "optics", None)
    scale = float(getattr(meta, "scale", 1.0) or 1.0)
    if entry:
        m = Microscope.from_dict(entry)
        if m.working_pixel_um is None:  # an entry without it: the camera pixel (or the reference's) / scale
            m = replace(m, working_pixel_um=(m.pixel_um or REFERENCE.pixel_um) / scale)
        return m
    return replace(REFERENCE, working_pixel_um=REFERENCE.pixel_um / scale)


def _ground_truth_optics(source: str | None) -> dict:
    """The simulator's `optics` (ground_truth.json) of a prepared day's raw source, {} when there is none."""
    from .prepare import GROUND_TRUTH, _stem, ground_truth_optics

    if not source:
        return {}
    src = Path(source)
    return ground_truth_optics(src / GROUND_TRUTH if src.is_dir() else src.with_name(f"{_stem(src)}.{GROUND_TRUTH}"))


def optics_of_prepared(index: dict, scale: float) -> dict:
    """The weights' `optics` entry for training on a prepared folder (its index.json).

    Days prepared with their own optics (`optics` per day) have dz in µm of the reference microscope (u = Δz·NA²/λ
    is the same), so the weights record the reference NA and wavelength and the folder's working pixel size.
    Older folders: working pixel size from the index, NA and wavelength from the simulator's ground_truth.json
    next to each day's raw source when it is still there; what is unknown is the reference microscope's and
    listed in `assumed`. Days that disagree get their median, with a warning."""
    from . import log

    days = list(index.get("days", {}).values())
    if days and all(isinstance(d.get("optics"), dict) for d in days):
        working = index.get("working_pixel_um") or float(np.median([d["pixel_size_um"] for d in days if d.get("pixel_size_um")] or [REFERENCE.working_pixel_um]))
        m = Microscope(REFERENCE.na, REFERENCE.wavelength_um, float(f"{working * scale:.10g}"), float(f"{working:.10g}"))
        return {**m.to_dict(), "assumed": [], "dz_units": "reference microscope um (u = dz NA^2 / wavelength)"}
    truths = [_ground_truth_optics(d.get("source")) for d in days]

    def median(name: str, values: list) -> float | None:
        values = [float(v) for v in values if isinstance(v, (int, float)) and v and math.isfinite(v)]
        if not values:
            return None
        m = float(np.median(values))
        if max(values) - min(values) > 0.05 * m:
            log.warn(f"training days differ in {name} ({min(values):g} to {max(values):g}); the weights record {m:g}")
        return m

    working = median("working pixel size", [d.get("pixel_size_um") for d in days])
    native = working * scale if working else median("pixel size", [t.get("pixel_um") for t in truths])
    na = median("objective NA", [t.get("na") for t in truths])
    wavelength = median("wavelength", [t.get("wavelength_um") for t in truths])
    assumed = [k for k, v in (("na", na), ("wavelength_um", wavelength), ("pixel_um", native)) if v is None]
    native = native or REFERENCE.pixel_um
    m = Microscope(na or REFERENCE.na, wavelength or REFERENCE.wavelength_um, float(f"{native:.10g}"),
                   float(f"{(working or native / scale):.10g}"))
    Microscope.from_dict(m.to_dict())  # a clear ValueError now rather than unreadable weights later
    return {**m.to_dict(), "assumed": assumed}


def save_weights(path: str | Path, model: DisentangledAE, meta: WeightsMeta, overwrite: bool = False, half: bool = False) -> None:
    """Write model tensors (float32, or float16 with `half`) and metadata atomically (atomic.AtomicFile: an existing
    file is replaced only with overwrite, even when another process creates it meanwhile)."""
    import torch
    from safetensors.torch import save_file

    path = check_output_path(path, overwrite)
    if meta.config != model.config:
        raise ValueError("meta.config differs from the model's config")
    dtype = torch.float16 if half else torch.float32
    tensors = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    with atomic_path(path, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=meta_to_strings(meta))
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files; weights are meant to be shared


def resolve_weights_path(path: str | Path | None) -> Path:
    """The weights file to read (None -> the shipped default), or a UserError when there is none."""
    if path is None:
        path = default_weights_path()
        if not path.is_file():
            raise UserError("no shipped weights found; pass --weights")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    return path


def _open(path: Path, framework: str, tensors: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """(string metadata, tensors or {}) of a safetensors file, or a UserError for a foreign file."""
    try:
        with safe_open(str(path), framework=framework, device="cpu") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for foreign files
        raise UserError(f"{path}: not a safetensors weights file") from e


def _checked_meta(path: Path, md: dict[str, str], expect_variant: str | None) -> WeightsMeta:
    """The file's WeightsMeta, or a UserError naming what is missing, unsupported or damaged."""
    version = md.get(PREFIX + "format_version")
    if version is None:
        raise UserError(f"{path}: no microdeblur metadata (not a microdeblur weights file)")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: unsupported weights format version {version} (this microdeblur reads {FORMAT_VERSION})")
    try:
        meta = meta_from_strings(md)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: damaged microdeblur metadata ({e})") from e
    if expect_variant is not None and meta.variant != expect_variant:
        raise UserError(f"{path}: holds a {meta.variant} model, but a {expect_variant} model is needed")
    return meta


def read_meta(path: str | Path | None = None, expect_variant: str | None = None) -> tuple[Path, WeightsMeta]:
    """(resolved path, metadata) of a weights file without reading its tensors or importing torch."""
    path = resolve_weights_path(path)
    md, _ = _open(path, "numpy", tensors=False)
    return path, _checked_meta(path, md, expect_variant)


def load_weights(
    path: str | Path | None = None, device: str | torch.device = "cpu", expect_variant: str | None = None
) -> tuple[DisentangledAE, WeightsMeta]:
    """Read a weights file (None -> shipped default) into an eval-mode model on `device` and its metadata."""
    from .networks import DisentangledAE

    path = resolve_weights_path(path)
    md, tensors = _open(path, "pt", tensors=True)
    meta = _checked_meta(path, md, expect_variant)
    model = DisentangledAE(meta.config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: tensors do not match the {meta.variant} architecture in its metadata") from e
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise UserError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {bad[0]}; a diverged training run?)")
    return model.to(device).eval(), meta
