"""Which files a command works on: input paths, folders and globs in natural order, shards of a batch
across independent jobs, and reading ahead in a background thread."""

from __future__ import annotations

import glob
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import log
from .errors import UserError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg")
T = TypeVar("T")


# ---------------------------------------------------------------- names and inputs


def natural_key(name: str | Path) -> tuple:
    """Sort key where digit runs compare as numbers ('z2' < 'z10'), case-insensitive."""
    parts = re.split(r"(\d+)", str(name).lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def is_image_file(path: Path) -> bool:
    """True for a visible file with a supported image suffix."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside a folder, natural order."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images, natural order) and globs → unique image paths; UserError if none."""
    out: list[Path] = []
    for item in items:
        if not str(item).strip():
            raise UserError("an input path is empty (an unset shell variable?); name files, folders or globs")
        p = Path(item)
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = images_in(p)
            subs = sum(q.is_dir() and not q.name.startswith(".") for q in p.iterdir())
            if subs:
                log.info(f"{p}: {subs} subfolder(s) not searched (name them, or a glob such as '{p / '*' / '*.tif'}', as inputs)")
            if not found:
                raise UserError(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(str(item)):
            found = sorted((Path(m) for m in glob.glob(str(item)) if is_image_file(Path(m))), key=natural_key)
            if not found:
                raise UserError(f"{item}: pattern matches no images")
        else:
            raise UserError(f"{p}: no such file or folder")
        out.extend(found)
    if not out:
        raise UserError("no input images given")
    distinct, unique = list(dict.fromkeys(out)), {}
    for p in distinct:  # one file named twice (relative and absolute, through '..' or a link) is one input
        unique.setdefault(os.path.realpath(p), p)
    if len(unique) < len(distinct):
        log.info(f"{len(distinct) - len(unique)} input(s) name a file already given (by another path or link): "
                 "each file is processed once")
    return list(unique.values())


# ---------------------------------------------------------------- shards of a batch


@dataclass(frozen=True)
class Shard:
    """Job `index` (0-based) of `count` independent jobs sharing one input list."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"^\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*$")


def parse_shard(text: str) -> Shard:
    """`I/N` (0 <= I < N, I 0-based as SLURM_ARRAY_TASK_ID of an array numbered from 0) -> Shard; UserError else."""
    m = _SHARD.match(str(text))
    if m is None:
        raise UserError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
    i, n = int(m[1]), int(m[2])
    if n < 1:
        raise UserError(f"--shard {text}: N (the number of shards) must be at least 1")
    if not 0 <= i < n:
        raise UserError(f"--shard {text}: I must be 0 to {n - 1} (I counts from 0; for a job array numbered from 1 "
                        "pass $((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN)))")
    return Shard(i, n)


def shard_indices(paths: Sequence[str | Path], shard: Shard) -> list[int]:
    """Indices into `paths` of the shard's share: the list de-duplicated by real path, sorted (natural order of the
    real path) and dealt round-robin, so N jobs given the same inputs in any order cover each exactly once."""
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        first.setdefault(os.path.realpath(p), i)
    ordered = sorted(first, key=lambda r: (natural_key(r), r))  # names equal in natural order (t1, t01) still sort
    return sorted(first[r] for r in ordered[shard.index::shard.count])


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, up to `depth` items ahead, so reading overlaps the caller's work.

    Exceptions of the producer are raised here in order; closing this iterator stops and joins the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((x, None)):
                    return
            put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((done, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="microdeblur-reader", daemon=True)
    thread.start()
    try:
        while True:
            x, error = q.get()
            if x is done:
                if error is not None:
                    raise error
                return
            yield x
    finally:
        stop.set()
        thread.join()
