"""Atomic file writes: a reader never sees a half-written file (temp file, fsync, rename)."""
from __future__ import annotations

import json
import os


def write_json_atomic(path: str, obj, lines: bool = False) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        if lines:
            for x in obj:
                f.write(json.dumps(x, ensure_ascii=False) + "\n")
        else:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
