"""The one exception type for user errors.

Anything the user can fix (a bad file, a wrong option, a missing extra) raises `LnrtError` with a
one-line message naming the file, what was wrong and what was expected. The CLI prints it without a
traceback and exits with status 2. Bugs stay ordinary exceptions.
"""


class LnrtError(Exception):
    """A user-facing error: the message is one line and says what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def missing_extra(package: str, extra: str) -> LnrtError:
    return LnrtError(f"{package} is not installed; install it with: pip install 'lnrt[{extra}]'")


def one_line(text, limit: int | None = None) -> str:
    """Any text as one line (runs of whitespace, newlines included, become one space), cut at `limit`."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]


def described(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` of an unexpected exception, on one line: what a worker records for a bug."""
    return f"{type(exc).__name__}: {one_line(exc, limit)}"
