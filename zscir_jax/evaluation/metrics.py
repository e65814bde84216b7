"""Retrieval metrics with exact, documented tie-breaking.

Every ranking here is the stable descending sort of the scores: equal scores keep gallery order
(``np.argsort(-scores, kind="stable")``). Each function returns ``{k: percent}``.

Definitions (checked against the official code):
- Recall@K (CIRR, FashionIQ; CLIP4Cir ``validate.py``): share of queries whose target is among the first K. CIRR
  removes the reference image from its own ranking before counting (``exclude_idx``).
- Recall_subset@K (CIRR): the ranking restricted to the query's ``img_set.members`` minus the reference (5 images),
  so a random ranking scores 20% at K=1.
- mAP@K (CIRCO ``src/evaluation.py``): AP@K = sum_{i<=K} P@i * rel_i / min(K, |GT|), averaged over queries.
  CIRCO's Recall@K counts only ``target_img_id``.

The ``*_from_*`` variants take ranks or top-k lists (see ``ranking.py``) so that big galleries never need a full sort.

``exclude_idx`` (every function that takes it, and ``ranking.rank``): None, or [Q] gallery indices where ``-1`` means
"exclude nothing for this query" (never numpy's "last item"); any other value outside ``[0, G)`` is an error.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _scores(scores) -> np.ndarray:
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating) or s.dtype.itemsize < 4:
        s = s.astype(np.float32)  # ints, bool, bfloat16 (from jax): compare in float32
    if s.ndim != 2:
        raise ValueError(f"scores must be [queries, gallery], got shape {s.shape}")
    return s


def exclusion(exclude_idx, num_queries: int, gallery_size: int) -> np.ndarray | None:
    """``exclude_idx`` as an int64 [Q] array with -1 for "none" (None stays None); rejects other out-of-range values."""
    if exclude_idx is None:
        return None
    e = np.asarray(exclude_idx, dtype=np.int64).reshape(num_queries)
    bad = (e < -1) | (e >= gallery_size)
    if bad.any():
        raise ValueError(
            f"exclude_idx must be -1 (none) or a gallery index in [0, {gallery_size}), got {int(e[bad][0])}"
        )
    return e


def target_ranks(scores, target_idx, exclude_idx=None) -> np.ndarray:
    """0-based rank of each query's target in the stable descending order, after removing ``exclude_idx``.

    rank = #{j : s_j > s_t} + #{j < t : s_j == s_t}, not counting the excluded item. A target that is itself
    excluded gets rank G (never retrieved). ``exclude_idx`` -1 entries exclude nothing.
    """
    s = _scores(scores)
    q, g = s.shape
    t = np.asarray(target_idx, dtype=np.int64).reshape(q)
    rows = np.arange(q)
    ts = s[rows, t]
    # Two counting passes over the row (booleans only, no [Q, G] temporaries); a row walks its prefix only when
    # another item ties with the target.
    ranks = np.count_nonzero(s > ts[:, None], axis=1).astype(np.int64)
    ties = np.count_nonzero(s == ts[:, None], axis=1)
    for r in np.flatnonzero(ties > (ts == ts)):  # (ts == ts): the target counts itself unless its score is NaN
        ranks[r] += np.count_nonzero(s[r, : max(int(t[r]), 0)] == ts[r])
    e = exclusion(exclude_idx, q, g)
    if e is not None:
        has = e >= 0
        se = s[rows, np.where(has, e, 0)]
        ranks = ranks - (has & ((se > ts) | ((se == ts) & (e < t))))
        ranks = np.where(has & (e == t), g, ranks)
    return ranks.astype(np.int64)


def recall_from_ranks(ranks, ks: Sequence[int]) -> dict[int, float]:
    ranks = np.asarray(ranks)
    return {int(k): float(np.mean(ranks < k) * 100.0) for k in ks}


def recall_at_k(scores, target_idx, ks=(1, 5, 10, 50), exclude_idx=None) -> dict[int, float]:
    """Recall@K in percent; ``exclude_idx`` [Q] removes that gallery item from its query's ranking (CIRR; -1: none)."""
    return recall_from_ranks(target_ranks(scores, target_idx, exclude_idx), ks)


def subset_ranks(scores, target_idx, subset_idx, exclude_idx=None) -> np.ndarray:
    """0-based rank of the target within its subset (minus ``exclude_idx``; duplicates counted once).

    -1 entries of ``subset_idx`` are padding (no member) and -1 entries of ``exclude_idx`` exclude nothing. A target
    outside its subset, or excluded, gets rank S (the subset width).
    """
    s = _scores(scores)
    q, g = s.shape
    sub = np.asarray(subset_idx, dtype=np.int64).reshape(q, -1)
    t = np.asarray(target_idx, dtype=np.int64).reshape(q)
    if ((sub < -1) | (sub >= g)).any():
        raise ValueError(f"subset_idx must hold gallery indices in [0, {g}) or -1 (padding)")
    rows = np.arange(q)
    ss = s[rows[:, None], np.maximum(sub, 0)]
    ts = s[rows, t][:, None]
    valid = (sub != t[:, None]) & (sub >= 0)
    e = exclusion(exclude_idx, q, g)
    if e is not None:
        valid &= (sub != e[:, None]) | (e[:, None] < 0)
    # A repeated member is one image: keep only its first occurrence.
    first = np.ones_like(valid)
    for j in range(1, sub.shape[1]):
        first[:, j] = ~(sub[:, :j] == sub[:, j : j + 1]).any(axis=1)
    before = (ss > ts) | ((ss == ts) & (sub < t[:, None]))
    ranks = (before & valid & first).sum(axis=1)
    if e is not None:
        ranks = np.where((e >= 0) & (e == t), sub.shape[1], ranks)
    in_subset = (sub == t[:, None]).any(axis=1)
    return np.where(in_subset, ranks, sub.shape[1]).astype(np.int64)


def recall_subset_at_k(scores, target_idx, subset_idx, exclude_idx, ks=(1, 2, 3)) -> dict[int, float]:
    """Recall_subset@K in percent: the ranking restricted to ``subset_idx`` [Q, S] minus ``exclude_idx`` [Q].

    -1 in ``exclude_idx`` removes nothing; -1 in ``subset_idx`` is padding."""
    return recall_from_ranks(subset_ranks(scores, target_idx, subset_idx, exclude_idx), ks)


def stable_topk(scores, k: int, exclude_idx=None) -> np.ndarray:
    """[Q, k] gallery indices of the k best items per query, stable order (ties by gallery index).

    ``exclude_idx`` [Q] drops that item from its query's list (-1: none). When any query excludes an item, k is capped
    at G - 1 for every query (as in ``ranking.rank``), so no list can contain an excluded item.
    """
    s = _scores(scores).copy()
    e = exclusion(exclude_idx, s.shape[0], s.shape[1])
    if e is not None and (e >= 0).any():
        has = e >= 0
        s[np.flatnonzero(has), e[has]] = -np.inf
        k = min(k, s.shape[1] - 1)
    return np.argsort(-s, axis=1, kind="stable")[:, : min(k, s.shape[1])]


def average_precisions(topk_idx, target_sets, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per-query AP@K from ranked lists ``topk_idx`` [Q, >=max(ks)] (CIRCO's definition)."""
    topk_idx = np.asarray(topk_idx)
    if len(target_sets) != topk_idx.shape[0]:
        raise ValueError(f"{len(target_sets)} target sets for {topk_idx.shape[0]} queries")
    out = {int(k): np.zeros(len(target_sets)) for k in ks}
    for qi, gt in enumerate(target_sets):
        gt = set(int(x) for x in gt)
        if not gt:
            raise ValueError(f"query {qi} has an empty ground-truth set")
        rel = np.isin(topk_idx[qi], list(gt)).astype(np.float64)
        prec = np.cumsum(rel) * rel / np.arange(1, len(rel) + 1)
        for k in ks:
            out[int(k)][qi] = prec[:k].sum() / min(len(gt), k)
    return out


def map_from_topk(topk_idx, target_sets, ks=(5, 10, 25, 50)) -> dict[int, float]:
    return {k: float(v.mean() * 100.0) for k, v in average_precisions(topk_idx, target_sets, ks).items()}


def map_at_k(scores, target_sets, ks=(5, 10, 25, 50), exclude_idx=None) -> dict[int, float]:
    """mAP@K in percent; ``target_sets`` is a list of lists of gallery indices (CIRCO's multiple ground truths).

    ``exclude_idx`` [Q]: removes that item from its query's ranking (-1: none)."""
    return map_from_topk(stable_topk(scores, max(ks), exclude_idx), target_sets, ks)


def semantic_map_at10(topk_idx, target_sets, aspects: Sequence[Sequence[str]]) -> dict[str, float]:
    """CIRCO's mAP@10 per ``semantic_aspects`` label (a query counts for each of its labels), percent."""
    ap10 = average_precisions(topk_idx, target_sets, (10,))[10]
    groups: dict[str, list[float]] = {}
    for ap, labels in zip(ap10, aspects):
        for label in labels:
            groups.setdefault(label, []).append(ap)
    return {label: float(np.mean(v) * 100.0) for label, v in sorted(groups.items())}
