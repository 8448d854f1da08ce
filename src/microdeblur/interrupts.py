"""Ctrl-C and SIGTERM handling: long loops stop at a safe point, temp files are cleaned, exit codes are the shell's."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """Raised for SIGTERM as KeyboardInterrupt is for SIGINT; carries the shell exit code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = EXIT_CODES.get(signum, 130)


def _raise_interrupted(signum: int, frame) -> None:  # noqa: ANN001 - signal handler signature
    raise Interrupted(signum)


def raise_on_sigterm() -> None:
    """Make SIGTERM raise `Interrupted` (like Ctrl-C) so cleanup code runs; main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupted)


class _Completion:
    """Whether the running command has put every output in place (then a late Ctrl-C no longer fails it)."""

    done = False


def start_run() -> None:
    """A command starts: nothing is complete yet."""
    _Completion.done = False


def mark_complete() -> None:
    """Every output of the command is committed: an interrupt from now on leaves a finished run (the CLI exits 0)."""
    _Completion.done = True


def run_complete() -> bool:
    return _Completion.done


class StopFlag:
    """Set by SIGINT/SIGTERM inside `deferred()`; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum or signal.SIGINT, 130)


@contextmanager
def deferred() -> Iterator[StopFlag]:
    """Within the block SIGINT/SIGTERM only set the flag (a second Ctrl-C still interrupts at once)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.getsignal(s) for s in EXIT_CODES}

    def handler(signum, frame):  # noqa: ANN001 - signal handler signature
        if flag:
            raise Interrupted(signum)
        flag.signum = signum

    for s in EXIT_CODES:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold SIGINT/SIGTERM during the block (a few system calls), then deliver them to the handlers in place
    before it, as if they had arrived just after it (Ctrl-C raises there, `deferred` sets its flag)."""
    old = {s: signal.getsignal(s) for s in EXIT_CODES}
    if threading.current_thread() is not threading.main_thread() or None in old.values():
        yield  # only the main thread sets handlers; a handler installed outside Python cannot be restored
        return
    caught: list[int] = []
    for s in EXIT_CODES:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)
