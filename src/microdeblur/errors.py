"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


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
