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


@pytest.fixture(scope="module")
def pairs_tok_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    root = scenes.build(str(tmp / "scenes"), num_train=24, num_val_queries=2, num_test_queries=2, image_size=16,
                        seed=0)
    pairs = scenes.train_pairs(root)
    tok = tok_lib.Tokenizer.from_dir(tok_lib.build_word_tokenizer([c for _, c in pairs], str(tmp / "tok"),
                                                                  max_length=24), 24)
    return pairs, tok, root


def _order(pairs, tok, **kw):
    """The pair index of every row the loader yields, batch by batch."""
    ids = {tuple(tok([c])[0][0]): i for i, (_, c) in enumerate(pairs)}  # captions are distinct in this build
    args = dict(global_batch_size=8, image_size=8, tokenizer=tok, seed=3, process_index=0, process_count=1,
                num_epochs=1)
    args.update(kw)
    return [[ids[tuple(r)] for r in b["text_ids"]] for b in pipeline.pair_loader(pairs, **args)]


def test_pair_batches_hold_each_anchor_with_its_neighbour(pairs_tok_root):
    pairs, tok, _ = pairs_tok_root
    nb = neighbours.caption_neighbours([c for _, c in pairs], 1)
    batches = _order(pairs, tok, neighbours=nb)
    order = [i for b in batches for i in b]
    assert len(order) == 2 * len(pairs)  # an epoch: every pair once as an anchor, plus its neighbour
    assert sorted(order[0::2]) == list(range(len(pairs)))  # each pair is an anchor exactly once, shuffled
    assert order[0::2] != list(range(len(pairs)))
    assert all(order[2 * g + 1] == nb[order[2 * g], 0] for g in range(len(pairs)))  # followed by its neighbour
    # Grain workers split the stream element by element: a group is one element, so it stays in one batch.
    workers = _order(pairs, tok, neighbours=nb, worker_count=2)
    assert all(b[r + 1] == nb[b[r], 0] for b in workers for r in range(0, len(b), 2))
    assert sorted(i for b in workers for i in b[0::2]) == list(range(len(pairs)))
    # Two processes assemble the one-process batches, row order included.
    halves = [_order(pairs, tok, neighbours=nb, process_index=p, process_count=2) for p in range(2)]
    assert [a + b for a, b in zip(*halves)] == batches
    with pytest.raises(ValueError, match="not a multiple of the neighbour group size 3"):
        _order(pairs, tok, neighbours=neighbours.caption_neighbours([c for _, c in pairs], 2), global_batch_size=4)


def test_an_epoch_counts_every_neighbour_row(pairs_tok_root):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import collm_demo

    from zscir_jax import methods
    from zscir_jax.train import trainer

    pairs, _, root = pairs_tok_root
    steps = {}
    for k in (0, 1, 3):
        c = collm_demo.base()
        c.data.update(pairs_root=root, pair_neighbours=k)
        c.train.update(epochs=1, batch_size=8)
        trainer.resolve_epochs(c, methods.get("collm"))
        steps[k] = c.train.steps
    assert len(pairs) == 24 and steps == {0: 3, 1: 6, 3: 12}  # 24 * (k + 1) rows at batch 8
