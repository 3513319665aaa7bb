"""Errors caused by the user's input. Each message says what is wrong and how to fix it; the
command line prints them as one line (no traceback)."""


class UserError(Exception):
    """Base of every error the command line reports as `error: ...` with exit code 2."""


class ModelError(UserError, ValueError):
    """A model that cannot be built or adapted, with a message that says how to fix it."""


class InputError(UserError, ValueError):
    """Images or arguments a model or benchmark cannot take (shape, range, mode, unknown names)."""
