"""Helpers shared by the tests that drive the CLI through Typer's runner."""

from __future__ import annotations

from typer.testing import CliRunner

from microdeblur.cli import app


def run_cli(*args):
    """Invoke the CLI with str() of every argument on a wide terminal (no wrapped messages)."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def one_error(res, *words: str) -> str:
    """The single `error:` line of a failed run (exit 1), containing every word."""
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def tiny_weights(path, calibration: dict | None, *, scale: float = 1.0, normalization: dict | None = None):
    """Save a seeded tiny manifold-1d network (focus code 0.1) with this calibration; returns the path."""
    import numpy as np
    import torch

    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.normalize import NORMALIZATION
    from microdeblur.weights import WeightsMeta, save_weights

    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=scale,
                                          normalization=dict(normalization or NORMALIZATION),
                                          focus_blur_code=np.array([0.1], np.float32), calibration=calibration))
    return path
