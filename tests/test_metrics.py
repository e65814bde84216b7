"""Metrics: hand-worked cases with known answers and a plain-loop reference compared on random scores with ties."""
import numpy as np
import pytest

from zscir_jax.evaluation import metrics, ranking


# --- brute-force references: sort with Python's stable sort, walk the list --------------------------------------


def ranked(row, exclude=None):
    order = sorted(range(len(row)), key=lambda j: -row[j])  # stable: ties keep gallery order
    return [j for j in order if j != exclude]


def bf_recall(scores, targets, ks, exclude=None):
    out = {}
    for k in ks:
        hits = 0
        for q, row in enumerate(scores):
            lst = ranked(list(row), None if exclude is None else exclude[q])
            hits += targets[q] in lst[:k]
        out[k] = 100.0 * hits / len(scores)
    return out


def bf_recall_subset(scores, targets, subsets, exclude, ks):
    out = {}
    for k in ks:
        hits = 0
        for q, row in enumerate(scores):
            members = set(subsets[q]) - {exclude[q]}
            lst = [j for j in ranked(list(row)) if j in members]
            hits += targets[q] in lst[:k]
        out[k] = 100.0 * hits / len(scores)
    return out


def bf_map(scores, target_sets, ks):
    out = {}
    for k in ks:
        aps = []
        for q, row in enumerate(scores):
            lst = ranked(list(row))[:k]
            gt = set(target_sets[q])
            total, hits = 0.0, 0
            for i, j in enumerate(lst, start=1):
                if j in gt:
                    hits += 1
                    total += hits / i
            aps.append(total / min(k, len(gt)))
        out[k] = 100.0 * sum(aps) / len(aps)
    return out


# --- hand-worked -------------------------------------------------------------------------------------------------


def test_recall_hand_worked():
    scores = np.array([[0.9, 0.8, 0.1, 0.5],  # order 0,1,3,2: target 1 at rank 2
                       [0.2, 0.2, 0.2, 0.2]])  # all tied: order 0,1,2,3: target 3 at rank 4
    r = metrics.recall_at_k(scores, [1, 3], ks=(1, 2, 4))
    assert r == {1: 0.0, 2: 50.0, 4: 100.0}
    # Excluding item 0 from query 0 moves its target to rank 1; excluding item 0 from query 1 moves 3 to rank 3.
    r = metrics.recall_at_k(scores, [1, 3], ks=(1, 3), exclude_idx=[0, 0])
    assert r == {1: 50.0, 3: 100.0}
    # A target that is the excluded item can never be retrieved.
    assert metrics.recall_at_k(scores, [0, 3], ks=(4,), exclude_idx=[0, 1]) == {4: 50.0}


def test_recall_accepts_jax_arrays():
    import jax.numpy as jnp

    scores = jnp.array([[0.1, 0.3, 0.2]])
    assert metrics.recall_at_k(scores, jnp.array([2]), ks=(1, 2)) == {1: 0.0, 2: 100.0}


def test_recall_subset_hand_worked_and_random_baseline():
    scores = np.array([[0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    subset = [[0, 2, 3, 4, 5, 6]]  # minus the reference 0 the subset ranks 2, 3, 4, 5, 6: target 3 is second
    assert metrics.recall_subset_at_k(scores, [3], subset, [0], ks=(1, 2, 3)) == {1: 0.0, 2: 100.0, 3: 100.0}
    # Random scores: a subset of 6 minus the reference leaves 5, so Recall_subset@1 tends to 20%.
    rng = np.random.default_rng(0)
    q, g = 4000, 30
    s = rng.random((q, g))
    subs = np.stack([rng.choice(g, 6, replace=False) for _ in range(q)])
    ref, tgt = subs[:, 0], subs[:, 1]
    r1 = metrics.recall_subset_at_k(s, tgt, subs, ref, ks=(1,))[1]
    assert abs(r1 - 20.0) < 2.0


def test_map_hand_worked():
    # Ranking 0..5 in order; ground truth {0, 2, 9}: hits at 1 and 3.
    scores = np.array([[6, 5, 4, 3, 2, 1, 0, -1, -2, -3]], np.float32)
    m = metrics.map_at_k(scores, [[0, 2, 9]], ks=(1, 2, 3, 5))
    # AP@1 = 1/1; AP@2 = 1/2; AP@3 = (1 + 2/3)/3; AP@5 = (1 + 2/3)/3
    assert m[1] == pytest.approx(100.0)
    assert m[2] == pytest.approx(50.0)
    assert m[3] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert m[5] == pytest.approx(100 * (1 + 2 / 3) / 3)
    # A single ground truth at rank 2: AP@K = 1/2 for every K >= 2.
    assert metrics.map_at_k(scores, [[1]], ks=(1, 5))[5] == pytest.approx(50.0)


def test_semantic_map():
    topk = np.array([[0, 1, 2], [5, 4, 3]])
    out = metrics.semantic_map_at10(topk, [[0], [3]], [["a", "b"], ["b"]])
    # AP@10: query 0 -> 1.0, query 1 -> 1/3.
    assert out["a"] == pytest.approx(100.0)
    assert out["b"] == pytest.approx(100 * (1 + 1 / 3) / 2)


# --- brute force on random scores with many ties --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    q, g = 23, 37
    scores = rng.integers(0, 5, (q, g)).astype(np.float32)  # 5 values: ties everywhere
    targets = rng.integers(0, g, q)
    exclude = rng.integers(0, g, q)
    subsets = np.stack([rng.choice(g, 6, replace=False) for _ in range(q)])
    subsets[:, 0] = exclude  # the reference is a member, as in CIRR
    subsets[:, 1] = np.where(targets == exclude, subsets[:, 1], targets)
    target_sets = [list(rng.choice(g, rng.integers(1, 8), replace=False)) for _ in range(q)]

    ks = (1, 2, 5, 10, 37)
    assert metrics.recall_at_k(scores, targets, ks) == pytest.approx(bf_recall(scores, targets, ks))
    assert metrics.recall_at_k(scores, targets, ks, exclude_idx=exclude) == pytest.approx(
        bf_recall(scores, targets, ks, exclude))
    assert metrics.recall_subset_at_k(scores, targets, subsets, exclude, ks=(1, 2, 3)) == pytest.approx(
        bf_recall_subset(scores, targets, subsets, exclude, (1, 2, 3)))
    assert metrics.map_at_k(scores, target_sets, ks=(1, 5, 10, 25)) == pytest.approx(
        bf_map(scores, target_sets, (1, 5, 10, 25)))


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_blockwise_ranking_matches_full_metrics(backend):
    rng = np.random.default_rng(3)
    q, g, d = 29, 41, 4
    # Integer-valued embeddings give exactly representable scores, so ties are real ties on every backend.
    qe = rng.integers(-2, 3, (q, d)).astype(np.float32)
    ge = rng.integers(-2, 3, (g, d)).astype(np.float32)
    je = rng.integers(-2, 3, (q, d)).astype(np.float32)
    scores = qe @ ge.T + 0.5 * (je @ ge.T)
    targets = rng.integers(0, g, q)
    exclude = rng.integers(0, g, q)
    subsets = np.stack([rng.choice(g, 6, replace=False) for _ in range(q)])
    subsets[:, 0] = exclude
    r = ranking.rank([(qe, 1.0), (je, 0.5)], ge, k=10, exclude_idx=exclude, target_idx=targets,
                     subset_idx=subsets, block=7, backend=backend)
    np.testing.assert_array_equal(r.topk_idx, metrics.stable_topk(scores, 10, exclude))
    np.testing.assert_array_equal(r.topk_scores, np.take_along_axis(scores, r.topk_idx, 1))
    np.testing.assert_array_equal(r.target_rank, metrics.target_ranks(scores, targets, exclude))
    np.testing.assert_array_equal(r.subset_target_rank, metrics.subset_ranks(scores, targets, subsets, exclude))
    for row in range(q):
        expect = [j for j in ranked(list(scores[row])) if j in set(subsets[row]) - {exclude[row]}]
        assert list(r.subset_order[row][: len(expect)]) == expect
        assert ranked(list(scores[row]), exclude[row])[:10] == list(r.topk_idx[row])


def test_ranking_without_exclusion_and_small_gallery():
    ge = np.eye(3, dtype=np.float32)
    qe = np.array([[0, 1, 0], [1, 1, 1]], np.float32)
    r = ranking.rank(qe, ge, k=50, target_idx=np.array([1, 2]))
    assert r.topk_idx.tolist() == [[1, 0, 2], [0, 1, 2]]
    assert r.target_rank.tolist() == [0, 2]


# --- exclude_idx = -1 means "exclude nothing" everywhere (never numpy's "last item") --------------------------------


def test_minus_one_excludes_nothing_when_the_last_item_is_the_target():
    scores = np.array([[0.1, 0.2, 0.9],  # the last gallery item is the best and the target
                       [0.9, 0.2, 0.1]])
    targets = [2, 0]
    assert metrics.target_ranks(scores, targets, [-1, -1]).tolist() == [0, 0]
    assert metrics.recall_at_k(scores, targets, ks=(1,), exclude_idx=[-1, -1]) == {1: 100.0}
    assert metrics.recall_at_k(scores, targets, ks=(1,), exclude_idx=np.array([-1, -1])) == {1: 100.0}
    # Mixed rows: row 0 excludes nothing, row 1 excludes its target (never retrieved).
    assert metrics.target_ranks(scores, targets, [-1, 0]).tolist() == [0, 3]
    # The last item also keeps its place when it is ranked above another query's target.
    assert metrics.target_ranks(scores, [1, 1], [-1, -1]).tolist() == [1, 1]
    assert metrics.target_ranks(scores, [1, 1], [2, -1]).tolist() == [0, 1]


def test_minus_one_in_topk_and_map():
    scores = np.array([[0.1, 0.2, 0.9], [0.3, 0.2, 0.1]])
    top = metrics.stable_topk(scores, 3, exclude_idx=[-1, -1])
    assert top.tolist() == [[2, 1, 0], [0, 1, 2]]  # nothing excluded: the full ranking, the last item included
    top = metrics.stable_topk(scores, 3, exclude_idx=[-1, 0])  # one row excludes: every list is G - 1 long
    assert top.tolist() == [[2, 1], [1, 2]]
    assert metrics.map_at_k(scores, [[2], [0]], ks=(1,), exclude_idx=[-1, -1]) == {1: pytest.approx(100.0)}
    assert metrics.map_at_k(scores, [[2], [0]], ks=(1,), exclude_idx=[2, -1]) == {1: pytest.approx(50.0)}


def test_minus_one_in_subsets():
    scores = np.array([[0.5, 0.4, 0.3, 0.9]])  # the last gallery item scores highest
    # -1 in exclude_idx: nothing removed from the subset {0, 1, 3}; target 1 comes after 3 and 0.
    assert metrics.subset_ranks(scores, [1], [[0, 1, 3]], [-1]).tolist() == [2]
    # -1 in subset_idx is padding, not the (best-scoring) last gallery item.
    assert metrics.subset_ranks(scores, [1], [[0, 1, -1]], [-1]).tolist() == [1]
    assert metrics.subset_ranks(scores, [1], [[0, 1, -1]], [0]).tolist() == [0]
    r = ranking.rank(np.eye(4, dtype=np.float32)[[3]], np.diag([0.5, 0.4, 0.3, 0.9]).astype(np.float32), k=4,
                     exclude_idx=[-1], target_idx=[1], subset_idx=[[0, 1, -1]])
    assert r.subset_order.tolist() == [[0, 1, -1]] and r.subset_target_rank.tolist() == [1]


def test_exclude_idx_out_of_range_is_an_error():
    scores = np.zeros((2, 3))
    for bad in ([-2, 0], [0, 3]):
        with pytest.raises(ValueError, match="exclude_idx"):
            metrics.recall_at_k(scores, [0, 1], ks=(1,), exclude_idx=bad)
        with pytest.raises(ValueError, match="exclude_idx"):
            metrics.stable_topk(scores, 2, exclude_idx=bad)
        with pytest.raises(ValueError, match="exclude_idx"):
            ranking.rank(np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32), exclude_idx=bad)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_ranking_and_metrics_agree_on_minus_one(backend):
    rng = np.random.default_rng(7)
    q, g, d = 31, 19, 4
    qe = rng.integers(-2, 3, (q, d)).astype(np.float32)
    ge = rng.integers(-2, 3, (g, d)).astype(np.float32)
    scores = qe @ ge.T
    targets = rng.integers(0, g, q)
    targets[:6] = g - 1  # the last gallery item is a frequent target
    exclude = rng.integers(0, g, q)
    exclude[::2] = -1  # every other row excludes nothing
    exclude[1] = targets[1]
    subsets = np.stack([rng.choice(g, 6, replace=False) for _ in range(q)])
    subsets[:, 0] = np.where(exclude >= 0, exclude, subsets[:, 0])
    subsets[:, 1] = np.where(targets == exclude, subsets[:, 1], targets)
    subsets[:, 5] = np.where(np.arange(q) % 3 == 0, -1, subsets[:, 5])  # some padding
    r = ranking.rank(qe, ge, k=10, exclude_idx=exclude, target_idx=targets, subset_idx=subsets, block=5,
                     backend=backend)
    none = [None if e < 0 else int(e) for e in exclude]
    np.testing.assert_array_equal(r.topk_idx, metrics.stable_topk(scores, 10, exclude))
    np.testing.assert_array_equal(r.target_rank, metrics.target_ranks(scores, targets, exclude))
    np.testing.assert_array_equal(r.subset_target_rank, metrics.subset_ranks(scores, targets, subsets, exclude))
    ks = (1, 2, 5, 10, 19)
    assert metrics.recall_at_k(scores, targets, ks, exclude_idx=exclude) == pytest.approx(
        bf_recall(scores, targets, ks, none))
    for row in range(q):
        assert ranked(list(scores[row]), none[row])[:10] == list(r.topk_idx[row])
        members = set(subsets[row].tolist()) - {-1, none[row]}
        expect = [j for j in ranked(list(scores[row])) if j in members]
        assert list(r.subset_order[row][: len(expect)]) == expect
        assert r.subset_target_rank[row] == (expect.index(targets[row]) if targets[row] in expect else 6)
