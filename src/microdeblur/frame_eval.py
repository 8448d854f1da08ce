"""Whole-frame deblurring scores as the field reports them (docs/evaluation.md, "Whole frames").

Every defocused frame of held-out simulated days goes through the method whole (for models: the real
`deblur` path with its tiling, blending, resizing and return to raw units) and is scored against the day's
in-focus frame twice: after the least-squares gain and offset that best match it to the in-focus frame
normalised by its own percentiles (CSBDeep's min-MSE convention; the blurry input gets the same fit), and
with each image normalised by its own percentiles (what `deblur --truth` prints).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import log
from .calibration import REFERENCE
from .errors import UserError
from .metrics import frame_scores, minmse_scores
from .normalize import frame_normalizer

FRAME_BINS = ((0.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 20.0), (20.0, 30.0))
# Row names of the evaluation tables (tiles and whole frames); --onnx peers may not take them.
INPUT, UNSHARP, UNET, WIENER, RL = "input", "unsharp mask", "U-Net", "Wiener", "Richardson-Lucy"
Method = Callable[[np.ndarray, float, float], np.ndarray]  # (raw plane, dz um, camera pixel um) -> output plane


@dataclass(frozen=True)
class FrameDay:
    """One through-focus series: its plane files (or one stack file), true dz per plane (um, 0 at focus), the
    in-focus plane and the camera pixel size at the sample (None when unknown)."""

    name: str
    files: tuple[Path, ...]
    dz: np.ndarray
    focus: int
    pixel_um: float | None
    stack: Path | None = None

    def plane(self, i: int) -> np.ndarray:
        """Plane i as stored."""
        return tifffile.imread(self.stack, key=i) if self.stack is not None else tifffile.imread(self.files[i])

    @property
    def n_planes(self) -> int:
        return len(self.dz)


def find_frame_days(raw: Sequence[Path]) -> list[FrameDay]:
    """Days (folders with ground_truth.json, as `microdeblur simulate` writes them) in or below the given folders."""
    days = []
    for root in map(Path, raw):
        if not root.is_dir():
            raise UserError(f"{root}: not a folder of simulated days")
        folders = [root] if (root / "ground_truth.json").exists() else sorted(p for p in root.iterdir() if (p / "ground_truth.json").exists())
        for d in folders:
            try:
                truth = json.loads((d / "ground_truth.json").read_text())
                dz = np.asarray(truth["z_um"], np.float64)
                focus, pixel = int(truth["focus_plane"]), float(truth["optics"]["pixel_um"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{d / 'ground_truth.json'}: not a simulator ground truth ({type(e).__name__}: {e})") from None
            files = tuple(sorted(d.glob(f"{d.name}_z*.tif")))
            if len(files) != len(dz):
                raise UserError(f"{d}: {len(files)} plane files but ground_truth.json lists {len(dz)} planes")
            days.append(FrameDay(d.name if d != root else root.name, files, dz - dz[focus], focus, pixel))
    if not days:
        raise UserError(f"no simulated days (ground_truth.json) in {', '.join(map(str, raw))}")
    return days


def at_working_scale(fn: Callable[[np.ndarray, float, float], np.ndarray], scale: float,
                     by_pixel: bool = True) -> Method:
    """Method that resizes to the working pixel size (pixel size / 0.65 um with `by_pixel`; `scale` without, or
    when the pixel size is unknown), normalises by the frame's percentiles, applies fn(normalised, dz, working pixel um), reverts the
    normalisation and resizes back, as `deblur` does around its network."""
    from .resizing import resize_to

    def method(plane: np.ndarray, dz: float, pixel_um: float) -> np.ndarray:
        work, scale_here = _working(plane, scale, pixel_um if by_pixel else None)
        norm = frame_normalizer(work)
        out = norm.after(fn(norm.before(work), dz, None if pixel_um is None else pixel_um / scale_here))
        return resize_to(out, plane.shape)

    return method


def _working(plane: np.ndarray, scale: float, pixel_um: float | None) -> tuple[np.ndarray, float]:
    """(plane at the working pixel: resized by pixel_um / 0.65 um, or by `scale` when pixel_um is None; the factor)."""
    from .resizing import rescale

    factor = float(f"{pixel_um / REFERENCE.working_pixel_um:.10g}") if pixel_um is not None else scale
    return rescale(plane, factor), factor


def baseline_methods(scale: float, rl_iterations: int | Sequence[int] = 10, by_pixel: bool = True) -> dict[str, Method]:
    """The blurry input, unsharp masking and Richardson-Lucy (reference optics' defocus PSF at the true |dz|),
    one row per iteration count (the best count depends on noise and |dz|: give the peer its best); resized
    as at_working_scale."""
    from .baselines import deconvolve, richardson_lucy_tiles, unsharp

    def rl(iterations: int) -> Method:
        def run(x: np.ndarray, dz: float, px: float | None) -> np.ndarray:
            if px is None or not np.isfinite(px):  # unknown pixel size: no PSF to deconvolve with
                return np.full_like(x, np.nan)
            return deconvolve(x[None], np.array([dz]), px, lambda t, psf: richardson_lucy_tiles(t, psf, iterations))[0]
        return at_working_scale(run, scale, by_pixel)

    counts = [rl_iterations] if isinstance(rl_iterations, int) else list(rl_iterations)
    return {INPUT: lambda plane, dz, px: np.asarray(plane, np.float32),
            UNSHARP: at_working_scale(lambda x, dz, px: unsharp(x[None])[0], scale, by_pixel),
            **{f"{RL} ({n} it.)": rl(n) for n in counts}}


def is_baseline_row(name: str) -> bool:
    """Whether `name` is (or, for Richardson-Lucy's iteration counts, could be) a baseline's row name."""
    return name in (INPUT, UNSHARP, UNET, WIENER) or name.startswith(RL)


def linear_filter_method(fit_days: Sequence[FrameDay], scale: float, dz_max: float = 15.0) -> Method:
    """The least-squares linear filter for each dz (baselines.LinearFilterFit), learned on `fit_days` (held-out
    days of the same microscope) at the working pixel and applied with the frame's true dz (the nearest fitted
    one), resized and normalised as at_working_scale does around any method."""
    from .baselines import LinearFilterFit, linear_filter

    def working(plane: np.ndarray, pixel_um: float | None) -> np.ndarray:
        work = _working(plane, scale, pixel_um)[0]
        return frame_normalizer(work).before(work)

    fits: dict[float, LinearFilterFit] = {}
    for day in fit_days:
        focus = working(day.plane(day.focus).astype(np.float32), day.pixel_um)
        for i, dz in enumerate(day.dz):
            if dz != 0 and abs(dz) <= dz_max + 1e-9:
                fits.setdefault(round(float(dz), 3), LinearFilterFit()).add(working(day.plane(i), day.pixel_um), focus)
    if not fits:
        raise UserError("no defocused frames to fit the linear filter on")
    gains = {dz: f.gains() for dz, f in fits.items()}
    levels = np.array(sorted(gains))
    return at_working_scale(lambda x, dz, px: linear_filter(x, gains[float(levels[np.argmin(np.abs(levels - dz))])]), scale)


def model_method(deblurrer) -> Method:
    """A loaded model's real `deblur` path (engine.Deblurrer.deblur_plane, resized by the frame's pixel size as
    `deblur` does from a file's metadata) as a frame method."""
    return lambda plane, dz, px: deblurrer.with_scale(deblurrer.scale_for(px)).deblur_plane(plane).astype(np.float32)


def tiled_method(net, scale: float, device="cpu", tile: int = 128, views: int = 1) -> Method:
    """A tile-to-tile network ([N,1,T,T] normalised -> same) run through deblur's tiling and blending
    (engine.predict_tiled: deblur's tile grid and blending, overlap and batch size), averaged over
    `views` test-time views as `deblur --tta` does."""
    import torch

    from .engine import BATCH_SIZE, OVERLAP, averaged_views, predict_tiled

    @torch.inference_mode()
    def fn(t: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(np.ascontiguousarray(t, np.float32)).to(device)).float().cpu().numpy()

    return at_working_scale(lambda x, dz, px: predict_tiled(x, averaged_views(fn, views), tile, OVERLAP, BATCH_SIZE),
                            scale)


def onnx_tiled_method(path, scale: float, tile: int = 128, views: int = 1) -> Method:
    """A tile-to-tile ONNX graph (input `tiles` [N,1,T,T] normalised -> same; e.g. benchmarks/care_baseline.py's
    CAREamics export) on ONNX Runtime, through deblur's tiling and blending like `tiled_method` (on the graph's own
    tile side where it fixes one)."""
    from .engine import BATCH_SIZE, OVERLAP, averaged_views, predict_tiled
    from .onnx_runner import session as onnx_session

    session = onnx_session(path)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "tiles" or len(inputs[0].shape) != 4:
        raise UserError(f"{path}: not a tile-to-tile graph (needs one input `tiles` [N,1,T,T]; "
                        f"has {', '.join(f'{i.name} {i.shape}' for i in inputs) or 'none'})")
    batch, side = inputs[0].shape[0], inputs[0].shape[-1]
    tile = side if isinstance(side, int) else tile  # a graph with a fixed tile side
    if isinstance(batch, int) or tile <= OVERLAP:
        raise UserError(f"{path}: needs a free batch axis and tiles larger than the {OVERLAP}-px overlap "
                        f"(input `tiles` is {inputs[0].shape})")

    def fn(t: np.ndarray) -> np.ndarray:
        return session.run(None, {"tiles": np.ascontiguousarray(t, np.float32)})[0]

    return at_working_scale(lambda x, dz, px: predict_tiled(x, averaged_views(fn, views), tile, OVERLAP, BATCH_SIZE),
                            scale)


def defocused_frames(days: Sequence[FrameDay], dz_max: float = 15.0) -> Iterator[tuple[FrameDay, float, np.ndarray, np.ndarray]]:
    """(day, dz, plane as float32, the day's in-focus plane percentile-normalised) for every plane with
    0 < |dz| <= dz_max: the frames every whole-frame benchmark scores."""
    for day in days:
        ref = day.plane(day.focus).astype(np.float32)
        ref = frame_normalizer(ref).before(ref)
        for i, dz in enumerate(day.dz):
            if dz != 0 and abs(dz) <= dz_max + 1e-9:
                yield day, float(dz), day.plane(i).astype(np.float32), ref


def score_frames(days: Sequence[FrameDay], methods: dict[str, Method], dz_max: float = 15.0) -> list[dict[str, Any]]:
    """One row per (frame, method) with 0 < |dz| <= dz_max: min-MSE and own-percentile PSNR/SSIM and seconds."""
    rows = []
    for day in days:
        ref = day.plane(day.focus).astype(np.float32)
        ref_norm = frame_normalizer(ref).before(ref)
        for i, dz in enumerate(day.dz):
            if dz == 0 or abs(dz) > dz_max + 1e-9:
                continue
            plane = day.plane(i)
            for name, method in methods.items():
                t0 = time.perf_counter()
                out = method(plane, float(dz), day.pixel_um)
                sec = time.perf_counter() - t0
                if not np.isfinite(out).all():  # the method does not apply to this series (e.g. no pixel size)
                    continue
                mp, ms = minmse_scores(out, ref_norm)
                pp, ps = frame_scores(out, ref)
                rows.append({"day": day.name, "plane": i, "dz_um": float(dz), "method": name, "minmse_psnr": mp,
                             "minmse_ssim": ms, "pct_psnr": pp, "pct_ssim": ps, "seconds": sec})
            log.debug(f"{day.name} dz {dz:+g}: " + ", ".join(f"{r['method']} {r['minmse_psnr']:.2f}" for r in rows[-len(methods):]))
    if not rows:
        raise UserError(f"no defocused frame with 0 < |dz| <= {dz_max:g} um in the given days")
    return rows


def bin_name(lo: float, hi: float) -> str:
    """Label of a |dz| bin, e.g. '2-5'."""
    return f"{lo:g}-{hi:g}"


def summarise(rows: list[dict[str, Any]], dz_max: float = 15.0) -> dict[str, Any]:
    """Per method: means over all frames and per |dz| bin of every score, and the frame counts."""
    bins = [(lo, hi) for lo, hi in FRAME_BINS if lo < dz_max]
    keys = ("minmse_psnr", "minmse_ssim", "pct_psnr", "pct_ssim", "seconds")
    out: dict[str, Any] = {"bins": [bin_name(*b) for b in bins], "dz_max": dz_max, "methods": {}}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]

        def mean(sel: list[dict[str, Any]]) -> dict[str, Any]:
            return {"n": len(sel), **{k: (float(np.mean([r[k] for r in sel])) if sel else None) for k in keys}}

        out["methods"][name] = {"all": mean(mine), "bins": {bin_name(lo, hi): mean([r for r in mine if lo < abs(r["dz_um"]) <= hi])
                                                             for lo, hi in bins}}
    return out


def markdown(summary: dict[str, Any]) -> str:
    """Tables: min-MSE PSNR and SSIM, then own-percentile PSNR and SSIM, per |dz| bin, methods as rows."""
    parts = []
    for title, key, digits in (("min-MSE PSNR (dB)", "minmse_psnr", 2), ("min-MSE SSIM", "minmse_ssim", 3),
                               ("own-percentile PSNR (dB)", "pct_psnr", 2), ("own-percentile SSIM", "pct_ssim", 3)):
        header = ["method", f"all (0-{summary['dz_max']:g})", *summary["bins"]]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, res in summary["methods"].items():
            cells = [res["all"][key], *(res["bins"][b][key] for b in summary["bins"])]
            lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.{digits}f}" for c in cells) + " |")
        parts.append(f"**{title}**\n\n" + "\n".join(lines) + "\n")
    first = next(iter(summary["methods"].values()))
    counts = ", ".join(f"{b}: {first['bins'][b]['n']}" for b in summary["bins"])
    parts.append(f"Frames per |dz| bin (µm): {counts}.\n")
    return "\n".join(parts)


def write_report(rows: list[dict[str, Any]], dz_max: float, json_path: Path | None = None,
                 markdown_path: Path | None = None) -> tuple[dict[str, Any], str]:
    """(summary, markdown tables) of scored rows, also written to json_path (rows and summary) and markdown_path."""
    summary = summarise(rows, dz_max)
    text = markdown(summary)
    if json_path:
        json_path.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    if markdown_path:
        markdown_path.write_text(text)
    return summary, text
