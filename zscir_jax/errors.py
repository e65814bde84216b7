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


@contextlib.contextmanager
def naming(path: str):
    """An ``OSError`` raised inside without a file name (a failed ``write`` / ``flush``) gets ``path`` as its own."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from e
        raise


def disk_full(error: BaseException):
    """The ``OSError`` "no space left on device" (ENOSPC, or EDQUOT: a quota) behind ``error``, following its causes
    and contexts (Orbax and TensorFlow wrap the OS error in their own); None when the disk was not the cause."""
    import errno

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if "No space left on device" in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def last_checkpoints(workdir: str) -> list[str]:
    """"<run> step N" for every run directory of ``workdir`` with a finished checkpoint (newest step each)."""
    import os

    from zscir_jax.train import checkpoint

    out = []
    if os.path.isdir(workdir):
        for name in sorted(os.listdir(workdir)):
            step = checkpoint.latest_in(os.path.join(workdir, name, "checkpoints"))
            if step is not None:
                out.append(f"{name} step {step}")
    return out


def disk_full_message(error: BaseException, workdir: str) -> str:
    """One line for a full disk: what could not be written, and what a rerun resumes from."""
    path = getattr(error, "filename", None) or f"somewhere under {workdir}"
    good = last_checkpoints(workdir)
    resume = ("the last good checkpoints: " + ", ".join(good)) if good else "no checkpoint was finished yet"
    return (f"no space left on device while writing {path}: free some space and rerun the same command, it resumes "
            f"from where it stopped ({resume})")
