"""Small numerical helpers shared by models, losses and evaluation (numpy in, numpy out; jax in, jax out)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(x, eps: float = 1e-6):
    """``x / max(||x||, eps)`` along the last axis, in float32 (jax arrays and tracers stay jax, the rest numpy)."""
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x).astype(xp.float32)
    return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), eps)
