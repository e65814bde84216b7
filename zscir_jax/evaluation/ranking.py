"""Block-wise ranking: top-k, target ranks and subset ranks from one [query_block, gallery] score tile at a time.

Everything a metric needs is derived from the *same* tile, so top-k lists and target ranks agree exactly even when
the matrix product is computed on an accelerator. Ties are broken by gallery index (stable order): the result is the
prefix of ``np.argsort(-scores, kind="stable")``, with an excluded item scored ``-inf`` and NaN ranked last. The
tile's matrix product runs in JAX (``backend="jax"``, jitted, the gallery put on the device once) or numpy.

Selection sorts no row (except in galleries under 16 k items and rows holding NaN). The row is cut into ``n``
groups (column ``j`` belongs to group ``j % n``); the k-th
largest group maximum ``tau`` is a lower bound of the row's k-th largest score, so the exact top-k, ties at the
boundary included, lies among the few members ``>= tau`` of the groups whose maximum is ``>= tau``. Those candidates
(about k per row) are sorted by (-score, gallery index) in one vectorised ``lexsort``.

``select`` says where that runs:
- ``"host"``: in numpy on the tile (the only choice for ``backend="numpy"``). Exact by construction.
- ``"device"`` (``backend="jax"``): a second jitted step keeps the tile on the device and returns only candidates:
  ``lax.top_k`` over the groups' maxima picks k groups, ``lax.top_k`` over their members (plus the remainder
  columns) keeps ``k + margin``, and target ranks (exact counts) and subset scores are computed there too. The host
  finishes the tie-broken order on those candidates; a row is accepted only when its k-th value is strictly above
  everything left out (the largest unpicked group maximum and the smallest kept candidate), since ``lax.top_k`` does
  not promise which of equal values it keeps. Other rows (ties spilling over the boundary, NaN, scores that XLA may
  flush as denormals, an excluded item inside the list) are pulled from the device and redone on the host.
- ``"auto"`` (default): ``"device"`` for ``backend="jax"`` on an accelerator, else ``"host"``.

For one backend, every ``select`` returns the same arrays, bit for bit, as a full stable sort of that backend's tile
and as this module did before it had a fast path (tests compare them on data full of ties, NaN and denormals).

Scores are ``sum_i weight_i * (query_i @ gallery.T)``: one entry for plain retrieval, two for joint inference
(MVFT-JI: ``sim(query, img) + lambda * sim(target_text, img)``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from zscir_jax.evaluation import metrics

_TINY = float(np.finfo(np.float32).tiny)  # XLA on CPU compares denormals as zero: below this, ask the host


@dataclasses.dataclass
class Ranking:
    topk_idx: np.ndarray  # [Q, k] gallery indices, best first
    topk_scores: np.ndarray  # [Q, k]
    target_rank: np.ndarray | None  # [Q] 0-based rank of the first target (G when excluded / absent)
    subset_order: np.ndarray | None  # [Q, S] subset gallery indices best first, reference removed, padded with -1
    subset_target_rank: np.ndarray | None  # [Q]


# --- tiles ---------------------------------------------------------------------------------------------------------


def _numpy_tile(qs, g: np.ndarray) -> np.ndarray:
    """``sum(w * (q @ g.T) for q, w in qs)`` in place (no temporaries beyond one product per extra query set).

    Bit-identical to that expression except for the sign of zero (the sum starts from the integer 0, so it never
    yields -0.0); ``rank`` adds 0.0 to the scores it returns, which settles that."""
    acc = None
    for q, w in qs:
        t = q @ g.T
        if w != 1.0:
            np.multiply(t, w, out=t)
        if acc is None:
            acc = t
        else:
            np.add(acc, t, out=acc)
    return acc


@functools.lru_cache(maxsize=None)
def _jax_tile():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def tile(qs, ws, g):
        return sum(w * jnp.matmul(q, g.T, precision="highest") for q, w in zip(qs, ws))

    return tile


# --- exact selection on the host ------------------------------------------------------------------------------------


def _groups(g: int, k: int) -> int:
    """Number of column groups for a row of ``g`` and a top-``k`` (0: too small to bother, sort the row)."""
    if k < 1 or g < 16 * k:
        return 0
    return int(min(max(math.isqrt(k * g), 2 * k), g // 4))


def _sorted_topk(tile: np.ndarray, k: int, ex: np.ndarray | None) -> np.ndarray:
    """Reference selection: the stable sort of whole rows (excluded item at -inf)."""
    t = np.array(tile)
    if ex is not None and (ex >= 0).any():
        has = ex >= 0
        t[np.flatnonzero(has), ex[has]] = -np.inf
    return np.argsort(-t, axis=1, kind="stable")[:, :k].astype(np.int64)


def _host_topk(tile: np.ndarray, k: int, ex: np.ndarray | None = None) -> np.ndarray:
    """[b, k] stable top-k of each row of ``tile`` with ``tile[r, ex[r]]`` read as -inf (``ex`` -1: none).

    The tile is not modified (it may be a read-only view of a device buffer)."""
    b, g = tile.shape
    k = min(k, g)
    if k <= 0:
        return np.zeros((b, 0), np.int64)
    n = _groups(g, k)
    if n == 0:
        return _sorted_topk(tile, k, ex)
    has = None if ex is None or not (ex >= 0).any() else ex >= 0
    c = g // n
    split = c * n
    view = tile[:, :split].reshape(b, c, n)  # view[r, i, j] = tile[r, i * n + j]: group j is strided
    gmax = view.max(axis=1)  # [b, n], one pass over contiguous runs
    if has is not None:  # the excluded item's group: its maximum without that item
        er = np.flatnonzero(has & (ex < split))
        if er.size:
            ej, ei = ex[er] % n, ex[er] // n
            members = view[er, :, ej]  # [P, c] copy
            members[np.arange(er.size), ei] = -np.inf
            gmax[er, ej] = members.max(axis=1)
    rem = tile[:, split:]
    nan = np.isnan(gmax).any(axis=1)
    if rem.shape[1]:
        nan |= np.isnan(rem).any(axis=1)
    tau = np.partition(gmax, n - k, axis=1)[:, n - k]  # k-th largest group maximum <= k-th largest score
    rr, jj = np.nonzero(gmax >= tau[:, None])  # at least k groups per row
    vals = view[rr, :, jj]  # [P, c] copy
    cols = jj[:, None] + n * np.arange(c)[None, :]
    if has is not None:
        vals[cols == np.where(has, ex, -1)[rr][:, None]] = -np.inf
    keep = vals >= tau[rr][:, None]
    cand_r = np.broadcast_to(rr[:, None], vals.shape)[keep]
    cand_c, cand_v = cols[keep], vals[keep]
    if rem.shape[1]:
        r2, c2 = np.nonzero(rem >= tau[:, None])
        v2, c2 = rem[r2, c2], c2 + split
        if has is not None:
            v2 = np.where(c2 == np.where(has, ex, -1)[r2], np.float32(-np.inf), v2)
            ok = v2 >= tau[r2]
            r2, c2, v2 = r2[ok], c2[ok], v2[ok]
        cand_r = np.concatenate([cand_r, r2])
        cand_c = np.concatenate([cand_c, c2])
        cand_v = np.concatenate([cand_v, v2])
    order = np.lexsort((cand_c, -cand_v, cand_r))
    counts = np.bincount(cand_r, minlength=b)
    starts = np.cumsum(counts) - counts
    idx = np.empty((b, k), np.int64)
    good = ~nan
    idx[good] = cand_c[order][starts[good][:, None] + np.arange(k)[None, :]]
    if nan.any():  # NaN hides a group's maximum: sort those rows
        bad = np.flatnonzero(nan)
        idx[bad] = _sorted_topk(tile[bad], k, None if ex is None else ex[bad])
    return idx


def topk_rows(tile: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable top-k of each row without sorting the whole row (ties by lower index); returns (indices, scores)."""
    idx = _host_topk(np.asarray(tile), k)
    return idx, np.take_along_axis(tile, idx, axis=1)


def _subset_order(sub: np.ndarray, vals: np.ndarray, ex: np.ndarray | None) -> np.ndarray:
    """Subset members best first (stable by gallery index); the excluded one, repeats and -1 padding dropped; -1 padded.

    ``vals`` [b, S] are the members' scores (anything at padding). ``ex`` rows of -1 exclude nothing."""
    s = sub.shape[1]
    invalid = sub < 0
    if ex is not None:
        invalid |= (sub == ex[:, None]) & (ex[:, None] >= 0)
    earlier = np.tril(np.ones((s, s), bool), -1)  # [j, i]: i < j
    invalid |= ((sub[:, :, None] == sub[:, None, :]) & earlier[None]).any(axis=2)  # a repeat of an earlier member
    order = np.lexsort((sub, -vals, invalid), axis=1)
    out = np.take_along_axis(sub, order, axis=1)
    return np.where(np.take_along_axis(invalid, order, axis=1), -1, out).astype(np.int64)


def _ranks_in_order(order, t):
    hit = order == t[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), order.shape[1])


def _host_block(tile, k, ex, t, sub):
    """(top-k indices, their scores, target ranks, subset order) of one tile, all on the host."""
    idx = _host_topk(tile, k, ex)
    sc = np.take_along_axis(tile, idx, axis=1)
    ranks = None if t is None else metrics.target_ranks(tile, t, ex)
    order = None
    if sub is not None:
        order = _subset_order(sub, np.take_along_axis(tile, np.where(sub >= 0, sub, 0), axis=1), ex)
    return idx, sc, ranks, order


# --- candidates on the device ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _device_select(k: int, m: int, n: int, with_target: bool, with_subset: bool):
    """Jitted: tile [b, G] (on the device) -> the candidates and counts ``_finish_device`` needs."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @jax.jit
    def select(tile, ex, t, sub):
        b, g = tile.shape
        col = jnp.arange(g, dtype=jnp.int32)
        masked = jnp.where(col[None, :] == ex[:, None], -jnp.inf, tile)
        if n:
            c = g // n
            split = c * n
            view = masked[:, :split].reshape(b, c, n)
            gmax = view.max(axis=1)
            rem = masked[:, split:]
            nan = jnp.isnan(gmax).any(axis=1) | jnp.isnan(rem).any(axis=1)
            gv, gj = lax.top_k(gmax, k + 1)
            bound = gv[:, k]  # the largest maximum of a group left out
            pick = gj[:, :k]
            pool_v = jnp.take_along_axis(view, pick[:, None, :], axis=2).reshape(b, c * k)
            pool_c = (pick[:, None, :] + n * jnp.arange(c, dtype=jnp.int32)[None, :, None]).reshape(b, c * k)
            pool_v = jnp.concatenate([pool_v, rem], axis=1)
            pool_c = jnp.concatenate([pool_c, jnp.broadcast_to(col[split:], (b, g - split))], axis=1)
        else:
            nan = jnp.isnan(masked).any(axis=1)
            bound = jnp.full((b,), -jnp.inf, tile.dtype)
            pool_v, pool_c = masked, jnp.broadcast_to(col, (b, g))
        vals, pos = lax.top_k(pool_v, m)
        out = {"vals": vals, "cols": jnp.take_along_axis(pool_c, pos, axis=1), "bound": bound, "nan": nan}
        if with_target:
            rows = jnp.arange(b)
            ts = tile[rows, t]
            before = (tile > ts[:, None]) | ((tile == ts[:, None]) & (col[None, :] < t[:, None]))
            rank = before.sum(axis=1, dtype=jnp.int32)
            has = ex >= 0
            se = tile[rows, jnp.where(has, ex, 0)]
            rank = rank - (has & ((se > ts) | ((se == ts) & (ex < t)))).astype(jnp.int32)
            out["rank"] = jnp.where(has & (ex == t), g, rank)
            out["ts"] = ts
        if with_subset:
            out["sub_vals"] = jnp.take_along_axis(tile, jnp.maximum(sub, 0), axis=1)
        return out

    return select


def _finish_device(out, k, grouped, trimmed, ex, t, sub):
    """Host side of ``select="device"``: the exact order of the candidates, and the rows to redo on the host.

    grouped: only the picked groups' members were candidates; trimmed: ``lax.top_k`` kept fewer than all of them."""
    vals, cols = np.asarray(out["vals"]), np.asarray(out["cols"]).astype(np.int64)
    order = np.lexsort((cols, -vals), axis=1)[:, :k]
    idx = np.take_along_axis(cols, order, axis=1)
    sc = np.take_along_axis(vals, order, axis=1)
    redo = np.asarray(out["nan"]).copy()
    if grouped or trimmed:
        # Everything left out is <= the largest maximum of an unpicked group and <= the smallest kept candidate, in
        # XLA's order; that implies numpy's order unless the bound is ~0 (XLA on CPU compares denormals as zero).
        lo = np.asarray(out["bound"])
        if trimmed:
            lo = np.maximum(lo, vals.min(axis=1))
        vk = sc[:, k - 1]
        redo |= ~((vk > lo) & ((np.abs(lo) >= _TINY) | (vk >= _TINY)))
    if ex is not None:
        redo |= (idx == ex[:, None]).any(axis=1)  # its score is the tile's, not -inf
    ranks = None
    if t is not None:
        ranks = np.asarray(out["rank"]).astype(np.int64)
        redo |= ~(np.abs(np.asarray(out["ts"])) >= _TINY) | (t < 0)
    order_s = None
    if sub is not None:
        order_s = _subset_order(sub, np.asarray(out["sub_vals"]), ex)
    return idx, sc, ranks, order_s, np.flatnonzero(redo)


# --- driver ---------------------------------------------------------------------------------------------------------


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
    select: str = "auto",
    margin: int = 16,
) -> Ranking:
    """Rank ``gallery`` [G, D] for each query; never holds more than a [block, G] score tile (two with the lookahead
    of ``backend="jax"``, which dispatches the next block before finishing this one).

    queries: [Q, D] embeddings or a list of (embeddings [Q, D], weight) pairs whose weighted similarities are summed.
    exclude_idx: [Q] gallery index removed from that query's ranking (CIRR's reference); None, or -1 in a row, for
        none (as in ``metrics``). When any row excludes an item, every top-k list holds at most G - 1 items.
    target_idx: [Q] gallery index of the target: its exact rank is returned (Recall@K for any K).
    subset_idx: [Q, S] gallery indices: the subset ranking (Recall_subset); -1 entries are padding.
    select: "auto", "host" or "device" (``backend="jax"`` only): where the top-k is selected (module docstring).
    margin: extra candidates per row that ``select="device"`` brings back, for ties at the k-th value.
    """
    if backend not in ("numpy", "jax"):
        raise ValueError(f"backend must be 'numpy' or 'jax', got {backend!r}")
    if select not in ("auto", "host", "device"):
        raise ValueError(f"select must be 'auto', 'host' or 'device', got {select!r}")
    if select == "device" and backend != "jax":
        raise ValueError("select='device' needs backend='jax'")
    if isinstance(queries, np.ndarray) or not isinstance(queries, (list, tuple)):
        queries = [(np.asarray(queries), 1.0)]
    queries = [(np.asarray(q, np.float32), float(w)) for q, w in queries]
    gallery = np.asarray(gallery, np.float32)
    nq, g = queries[0][0].shape[0], gallery.shape[0]
    excl = metrics.exclusion(exclude_idx, nq, g)
    k_eff = min(k, g - (1 if excl is not None and (excl >= 0).any() else 0))
    out_idx, out_sc = np.zeros((nq, k_eff), np.int64), np.zeros((nq, k_eff), np.float32)
    targets = t_rank = None
    if target_idx is not None:
        targets = np.asarray(target_idx, np.int64).reshape(nq)
        if ((targets >= g) | (targets < -g)).any():
            raise IndexError(f"target_idx must hold gallery indices in [0, {g})")
        t_rank = np.zeros(nq, np.int64)
    s_rank = s_order = None
    if subset_idx is not None:
        subset_idx = np.asarray(subset_idx, np.int64).reshape(nq, -1)
        if (subset_idx >= g).any():
            raise IndexError(f"subset_idx must hold gallery indices in [0, {g}) or -1 (padding)")
        s_rank = np.zeros(nq, np.int64)
        s_order = np.full(subset_idx.shape, -1, np.int64)

    def part(a, start, stop):
        return None if a is None else a[start:stop]

    def store(start, stop, idx, sc, ranks, order):
        out_idx[start:stop] = idx
        out_sc[start:stop] = sc
        if t_rank is not None:
            t_rank[start:stop] = ranks
        if s_order is not None:
            s_order[start:stop] = order
            if targets is not None:
                s_rank[start:stop] = _ranks_in_order(order, targets[start:stop])

    blocks = [(s, min(s + block, nq)) for s in range(0, nq, block)]
    if backend == "numpy":
        for start, stop in blocks:
            tile = _numpy_tile([(q[start:stop], w) for q, w in queries], gallery)
            idx, sc, ranks, order = _host_block(tile, k_eff, part(excl, start, stop), part(targets, start, stop),
                                                part(subset_idx, start, stop))
            store(start, stop, idx, sc + np.float32(0.0), ranks, order)  # + 0.0: no -0.0, as before
        return Ranking(out_idx, out_sc, t_rank, s_order, s_rank)

    import jax
    import jax.numpy as jnp

    g_dev = jax.device_put(gallery)  # once, not once per block
    ws = [np.float32(w) for _, w in queries]
    tile_fn = _jax_tile()
    if select == "auto":
        select = "host" if g_dev.devices().pop().platform == "cpu" else "device"
    n = _groups(g, k_eff) if g > k_eff else 0  # k_eff groups are picked: n > k_eff
    pool = (g // n) * k_eff + g % n if n else g  # members of the picked groups + the remainder columns
    m = min(k_eff + margin, pool)
    select_fn = None
    if select == "device" and k_eff:
        select_fn = _device_select(k_eff, m, n, targets is not None, subset_idx is not None)

    def dispatch(start, stop):
        tile = tile_fn([q[start:stop] for q, _ in queries], ws, g_dev)
        if select_fn is None:
            return tile, None
        b = stop - start
        ex = np.full(b, -1, np.int32) if excl is None else excl[start:stop].astype(np.int32)
        t = np.zeros(b, np.int32) if targets is None else np.where(targets[start:stop] < 0, 0,
                                                                     targets[start:stop]).astype(np.int32)
        sub = np.zeros((b, 1), np.int32) if subset_idx is None else subset_idx[start:stop].astype(np.int32)
        return tile, select_fn(tile, ex, t, sub)

    pending = dispatch(*blocks[0]) if blocks else None
    for i, (start, stop) in enumerate(blocks):
        tile, out = pending
        pending = dispatch(*blocks[i + 1]) if i + 1 < len(blocks) else None  # runs while this block is finished
        ex, t, sub = part(excl, start, stop), part(targets, start, stop), part(subset_idx, start, stop)
        if out is None:
            store(start, stop, *_host_block(np.asarray(tile), k_eff, ex, t, sub))
            continue
        idx, sc, ranks, order, redo = _finish_device(out, k_eff, n > 0, m < pool, ex, t, sub)
        if redo.size:  # pull those rows and do them on the host
            rows = np.asarray(tile[jnp.asarray(redo)])
            r_idx, r_sc, r_ranks, _ = _host_block(rows, k_eff, None if ex is None else ex[redo],
                                                   None if t is None else t[redo], None)
            idx[redo], sc[redo] = r_idx, r_sc
            if ranks is not None:
                ranks[redo] = r_ranks
        store(start, stop, idx, sc, ranks, order)
    return Ranking(out_idx, out_sc, t_rank, s_order, s_rank)
