"""Atomic file writes: a reader never sees a half-written file (temp file, fsync, rename)."""
from __future__ import annotations

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_text(path: str):
    """A text file opened for writing under a temporary name, flushed, fsynced and renamed over ``path`` when the
    block ends without an error."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj, lines: bool = False) -> None:
    with atomic_text(path) as f:
        if lines:
            for x in obj:
                f.write(json.dumps(x, ensure_ascii=False) + "\n")
        else:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def portable(value, workdir: str):
    """``value`` with a path inside ``workdir`` spelled ``<workdir>/relative``: what a record keeps so that it still
    matches after the workdir is moved (provenance records, synthesis cache keys and seeds). Anything else as is."""
    root = os.path.abspath(workdir) + os.sep if workdir else ""
    if root and isinstance(value, str) and value.startswith(root):
        return f"<workdir>/{value[len(root):]}"
    return value
