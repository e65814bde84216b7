"""The one exception type for a user's mistake (a bad config value, a missing path, nothing to restore).

``python -m zscir_jax.main`` prints it as one line and exits with status 2; anything else is our bug and keeps its
traceback. Raise it as early as possible, before any long stage runs.
"""
import contextlib


class UserError(ValueError):
    """A mistake in how the program was called or configured; the message names the key or path and what is allowed."""


@contextlib.contextmanager
def renamed_keys(prefix: str):
    """A nested config checked on its own names its keys ``config.x``; re-raise its ``UserError`` as ``prefix.x``."""
    try:
        yield
    except UserError as e:
        raise UserError(str(e).replace("config.", prefix + ".")) from None
