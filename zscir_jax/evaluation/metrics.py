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


def target_ranks(scores, target_idx, exclude_idx=None) -> np.ndarray:
    """0-based rank of each query's target in the stable descending order, after removing ``exclude_idx``.

    rank = #{j : s_j > s_t} + #{j < t : s_j == s_t}, not counting the excluded item. A target that is itself
    excluded gets rank G (never retrieved).
    """
    s = _scores(scores)
    q, g = s.shape
    t = np.asarray(target_idx, dtype=np.int64).reshape(q)
    rows = np.arange(q)
    ts = s[rows, t][:, None]
    before = (s > ts) | ((s == ts) & (np.arange(g)[None, :] < t[:, None]))
    ranks = before.sum(axis=1)
    if exclude_idx is not None:
        e = np.asarray(exclude_idx, dtype=np.int64).reshape(q)
        ranks = ranks - before[rows, e]
        ranks = np.where(e == t, g, ranks)
    return ranks.astype(np.int64)


def recall_from_ranks(ranks, ks: Sequence[int]) -> dict[int, float]:
    ranks = np.asarray(ranks)
    return {int(k): float(np.mean(ranks < k) * 100.0) for k in ks}


def recall_at_k(scores, target_idx, ks=(1, 5, 10, 50), exclude_idx=None) -> dict[int, float]:
    """Recall@K in percent; ``exclude_idx`` [Q] removes that gallery item from its query's ranking (CIRR)."""
    return recall_from_ranks(target_ranks(scores, target_idx, exclude_idx), ks)


def subset_ranks(scores, target_idx, subset_idx, exclude_idx=None) -> np.ndarray:
    """0-based rank of the target within its subset (minus ``exclude_idx``; duplicates counted once)."""
    s = _scores(scores)
    q = s.shape[0]
    sub = np.asarray(subset_idx, dtype=np.int64).reshape(q, -1)
    t = np.asarray(target_idx, dtype=np.int64).reshape(q)
    rows = np.arange(q)
    ss = s[rows[:, None], sub]
    ts = s[rows, t][:, None]
    valid = sub != t[:, None]
    if exclude_idx is not None:
        e = np.asarray(exclude_idx, dtype=np.int64).reshape(q)
        valid &= sub != e[:, None]
    # A repeated member is one image: keep only its first occurrence.
    first = np.ones_like(valid)
    for j in range(1, sub.shape[1]):
        first[:, j] = ~(sub[:, :j] == sub[:, j : j + 1]).any(axis=1)
    before = (ss > ts) | ((ss == ts) & (sub < t[:, None]))
    ranks = (before & valid & first).sum(axis=1)
    if exclude_idx is not None:
        ranks = np.where(e == t, sub.shape[1], ranks)
    in_subset = (sub == t[:, None]).any(axis=1)
    return np.where(in_subset, ranks, sub.shape[1]).astype(np.int64)


def recall_subset_at_k(scores, target_idx, subset_idx, exclude_idx, ks=(1, 2, 3)) -> dict[int, float]:
    """Recall_subset@K in percent: the ranking restricted to ``subset_idx`` [Q, S] minus ``exclude_idx`` [Q]."""
    return recall_from_ranks(subset_ranks(scores, target_idx, subset_idx, exclude_idx), ks)


def stable_topk(scores, k: int, exclude_idx=None) -> np.ndarray:
    """[Q, k] gallery indices of the k best items per query, stable order (ties by gallery index)."""
    s = _scores(scores).copy()
    if exclude_idx is not None:
        s[np.arange(s.shape[0]), np.asarray(exclude_idx, dtype=np.int64)] = -np.inf
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
    """mAP@K in percent; ``target_sets`` is a list of lists of gallery indices (CIRCO's multiple ground truths)."""
    return map_from_topk(stable_topk(scores, max(ks), exclude_idx), target_sets, ks)


def semantic_map_at10(topk_idx, target_sets, aspects: Sequence[Sequence[str]]) -> dict[str, float]:
    """CIRCO's mAP@10 per ``semantic_aspects`` label (a query counts for each of its labels), percent."""
    ap10 = average_precisions(topk_idx, target_sets, (10,))[10]
    groups: dict[str, list[float]] = {}
    for ap, labels in zip(ap10, aspects):
        for label in labels:
            groups.setdefault(label, []).append(ap)
    return {label: float(np.mean(v) * 100.0) for label, v in sorted(groups.items())}
