"""The `focus` command: defocus maps and per-plane focus tables of image files and stacks."""

from __future__ import annotations

import csv as csvlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from . import calibration, interrupts, log
from .atomic import Outputs
from .backends import load_deblurrer
from .batch_runs import Batch, check_replaceable, has_header, run_batch, shard_pairs
from .calibration import OpticsOptions
from .engine import IN_FOCUS_UM, NO_CONTRAST, OVERLAP, Deblurrer, require_calibration
from .errors import UserError
from .inputs import TIFF_SUFFIXES, Shard
from .optics import OpticsRun
from .run_plan import (
    check_outputs,
    checked_planes,
    info_or_raise,
    is_folder_name,
    output_paths,
    plan_run,
    planes_to_do,
    tolerant_infos,
)

FOCUS_COLUMNS = ("file", "plane", "median_dz_um", "frac_in_focus", "n_tiles", "n_tiles_used")
# the table of an unsigned run (--sign unsigned, or auto without a reliable sign): the median is of |dz|
FOCUS_COLUMNS_UNSIGNED = ("file", "plane", "median_abs_dz_um", "frac_in_focus", "n_tiles", "n_tiles_used")
SIGN_MODES = ("auto", "signed", "unsigned")


def _focus_name(path: Path) -> str:
    """Defocus map file name inside an output folder."""
    return f"{path.stem}_dz.tif"


def _confidence_name(path: Path) -> str:
    """Sign-confidence map file name inside a --confidence folder."""
    return f"{path.stem}_conf.tif"


def _focus_file(db: Deblurrer, path: Path, info, out, bar, factor: float = 1.0, signed: bool = True,
                conf_out=None) -> Iterator[dict]:
    """Write the defocus map(s) of one input into the AtomicFile `out` (dz in um of its microscope: `factor` x the
    network's um; |dz| unless `signed`) and, with `conf_out` (an AtomicFile), the per-tile sign confidence;
    yields one summary row per plane."""
    from contextlib import ExitStack

    from .image_write import StackWriter

    kw = info.write_kwargs(values=False)  # defocus in um: not the input's calibrated values
    key = "median_dz_um" if signed else "median_abs_dz_um"
    with ExitStack() as stack:
        writer = stack.enter_context(StackWriter(out, info.shape, np.float32, **kw))
        conf_writer = None if conf_out is None else stack.enter_context(
            StackWriter(conf_out, info.shape, np.float32, **kw))
        planes = checked_planes(path, info)
        try:
            for i, plane in planes:
                dmap, cmap, s = db.focus_maps(plane, factor, signed=signed, confidence=conf_writer is not None)
                writer.write(dmap)
                if conf_writer is not None:
                    conf_writer.write(cmap)
                bar.advance()
                if info.n_planes > 1:
                    log.debug(f"{path.name} plane {i}: median {'dz' if signed else '|dz|'} {s[key]:+.2f} um, "
                              f"{100 * s['frac_in_focus']:.0f}% within +/-{IN_FOCUS_UM:g} um")
                yield {"file": str(path), "plane": i, **s}
        finally:
            planes.close()


def _optics_gaps(optics: OpticsOptions, info) -> list[str]:
    """'NA' / 'wavelength' when neither the option nor the input's metadata (in range) gives it."""
    from .calibration import NA_RANGE, WAVELENGTH_RANGE_UM

    def known(given, stored, valid) -> bool:
        return given is not None or (stored is not None and valid[0] < stored <= valid[1])

    return [what for what, given, stored, valid in (
        ("NA", optics.na, getattr(info, "na", None), NA_RANGE),
        ("wavelength", optics.wavelength_um, getattr(info, "wavelength_um", None), WAVELENGTH_RANGE_UM))
        if not known(given, stored, valid)]


def _sign_choice(sign: str, cal: dict, optics: OpticsOptions, infos: Iterable) -> tuple[bool, Callable | None, str]:
    """(whether the maps are signed, the log function for the note that says why, the note or '') of one run.

    auto: signed when the calibration is signed and every input's NA and wavelength are known (metadata or
    --na/--wavelength); when they are not, unsigned, except for weights that hold no measured sign reliability
    (written before it was measured, e.g. the shipped ones at this version): their maps stay signed as before,
    with a note. One choice per run, so that every map and row of the table means the same."""
    if sign == "signed":
        return True, None, ""
    if sign == "unsigned":
        return False, None, ""
    if cal.get("kind") == "abs":
        return False, None, ""  # the `abs` warning already says why
    infos = [i for i in infos if not isinstance(i, Exception)]
    gaps = [(i, g) for i in infos for g in [_optics_gaps(optics, i)] if g]
    if not gaps:
        return True, None, ""
    first, missing = gaps[0]
    others = f" and {len(gaps) - 1} other input(s)" if len(gaps) > 1 else ""
    why = (f"{first.path}{others}: no {' or '.join(missing)} given (--na, --wavelength) or in the metadata, so the "
           "microscope is unknown")
    try:
        has_table = calibration.sign_table(cal) is not None
    except ValueError:
        has_table = True  # a malformed table is still a measurement the weights meant to carry: do not guess
    if not has_table:
        return True, log.info, (f"{why}; these weights hold no measured sign reliability, so the sign of dz is "
                                "reported as before and may be wrong on another microscope (--sign unsigned "
                                "reports |dz|)")
    return False, log.warn, (f"{why}: the sign of dz is not reported, the maps and table hold |dz| (give --na "
                             "and --wavelength, or --sign signed, for signed dz; --confidence maps how reliable "
                             "the sign is)")


def _sign_notes(sign: str, cal: dict, weights: Path | None, optics: OpticsOptions, infos: Iterable,
                confidence) -> tuple[bool, list[tuple[Callable, str]]]:
    """(whether the maps are signed, the notes to say at the end of a run that succeeded); a UserError for a
    malformed sign table."""
    name = weights or "the default weights"
    try:
        table = calibration.sign_table(cal)
    except ValueError as e:
        raise UserError(f"the calibration of {name} is inconsistent: {e}") from None
    signed, say, note = _sign_choice(sign, cal, optics, infos)
    notes = [(say, note)] if note else []
    if confidence is not None and table is None and cal.get("kind") != "abs":
        notes.append((log.warn, f"{name} hold no measured sign reliability (trained before it was measured): "
                                "the confidence map is NaN"))
    return signed, notes


def focus_paths(inputs: Sequence[str], output: str | Path, *, weights: Path | None = None, scale: float | None = None,
                overlap: int = OVERLAP, batch_size: int | None = None, precision: str = "auto", csv: Path | None = None, device: str = "auto",
                overwrite: bool = False, shard: Shard | str | None = None, skip_existing: bool = False,
                manifest: Path | None = None, optics: OpticsOptions = OpticsOptions(), sign: str = "auto",
                confidence: str | Path | None = None, backend: str = "auto") -> list[Path]:
    """Defocus maps (float32 TIFF, dz in um of each input's microscope, input size) of images/stacks from the
    calibrated blur code (see OpticsRun for the optics).

    `sign`: 'signed' (dz), 'unsigned' (|dz|, table column median_abs_dz_um) or 'auto' (see `_sign_choice`).
    `confidence`: also write each input's per-tile sign-confidence map (a file for one input, else a folder of
    `<stem>_conf.tif`; not in batch mode). With `shard`, `skip_existing` or `manifest` the run is a batch run
    (see `run_batch`)."""
    t0 = time.perf_counter()
    optics = optics.checked()
    if sign not in SIGN_MODES:
        raise UserError(f"--sign must be one of {', '.join(SIGN_MODES)}, got {sign!r}")
    batch = Batch(shard, skip_existing, manifest)
    if confidence is not None and batch.active:
        raise UserError("--confidence cannot be combined with --shard, --skip-existing or --manifest")
    files, infos, outs = plan_run(inputs, output, _focus_name, batch)
    conf_outs: list[Path] = []
    if confidence is not None:
        conf_outs = output_paths(files, Path(confidence), _confidence_name, is_folder_name(confidence))
        for c in conf_outs:
            if c.suffix.lower() not in TIFF_SUFFIXES:
                raise UserError(f"{c}: confidence maps are written as .tif or .tiff")
    for o in outs:
        if o.suffix.lower() not in TIFF_SUFFIXES:
            raise UserError(f"{o}: defocus maps are written as .tif or .tiff")
    if batch.active:
        pairs = shard_pairs(files, outs, batch, overwrite)
        if not pairs:
            return []
        if csv is not None:
            if batch.skip_existing:
                columns = FOCUS_COLUMNS_UNSIGNED if has_header(Path(csv), FOCUS_COLUMNS_UNSIGNED) else FOCUS_COLUMNS
                check_replaceable(Path(csv), columns, files, overwrite, "focus table", others=outs)
            else:
                check_outputs([Path(csv)], files, overwrite, others=outs)
    else:
        check_outputs(outs, files, overwrite)
        check_outputs(conf_outs, files, overwrite, others=outs)
        if csv is not None:
            check_outputs([Path(csv)], files, overwrite, others=outs + conf_outs)
    db, meta = load_deblurrer(weights, device, backend, precision, scale=scale, overlap=overlap, batch_size=batch_size)
    cal = require_calibration(meta, weights, "focus")
    if cal["kind"] == "abs":
        log.warn("the calibration follows |dz| only: maps hold unsigned defocus")
    run = OpticsRun(db, optics, True)
    if batch.active:
        # one choice over every input of the run (all shards alike), from the headers that can be read
        headers = tolerant_infos(files)
        signed, notes = _sign_notes(sign, cal, weights, optics, headers.values(), confidence)
        if csv is not None and batch.skip_existing:
            _check_table_sign(Path(csv), signed)
        return _focus_batch(run, pairs, batch, csv, headers, overwrite=overwrite, files=files, outs=outs,
                            signed=signed, notes=notes)
    signed, notes = _sign_notes(sign, cal, weights, optics, infos, confidence)
    rows = []
    per_file = [run.resolve(info) for info in infos]  # every input's optics checked before anything is written
    confs = conf_outs or [None] * len(files)
    with Outputs(overwrite, files) as written, log.progress("focus", total=sum(i.n_planes for i in infos)) as bar:
        for f, info, o, c, (db_f, factor) in zip(files, infos, outs, confs, per_file):
            file_rows = list(_focus_file(db_f, f, info, written.add(o), bar, factor, signed,
                                         None if c is None else written.add(c)))
            rows.extend(file_rows)
            _report_focus(f, file_rows)
        if csv is not None:
            _write_csv(written.add(csv).tmp, rows, signed)
    interrupts.mark_complete()
    run.report()
    _say(notes)
    log.info(f"focus maps for {len(files)} file(s), {len(rows)} plane(s) in {time.perf_counter() - t0:.1f} s -> {output}")
    return outs


def _say(notes: list[tuple[Callable, str]]) -> None:
    for say, message in notes:
        say(message)


def _check_table_sign(csv: Path, signed: bool) -> None:
    """With --skip-existing: refuse to carry rows over from a table of the other sign mode."""
    other = FOCUS_COLUMNS_UNSIGNED if signed else FOCUS_COLUMNS
    if csv.is_file() and has_header(csv, other):
        raise UserError(f"{csv}: holds {'unsigned |dz|' if signed else 'signed dz'} rows, but this run reports "
                        f"{'signed dz' if signed else 'unsigned |dz|'}; use the same --sign (and optics) as the "
                        "run that wrote it, or another --csv")


def _focus_batch(run: OpticsRun, pairs: list[tuple[Path, Path]], batch: Batch, csv: Path | None, infos: dict, *,
                 overwrite: bool, files: list[Path], outs: list[Path], signed: bool = True,
                 notes: Sequence[tuple[Callable, str]] = ()) -> list[Path]:
    """Batch-mode focus maps (`infos`: every input's header or the error refusing it, read once for the run); the
    CSV holds the rows of the inputs this run mapped, plus (with --skip-existing) the rows an earlier CSV of the
    same name held for the inputs skipped now."""
    from .atomic import AtomicFile

    rows: dict[Path, list[dict]] = {}

    def process(path: Path, out) -> None:
        info = info_or_raise(infos, path)
        db, factor = run.resolve(info)
        file_rows = list(_focus_file(db, path, info, out, bar, factor, signed))
        rows[path] = file_rows
        _report_focus(path, file_rows)

    try:
        with log.progress("focus", total=planes_to_do(pairs, infos, batch.skip_existing)) as bar:
            done = run_batch(pairs, process, batch, overwrite=overwrite, files=files, what="focus")
        run.report()
        _say(list(notes))
    finally:  # also after failed inputs: the table holds every input that was mapped
        if csv is not None:
            kept = (_earlier_rows(Path(csv), [f for f, o in pairs if f not in rows], signed)
                    if batch.skip_existing else [])
            table = kept + [r for f, _ in pairs for r in rows.get(f, [])]
            with AtomicFile(csv, overwrite or batch.skip_existing, files + outs) as f:
                _write_csv(f.tmp, table, signed)
    return [r.output for r in done if r.status != "failed"]


def _earlier_rows(csv: Path, skipped: list[Path], signed: bool = True) -> list[dict]:
    """Rows of an existing focus table (of this sign mode) for the skipped inputs, matched by real path; a warning
    names the skipped inputs it has no rows for."""
    columns = FOCUS_COLUMNS if signed else FOCUS_COLUMNS_UNSIGNED
    wanted = {os.path.realpath(f): f for f in skipped}
    rows = []
    if has_header(csv, columns):
        with open(csv, newline="") as fh:
            rows = [{**r, columns[2]: float(r[columns[2]]), "frac_in_focus": float(r["frac_in_focus"])}
                    for r in csvlib.DictReader(fh) if os.path.realpath(r["file"]) in wanted]
    missing = set(wanted) - {os.path.realpath(r["file"]) for r in rows}
    if missing:
        first = wanted[next(iter(sorted(missing)))]
        log.warn(f"{csv}: no rows for {len(missing)} skipped input(s) (e.g. {first}): the table lacks them; "
                 "rerun those without --skip-existing, or give another --csv")
    return rows


def _report_focus(path: Path, rows: list[dict]) -> None:
    """One line per input: median dz (or |dz|) over its planes, or a warning when no tile carries contrast."""
    key = "median_dz_um" if not rows or "median_dz_um" in rows[0] else "median_abs_dz_um"
    known = [r for r in rows if np.isfinite(r[key])]
    if not known:
        log.warn(f"{path}: {NO_CONTRAST} (map and summary are NaN)")
        return
    if len(known) < len(rows):
        log.warn(f"{path}: {len(rows) - len(known)} of {len(rows)} planes: {NO_CONTRAST} (NaN)")
    med = float(np.median([r[key] for r in known]))
    frac = float(np.mean([r["frac_in_focus"] for r in known]))
    what = f"median dz {med:+.2f} um" if key == "median_dz_um" else f"median |dz| {med:.2f} um (unsigned)"
    log.info(f"{path.name}: {what}, {100 * frac:.0f}% within +/-{IN_FOCUS_UM:g} um of focus")


def _write_csv(path: Path, rows: list[dict], signed: bool = True) -> None:
    """Per-plane focus summary table (NaN where a plane has no tile with enough contrast); the median is of |dz|
    (column median_abs_dz_um) unless `signed`."""
    columns = FOCUS_COLUMNS if signed else FOCUS_COLUMNS_UNSIGNED
    with open(path, "w", newline="") as fh:
        w = csvlib.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({**r, columns[2]: f"{r[columns[2]]:.4f}", "frac_in_focus": f"{r['frac_in_focus']:.4f}"})
