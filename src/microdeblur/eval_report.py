"""The text of an `evaluate` report (metrics.json, report.md and its tables) and writing the report folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import frame_eval
from .errors import UserError
from .frame_eval import INPUT
from .microscope import Optics

REPORT_FILES = ("metrics.json", "report.md", "deblur_examples.png", "deblur_by_dz.png", "interpolation.png",
                "identity_codes_*.png", "blur_codes_*.png")  # what a report writes (glob patterns)


def report_files(folder: Path) -> list[Path]:
    """Files in folder that a report writes (REPORT_FILES), sorted."""
    return sorted({p for pattern in REPORT_FILES for p in folder.glob(pattern)}) if folder.is_dir() else []


def _fmt(v: float | None, digits: int) -> str:
    """Number for a table cell ('–' when missing)."""
    return "–" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """GitHub markdown table."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def main_table(metrics: dict[str, Any]) -> str:
    """One row per method: deblurring overall and near focus, plus reconstruction and ML-VAE score for models."""
    near = f"|Δz| ≤ {metrics['protocol']['near_focus']:g}"
    header = ["method", "SSIM", "PSNR", f"SSIM {near}", f"PSNR {near}", "recon SSIM", "recon PSNR", "ML-VAE score"]
    rows = []
    for name, res in metrics["deblurring"].items():
        model = next((m for m in metrics["models"] if name.startswith(f"{m} (")), None)
        rec = metrics["reconstruction"].get(model, {})
        dis = metrics["disentanglement"].get(model, {})
        rows.append([name, _fmt(res["overall"]["ssim"], 4), _fmt(res["overall"]["psnr"], 2),
                     _fmt(res["near_focus"]["ssim"], 4), _fmt(res["near_focus"]["psnr"], 2),
                     _fmt(rec.get("ssim"), 4), _fmt(rec.get("psnr"), 2), _fmt(dis.get("score"), 3)])
    return _table(header, rows)


def bin_table(metrics: dict[str, Any], key: str, digits: int) -> str:
    """Rows: all tiles, near focus, each |Δz| bin; columns: every method side by side."""
    deblur = metrics["deblurring"]
    unit = "µm" if metrics["protocol"]["dz_unit"] == "um" else "planes"
    ref = deblur[INPUT]
    keys = [("all", lambda r: r["overall"]), (f"≤ {metrics['protocol']['near_focus']:g}", lambda r: r["near_focus"])]
    keys += [(b, lambda r, b=b: r["bins"].get(b, {})) for b in metrics["protocol"]["bins"] if b in ref["bins"]]
    rows = [[label, str(get(ref)["n"])] + [_fmt(get(r).get(key), digits) for r in deblur.values()] for label, get in keys]
    return _table([f"|Δz| ({unit})", "n", *deblur], rows)


def psf_note(p: dict[str, Any]) -> str:
    """Report paragraph: the pixel size the deconvolution PSFs were sampled at, and where it came from."""
    o = Optics()
    sizes = ", ".join(f"{v:.4g}" for v in sorted(set(p["pixel_um"].values())))
    note = (f"Richardson–Lucy and Wiener use the reference objective's defocus PSF (NA {o.na:g}, "
            f"λ {o.wavelength_um:g} µm) sampled at {sizes} µm per working pixel")
    if p["pixel_um_assumed"]:
        note += (f"; the prepared index has no pixel size for {', '.join(p['pixel_um_assumed'])}, so the reference "
                 f"optics' {o.pixel_um:g} µm / scale {p['scale']:g} was **assumed** there")
    else:
        note += ", from the prepared index"
    return note + ".\n"


def report_markdown(metrics: dict[str, Any]) -> str:
    """The whole report.md: protocol line, tables and linked figures."""
    p = metrics["protocol"]
    models = list(metrics["models"])
    parts = [
        "# microdeblur evaluation\n",
        f"Data `{p['data']}`, split **{p['split']}**{' (quick subset)' if p['quick'] else ''}: {p['n_identities']} identities, "
        f"{p['n_tiles']} tiles, {p['n_blurry']} blurry tiles deblurred. Metrics on normalised tiles, data range "
        f"{p['data_range']:g}, PSNR capped at {p['psnr_cap_db']:g} dB; deblurring compares with the in-focus tile of "
        "the same identity. See docs/evaluation.md.\n",
        *([psf_note(p)] if frame_eval.RL in metrics["baselines"] else []),
        *(["## Whole frames (held-out simulated days)\n",
           f"Days {', '.join(metrics['frames']['days'])}: every frame with 0 < |Δz| ≤ {metrics['frames']['dz_max']:g} µm "
           "through each method whole (models: the real `deblur` path), scored against the day's in-focus frame. "
           "min-MSE: gain and offset fitted to the percentile-normalised in-focus frame (CSBDeep's convention; the "
           "input gets the same fit). Own-percentile: each image normalised by its own 1st–99.8th percentiles.\n",
           frame_eval.markdown(metrics["frames"])] if metrics.get("frames") else []),
        "## Tiles: summary\n", main_table(metrics),
        "\n## Deblurring SSIM by |Δz|\n", bin_table(metrics, "ssim", 4),
        "\n## Deblurring PSNR (dB) by |Δz|\n", bin_table(metrics, "psnr", 2),
        "\n## Reconstruction D(E(x)) vs x\n",
        _table(["", *models], [[k.upper()] + [_fmt(metrics["reconstruction"][m][k], d) for m in models]
                               for k, d in (("ssim", 4), ("psnr", 2))]),
        "\n## Disentanglement (ML-VAE score, thesis eq. 4.10)\n",
        _table(["", *models], [[label] + [_fmt(metrics["disentanglement"][m][k], 3) for m in models]
                               for label, k in (("identity accuracy from identity codes", "acc_identity"),
                                                ("identity accuracy from blur codes", "acc_blur"),
                                                ("ML-VAE score", "score"), ("chance", "chance"))]),
        "\n## Figures\n",
        *[f"![{f}]({f})\n" for f in metrics["figures"]],
    ]
    return "\n".join(parts)


def write_report(folder: Path, metrics: dict[str, Any], figures: Callable[[Path], list[str]], overwrite: bool) -> None:
    """Render `figures(dir)`, metrics.json and report.md in a hidden staging folder inside `folder`, then move each
    file into place (atomic.StagedFolder: report.md last, none replaced without overwrite, not even one created
    meanwhile); other entries of `folder` are never touched."""
    from .atomic import StagedFolder

    with StagedFolder(folder, overwrite) as stage:
        metrics["figures"] = figures(stage.root)
        for name in metrics["figures"]:
            stage.path(name)
        stage.path("metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        stage.path("report.md").write_text(report_markdown(metrics))
        clash = stage.clashes()
        if clash:
            raise UserError(f"report folder {folder} already holds {', '.join(clash[:3])}"
                            f"{' ...' if len(clash) > 3 else ''} (use --overwrite to replace the report files)")
