"""Image loading for evaluation, batched encoding with a progress bar, and the on-disk gallery-embedding cache."""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from zscir_jax.data import images
from zscir_jax.numerics import l2_normalize  # noqa: F401  (evaluator uses gallery.l2_normalize)


def load_image(path: str, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3] with the training pipeline's geometry (``data.images``: shorter side, centre crop);
    a missing or undecodable file raises ``images.ImageError`` naming it."""
    return images.to_uint8_square(images.load_image(path), size)


def load_images(paths: Sequence[str], size: int, workers: int = 4) -> np.ndarray:
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        return np.stack(list(pool.map(lambda p: load_image(p, size), paths)))


def encode_in_batches(
    n: int, batch_size: int, encode_batch: Callable[[int, int], np.ndarray], *, desc: str, log_progress: bool = True
) -> np.ndarray:
    """Call ``encode_batch(start, stop)`` over [0, n) and stack the L2-normalised results."""
    out = []
    with tqdm(total=n, desc=desc, unit="img", leave=False,
              # On a terminal only: in a log file dozens of short bars would bury the results.
              disable=None if log_progress else True) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            emb = np.asarray(encode_batch(start, stop), np.float32)
            if emb.ndim != 2 or emb.shape[0] != stop - start:
                raise ValueError(f"{desc}: encoder returned shape {emb.shape} for a batch of {stop - start}")
            out.append(l2_normalize(emb))
            bar.update(stop - start)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def gallery_fingerprint(names: Sequence[str], image_size: int) -> str:
    h = hashlib.sha1(f"{image_size}\n".encode())
    for n in names:
        h.update(n.encode() + b"\n")
    return h.hexdigest()


def cache_path(workdir: str, cache_key: str, name: str, split: str) -> str:
    return os.path.join(workdir, "eval", "cache", cache_key, f"{name}_{split}.npy")


def cached_gallery_embeddings(
    path: str | None, names: Sequence[str], image_size: int, compute: Callable[[], np.ndarray]
) -> tuple[np.ndarray, bool]:
    """Load the cache at ``path`` when it matches this gallery (names and image size), else compute and save.

    Returns (embeddings, from_cache). The fingerprint lives in a sidecar ``.json`` so a stale cache (other gallery,
    other image size) is recomputed rather than silently reused.
    """
    fp = gallery_fingerprint(names, image_size)
    if path is not None and os.path.isfile(path) and os.path.isfile(path + ".json"):
        with open(path + ".json") as f:
            meta = json.load(f)
        if meta.get("fingerprint") == fp:
            emb = np.load(path)
            if emb.shape[0] == len(names):
                return emb, True
    emb = compute()
    if path is not None and jax.process_index() == 0:  # every process computed it (collectively); one saves it
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npy"  # write then rename: a killed run never leaves a truncated cache
        np.save(tmp, emb)
        os.replace(tmp, path)
        with open(path + ".json", "w") as f:
            json.dump({"fingerprint": fp, "count": len(names), "image_size": image_size}, f)
    return emb, False
