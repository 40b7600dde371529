"""Errors that sharpscope raises on bad input: one clear message, never a deep traceback."""

from __future__ import annotations


class SharpscopeError(ValueError):
    """Base class of every error sharpscope raises on purpose.

    ``argument`` names the library argument the message is about (``"max_iter"``, ``"force"``), when
    there is one, so that a front end can name its own spelling of it (a command-line flag);
    ``str(error)`` is the one-line message.
    """

    def __init__(self, message: str = "", *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument

    def __reduce__(self) -> tuple[object, ...]:  # keep ``argument`` through pickling (process pools)
        return type(self), self.args, {"argument": self.argument}


class DataError(SharpscopeError):
    """The data cannot be used: empty, malformed, wrong shapes or dtypes."""


class ObjectiveError(SharpscopeError):
    """The objective cannot be evaluated: non-finite loss, output/target mismatch, no parameters."""


class CheckpointError(SharpscopeError):
    """A checkpoint is missing, truncated, unsafe to load, or does not fit the model."""


class ConfigError(SharpscopeError):
    """An argument or configuration value is out of range or unknown."""


class StorageError(SharpscopeError):
    """A file cannot be written or read: disk full, read-only file system, no permission."""


def os_error_text(error: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the system's words for an ``OSError`` and its errno name."""
    import errno

    code = errno.errorcode.get(error.errno, "") if isinstance(error.errno, int) else ""
    words = error.strerror or str(error) or type(error).__name__
    return f"{words} ({code})" if code else words
