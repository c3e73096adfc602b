"""The library's user-error type: what the `ccr` command prints as one line (exit code 2), no traceback.

Raise a `UserError` (or a subclass) for anything the user can fix: a path that does not exist, a
malformed file, a value of the wrong type. The message names the file, line or field, what was expected
and what was found. Programming errors stay ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message is complete on one line."""


class ModelLoadError(UserError):
    """A model folder (or Hub id) that cannot be loaded as a matcher."""


class DatasetLoadError(UserError):
    """A dataset path that is not a saved `DatasetDict`, or lacks the split asked for."""


class InvalidValueError(UserError, ValueError):
    """A value given on the command line or in a call that is not one of those allowed."""


class ConfigError(UserError, ValueError):
    """A run configuration that cannot be used; the message names the file and the field."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
