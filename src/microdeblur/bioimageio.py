"""`microdeblur export bioimageio`: the deblur operation as a bioimage.io model package (TorchScript weights).

The package's model takes raw intensities and does what `Deblurrer.deblur_plane` does to one image: k x k
binning to the working scale, per-image 1 / 99.8 percentile normalisation, identity encoder, decoder with
the in-focus blur code of the weights, revert to raw units (focus-plane ratios x median when the weights
hold them, else the input's percentiles), bilinear resize back, and, when the weights carry a fitted focus
gate, the blend with the input by each tile's estimated defocus. Each tile of `deblur`'s grid gives its own blur
code (encoded alone, as in `deblur`; a source-code decoder reads their median over the tile's neighbourhood, as
`deblur` does); the decoder's FiLM parameters and the gate are interpolated between tile centres over the whole
image, which is decoded in one piece. The normalisation lives in the model
because the spec's postprocessing cannot revert with statistics of the input (docs/bioimageio.md).
bioimage.io tooling (`bioimageio.spec`) is imported only inside `export_bioimageio`.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import OVERLAP
from .errors import UserError
from .focus_gate import WINDOW_TILES
from .normalize import EXACT_PIXELS, NormalizationSpec

EXTRA_HINT = "pip install 'microdeblur[bioimageio]'"
THESIS = ("Ritsema, S. (2023). A Disentangled Representation Learning Approach for Deblurring Microscopy Images. "
          "MSc thesis, Department of Computer Science, Faculty of Electrical Engineering, Mathematics and Computer "
          "Science, University of Twente.")
THESIS_URL = "https://essay.utwente.nl/"  # University of Twente student theses repository
TOLERANCE = {"relative_tolerance": 1e-3, "absolute_tolerance": 0.05, "mismatched_elements_per_million": 100}


# ---------------------------------------------------------------- the exported network


class DeblurCore(nn.Module):
    """Normalised images [B,1,H,W] and the decoder's FiLM maps -> the network's identity maps -> its decoder.

    The model's own identity maps and decoder (input skip and stem included), without flattening the identity,
    so H != W works."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, films: list[Tensor]) -> Tensor:
        """`films`: scale, shift, scale, ... [B,C,h,w] per FiLM'd level (`DisentangledAE.film_strides` order)."""
        maps, _ = self.model.identity_maps(x)
        return self.model.decode_maps(maps, [(films[i], films[i + 1]) for i in range(0, len(films), 2)])


class TileCodes(nn.Module):
    """Tiles [N,1,T,T] -> their own blur codes [N,Db] (each tile encoded alone, as in `deblur`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tiles: Tensor) -> Tensor:
        return self.model.identity_maps(tiles)[1]


class TileFilms(nn.Module):
    """Source codes [N,Db] -> the decoder's FiLM parameters at the in-focus code [N,P] (a `--source-code` decoder
    reads the neighbourhood's code, engine.Deblurrer.source_codes; others ignore it)."""

    def __init__(self, model: nn.Module, code: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("code", code.reshape(1, -1).float())

    def forward(self, sources: Tensor) -> Tensor:
        return self.model.film_params(self.code.expand(sources.shape[0], -1), sources)


def tile_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """tiling.tile_starts in TorchScript, for lengths that are multiples of `align` (what the package accepts)."""
    if length <= tile:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    units = (length - tile) // align
    n = int(math.ceil((length - tile) / step)) + 1
    return [int(math.floor(i * (units / (n - 1)) + 0.5)) * align for i in range(n)]


def tile_index(starts: list[int], tile: int, n_work: int, n_out: int, device: torch.device) -> Tensor:
    """Fractional tile index of each of n_out pixels, tile centres mapped as tiling.tile_centres (ends held flat)."""
    pos = torch.arange(n_out, dtype=torch.float32, device=device)
    if len(starts) == 1:
        return torch.zeros_like(pos)
    centres = (torch.tensor(starts, dtype=torch.float32, device=device) + (tile - 1) / 2.0 + 0.5) * (n_out / n_work) - 0.5
    return interp(pos, centres, torch.arange(len(starts), dtype=torch.float32, device=device))


def tile_weights(starts: list[int], tile: int, n_work: int, n_out: int, device: torch.device) -> Tensor:
    """[n_out, tiles] linear interpolation weights from tile centres to pixels (engine._interp_matrix)."""
    idx = tile_index(starts, tile, n_work, n_out, device)
    i0 = torch.clamp(torch.floor(idx).long(), 0, len(starts) - 1)
    i1 = torch.clamp(i0 + 1, 0, len(starts) - 1)
    f = idx - i0.float()
    m = torch.zeros(n_out, len(starts), device=device)
    m.scatter_add_(1, i0[:, None], (1 - f)[:, None])
    return m.scatter_add_(1, i1[:, None], f[:, None])


def upsample_tiles(v: Tensor, ys: list[int], xs: list[int], tile: int, work: list[int], out: list[int]) -> Tensor:
    """Per-tile values [B,D,rows,cols] at tile centres, bilinear to [B,D,out] (tiling.upsample_tile_values)."""
    rows = tile_weights(ys, tile, work[0], out[0], v.device).to(v.dtype)
    cols = tile_weights(xs, tile, work[1], out[1], v.device).to(v.dtype)
    return torch.matmul(torch.matmul(rows, v), cols.t())


def tile_median(values: Tensor, window: int) -> Tensor:
    """[B,1,rows,cols] -> median over each tile's `window` x `window` neighbourhood (focus_gate.tile_defocus)."""
    ky = min(window, values.shape[2] - (values.shape[2] + 1) % 2)
    kx = min(window, values.shape[3] - (values.shape[3] + 1) % 2)
    padded = F.pad(values, [kx // 2, kx // 2, ky // 2, ky // 2], mode="replicate")
    return F.unfold(padded, [ky, kx]).median(dim=1).values.reshape(values.shape)


def interp(x: Tensor, xk: Tensor, yk: Tensor) -> Tensor:
    """np.interp in torch: piecewise-linear through increasing knots xk, clamped at the ends."""
    x = torch.minimum(torch.maximum(x, xk[0]), xk[-1]).contiguous()
    i = torch.clamp(torch.searchsorted(xk, x), 1, xk.numel() - 1)
    x0, x1, y0, y1 = xk[i - 1], xk[i], yk[i - 1], yk[i]
    return y0 + (x - x0) / torch.clamp(x1 - x0, min=1e-12) * (y1 - y0)


class DeblurPackageModel(nn.Module):
    """Raw [B,1,H,W] float32 -> deblurred raw [B,1,H,W]: deblur_plane's pipeline on each image of the batch."""

    def __init__(self, core: nn.Module, codes: nn.Module, films: nn.Module, tiling: list[int], levels: list[list[int]],
                 k: int, pmin: float, pmax: float, ratios: list[float], gate: list[list[float]]) -> None:
        """`codes`, `films`: TileCodes and TileFilms; `tiling`: deblur's [tile, overlap, align] (working px);
        `levels`: [stride, FiLM channels] of each decoder level, deepest first; `gate`: [] (none), or [calibration
        codes, their dz (um), [lo_um, hi_um]]."""
        super().__init__()
        self.core, self.codes, self.films, self.k, self.levels = core, codes, films, k, levels
        self.tile, self.overlap, self.align, self.window = tiling[0], tiling[1], tiling[2], WINDOW_TILES
        self.use_gate = len(gate) == 3
        # buffers, so that .to(device / dtype) moves them with the network
        self.register_buffer("code_k", torch.tensor(gate[0] if self.use_gate else [0.0, 1.0], dtype=torch.float32))
        self.register_buffer("dz_k", torch.tensor(gate[1] if self.use_gate else [0.0, 1.0], dtype=torch.float32))
        self.gate_lo, self.gate_hi = (gate[2][0], gate[2][1]) if self.use_gate else (0.0, 1.0)
        self.pmin, self.pmax = pmin / 100.0, pmax / 100.0
        self.use_ratios = len(ratios) == 2
        self.r_lo, self.r_hi = (ratios[0], ratios[1]) if self.use_ratios else (0.0, 1.0)
        self.exact = EXACT_PIXELS

    def _sample(self, work: Tensor) -> Tensor:
        """[B, n] pixels the percentiles use: all, or a strided subsample above EXACT_PIXELS (normalize._sample)."""
        h, w = work.shape[-2], work.shape[-1]
        if h * w > self.exact:
            step = int(math.ceil(math.sqrt(float(h * w) / float(self.exact))))
            work = work[:, :, ::step, ::step]
        return work.reshape(work.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        size = [x.shape[-2], x.shape[-1]]
        work = F.avg_pool2d(x, self.k) if self.k > 1 else x
        flat = self._sample(work)
        q = torch.quantile(flat, torch.tensor([self.pmin, self.pmax, 0.5], dtype=flat.dtype, device=flat.device), dim=1)
        lo, hi, med = q[0], q[1], q[2]
        span = 1e-6 * torch.clamp(lo.abs(), min=1.0)
        hi = torch.where(hi - lo > span, hi, lo + span)
        lo, hi, med = lo.reshape(-1, 1, 1, 1), hi.reshape(-1, 1, 1, 1), med.reshape(-1, 1, 1, 1)
        x_n = (work - lo) / (hi - lo)
        h, w = x_n.shape[-2], x_n.shape[-1]
        ys = tile_starts(h, self.tile, self.overlap, self.align)
        xs = tile_starts(w, self.tile, self.overlap, self.align)
        tiles: list[Tensor] = []
        for a in ys:
            tiles.extend([x_n[:, :, a:a + self.tile, b:b + self.tile] for b in xs])
        codes = self.codes(torch.cat(tiles)).reshape(len(ys), len(xs), x_n.shape[0], -1).permute(2, 3, 0, 1)
        sources = tile_median(codes.reshape(-1, 1, len(ys), len(xs)), self.window).reshape(codes.shape)
        params = self.films(sources.permute(2, 3, 0, 1).reshape(-1, codes.shape[1]))
        params = params.reshape(len(ys), len(xs), x_n.shape[0], -1).permute(2, 3, 0, 1)
        films: list[Tensor] = []  # each tile's FiLM, bilinear between tile centres at every level's pixels
        start = 0
        for level in self.levels:
            stride, c = level[0], level[1]
            films.extend(upsample_tiles(params[:, start:start + 2 * c], ys, xs, self.tile, [h, w],
                                        [h // stride, w // stride]).split(c, dim=1))
            start += 2 * c
        y = self.core(x_n, films)
        out_lo, out_hi = lo, hi
        if self.use_ratios:
            ok = (med > 0) & (lo >= 0)  # otherwise the plane keeps its own range (normalize.is_positive_intensity)
            out_lo = torch.where(ok, self.r_lo * med, lo)
            out_hi = torch.where(ok, self.r_hi * med, hi)
        out = y * (out_hi - out_lo) + out_lo
        if self.k > 1:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if self.use_gate:  # the focus gate: each tile's defocus, median over its neighbourhood, between centres
            dz = tile_median(torch.abs(interp(codes[:, :1], self.code_k, self.dz_k)), self.window)
            gate = torch.clamp((dz - self.gate_lo) / (self.gate_hi - self.gate_lo), 0.0, 1.0)
            out = x + upsample_tiles(gate, ys, xs, self.tile, [h, w], size) * (out - x)
        return out


def working_factor(scale: float) -> int:
    """k of the k x k binning a working scale 1/k stands for; UserError for other scales."""
    k = round(1 / scale) if scale > 0 else 0
    if k < 1 or abs(k * scale - 1) > 1e-9:
        raise UserError(f"the weights' working scale {scale:g} is not 1/k for an integer k; "
                        "only binning scales (1, 0.5, 0.25, ...) can be exported")
    return k


def gate_entry(meta) -> list[list[float]]:
    """The focus gate as DeblurPackageModel takes it: [] when `deblur` would not gate by default."""
    from .calibration import _knots
    from .focus_gate import Ramp

    ramp, cal = Ramp.from_meta(getattr(meta, "focus_gate", None)), getattr(meta, "calibration", None)
    if ramp is None or not cal or meta.config.blur_dim != 1:
        return []
    code_k, dz_k = _knots(cal)
    return [code_k.tolist(), dz_k.tolist(), [ramp.lo_um, ramp.hi_um]]


def package_model(model: nn.Module, meta) -> torch.jit.ScriptModule:
    """The TorchScript module the package ships (a traced core inside a scripted pre/post-processing wrapper)."""
    code = np.asarray(meta.focus_blur_code, np.float32).reshape(-1)
    if code.size != model.config.blur_dim:
        raise UserError("the weights hold no in-focus blur code: there is nothing to deblur with")
    k = working_factor(float(meta.scale))
    spec = NormalizationSpec.of_weights(meta)
    ratios = [] if spec.intensity is None else [spec.intensity.normalizer(0.0, 1.0).lo, spec.intensity.normalizer(0.0, 1.0).hi]
    cfg = model.config
    model = model.float().eval().requires_grad_(False)
    levels = [[s, c] for s, c in zip(model.film_strides(), model.film_channels)]
    tile = torch.rand(1, 1, cfg.tile, cfg.tile)
    films = [torch.zeros(1, c, cfg.tile // s, cfg.tile // s) for s, c in levels for _ in (0, 1)]
    with torch.no_grad(), warnings.catch_warnings():  # the network's input-side check becomes a constant: the
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # rdf declares the allowed sizes instead
        core = torch.jit.trace(DeblurCore(model).eval(), (tile, films), check_trace=False)
        tile_codes = torch.jit.trace(TileCodes(model).eval(), tile, check_trace=False)
        tile_films = torch.jit.trace(TileFilms(model, torch.from_numpy(code)).eval(), torch.zeros(2, cfg.blur_dim),
                                     check_trace=False)
    wrapper = DeblurPackageModel(core, tile_codes, tile_films, [cfg.tile, OVERLAP, cfg.downsample], levels, k, spec.pmin,
                                 spec.pmax, ratios, gate_entry(meta))
    return torch.jit.script(wrapper.eval())


# ---------------------------------------------------------------- package contents


def example_frame() -> np.ndarray:
    """The shipped +10 um example plane (simulated, 1024x768 uint16) as float32."""
    from .image_read import read_image

    return read_image(Path(__file__).parent / "examples" / "example_dz+10um.tif").data.astype(np.float32)


def fitting_side(n: int, smallest: int, step: int) -> int:
    """Largest side <= n the package accepts (smallest + i * step)."""
    return smallest + step * ((n - smallest) // step) if n >= smallest else 0


def crop(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre crop of a plane as a [1,1,h,w] float32 tensor."""
    y0, x0 = (plane.shape[0] - h) // 2, (plane.shape[1] - w) // 2
    return np.ascontiguousarray(plane[y0:y0 + h, x0:x0 + w], dtype=np.float32)[None, None]


def _display(plane: np.ndarray) -> np.ndarray:
    """uint8 rendering (1st-99.8th percentile stretch)."""
    from .normalize import frame_normalizer

    n = frame_normalizer(plane)
    return (np.clip(n.before(plane), 0, 1) * 255 + 0.5).astype(np.uint8)


def write_cover(path: Path, before: np.ndarray, after: np.ndarray) -> None:
    """2:1 PNG: the test input (left) and the package's output (right), each display-stretched."""
    import imageio.v3 as iio

    iio.imwrite(path, np.concatenate([_display(before), _display(after)], axis=1), extension=".png")


PACKAGE_NOTES = """# microdeblur manifold-1d: deblurring bright-field images

This package runs what `microdeblur deblur` does to one image: {k}x{k} binning to the working scale,
per-image {pmin:g} / {pmax:g} percentile normalisation, identity encoder, decoder with the weights'
in-focus blur code, revert to raw units ({revert}), bilinear resize back to the input size{gate}.
Pre- and postprocessing live in the TorchScript model, because the bioimage.io postprocessing steps
cannot revert with statistics of the input image; the rdf only asks for float32. Give the model whole
images (sides {smallest} + n x {step} px): tiling an image would give every tile its own percentiles.
`microdeblur deblur` blends overlapping 128-px tiles, the package convolves a larger image in one piece:
the same up to float32 round-off on a single tile (the test tile), close but not identical on larger ones.

# Validation

`bioimageio.core`'s model test reproduces `test_output.npy` from `test_input.npy` (a {side}x{side} crop of
microdeblur's simulated +10 um example) and runs batch sizes 1-2 at three image sizes. microdeblur's own
test suite also checks that the package output equals `Deblurrer.deblur_plane` on the test tile (within
1e-5 of the output range). What the deblurring is worth is in the model card below (written for
microdeblur's shipped weights): a smoother, more in-focus-like picture, not restored detail.

"""


def write_documentation(path: Path, meta, k: int, model: nn.Module) -> Path:
    """README.md: package notes with a Validation section, then the model card (docs/model-card.md of a source
    checkout; a pointer to it when that is not available)."""
    spec = NormalizationSpec.of_weights(meta)
    revert = ("the in-focus intensity range, stored as ratios to the image median" if spec.intensity is not None
              else "the input's own percentile range")
    notes = PACKAGE_NOTES.format(k=k, pmin=spec.pmin, pmax=spec.pmax,
                                 revert=revert, smallest=k * model.config.tile, step=k * model.config.downsample,
                                 side=k * model.config.tile, gate=GATE_NOTE if gate_entry(meta) else "")
    card = Path(__file__).resolve().parents[2] / "docs" / "model-card.md"
    body = card.read_text(encoding="utf-8") if card.is_file() else (
        "# Model card\n\nSee docs/model-card.md in the microdeblur source distribution.\n")
    path.write_text(notes + body, encoding="utf-8")
    return path


DESCRIPTION = ("Deblurs bright-field microscopy images by decoding each image's identity code with the in-focus "
               "blur code (microdeblur's `deblur` on one image). Takes raw intensities and normalises each image "
               "itself ({pmin:g} / {pmax:g} percentiles, reverted at the output): give it whole images. The output "
               "is a smoothed, in-focus-like rendering, not restored detail.")
GATE_NOTE = (", then the focus gate: input + w x correction, w = the weights' fitted ramp of each tile's "
             "estimated defocus (median over its neighbourhood of tiles, as `deblur`), between tile centres")
INPUT_NOTE = "Raw bright-field intensities, one channel, any range (normalised inside the model)."
OUTPUT_NOTE = "Deblurred image in the input's raw units, float32, input size."


def describe(files: dict[str, Path], meta, k: int, model: nn.Module):
    """The bioimage.io ModelDescr (current spec, 0.5.x) for the package files."""
    from bioimageio.spec.model import v0_5 as spec

    from . import __version__

    tile, step = k * model.config.tile, k * model.config.downsample
    norm_spec = NormalizationSpec.of_weights(meta)
    pmin, pmax = norm_spec.pmin, norm_spec.pmax

    def space_in(axis: str):
        return spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(min=tile, step=step))

    def space_out(axis: str):
        return spec.SpaceOutputAxis(id=spec.AxisId(axis), size=spec.SizeReference(
            tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(axis)))

    channel = spec.ChannelAxis(channel_names=[spec.Identifier("brightfield")])
    float32 = spec.IntervalOrRatioDataDescr(type="float32")
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId("raw"), axes=[spec.BatchAxis(), channel, space_in("y"), space_in("x")],
        description=INPUT_NOTE,
        test_tensor=spec.FileDescr(source=files["test_input"]), data=float32,
        sample_tensor=spec.FileDescr(source=files["sample_input"]),
        preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))])]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId("deblurred"), axes=[spec.BatchAxis(), channel, space_out("y"), space_out("x")],
        description=OUTPUT_NOTE, test_tensor=spec.FileDescr(source=files["test_output"]),
        sample_tensor=spec.FileDescr(source=files["sample_output"]),
        data=float32)]
    weights = spec.WeightsDescr(torchscript=spec.TorchscriptWeightsDescr(
        source=files["weights"], pytorch_version=spec.Version(torch.__version__.split("+")[0])))
    config = spec.Config(bioimageio=spec.BioimageioConfig(
        reproducibility_tolerance=[spec.ReproducibilityTolerance(**TOLERANCE)],
        architecture_type="disentangled autoencoder", modality="bright-field microscopy", task="deblurring",
        model_parameter_count=sum(p.numel() for p in model.parameters())))
    return spec.ModelDescr(
        name="microdeblur manifold-1d deblur", description=DESCRIPTION.format(pmin=pmin, pmax=pmax) + (
            " The correction is applied in proportion to each tile's estimated defocus (the weights' focus gate)."
            if gate_entry(meta) else ""), version=__version__,
        authors=[spec.Author(name="microdeblur maintainers")],
        cite=[spec.CiteEntry(text=THESIS, url=THESIS_URL)], license=spec.LicenseId("MIT"),
        documentation=spec.FileDescr(source=files["documentation"]), covers=[spec.FileDescr(source=files["cover"])],
        attachments=[spec.FileDescr(source=files["meta"])],
        tags=["deblurring", "defocus", "bright-field", "2d", "pytorch", "disentangled-representation", "microdeblur"],
        inputs=inputs, outputs=outputs, weights=weights, config=config)


def build_files(folder: Path, model: nn.Module, meta) -> tuple[dict[str, Path], int]:
    """Write weights, test and sample tensors, cover, documentation and metadata into `folder`."""
    import tifffile

    from .weights import meta_to_strings

    k = working_factor(float(meta.scale))
    scripted = package_model(model, meta)
    names = {"weights": "microdeblur_deblur.pt", "test_input": "test_input.npy", "test_output": "test_output.npy",
             "sample_input": "sample_input.tif", "sample_output": "sample_output.tif", "cover": "cover.png",
             "meta": "microdeblur_weights_meta.json", "documentation": "README.md"}
    files = {key: folder / name for key, name in names.items()}
    torch.jit.save(scripted, str(files["weights"]))
    frame = example_frame()
    side, step = k * model.config.tile, k * model.config.downsample
    x = crop(frame, side, side)
    big = crop(frame, fitting_side(frame.shape[0], side, step), fitting_side(frame.shape[1], side, step))
    with torch.no_grad():
        y, big_y = (scripted(torch.from_numpy(a)).numpy() for a in (x, big))
    np.save(files["test_input"], x)
    np.save(files["test_output"], y)
    for key, data in (("sample_input", big), ("sample_output", big_y)):
        tifffile.imwrite(files[key], data, compression="zlib")
    write_cover(files["cover"], x[0, 0], y[0, 0])
    files["meta"].write_text(json.dumps(meta_to_strings(meta), indent=1))
    write_documentation(files["documentation"], meta, k, model)
    return files, k


def export_bioimageio(output: str | Path, weights: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a bioimage.io model package (.zip) of the weights' deblur operation; returns its path."""
    from .atomic import atomic_write_bytes, check_output_path
    from .weights import load_weights

    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise UserError(f"{output}: a bioimage.io package is a .zip file")
    check_output_path(output, overwrite)
    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise UserError(f"export bioimageio needs the bioimage.io tooling: {EXTRA_HINT}") from None
    model, meta = load_weights(weights)
    with tempfile.TemporaryDirectory(prefix="microdeblur-bioimageio-") as tmp:
        folder = Path(tmp)
        files, k = build_files(folder, model, meta)
        descr = _described(files, meta, k, model)
        package = save_bioimageio_package(descr, output_path=folder / "package.zip")
        return atomic_write_bytes(output, Path(package).read_bytes(), overwrite=overwrite)


def _described(files: dict[str, Path], meta, k: int, model: nn.Module):
    """The validated description, or a UserError with the validator's first error (an internal problem)."""
    from pydantic import ValidationError

    try:
        return describe(files, meta, k, model)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UserError(f"the bioimage.io description did not validate ({where}: {first.get('msg')}); "
                        "please report it") from None
