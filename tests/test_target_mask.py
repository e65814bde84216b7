"""Triplets without a target image never reach an image-target loss: their rows are dropped from the positives and
the negatives, so the loss of a batch with text-only rows equals the loss of the batch without them."""
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from zscir_jax import methods  # noqa: E402
from zscir_jax.methods import losses  # noqa: E402

B, S, L = 8, 16, 8
TEXT_ONLY = np.array([False, True, False, False, True, False, True, False])


def _batch(seed, blank_value):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 60, (B, L)).astype(np.int32)
    ids[:, -1] = 63
    batch = {"reference_pixels": rng.standard_normal((B, S, S, 3)).astype(np.float32),
             "text_ids": ids, "text_mask": np.ones((B, L), np.int32),
             "target_pixels": rng.standard_normal((B, S, S, 3)).astype(np.float32),
             "has_target_image": ~TEXT_ONLY}
    # What a text-only row's pixels hold must not matter: zeros (the pipeline's blank), noise, or a copy of a target.
    batch["target_pixels"][TEXT_ONLY] = blank_value(rng, batch)
    return batch


BLANKS = {
    "zeros": lambda rng, b: 0.0,
    "noise": lambda rng, b: rng.standard_normal((int(TEXT_ONLY.sum()), S, S, 3)) * 3,
    "copy_of_row_0": lambda rng, b: b["target_pixels"][0],
}


@pytest.mark.parametrize("name", ["pvlf", "transagg"])
@pytest.mark.parametrize("blank", sorted(BLANKS))
def test_loss_ignores_text_only_rows(name, blank):
    method = methods.get(name)
    config = common.tiny(name)
    model = nnx.jit(lambda: method.build(config, nnx.Rngs(0)))()
    loss_fn = nnx.jit(lambda model, batch: method.loss(model, batch, config)[0])
    full = _batch(0, BLANKS[blank])
    kept = {k: v[~TEXT_ONLY] for k, v in full.items()}
    with_rows, without_rows = float(loss_fn(model, full)), float(loss_fn(model, kept))
    np.testing.assert_allclose(with_rows, without_rows, rtol=1e-5, atol=1e-6)
    # Unmasked, the blank rows do change the loss: the test can fail.
    unmasked = {k: v for k, v in full.items() if k != "has_target_image"}
    assert abs(float(loss_fn(model, unmasked)) - without_rows) > 1e-4


def test_masked_losses_match_the_subset_and_metrics_count_valid_rows():
    rng = np.random.default_rng(3)
    q, t = rng.standard_normal((B, 16)).astype(np.float32), rng.standard_normal((B, 16)).astype(np.float32)
    valid = ~TEXT_ONLY
    for fn in (lambda q, t, v=None: losses.focal_contrastive(q, t, temperature=0.1, valid=v),
               lambda q, t, v=None: losses.info_nce(q, t, temperature=0.1, symmetric=True, valid=v)):
        masked, metrics = fn(q, t, jax.numpy.asarray(valid))
        subset, sub_metrics = fn(q[valid], t[valid])
        np.testing.assert_allclose(float(masked), float(subset), rtol=1e-6)
        np.testing.assert_allclose(float(metrics["batch_recall@1"]), float(sub_metrics["batch_recall@1"]))
        assert float(metrics["target_fraction"]) == valid.mean()
    none_valid, _ = losses.info_nce(q, t, valid=jax.numpy.zeros(B, bool))
    assert float(none_valid) == 0.0
