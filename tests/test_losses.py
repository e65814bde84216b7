"""Focal contrastive loss (PVLF eqs. 14-15) against a hand-worked value; InfoNCE relations."""
import math

import numpy as np

from zscir_jax.methods import losses


def test_focal_loss_hand_worked():
    # Cosine similarities: row 0 -> [1, 0.6] (positive 1), row 1 -> [0, 0.8] (positive 0.8).
    q = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)  # the norm must not matter
    t = np.array([[3.0, 0.0], [0.6, 0.8]], np.float32)
    # With tau = 0.5: p_t(0) = e^2 / (e^2 + e^1.2) = sigmoid(0.8); p_t(1) = e^1.6 / (e^0 + e^1.6) = sigmoid(1.6).
    p0, p1 = 1 / (1 + math.exp(-0.8)), 1 / (1 + math.exp(-1.6))
    assert abs(p0 - 0.68997448) < 1e-7 and abs(p1 - 0.83201839) < 1e-7
    # L = -alpha (1 - p)^gamma log p, alpha = 0.5, gamma = 2, averaged over the 2 queries.
    expected = 0.5 * (0.5 * 0.31002552 ** 2 * 0.37110066 + 0.5 * 0.16798161 ** 2 * 0.18390074)
    assert abs(expected - 0.0102145) < 1e-6  # 0.5 * (0.0178343 + 0.0025947)
    loss, metrics = losses.focal_contrastive(q, t, temperature=0.5, alpha=0.5, gamma=2.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["batch_recall@1"]) == 1.0


def test_focal_with_gamma_zero_is_info_nce_and_focal_is_smaller():
    rng = np.random.default_rng(0)
    q, t = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((6, 8)).astype(np.float32)
    focal0, _ = losses.focal_contrastive(q, t, temperature=0.1, alpha=1.0, gamma=0.0)
    nce, _ = losses.info_nce(q, t, temperature=0.1)
    np.testing.assert_allclose(float(focal0), float(nce), rtol=1e-6)
    focal2, _ = losses.focal_contrastive(q, t, temperature=0.1)
    assert 0 < float(focal2) < float(nce)


def test_symmetric_info_nce_averages_both_directions():
    rng = np.random.default_rng(1)
    q, t = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    fwd, _ = losses.info_nce(q, t, temperature=0.2)
    bwd, _ = losses.info_nce(t, q, temperature=0.2)
    sym, _ = losses.info_nce(q, t, temperature=0.2, symmetric=True)
    np.testing.assert_allclose(float(sym), 0.5 * (float(fwd) + float(bwd)), rtol=1e-6)
