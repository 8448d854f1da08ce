"""Outputs that are never half-written and never replace anything unasked: name checks, hidden temp files
moved into place (all of a run's outputs or none), staged folders, clean-up after dead writers."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from . import log
from .errors import UserError
from .interrupts import shielded

_TEMP_NAME_BYTES = 32  # temp and set-aside names add at most this many bytes to an output's name (24 used)


# ---------------------------------------------------------------- output paths and atomic writes


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file (resolving links)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _exists(p: Path) -> bool:
    """Path.exists that is False instead of raising (e.g. for a name too long to stat)."""
    try:
        return p.exists()
    except OSError:
        return False


def check_writable_folder(folder: Path, output: Path) -> None:
    """Refuse an output whose nearest existing folder cannot take new entries (permissions, read-only mount)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{output}: cannot write in {folder} (permission denied or read-only)")


def check_output_names(path: str | Path) -> Path:
    """Refuse an output below an existing file, or a name the file system cannot hold (with temp suffixes)."""
    p = Path(path)
    existing = next((q for q in p.parents if _exists(q)), Path("."))
    if not existing.is_dir():
        raise UserError(f"{p}: {existing} is a file, not a folder")
    check_writable_folder(existing, p)
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for part in p.parts:
        extra = _TEMP_NAME_BYTES if part == p.name else 0
        if len(os.fsencode(part)) + extra > name_max:
            raise UserError(f"{p}: name too long ({len(os.fsencode(part))} bytes, at most {name_max - extra} here)")
    return p


def check_output_path(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = (),
                      others: Iterable[str | Path] = ()) -> Path:
    """Refuse an input file, another output of the run (`others`), a folder, a path below a file, a too long name,
    or an existing file without overwrite."""
    p = check_output_names(path)
    if any(_same_file(p, Path(i)) for i in inputs):
        raise UserError(f"{p}: refusing to overwrite an input file; choose another output")
    if any(_same_file(p, Path(o)) for o in others):
        raise UserError(f"{p}: named for two of this run's outputs; choose another name")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected a file name")
    if p.exists() and not overwrite:
        raise UserError(f"{p}: already exists (use --overwrite to replace it)")
    return p


# ---------------------------------------------------------------- atomic outputs (the one place for them)
#
# Every output is first written under a hidden temp name that carries the writer's PID and a host tag
# (`.STEM.PID.TOKEN.tmp.SUFFIX`, beside the file or, for a folder of entries, a staging folder inside it) and
# then moved onto its final name. An existing final name is replaced only with overwrite: os.link of the temp
# file fails when the name exists, even when another process created it a moment ago. Temp entries of dead
# writers on this host are removed whenever a writer starts in that folder.

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[0-9a-f]{4})[0-9a-f]{6}"
                    r"\.(?P<kind>tmp|old)(?P<suffix>\.[^.]*)?$")
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """4 hex digits naming this host in temp names (a shared disk may hold temps of live writers elsewhere)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]


def _token() -> str:
    """PID and host tag + random part of a temp name."""
    return f"{os.getpid()}.{_host_tag()}{secrets.token_hex(3)}"


def temp_path(final: Path) -> Path:
    """A fresh hidden name beside `final` for writing it: `.STEM.PID.TOKEN.tmp.SUFFIX` (same suffix)."""
    final = Path(final)
    return final.with_name(f".{final.stem}.{_token()}.tmp{final.suffix}")


def _aside_path(final: Path) -> Path:
    """Hidden name an entry being replaced is kept under until the replacement is complete."""
    return final.with_name(f".{final.name}.{_token()}.old")


def _pid_alive(pid: int) -> bool:
    """True unless the process is certainly gone (never probes on Windows, where signal 0 is Ctrl-C)."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by another user
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree; quiet when already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temp entries of this naming scheme in `folder` left by dead writers of this host.

    A set-aside entry (`.NAME.PID.TOKEN.old`) whose NAME is missing is put back instead: its writer died
    between setting it aside and moving the replacement in. Entries of live processes are never touched.
    """
    folder, done = Path(folder), []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return done
    for name in names:
        m = _STALE.match(name)
        if m is None or m["host"] != _host_tag() or _pid_alive(int(m["pid"])):
            continue
        path, final = folder / name, folder / m["name"]
        try:
            if m["kind"] == "old" and not os.path.lexists(final):
                os.rename(path, final)
                log.warn(f"{final}: restored from an interrupted replacement by process {m['pid']}")
            else:
                _remove(path)
                log.debug(f"{path}: removed, left by process {m['pid']} which is gone")
        except OSError:
            continue
        done.append(path)
    return done


def _final_name(path: Path) -> Path:
    """The output a temp or set-aside path stands for (the path itself when it is neither)."""
    m = _STALE.match(path.name)
    return path if m is None else path.with_name(m["name"] + (m["suffix"] or ""))


def _refusal(final: Path) -> UserError:
    return UserError(f"{final}: already exists (use --overwrite to replace it)")


def _link_no_replace(src: Path, final: Path) -> None:
    """Give the finished file `src` the name `final` only if that name is free, then drop `src`.

    os.link fails with FileExistsError on an existing name (whoever created it and when). Where the file
    system has no hard links (FAT, some network mounts) an exists check + rename is used: two writers that
    finish within the same moment may then both succeed (the later one wins)."""
    link = getattr(os, "link", None)
    try:
        if link is None:
            raise OSError(errno.ENOSYS, "no hard links")
        link(src, final)
    except FileExistsError:
        raise _refusal(final) from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        if os.path.lexists(final):
            raise _refusal(final) from None
        os.rename(src, final)  # Windows: fails on an existing name too
        return
    src.unlink()


def _move_in(src: Path, final: Path, overwrite: bool) -> Path | None:
    """Move a finished file or folder `src` onto `final`; an existing `final` is replaced only with overwrite.

    A replaced entry is first set aside (a file: hard-linked, so its name never goes missing; a folder:
    renamed) under `_aside_path` so that it can be put back; returns that path (None: nothing set aside)."""
    folder = src.is_dir() and not src.is_symlink()
    if not overwrite or not os.path.lexists(final):
        if not folder:
            _link_no_replace(src, final)
            return None
        try:
            os.rename(src, final)  # fails on an existing file or non-empty folder
        except OSError as e:
            if os.path.lexists(final) and e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise _refusal(final) from None
            raise
        return None
    old = _aside_path(final)
    if folder or (final.is_dir() and not final.is_symlink()):
        os.rename(final, old)
        try:
            os.rename(src, final)
        except BaseException:
            os.rename(old, final)
            raise
        return old
    try:
        os.link(final, old)
    except (OSError, AttributeError):
        old = None  # no hard links here: a replaced file cannot be put back if a later entry fails
    try:
        os.replace(src, final)
    except BaseException:
        if old is not None:
            old.unlink()
        raise
    return old


def _write_error(e: OSError, final: Path) -> UserError | None:
    """A one-line UserError naming the user's path for an OSError raised on one of its temp entries."""
    if e.filename is not None and _STALE.match(Path(e.filename).name) is None:
        return None
    return UserError(f"{final}: cannot write ({e.strerror or type(e).__name__})")


class _Moves:
    """Entries moved into place one after another, undone in reverse order when a later one fails."""

    def __init__(self) -> None:
        self.done: list[tuple[Path, Path | None, bool]] = []  # (final, set-aside old entry, existed before)

    def move(self, src: Path, final: Path, overwrite: bool) -> None:
        existed = os.path.lexists(final)
        old = _move_in(src, final, overwrite)
        self.done.append((final, old, existed))

    def undo(self) -> None:
        """Take out what was moved in and put set-aside entries back (a replaced file stays new without links)."""
        for final, old, existed in reversed(self.done):
            if old is None and not existed or old is not None and final.is_dir() and not final.is_symlink():
                _remove(final)
            if old is not None:
                os.replace(old, final)
        self.done.clear()

    def finish(self) -> None:
        """Drop the set-aside entries."""
        for _, old, _ in self.done:
            if old is not None:
                _remove(old)


def _commit_all(entries: Sequence[tuple[Path, Path, bool]]) -> None:
    """Move each finished (src, final, overwrite) into place in order: all of them, or on any failure none.

    Ctrl-C/SIGTERM wait for the moves; delivered after them, they undo the moves like any other error."""
    moves = _Moves()
    try:
        with shielded():
            for src, final, overwrite in entries:
                try:
                    moves.move(src, final, overwrite)
                except OSError as e:
                    raise (_write_error(e, final) or e) from None
    except BaseException:
        moves.undo()
        raise
    moves.finish()


class Transaction:
    """Context-manager protocol of the atomic writers: commit on success; on failure discard the temp
    files and re-raise, translated by `user_error` into a message naming the user's path."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.discard()
        shown = self.user_error(exc)
        if shown is not exc:
            raise shown from None


class AtomicFile(Transaction):
    """One output file: written at `tmp` (a hidden temp name beside it), moved onto `path` by `commit`.

    Use as a context manager (commit on success; temp removed on any exception, Ctrl-C and SIGTERM included)
    or hand `tmp` to a writer and let an `Outputs` commit it together with others."""

    def __init__(self, path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self.path = check_output_path(path, overwrite, inputs)
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent)
        self.tmp = temp_path(self.path)

    def error(self, e: BaseException) -> BaseException:
        """A UserError naming `path` for an OSError on a temp entry (the user never sees temp names), else `e`."""
        return (_write_error(e, self.path) or e) if isinstance(e, OSError) else e

    def commit(self) -> Path:
        """Move the finished temp file onto `path`; with overwrite=False an existing `path` is never replaced."""
        try:
            _commit_all([(self.tmp, self.path, self.overwrite)])
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        """Remove the temp file (the final name is untouched)."""
        self.tmp.unlink(missing_ok=True)

    def user_error(self, exc: BaseException) -> BaseException:
        """The error to show for a failure inside the block (see `error`)."""
        return self.error(exc)


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield the temp path of an `AtomicFile` for a writer; committed onto `path` on success, removed on error."""
    with AtomicFile(path, overwrite, inputs) as f:
        yield f.tmp


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write bytes atomically (see AtomicFile)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


class Outputs(Transaction):
    """Several `AtomicFile`s (anywhere) committed together in the order added: all outputs of a run or none."""

    def __init__(self, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> None:
        self.overwrite, self.inputs = overwrite, list(inputs)
        self.files: list[AtomicFile] = []
        self.created: list[Path] = []

    def add(self, path: str | Path) -> AtomicFile:
        """A new AtomicFile for `path` (its missing parent folders are removed again if the run fails)."""
        p = Path(path)
        self.created.extend(q for q in (p.parent, *p.parent.parents) if not q.exists())
        f = AtomicFile(p, self.overwrite, self.inputs)
        self.files.append(f)
        return f

    def commit(self) -> None:
        """Move every file into place, or none of them."""
        try:
            _commit_all([(f.tmp, f.path, self.overwrite) for f in self.files])
        except BaseException:
            self.discard()
            raise
        self.discard()

    def discard(self) -> None:
        """Remove every temp file and the folders this run created (when left empty)."""
        for f in self.files:
            f.discard()
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                pass

    def user_error(self, exc: BaseException) -> BaseException:
        """An OSError named after the output whose temp file failed (else the one being written)."""
        if not (isinstance(exc, OSError) and self.files):
            return exc
        name = Path(exc.filename).name if exc.filename is not None else None
        return next((f for f in self.files if f.tmp.name == name), self.files[-1]).error(exc)


class StagedFolder:
    """Entries (files or folders) of `target` built in a hidden staging folder inside it, then moved in.

    `path(name)` says where to build entry `name`; `commit` moves the entries in the order they were asked
    for, all or none, each under the no-replace rule (replace=True, e.g. for an index, always replaces).
    Other entries of `target` are never touched; on an exception the staging folder (and `target`, if this
    created it and it is left empty) is removed."""

    def __init__(self, target: str | Path, overwrite: bool = False) -> None:
        self.target, self.overwrite = Path(target), overwrite
        self.created = not self.target.exists()
        self.target.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.target)
        self.root = temp_path(self.target / "staging")
        self.root.mkdir()
        self.entries: dict[str, bool] = {}  # name -> replace an existing entry
        self.committed = False

    def path(self, name: str, replace: bool | None = None) -> Path:
        """Where to build entry `name`, registered for the commit (replace=None: follow overwrite)."""
        self.entries[name] = self.overwrite if replace is None else replace
        return self.root / name

    @contextmanager
    def locked(self, timeout_s: float = 60.0) -> Iterator[None]:
        """Hold an exclusive lock on the target folder (flock on the folder itself, released by the kernel even
        when the holder is killed), e.g. to re-read and merge an index and commit without a concurrent writer.
        Where folders cannot be locked (no fcntl, some network file systems) the block runs unlocked."""
        fd = self._lock(timeout_s)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _lock(self, timeout_s: float) -> int | None:
        """File descriptor of the locked target folder, None where locking is not available."""
        try:
            import fcntl
            fd = os.open(self.target, os.O_RDONLY)
        except (ImportError, OSError):
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise UserError(f"{self.target}: another process has been writing into it for "
                                    f"{timeout_s:.0f} s; try again when it has finished") from None
                time.sleep(0.02)
            except OSError:
                os.close(fd)
                return None

    def clashes(self) -> list[str]:
        """Registered entries that exist in the target already and would not be replaced."""
        return [n for n, rep in self.entries.items() if not rep and os.path.lexists(self.target / n)]

    def commit(self) -> None:
        """Move every registered entry into the target (all or none), then remove the staging folder."""
        try:
            _commit_all([(self.root / n, self.target / n, rep) for n, rep in self.entries.items()])
        except BaseException:
            self.discard()
            raise
        self.committed = True
        _remove(self.root)

    def discard(self) -> None:
        """Remove the staging folder, and the target when this created it and it is left empty."""
        _remove(self.root)
        if self.created:
            try:
                self.target.rmdir()
            except OSError:
                pass

    def __enter__(self) -> StagedFolder:
        return self

    def error(self, e: BaseException) -> BaseException:
        """The exception to show, naming where a staged path was going (`target/...`), never the staging folder."""
        root = os.path.abspath(self.root)
        if isinstance(e, OSError) and e.filename is not None:
            inside = os.path.abspath(e.filename)
            if inside == root or inside.startswith(root + os.sep):
                final = self.target / _final_name(Path(os.path.relpath(inside, root)))
                return UserError(f"{final}: cannot write ({e.strerror or type(e).__name__})")
        if isinstance(e, UserError) and str(self.root) in str(e):
            return UserError(str(e).replace(str(self.root), str(self.target)))
        return e

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self.committed:
                self.commit()
            return
        self.discard()
        if self.error(exc) is not exc:
            raise self.error(exc) from None
