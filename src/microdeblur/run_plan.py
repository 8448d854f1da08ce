"""What a path-level command reads and writes, settled before any work: each input's header (ImageInfo), the
output names, the checks that refuse a run early, and the planes of an input streamed and checked."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import log
from .batch_runs import Batch
from .engine import check_finite
from .errors import UserError
from .inputs import TIFF_SUFFIXES


def read_infos(paths: Iterable[Path]) -> list:
    """ImageInfo of every input, refusing channel axes, other than 2-D/one-plane-axis arrays, non-real pixels."""
    from .image_read import read_info

    infos = []
    for p in paths:
        info = read_info(p)
        channel = next((a for a in "CS" if a in info.axes), None)
        if channel is not None:
            raise UserError(f"{p}: has a channel axis {channel} (shape {info.shape}, axes {info.axes}); only "
                            "single-channel bright-field images are processed: split the channels first "
                            "(e.g. Fiji: Image > Color > Split Channels) and pass the bright-field one")
        if 0 in info.shape:
            raise UserError(f"{p}: holds no pixels (shape {info.shape})")
        if len(info.shape) not in (2, 3):
            raise UserError(f"{p}: cannot interpret an array of shape {info.shape} (axes {info.axes}); "
                            "accepted are 2-D images (YX) and stacks with one plane axis (ZYX or TYX)")
        if info.dtype.kind not in "uif":
            kind = "binary (bool)" if info.dtype.kind == "b" else f"{info.dtype}"
            raise UserError(f"{p}: {kind} pixels are not supported; bright-field images hold real intensities "
                            "(integer or float)")
        infos.append(info)
    return infos


def warn_half(info) -> None:
    """Warn that a float16 input is computed and written as float32."""
    if info.dtype == np.float16:
        log.warn(f"{info.path}: float16 output is written as float32 (TIFF writers here have no half floats)")


def is_folder_name(output: str | os.PathLike) -> bool:
    """True when the output as typed ends with a path separator ('deblurred/'): always a folder."""
    return isinstance(output, str) and output.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))


def single_plane_info(path: Path, what: str):
    """ImageInfo of an input that must be a single 2-D image."""
    info = read_infos([path])[0]
    if len(info.shape) != 2:
        raise UserError(f"{path}: {what} must be a single 2-D image, got axes {info.axes} shape {info.shape}")
    return info


def output_paths(files: list[Path], output: Path, name_for: Callable[[Path], str],
                  folder: bool = False) -> list[Path]:
    """Output path per input: `output` itself for one input (unless a folder), else names inside it."""
    from .atomic import check_output_names

    check_output_names(output)
    if len(files) == 1 and not folder and not output.is_dir():
        return [output]
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is a file; " + ("the output ends with a path separator, so it must be a folder"
                                                     if folder else "several inputs need an output folder"))
    if not folder and not output.exists() and output.suffix.lower() in TIFF_SUFFIXES + (".png",):
        raise UserError(f"{output}: looks like a file name, but {len(files)} inputs need an output folder")
    outs = [output / name_for(f) for f in files]
    seen: dict[Path, Path] = {}
    for f, o in zip(files, outs):
        if o in seen:
            raise UserError(f"{f} and {seen[o]} would both be written to {o}; rename one or run them separately")
        seen[o] = f
    return outs


def check_outputs(outs: Sequence[Path], files: Sequence[Path], overwrite: bool, others: Sequence[Path] = ()) -> None:
    """Every output must be writable under the rules (no input, no folder, overwrite needed)."""
    from .atomic import check_output_path

    for o in outs:
        check_output_path(o, overwrite, files, others)


def tolerant_infos(paths: Iterable[Path]) -> dict[Path, object]:
    """ImageInfo per input, or the UserError that refuses it (raised again when that input's turn comes)."""
    out: dict[Path, object] = {}
    for p in paths:
        try:
            out[p] = read_infos([p])[0]
        except UserError as e:
            out[p] = e
    return out


def info_or_raise(infos: dict, path: Path):
    """The input's ImageInfo; its refusal raised."""
    info = infos[path]
    if isinstance(info, Exception):
        raise info
    return info


def planes_to_do(pairs: Sequence[tuple[Path, Path]], infos: dict, skip_existing: bool) -> int:
    """Planes the batch will process (for the progress bar)."""
    return sum(infos[f].n_planes for f, o in pairs
               if not (skip_existing and o.is_file()) and not isinstance(infos.get(f), Exception))


def checked_planes(path: Path, info) -> Iterator[tuple[int, np.ndarray]]:
    """(index, plane) of an input, each checked for NaN/inf, read ahead in a background thread."""
    from .image_read import iter_planes
    from .inputs import prefetch

    def read() -> Iterator[tuple[int, np.ndarray]]:
        for i, plane in iter_planes(path):
            yield i, check_finite(plane, path, i if info.n_planes > 1 else None)

    return prefetch(read())


def _without_earlier_outputs(files: list[Path], output: Path, name_for: Callable[[Path], str]) -> list[Path]:
    """The inputs less those that are another input's output (an output folder the inputs' folder or glob also
    matches, on a rerun or a later shard), so every job and rerun works on the same list."""
    planned = {os.path.realpath(output / name_for(f)): f for f in files}
    kept = [f for f in files if planned.get(os.path.realpath(f), f) == f]
    if len(kept) < len(files):
        log.info(f"{len(files) - len(kept)} input(s) in {output} are outputs of the other inputs and are left out "
                 f"(e.g. {next(f for f in files if f not in kept)})")
    return kept


def plan_run(inputs: Sequence[str], output: str | Path, name_for: Callable[[Path], str],
          batch: Batch | None = None) -> tuple[list[Path], list, list[Path]]:
    """Input files, their infos (none in batch mode: read per input) and their output paths (a trailing separator
    on `output` means a folder; always planned over the whole input list, so every shard names outputs alike)."""
    from .inputs import expand_inputs

    if not str(output).strip():
        raise UserError("the output path (-o) is empty (an unset shell variable?)")
    files = _without_earlier_outputs(expand_inputs(inputs), Path(output), name_for)
    infos = [] if batch is not None and batch.active else read_infos(files)
    return files, infos, output_paths(files, Path(output), name_for, is_folder_name(output))
