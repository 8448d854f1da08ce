"""The single place the core reports to the user: messages and rich progress bars on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)
_level = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    """Set 0 (quiet: errors only), 1 (normal) or 2 (verbose)."""
    global _level
    _level = level


@contextmanager
def at_level(level: int) -> Iterator[None]:
    """Run the block at another verbosity (e.g. 0 for the non-zero ranks of a distributed run), then restore."""
    before = _level
    set_verbosity(level)
    try:
        yield
    finally:
        set_verbosity(before)


def verbosity() -> int:
    """Current level: 0 quiet, 1 normal, 2 verbose."""
    return _level


def info(msg: str) -> None:
    """Normal message (hidden by --quiet)."""
    if _level >= 1:
        console.print(msg, markup=False)


def debug(msg: str) -> None:
    """Detail shown with --verbose only."""
    if _level >= 2:
        console.print(msg, markup=False, style="dim")


def warn(msg: str) -> None:
    """Warning (hidden by --quiet)."""
    if _level >= 1:
        console.print(f"warning: {msg}", markup=False, style="yellow")


def error(msg: str) -> None:
    """The one `error:` line of a failed command (shown at every verbosity)."""
    console.print(f"error: {msg}", markup=False, style="red")


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Bar]:
    """Progress bar context; yields a Bar with advance(n) and set(text)."""
    if _level < 1 or not console.is_terminal and _level < 2:
        yield Bar(None, None)
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[extra]}")]
    with Progress(*cols, console=console, transient=False) as p:
        task = p.add_task(description, total=total, extra="")
        yield Bar(p, task)


class Bar:
    """Thin handle over a rich task (no-op when progress is hidden)."""

    def __init__(self, p: Progress | None, task) -> None:
        self._p, self._task = p, task

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def set(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, extra=text)
