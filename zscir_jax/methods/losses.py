"""Contrastive objectives over a batch of (query, target) embeddings.

Inside a jitted step the arrays are the GLOBAL batch (GSPMD splits the work), so every query sees every target in
the global batch as a negative, on one device or a pod alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def cosine_logits(query, target, temperature: float):
    """[B, B] cosine similarities / temperature; row i's positive is column i."""
    return _normalize(query) @ _normalize(target).T / temperature


def focal_contrastive(query, target, *, temperature: float = 0.01, alpha: float = 1.0, gamma: float = 2.0):
    """PVLF eqs. 14-15: p_t = softmax_j(cos(q_i, y_j) / tau)[i];  L = mean_i  -alpha (1 - p_t)^gamma log p_t.

    With gamma = 0 and alpha = 1 this is InfoNCE (TransAgg's cross-entropy with logit scale 1/tau).
    Returns (loss, metrics).
    """
    logits = cosine_logits(query, target, temperature)
    log_pt = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    pt = jnp.exp(log_pt)
    loss = jnp.mean(-alpha * (1.0 - pt) ** gamma * log_pt)
    return loss, _retrieval_metrics(logits, log_pt)


def info_nce(query, target, *, temperature: float = 0.01, symmetric: bool = False):
    """Cross-entropy of each query against all targets in the batch (and the reverse when ``symmetric``)."""
    logits = cosine_logits(query, target, temperature)
    log_pt = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
    loss = -jnp.mean(log_pt)
    if symmetric:
        loss = 0.5 * (loss - jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0))))
    return loss, _retrieval_metrics(logits, log_pt)


def clip_contrastive(image, text, logit_scale):
    """CLIP's symmetric loss with a learned (log-space) scale, clamped at 100 as in CLIP."""
    scale = jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), 100.0)
    loss, metrics = info_nce(image, text, temperature=1.0 / scale, symmetric=True)
    return loss, {**metrics, "logit_scale": scale}


def _retrieval_metrics(logits, log_pt):
    correct = jnp.argmax(logits, axis=-1) == jnp.arange(logits.shape[0])
    return {"batch_recall@1": jnp.mean(correct.astype(jnp.float32)), "mean_log_pt": jnp.mean(log_pt)}
