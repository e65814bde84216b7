"""Caption neighbours (data.neighbours) and the batches they compose (pipeline.pair_loader(neighbours=...))."""
import numpy as np
import pytest

from zscir_jax.data import neighbours, pipeline, scenes
from zscir_jax.data import tokenizer as tok_lib

CAPTIONS = [
    "a small red circle at the top right and a large cyan square in the centre",  # 0
    "a large red square at the top right and a small cyan circle in the centre",  # 1: same words, other pairs
    "a small red circle at the top right and a large blue square in the centre",  # 2: 0 with one edit
    "a cyan cross at the bottom left",  # 3
    "a cyan cross at the bottom right",  # 4: 3 with one edit
]


def test_nearest_caption_is_the_one_edit_copy_not_the_same_words_reordered():
    nb = neighbours.caption_neighbours(CAPTIONS, 2)
    assert nb.shape == (5, 2) and nb.dtype == np.int64
    assert nb[0, 0] == 2 and nb[2, 0] == 0  # word pairs tell 0 from 1, which has exactly 0's words
    assert nb[3, 0] == 4 and nb[4, 0] == 3
    assert all(i not in row for i, row in enumerate(nb))  # never itself
    np.testing.assert_array_equal(nb, neighbours.caption_neighbours(CAPTIONS, 2, chunk=2))  # chunking is invisible


def test_rows_are_unit_tfidf_and_bad_k_is_refused():
    m = neighbours.tfidf_rows(CAPTIONS)
    np.testing.assert_allclose(np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel()), 1.0, rtol=1e-6)
    for k in (0, 5):
        with pytest.raises(ValueError, match="k="):
            neighbours.caption_neighbours(CAPTIONS, k)


def test_pair_batches_hold_each_anchor_with_its_neighbour(tmp_path):
    root = scenes.build(str(tmp_path / "scenes"), num_train=24, num_val_queries=2, num_test_queries=2,
                        image_size=16, seed=0)
    pairs = scenes.train_pairs(root)
    tok = tok_lib.Tokenizer.from_dir(tok_lib.build_word_tokenizer([c for _, c in pairs], str(tmp_path / "tok"),
                                                                  max_length=24), 24)
    nb = neighbours.caption_neighbours([c for _, c in pairs], 1)
    it = pipeline.pair_loader(pairs, global_batch_size=6, image_size=8, tokenizer=tok, seed=3, process_index=0,
                              process_count=1, num_epochs=1, neighbours=nb)
    rows = [tuple(r) for b in it for r in b["text_ids"]]
    assert len(rows) == 2 * len(pairs)  # an epoch: every pair once as an anchor, plus its neighbour
    ids = {tuple(tok([c])[0][0]): i for i, (_, c) in enumerate(pairs)}  # captions are distinct in this build
    order = [ids[r] for r in rows]
    assert sorted(order[0::2]) == list(range(len(pairs)))  # each pair is an anchor exactly once, shuffled
    assert order[0::2] != list(range(len(pairs)))
    assert all(order[2 * g + 1] == nb[order[2 * g], 0] for g in range(len(pairs)))  # followed by its neighbour
