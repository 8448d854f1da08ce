"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the checks that raise it."""

import math
import numbers


class UserError(Exception):
    """A problem with the user's input (path, file, shape, option); message is shown as is."""


def one_line(exc: BaseException, memory_hint: str = "try a smaller --batch-size or smaller images") -> str:
    """The one line shown for an exception (without 'error: '): a UserError as is, an OSError as
    'reason: file', anything else as 'unexpected Type: message'."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, MemoryError):
        return f"out of memory ({memory_hint})"
    return f"unexpected {type(exc).__name__}: {exc}"


def require_number(name: str, value: float | None, low: float | None = None, high: float | None = None, *,
                   open_low: bool = False, optional: bool = False) -> None:
    """UserError naming the option unless value is a finite number inside [low, high] (or (low, high] with
    open_low); with `optional` None passes (the option was not given)."""
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)  # numpy scalars too
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f"> {low:g}" if open_low else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        need = " and ".join(p for p in (lo, hi) if p)
        raise UserError(f"{name} must be a finite number{' ' + need if need else ''}, got {value}")
