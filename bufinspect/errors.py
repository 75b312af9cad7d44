"""Errors with user-facing messages. The CLI prints `str(error)` as one line and exits 2."""

from __future__ import annotations


class BufinspectError(Exception):
    """Base class: something about the input or the usage is wrong."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class InputError(BufinspectError):
    """The file is missing, unreadable, corrupt, or not a checkpoint."""


class UnsafeInputError(InputError):
    """The file asks to run code (a pickle global outside the allowlist used as data, say)."""


class UsageError(BufinspectError):
    """The command line asks for something impossible (an unknown container, cuda without a GPU)."""
