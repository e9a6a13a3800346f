"""Errors caused by what the user gave (a path, an option value, a file's contents), with messages that say what to do.

The `recycle-hf` command line prints these as one line and exits with status 2 (`--log-level debug` shows the
traceback); any other exception is a bug and keeps its traceback. Each class is also the built-in type that callers
of the Python API already catch (ValueError, FileNotFoundError).
"""

from __future__ import annotations

from .checkpoint_code.configuration_recyclegpt import RecycleGPTCheckpointError


class UserError(Exception):
    """Base class: something the user gave is wrong or missing."""


class InvalidInputError(UserError, ValueError):
    """A value, file or folder the user gave cannot be used as it is."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist, or lacks a file it must hold."""


# What the command line reports as a user error: ours, and the remote-code checkpoint error (which cannot import
# this module, since checkpoints carry it without recycle-hf).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, RecycleGPTCheckpointError)

__all__ = ["USER_ERRORS", "InputNotFoundError", "InvalidInputError", "UserError"]
