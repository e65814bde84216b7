"""ranking.rank's grouped selection (host and device) against a full stable sort, on data full of ties."""
import numpy as np
import pytest

from zscir_jax.evaluation import metrics, ranking

MODES = [("numpy", "host"), ("jax", "host"), ("jax", "device")]


def reference(scores, k, exclude=None, targets=None, subsets=None):
    """Full sort of every row by (-score, gallery index); the excluded item at -inf; NaN last."""
    s = np.array(scores, np.float32)
    q, g = s.shape
    if exclude is not None and (exclude >= 0).any():
        k = min(k, g - 1)
        has = exclude >= 0
        s[np.flatnonzero(has), exclude[has]] = -np.inf
    k = min(k, g)
    idx = np.stack([np.lexsort((np.arange(g), np.where(np.isnan(row), 0, -row), np.isnan(row)))[:k] for row in s])
    out = {"idx": idx.reshape(q, k), "scores": np.take_along_axis(np.asarray(scores, np.float32), idx.reshape(q, k), 1)}
    if targets is not None:
        out["rank"] = metrics.target_ranks(scores, targets, exclude)
    if subsets is not None:
        order = np.full(subsets.shape, -1, np.int64)
        for r in range(q):
            members = sorted({m for m in subsets[r].tolist() if m >= 0 and (exclude is None or m != exclude[r])})
            members.sort(key=lambda m: -scores[r, m])  # stable: ties keep gallery order
            order[r, : len(members)] = members
        out["order"] = order
        if targets is not None:
            out["subset_rank"] = metrics.subset_ranks(scores, targets, subsets, exclude)
    return out


def tiles(backend, qs, g, block):
    """The score tiles as ``rank`` computed them before its fast path (same expressions, same block shapes)."""
    def numpy_tile(qs, g):
        return sum(w * (q @ g.T) for q, w in qs)

    def jax_tile(qs, g):
        return np.asarray(ranking._jax_tile()([q for q, _ in qs], [np.float32(w) for _, w in qs], g))

    fn = numpy_tile if backend == "numpy" else jax_tile
    n = qs[0][0].shape[0]
    return np.concatenate([fn([(q[s:s + block], w) for q, w in qs], g) for s in range(0, n, block)])


def check(r, ref):
    np.testing.assert_array_equal(r.topk_idx, ref["idx"])
    np.testing.assert_array_equal(r.topk_scores.view(np.int32), ref["scores"].view(np.int32))  # bit for bit
    if "rank" in ref:
        np.testing.assert_array_equal(r.target_rank, ref["rank"])
    if "order" in ref:
        np.testing.assert_array_equal(r.subset_order, ref["order"])
    if "subset_rank" in ref:
        np.testing.assert_array_equal(r.subset_target_rank, ref["subset_rank"])


def tied_problem(rng, q, g, d=3, lo=-2, hi=3):
    """Integer embeddings: exact scores in a handful of values, so nearly every boundary is a tie."""
    qe = rng.integers(lo, hi, (q, d)).astype(np.float32)
    ge = rng.integers(lo, hi, (g, d)).astype(np.float32)
    exclude = rng.integers(0, g, q)
    exclude[::3] = -1
    targets = rng.integers(0, g, q)
    targets[1::4] = np.where(exclude[1::4] >= 0, exclude[1::4], targets[1::4])  # some targets excluded
    subsets = rng.integers(0, g, (q, 6))
    subsets[:, 0] = np.where(exclude >= 0, exclude, subsets[:, 0])
    subsets[:, 1] = targets
    subsets[::2, 5] = -1  # padding
    subsets[1::5, 4] = subsets[1::5, 2]  # repeats
    return qe, ge, exclude, targets, subsets


@pytest.mark.parametrize("backend,select", MODES)
@pytest.mark.parametrize("g,k", [(1, 5), (2, 1), (3, 50), (41, 10), (400, 7), (5000, 64)])
def test_ties_exclusions_targets_subsets(backend, select, g, k):
    rng = np.random.default_rng(g * 100 + k)
    q = 21
    qe, ge, exclude, targets, subsets = tied_problem(rng, q, g)
    je = rng.integers(-2, 3, qe.shape).astype(np.float32)
    qs = [(qe, 1.0), (je, 0.5)]
    r = ranking.rank(qs, ge, k=k, exclude_idx=exclude, target_idx=targets, subset_idx=subsets, block=7,
                     backend=backend, select=select)
    check(r, reference(tiles(backend, qs, ge, 7), k, exclude, targets, subsets))
    r = ranking.rank(qe, ge, k=k, target_idx=targets, block=7, backend=backend, select=select)  # no exclusion
    check(r, reference(tiles(backend, [(qe, 1.0)], ge, 7), k, None, targets))


@pytest.mark.parametrize("backend,select", MODES)
def test_float_scores_and_few_ties(backend, select):
    rng = np.random.default_rng(0)
    ge = rng.standard_normal((4099, 16)).astype(np.float32)
    ge /= np.linalg.norm(ge, axis=1, keepdims=True)
    ge[100:140] = ge[7]  # a block of exact duplicates: equal scores inside the top
    qe = ge[rng.integers(0, 4099, 30)] + 0.01 * rng.standard_normal((30, 16)).astype(np.float32)
    qe[:5] = ge[7]
    exclude = rng.integers(-1, 4099, 30)
    exclude[:5] = [7, 100, 139, -1, 120]
    targets = rng.integers(0, 4099, 30)
    r = ranking.rank(qe, ge, k=50, exclude_idx=exclude, target_idx=targets, block=8, backend=backend,
                     select=select)
    check(r, reference(tiles(backend, [(qe, 1.0)], ge, 8), 50, exclude, targets))


@pytest.mark.parametrize("backend,select", MODES)
def test_margin_zero_forces_host_fallback(backend, select):
    rng = np.random.default_rng(5)
    qe, ge, exclude, targets, subsets = tied_problem(rng, 17, 2000, d=2, lo=-1, hi=2)
    r = ranking.rank(qe, ge, k=20, exclude_idx=exclude, target_idx=targets, subset_idx=subsets, block=6,
                     backend=backend, select=select, margin=0)
    check(r, reference(tiles(backend, [(qe, 1.0)], ge, 6), 20, exclude, targets, subsets))


@pytest.mark.parametrize("backend,select", MODES)
def test_nan_and_denormal_scores(backend, select):
    rng = np.random.default_rng(9)
    qe, ge, exclude, targets, _ = tied_problem(rng, 12, 1500)
    ge[[3, 700, 1499]] = np.nan  # NaN columns rank last
    qe[5] *= np.float32(1e-20)  # scores around 1e-40: denormals, which XLA on CPU compares as zero
    ge[800:900] *= np.float32(1e-20)
    targets[:3] = [3, 850, 10]
    r = ranking.rank(qe, ge, k=30, exclude_idx=exclude, target_idx=targets, block=5, backend=backend, select=select)
    scores = tiles(backend, [(qe, 1.0)], ge, 5)
    ref = reference(scores, 30, exclude, targets)
    np.testing.assert_array_equal(r.topk_idx, ref["idx"])
    np.testing.assert_array_equal(r.target_rank, ref["rank"])


def test_topk_rows_matches_a_full_sort():
    rng = np.random.default_rng(1)
    tile = np.round(rng.standard_normal((9, 3000)), 1).astype(np.float32)  # scores rounded to 1 decimal
    for k in (1, 5, 50, 3000):
        idx, sc = ranking.topk_rows(tile, k)
        np.testing.assert_array_equal(idx, reference(tile, k)["idx"])
        np.testing.assert_array_equal(sc, np.take_along_axis(tile, idx, 1))


def test_bad_arguments():
    qe, ge = np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="select"):
        ranking.rank(qe, ge, select="gpu")
    with pytest.raises(ValueError, match="backend='jax'"):
        ranking.rank(qe, ge, select="device")
    with pytest.raises(IndexError, match="subset_idx"):
        ranking.rank(qe, ge, subset_idx=[[0, 4], [1, 2]])
    with pytest.raises(IndexError, match="target_idx"):
        ranking.rank(qe, ge, target_idx=[0, 4])
