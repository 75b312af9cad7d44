"""Errors with user-facing messages. The CLI prints `str(error)` as one line and exits 2."""

from __future__ import annotations


class BufinspectError(Exception):
    """Base class: something about the input or the usage is wrong.

    `path` and `message` keep the raw text; `str(error)` is one line, escaped and bounded
    (`bufinspect.escape`): paths, keys and names from a file never reach a terminal raw.
    """

    def __init__(self, message: str, path: str | None = None):
        from bufinspect.escape import MESSAGE_LIMIT, excerpt, path_excerpt

        self.path = path
        self.message = message
        text = excerpt(message, MESSAGE_LIMIT)
        super().__init__(f"{path_excerpt(path)}: {text}" if path else text)


class InputError(BufinspectError):
    """The file is missing, unreadable, corrupt, or not a checkpoint."""


class UnsafeInputError(InputError):
    """The file asks to run code (a pickle global outside the allowlist used as data, say)."""


class UsageError(BufinspectError):
    """The command line asks for something impossible (an unknown container, cuda without a GPU)."""
