"""Building helpers shared by the tower families (CLIP, BLIP, BLIP-2, SigLIP).

Every parameter gets its logical sharding axes here (``nnx.with_partitioning``), so the towers only say which axes a
layer has. The position-table resizer reproduces torch's bicubic interpolation, as transformers'
``interpolate_pos_encoding`` does.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# --------------------------------------------------------------------------------------------------------------------
# Configs


def known_fields(cls, d: dict) -> dict:
    """The entries of an HF config dict that are fields of the dataclass ``cls``, ``None`` values dropped (so the
    dataclass default applies)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names and v is not None}


def square_side(value, key: str):
    """transformers allows ``image_size`` / ``patch_size`` (``key``) as a pair; the towers here are square: the side
    of a square pair (a non-square one is refused), a single value as it is."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"non-square {key} {value} is not supported")
        return int(value[0])
    return value


# --------------------------------------------------------------------------------------------------------------------
# Layers


def activation(name: str):
    """The activation function for an HF ``hidden_act`` name."""
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return functools.partial(jax.nn.gelu, approximate=True)
    raise ValueError(f"unsupported activation {name!r} (expected quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)")


def dense(din, dout, axes, *, use_bias=True, dtype, param_dtype, rngs):
    """A Linear whose kernel is sharded over ``axes`` (in, out) and its bias over the output axis."""
    return nnx.Linear(
        din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
    )


def layer_norm(dim, eps, *, dtype, param_dtype, rngs):
    return nnx.LayerNorm(
        dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
    )


def embed(num, dim, axes, *, dtype, param_dtype, rngs):
    return nnx.Embed(
        num, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), axes),
    )


def param(init, shape, axes, *, param_dtype, rngs) -> nnx.Param:
    """A plain parameter of ``shape`` drawn from ``init``, sharded over ``axes``."""
    return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, param_dtype))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, heads: int,
           on_weights=None) -> jax.Array:
    """Scaled dot-product attention over [b, l, heads * head_dim] projections (k and v may be longer than q);
    ``mask`` bool [b, 1 | heads, q | 1, k], True = may attend, or None. Softmax in float32; ``on_weights`` (e.g.
    the fusion's attention dropout) is applied to the float32 weights. The one attention of every tower family and
    the fusion. (A heads-major [b, heads, l, head_dim] layout is about 1.4x faster alone on the CPU, but made no
    measurable difference inside the whole train step, so the einsums stay as they are.)"""
    b, lq, width = q.shape
    head_dim = width // heads
    split = lambda t: t.reshape(b, t.shape[1], heads, head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", split(q) * (head_dim ** -0.5), split(k)).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if on_weights is not None:
        weights = on_weights(weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), split(v)).reshape(b, lq, width)


# --------------------------------------------------------------------------------------------------------------------
# Position-table resizing for images of another size (torch's bicubic, align_corners=False, a=-0.75)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    def k(x):
        x = np.abs(x)
        return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
    return np.stack([k(t + 1), k(t), k(1 - t), k(2 - t)], axis=-1)


@functools.lru_cache(maxsize=32)
def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix that reproduces torch.nn.functional.interpolate(mode="bicubic") along one axis."""
    out = np.arange(n_out)
    src = (out + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src).astype(np.int64)
    weights = _cubic_weights(src - base)
    m = np.zeros((n_out, n_in), np.float64)
    for tap in range(4):
        idx = np.clip(base - 1 + tap, 0, n_in - 1)  # torch clamps out-of-range taps to the border
        np.add.at(m, (out, idx), weights[:, tap])
    return m.astype(np.float32)


def resize_position_table(table: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
    """Resize a [1 + g*g, D] ViT position table (CLS first) to a grid_h x grid_w patch grid."""
    g = int(round((table.shape[0] - 1) ** 0.5))
    if (g, g) == (grid_h, grid_w):
        return table
    patches = table[1:].reshape(g, g, -1)
    patches = jnp.einsum("Hh,hwd->Hwd", _bicubic_matrix(g, grid_h), patches)
    patches = jnp.einsum("Ww,Hwd->HWd", _bicubic_matrix(g, grid_w), patches)
    return jnp.concatenate([table[:1], patches.reshape(grid_h * grid_w, -1)], axis=0)
