"""Contrastive objectives over a batch of (query, target) embeddings.

Inside a jitted step the arrays are the GLOBAL batch (GSPMD splits the work), so every query sees every target in
the global batch as a negative, on one device or a pod alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from zscir_jax.numerics import l2_normalize


# Logit of a masked pair: exp() of it underflows to exactly 0, so a masked row/column changes no other row's softmax.
_MASKED = -1e9


def cosine_logits(query, target, temperature: float, valid=None):
    """[B, B] cosine similarities / temperature; row i's positive is column i.

    ``valid`` (bool [B], optional) marks the rows that have a target: the other columns are masked out, so a row
    without a target is neither anyone's negative nor (see ``_masked_mean``) anyone's query.
    """
    logits = l2_normalize(query) @ l2_normalize(target).T / temperature
    if valid is not None:
        logits = jnp.where(valid[None, :], logits, _MASKED)
    return logits


def _masked_mean(x, valid):
    if valid is None:
        return jnp.mean(x)
    w = valid.astype(x.dtype)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def focal_contrastive(query, target, *, temperature: float = 0.01, alpha: float = 1.0, gamma: float = 2.0,
                      valid=None):
    """PVLF eqs. 14-15: p_t = softmax_j(cos(q_i, y_j) / tau)[i];  L = mean_i  -alpha (1 - p_t)^gamma log p_t.

    With gamma = 0 and alpha = 1 this is InfoNCE (TransAgg's cross-entropy with logit scale 1/tau). Rows where
    ``valid`` is False are dropped from the positives and the negatives: the loss equals that of the batch without
    them. Returns (loss, metrics).
    """
    logits = cosine_logits(query, target, temperature, valid)
    log_pt = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    pt = jnp.exp(log_pt)
    loss = _masked_mean(-alpha * (1.0 - pt) ** gamma * log_pt, valid)
    return loss, _retrieval_metrics(logits, log_pt, valid)


def info_nce(query, target, *, temperature: float = 0.01, symmetric: bool = False, valid=None):
    """Cross-entropy of each query against all targets in the batch (and the reverse when ``symmetric``); rows
    where ``valid`` is False take no part, as in ``focal_contrastive``."""
    logits = cosine_logits(query, target, temperature, valid)
    log_pt = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    loss = -_masked_mean(log_pt, valid)
    if symmetric:
        if valid is not None:
            logits = jnp.where(valid[:, None], logits, _MASKED)
        loss = 0.5 * (loss - _masked_mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)), valid))
    return loss, _retrieval_metrics(logits, log_pt, valid)


def clip_contrastive(image, text, logit_scale):
    """CLIP's symmetric loss with a learned (log-space) scale, clamped at 100 as in CLIP."""
    scale = jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), 100.0)
    loss, metrics = info_nce(image, text, temperature=1.0 / scale, symmetric=True)
    return loss, {**metrics, "logit_scale": scale}


def _retrieval_metrics(logits, log_pt, valid=None):
    correct = jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[0])
    metrics = {"batch_recall@1": _masked_mean(correct.astype(jnp.float32), valid),
               "mean_log_pt": _masked_mean(log_pt, valid)}
    if valid is not None:
        metrics["target_fraction"] = jnp.mean(valid.astype(jnp.float32))
    return metrics
