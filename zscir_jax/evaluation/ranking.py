"""Block-wise ranking: top-k, target ranks and subset ranks from one [query_block, gallery] score tile at a time.

Everything a metric needs is derived from the *same* tile, so top-k lists and target ranks agree exactly even when
the matrix product is computed on an accelerator. Ties are broken by gallery index (stable order). The tile's
matrix product may run in JAX (``backend="jax"``, jitted) or numpy; the selection always runs in numpy because
``lax.top_k`` does not promise an order among equal values.

Scores are ``sum_i weight_i * (query_i @ gallery.T)``: one entry for plain retrieval, two for joint inference
(MVFT-JI: ``sim(query, img) + lambda * sim(target_text, img)``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from zscir_jax.evaluation import metrics


@dataclasses.dataclass
class Ranking:
    topk_idx: np.ndarray  # [Q, k] gallery indices, best first
    topk_scores: np.ndarray  # [Q, k]
    target_rank: np.ndarray | None  # [Q] 0-based rank of the first target (G when excluded / absent)
    subset_order: np.ndarray | None  # [Q, S] subset gallery indices best first, reference removed, padded with -1
    subset_target_rank: np.ndarray | None  # [Q]


def _tile_fn(backend: str):
    if backend == "numpy":
        return lambda qs, g: sum(w * (q @ g.T) for q, w in qs)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        @jax.jit
        def tile(qs, ws, g):
            return sum(w * jnp.matmul(q, g.T, precision="highest") for q, w in zip(qs, ws))

        def run(qs, g):
            return np.asarray(tile([q for q, _ in qs], [np.float32(w) for _, w in qs], g))

        return run
    raise ValueError(f"backend must be 'numpy' or 'jax', got {backend!r}")


def topk_rows(tile: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable top-k of each row without sorting the whole row: partition, then sort the candidates by (-score, idx)."""
    q, g = tile.shape
    k = min(k, g)
    kth = -np.partition(-tile, k - 1, axis=1)[:, k - 1]
    idx = np.empty((q, k), np.int64)
    for r in range(q):
        cand = np.flatnonzero(tile[r] >= kth[r])  # all ties at the boundary are candidates
        order = np.lexsort((cand, -tile[r, cand]))[:k]
        idx[r] = cand[order]
    return idx, np.take_along_axis(tile, idx, axis=1)


def rank(
    queries: Sequence[tuple[np.ndarray, float]] | np.ndarray,
    gallery: np.ndarray,
    *,
    k: int = 50,
    exclude_idx: np.ndarray | None = None,
    target_idx: np.ndarray | None = None,
    subset_idx: np.ndarray | None = None,
    block: int = 256,
    backend: str = "numpy",
) -> Ranking:
    """Rank ``gallery`` [G, D] for each query; never holds more than a [block, G] score tile.

    queries: [Q, D] embeddings or a list of (embeddings [Q, D], weight) pairs whose weighted similarities are summed.
    exclude_idx: [Q] gallery index removed from that query's ranking (CIRR's reference); None, or -1 in a row, for
        none (as in ``metrics``). When any row excludes an item, every top-k list holds at most G - 1 items.
    target_idx: [Q] gallery index of the target: its exact rank is returned (Recall@K for any K).
    subset_idx: [Q, S] gallery indices: the subset ranking (Recall_subset); -1 entries are padding.
    """
    if isinstance(queries, np.ndarray) or not isinstance(queries, (list, tuple)):
        queries = [(np.asarray(queries), 1.0)]
    queries = [(np.asarray(q, np.float32), float(w)) for q, w in queries]
    gallery = np.asarray(gallery, np.float32)
    nq, g = queries[0][0].shape[0], gallery.shape[0]
    tile_fn = _tile_fn(backend)
    excl = metrics.exclusion(exclude_idx, nq, g)
    k_eff = min(k, g - (1 if excl is not None and (excl >= 0).any() else 0))
    out_idx, out_sc = np.zeros((nq, k_eff), np.int64), np.zeros((nq, k_eff), np.float32)
    t_rank = None if target_idx is None else np.zeros(nq, np.int64)
    s_rank = s_order = None
    if subset_idx is not None:
        subset_idx = np.asarray(subset_idx, np.int64).reshape(nq, -1)
        s_rank = np.zeros(nq, np.int64)
        s_order = np.full(subset_idx.shape, -1, np.int64)

    for start in range(0, nq, block):
        stop = min(start + block, nq)
        tile = np.array(tile_fn([(q[start:stop], w) for q, w in queries], gallery), np.float32)
        rows = np.arange(stop - start)
        ex = None if excl is None else excl[start:stop]  # -1: nothing excluded for that row
        tile_for_topk = tile
        if ex is not None and (ex >= 0).any():
            has = ex >= 0
            tile_for_topk = tile.copy()
            tile_for_topk[rows[has], ex[has]] = -np.inf
        idx, _ = topk_rows(tile_for_topk, k_eff)
        out_idx[start:stop] = idx
        out_sc[start:stop] = np.take_along_axis(tile, idx, axis=1)
        if t_rank is not None:
            t = np.asarray(target_idx, np.int64)[start:stop]
            t_rank[start:stop] = metrics.target_ranks(tile, t, ex)
        if subset_idx is not None:
            sub = subset_idx[start:stop]
            t = None if target_idx is None else np.asarray(target_idx, np.int64)[start:stop]
            s_order[start:stop] = _subset_order(tile, sub, ex)
            if t is not None:
                s_rank[start:stop] = _ranks_in_order(s_order[start:stop], t)
    return Ranking(out_idx, out_sc, t_rank, s_order, s_rank)


def _subset_order(tile, sub, ex):
    """Subset members best first (stable by gallery index), the excluded one, repeats and -1 padding dropped, -1 padded.

    ``ex`` rows of -1 exclude nothing (a member is never -1 after the padding is dropped)."""
    out = np.full(sub.shape, -1, np.int64)
    for r in range(sub.shape[0]):
        members = [m for m in dict.fromkeys(sub[r].tolist()) if m >= 0 and (ex is None or m != ex[r])]
        m = np.asarray(members, np.int64)
        order = np.lexsort((m, -tile[r, m]))
        out[r, : len(m)] = m[order]
    return out


def _ranks_in_order(order, t):
    hit = order == t[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), order.shape[1])
