"""Batch runs of many inputs (job arrays): one shard of the inputs, finished outputs skipped, a manifest.

`Batch` says how a run is split and kept; `shard_pairs` picks and checks this shard's (input, output) pairs;
`run_batch` processes each pair into its own atomic output, records failures and goes on, and writes the
manifest CSV (also when interrupted). The commands that use it are `deblur` (in `inference.py`) and `focus` (in `focus_runs.py`);
docs/scaling.md has the job-array recipes.
"""

from __future__ import annotations

import csv as csvlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import log
from .errors import UserError, one_line
from .inputs import Shard, parse_shard

MANIFEST_COLUMNS = ("input", "output", "status", "seconds", "message")


@dataclass
class Batch:
    """How a many-input run is split and kept: one shard of the inputs, finished outputs skipped, a manifest."""

    shard: Shard | str | None = None
    skip_existing: bool = False
    manifest: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.shard, str):
            self.shard = parse_shard(self.shard)
        self.manifest = None if self.manifest is None else Path(self.manifest)

    @property
    def active(self) -> bool:
        """Batch mode: every output is committed when complete; a failing input is recorded and the run goes on."""
        return self.shard is not None or self.skip_existing or self.manifest is not None


@dataclass
class ManifestRow:
    """What happened to one input of a batch run."""

    input: Path
    output: Path
    status: str  # written | skipped | failed
    seconds: float = 0.0
    message: str = ""


def has_header(path: Path, columns: Sequence[str]) -> bool:
    """True when the file's first line is exactly this CSV header (a file this command wrote)."""
    try:
        with open(path, newline="") as fh:
            return next(csvlib.reader(fh), None) == list(columns)
    except (OSError, UnicodeDecodeError, csvlib.Error):
        return False


def check_replaceable(path: Path, columns: Sequence[str], files: Sequence[Path], overwrite: bool, what: str,
                      others: Sequence[Path] = ()) -> None:
    """A run log (manifest, or a CSV carried over) may replace an earlier one of its kind; anything else needs
    --overwrite."""
    from .atomic import check_output_path

    if Path(path).is_file() and not overwrite and not has_header(Path(path), columns):
        raise UserError(f"{path}: exists and is not a {what} written by microdeblur (use --overwrite to replace it)")
    check_output_path(path, True, files, others)


def shard_pairs(files: list[Path], outs: list[Path], batch: Batch, overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) of this shard, after the checks: outputs must be writable unless skipped."""
    from .atomic import check_output_path
    from .inputs import shard_indices

    if batch.skip_existing and overwrite:
        raise UserError("--skip-existing and --overwrite cannot be combined (keep finished outputs, or replace them)")
    idx = shard_indices(files, batch.shard) if batch.shard is not None else range(len(files))
    pairs = [(files[i], outs[i]) for i in idx]
    for _, o in pairs:  # a skipped output need not be new, but it may never be an input
        check_output_path(o, overwrite or (batch.skip_existing and o.is_file()), files)
    if batch.manifest is not None:
        check_replaceable(batch.manifest, MANIFEST_COLUMNS, files, overwrite, "manifest", others=outs)
    if not pairs:
        log.info(f"shard {batch.shard}: nothing to do ({len(files)} input(s) over {batch.shard.count} shards)")
    if batch.manifest is not None:  # begun empty now: a run that stops before its first input leaves no stale rows
        _write_manifest(batch.manifest, [], files)
    return pairs


def _batch_item(path: Path, out: Path, process: Callable, skip_existing: bool, overwrite: bool,
                files: Sequence[Path]) -> ManifestRow:
    """Process one input into its own atomic output; a failure is logged and returned as a `failed` row."""
    from .atomic import AtomicFile

    if skip_existing and out.is_file():
        log.debug(f"{out}: exists, skipped")
        return ManifestRow(path, out, "skipped")
    t0 = time.perf_counter()
    try:
        with AtomicFile(out, overwrite, files) as f:
            process(path, f)
    except Exception as e:  # noqa: BLE001 - one bad input must not stop a batch job
        if skip_existing and out.is_file():  # another job finished it meanwhile
            return ManifestRow(path, out, "skipped", time.perf_counter() - t0)
        msg = one_line(e)
        log.warn(msg if str(path) in msg else f"{path}: {msg}")
        if not isinstance(e, (UserError, OSError, MemoryError)):
            import traceback

            log.debug(traceback.format_exc())
        return ManifestRow(path, out, "failed", time.perf_counter() - t0, msg)
    return ManifestRow(path, out, "written", time.perf_counter() - t0)


def _write_manifest(path: Path, rows: Sequence[ManifestRow], files: Sequence[Path]) -> None:
    """The shard's manifest (CSV), written atomically; it replaces an earlier manifest of the same name."""
    from .atomic import AtomicFile

    with AtomicFile(path, True, files) as f, open(f.tmp, "w", newline="") as fh:
        w = csvlib.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        w.writerows([str(r.input), str(r.output), r.status, f"{r.seconds:.3f}", r.message] for r in rows)


def run_batch(pairs: Sequence[tuple[Path, Path]], process: Callable, batch: Batch, *, overwrite: bool,
              files: Sequence[Path], what: str) -> list[ManifestRow]:
    """Run `process(input, AtomicFile)` for each pair, each output committed on its own; write the manifest
    (also when interrupted); UserError at the end when any input failed."""
    rows: list[ManifestRow] = []
    try:
        for path, out in pairs:
            t0 = time.perf_counter()
            try:
                rows.append(_batch_item(path, out, process, batch.skip_existing, overwrite, files))
            except KeyboardInterrupt:
                rows.append(ManifestRow(path, out, "failed", time.perf_counter() - t0, "interrupted"))
                raise
    finally:
        if batch.manifest is not None:
            _write_manifest(batch.manifest, rows, files)
    counts = {s: sum(r.status == s for r in rows) for s in ("written", "skipped", "failed")}
    where = f"shard {batch.shard}: " if batch.shard is not None else ""
    log.info(f"{where}{what}: {counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed")
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        names = ", ".join(r.input.name for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        raise UserError(f"{len(failed)} of {len(rows)} input(s) failed ({names}); the others were written"
                        + (f"; see {batch.manifest}" if batch.manifest is not None else ""))
    return rows

