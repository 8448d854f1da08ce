"""Torch device selection: auto picks cuda, then mps, then cpu; an unavailable request is an error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from .errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for 'auto', 'cpu', 'cuda' or 'mps' (never a silent fallback)."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available (use --device cpu or auto)")
        return torch.device("cuda")
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError("--device mps was asked for but Apple MPS is not available")
        return torch.device("mps")
    raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or mps")


@contextmanager
def torch_threads(n: int = 0) -> Iterator[int]:
    """Run the block with n intra-op threads (0: all cores), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    want = n or os.cpu_count() or 1
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(before)


PRECISIONS = ("auto", "float32", "bfloat16")


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype for `precision` on `device` (None: plain float32). 'auto' is bfloat16 on a CUDA GPU
    that supports it (no loss scaling needed) and float32 elsewhere; 'bfloat16' is honoured on CPU too."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for `device` (a no-op context for dtype None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
