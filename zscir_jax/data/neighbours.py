"""Nearest captions over a whole pair set, mined once before training: which pairs a batch should hold together.

CoLLM builds its triplets inside a batch (each image's target is the batch image whose caption is closest), which
only gives edit-like (reference, target) pairs when related images share a batch. At web scale with batches of
thousands that happens by itself; with small batches over a uniformly shuffled set it almost never does (the demo:
64 images out of ~1300 scene groups). ``data.pair_neighbours = k`` therefore composes each batch of shuffled
anchors each followed by its ``k`` nearest pairs (``pipeline.pair_loader(neighbours=...)``); the in-batch pairing
still makes the final choice.

Our choice, not the paper's (it says nothing about batch composition): captions are compared as TF-IDF
bag-of-words vectors (lower-cased words and adjacent word pairs, cosine), which needs no model and is
deterministic. The cost is O(N²) products of sparse rows in blocks of at most 2^26 similarities (256 MiB): 0.4 s for
the demo's 3000 pairs and 18 s for 2·10⁴ on 2 busy CPU cores, growing with N²; for hundreds of thousands of pairs
or more, mine offline and give the pairs in neighbour order instead. The ``collm`` synthesis recipe pairs captions by plain word-set Jaccard
(``synthesis.recipes.nearest_caption_pairs``) and keeps it: its outputs are cached under that choice. Here word
pairs matter: on the demo's scenes the nearest caption is the same scene group's one-edit copy for 78% of the train
pairs with them, 64% without.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def tfidf_rows(captions: Sequence[str]):
    """[N, V] L2-normalised TF-IDF rows (scipy CSR) of the captions' lower-cased words and adjacent word pairs
    (the pairs keep "red circle, cyan square" apart from "cyan circle, red square")."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for i, text in enumerate(captions):
        counts: dict[int, int] = {}
        words = _WORD.findall(str(text).lower())
        for w in words + [a + " " + b for a, b in zip(words, words[1:])]:
            j = vocab.setdefault(w, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        rows += [i] * len(counts)
        cols += list(counts)
        vals += list(counts.values())
    n = len(captions)
    m = sparse.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n, max(len(vocab), 1)))
    df = np.bincount(np.asarray(cols, np.int64), minlength=m.shape[1])
    m = m @ sparse.diags(np.log((1.0 + n) / (1.0 + df)).astype(np.float32) + 1.0)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def caption_neighbours(captions: Sequence[str], k: int, chunk: int | None = None) -> np.ndarray:
    """[N, k] int64: for each caption the indices of the ``k`` most similar OTHER captions, most similar first
    (equal similarities in index order): a function of the captions alone."""
    n = len(captions)
    if k < 1 or k >= n:
        raise ValueError(f"k={k}: needs 1 <= k < the number of pairs ({n})")
    chunk = chunk or max(1, min(4096, (1 << 26) // n))  # rows per block: the dense block stays under 256 MiB
    m = tfidf_rows(captions)
    mt = m.T.tocsc()
    out = np.empty((n, k), np.int64)
    for start in range(0, n, chunk):
        sim = np.asarray((m[start:start + chunk] @ mt).todense(), np.float32)
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # not itself
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        order = np.lexsort((top, -top_sim), axis=1)  # by similarity, then by index
        out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
    return out
