"""Which runner a command's network runs on (ONNX Runtime or PyTorch) and the Deblurrer built on it."""

from __future__ import annotations

import os
from pathlib import Path

from . import log
from .engine import Deblurrer
from .errors import UserError

BACKENDS = ("auto", "torch", "onnx")


def _load(weights: Path | None, device: str):
    """(model, meta, torch device) for the requested weights and device."""
    from .devices import resolve_device
    from .weights import load_weights

    dev = resolve_device(device)
    model, meta = load_weights(weights, device=str(dev))
    return model, meta, dev


def gpu_visible() -> bool:
    """Whether torch could find a GPU here, told without importing torch: an NVIDIA driver (device node or
    nvidia-smi) or Apple silicon (MPS)."""
    import platform
    import shutil
    import sys

    return (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None
            or (sys.platform == "darwin" and platform.machine() == "arm64"))


def load_deblurrer(weights: Path | None, device: str = "auto", backend: str = "auto", precision: str = "auto",
                   **options) -> tuple[Deblurrer, object]:
    """(Deblurrer, weights metadata) on the chosen backend. `auto` takes ONNX Runtime when the run is on the CPU in
    float32, onnxruntime is installed and graphs exported from exactly these weights lie beside them (a process that
    never imports torch: seconds less start-up, docs/benchmarks.md); PyTorch otherwise, and always for a GPU."""
    from . import onnx_runner

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    on_cpu = device.lower() == "cpu" or (device.lower() == "auto" and not gpu_visible())
    if backend == "onnx":
        if not on_cpu:
            raise UserError("--backend onnx runs on the CPU: use --device cpu (PyTorch runs GPUs)")
        if precision not in ("auto", "float32"):
            raise UserError("--backend onnx computes in float32: use --precision auto or float32")
        if not onnx_runner.available():
            raise UserError("--backend onnx needs onnxruntime: pip install onnxruntime")
    if backend == "onnx" or (backend == "auto" and on_cpu and precision in ("auto", "float32") and onnx_runner.available()):
        from .weights import read_meta

        path, meta = read_meta(weights)
        runner, why = onnx_runner.open_runner(meta.config, path)
        if runner is not None:
            log.debug(f"backend: ONNX Runtime ({why})")
            return Deblurrer(runner, meta, **options), meta
        if backend == "onnx":
            again = " --overwrite" if any(p.exists() for p in onnx_runner.graph_paths(path)) else ""
            raise UserError(f"--backend onnx: {why}; export them with: microdeblur export onnx --weights {path}{again}")
        log.debug(f"backend: PyTorch ({why})")
    model, meta, dev = _load(weights, device)
    return Deblurrer(model, meta, device=dev, precision=precision, **options), meta
