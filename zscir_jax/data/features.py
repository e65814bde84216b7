"""Per-record feature arrays that travel with the training triplets (DistillCIR's teacher embeddings of each
record's target text, precomputed once by its teacher stage).

On disk, a directory: ``features.npy`` ([N, D], row i belongs to record i of the configured triplets, in the order
``data.sources.load_triplets`` reads them) and ``meta.json`` (count, dim, the digest of the records' target texts,
what wrote it). A loader checks the count and digest against the records it trains on, so features written for other
triplets are refused with one line instead of silently misaligned. The array is memory-mapped (a 7B teacher's
embeddings of a million records do not need to fit in host memory) and reopened in each Grain worker.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

from zscir_jax import files
from zscir_jax.errors import UserError

ARRAY, META = "features.npy", "meta.json"


def digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def write(path: str, features: np.ndarray, texts: Sequence[str], **meta) -> str:
    """Write ``features`` (row i = record i, whose target text is ``texts[i]``) atomically (meta last)."""
    if len(features) != len(texts):
        raise ValueError(f"{len(features)} feature rows for {len(texts)} records")
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, ARRAY + ".tmp.npy")
    np.save(tmp, np.asarray(features))
    os.replace(tmp, os.path.join(path, ARRAY))
    files.write_json_atomic(os.path.join(path, META), dict(meta, count=int(len(texts)), dim=int(features.shape[1]),
                                                           digest=digest(texts), dtype=str(features.dtype)))
    return path


def read_meta(path: str, key: str = "features") -> dict:
    meta = os.path.join(os.path.expanduser(path), META)
    if not os.path.isfile(meta):
        raise UserError(f"{key}={path!r}: not a features directory ({META} missing)")
    with open(meta) as f:
        return json.load(f)


class RecordFeatures:
    """Row lookup into a features directory, checked against the records it will be looked up for."""

    def __init__(self, path: str, texts: Sequence[str] | None = None, key: str = "features"):
        self.path = os.path.expanduser(path)
        self.meta = read_meta(self.path, key)
        if texts is not None and (len(texts) != self.meta["count"] or digest(texts) != self.meta["digest"]):
            raise UserError(f"{key}={path!r} was written for other triplets ({self.meta['count']} records, digest "
                            f"{self.meta['digest']}; these are {len(texts)}, {digest(texts)}): rerun the stage "
                            "that wrote it")
        self._array = None

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __getitem__(self, index: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(os.path.join(self.path, ARRAY), mmap_mode="r")
        return np.asarray(self._array[index], np.float32)

    def __getstate__(self):  # pickled for Grain workers by path: each reopens the map
        return {**self.__dict__, "_array": None}
