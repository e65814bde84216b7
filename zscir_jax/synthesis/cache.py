"""The generation cache of a synthesis run: one append-only JSONL file per process, keyed by content hashes.

A generation's key is the SHA-256 of everything that produced it (``key``): the model's fingerprint, the template
text, the inputs (template fields and image path), the sampling parameters and the seed. A line is

    {"key": "<64 hex>", "text": "<raw output>", "tokens": 12}                 a generation
    {"key": "<64 hex>", "error": "image file not found: ..."}                a generation that could not run

Each process appends to its own ``p<index>.jsonl`` (no two writers share a file) and reads every file of the folder,
so a rerun with another process count still finds all earlier work. ``append`` writes a whole batch with one
``write``, then flushes and fsyncs: after a SIGKILL the file holds every batch that ``append`` returned from, plus at
most one partial last line, which reading skips and opening for append cuts off (so the next line starts clean).
When a key appears more than once the last line wins; an ``error`` entry counts as not done, so a rerun retries it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Iterable


def key(payload: Any) -> str:
    """SHA-256 (hex) of a JSON-serialisable payload, independent of dict order."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Cache:
    """``directory/p<process_index>.jsonl`` for writing, every ``*.jsonl`` of ``directory`` for reading."""

    def __init__(self, directory: str, process_index: int = 0):
        self.directory = directory
        self.path = os.path.join(directory, f"p{process_index:05d}.jsonl")
        self.entries: dict[str, dict] = {}
        self.skipped_lines = 0  # unreadable lines (a truncated last line after a crash)
        os.makedirs(directory, exist_ok=True)
        _cut_partial_line(self.path)
        self.reload()
        self._file = None

    def reload(self) -> None:
        """(Re)read every process's file: what other processes wrote since is picked up."""
        entries, skipped = {}, 0
        for path in sorted(glob.glob(os.path.join(self.directory, "*.jsonl"))):
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        entry = json.loads(raw)
                        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                            raise ValueError("not a cache entry")
                    except ValueError:
                        skipped += 1
                        continue
                    entries[entry["key"]] = entry
        self.entries, self.skipped_lines = entries, skipped

    def done(self, k: str) -> bool:
        e = self.entries.get(k)
        return e is not None and "error" not in e

    def get(self, k: str) -> dict | None:
        return self.entries.get(k)

    def append(self, entries: Iterable[dict]) -> None:
        """Adds entries (each with ``key``) durably: one write, flush, fsync."""
        entries = list(entries)
        if not entries:
            return
        if self._file is None:
            self._file = open(self.path, "ab")
        blob = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        self._file.write(blob)
        self._file.flush()
        os.fsync(self._file.fileno())
        for e in entries:
            self.entries[e["key"]] = e

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cut_partial_line(path: str) -> None:
    """Truncates ``path`` after its last newline (a write cut short by a crash), so appends start on a fresh line."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan back in blocks for the last newline.
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                break
            pos = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
