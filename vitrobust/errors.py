"""Errors caused by the user's input, and the did-you-mean hint their messages share.

Each message says what is wrong and how to fix it; the command line prints a UserError as one line
(`error: ...`, exit code 2), never a traceback. This module imports nothing from vitrobust: it is the
bottom room of the house (docs/architecture.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Base of every error the command line reports as `error: ...` with exit code 2."""


class ConfigError(UserError, ValueError):
    """A config that cannot be used, with a message that says how to fix it."""


class ModelError(UserError, ValueError):
    """A model that cannot be built or adapted, with a message that says how to fix it."""


class InputError(UserError, ValueError):
    """Images or arguments a model or benchmark cannot take (shape, range, mode, unknown names)."""


class DatasetError(UserError, FileNotFoundError):
    """A dataset that cannot be found or read, with a message that says how to fix it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupt, foreign or unsafe."""


def suggest(name: str, choices: Iterable[str], n: int = 1) -> str:
    """'did you mean 'x'? ' for the closest choices (empty when none is close), to start a hint."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    return f"did you mean {' or '.join(map(repr, close))}? " if close else ""


__all__ = ["CheckpointError", "ConfigError", "DatasetError", "InputError", "ModelError", "UserError", "suggest"]
