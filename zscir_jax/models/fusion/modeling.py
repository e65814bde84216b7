"""Token-level vision-language fusion: PVLF (prompting fusion) and TransAgg (its baseline).

Both read the tokens of a CLIP-like pair of towers, already projected into the joint space of width ``dim``:

    [text tokens (L) ; p context tokens ; image tokens (CLS + m patches)]  ->  J pre-norm transformer layers

then take the fused image feature at the image CLS slot and the fused text feature at the text EOT slot, and
aggregate them adaptively (PVLF eq. 13): an MLP on concat(img, txt) gives ``f_u``, a linear head gives three weights
over (img, f_u, txt), and the weighted sum, L2-normalised, is the query.

TransAgg is the same network with one learnable separator token in place of the prompts (``num_prompts=1``,
``prompt_mode="shallow"``) and raw (un-softmaxed) weights; PVLF-Deep feeds fresh prompts into the prompt slots at
every layer (eq. 12), PVLF-Shallow only at the first (eqs. 8-9).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import layers
from zscir_jax.numerics import l2_normalize

PROMPT_MODES = ("shallow", "deep")
WEIGHTINGS = ("softmax", "linear")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    dim: int  # width of the joint (projected) token space
    depth: int = 2  # J, fusion transformer layers
    heads: int = 8
    mlp_ratio: int = 4  # feed-forward width = mlp_ratio * dim (torch's default 2048 for d=512 is 4x)
    num_prompts: int = 25  # p
    prompt_mode: str = "deep"
    weighting: str = "softmax"  # PVLF: softmax over the 3 weights; TransAgg: the raw linear outputs
    dropout: float = 0.5
    combiner_ratio: int = 4  # the f_u MLP's hidden width is combiner_ratio * 2 * dim (TransAgg)
    prompt_init_std: float = 0.02

    def __post_init__(self):
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.dim % self.heads:
            raise ValueError(f"fusion width {self.dim} is not divisible by {self.heads} heads")
        if self.num_prompts < 1:
            raise ValueError("num_prompts must be >= 1 (TransAgg's separator is one token)")


def _dense(din, dout, axes, *, rngs, dtype, param_dtype):
    return nnx.Linear(
        din, dout, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
    )


def _norm(dim, *, rngs, dtype, param_dtype):
    return nnx.LayerNorm(
        dim, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
    )


class Attention(nnx.Module):
    def __init__(self, dim, heads, dropout, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.heads = heads
        self.q = _dense(dim, dim, ("embed", "heads"), **kw)
        self.k = _dense(dim, dim, ("embed", "heads"), **kw)
        self.v = _dense(dim, dim, ("embed", "heads"), **kw)
        self.out = _dense(dim, dim, ("heads", "embed"), **kw)
        self.attn_drop = nnx.Dropout(dropout)

    def __call__(self, x, key_mask, *, deterministic, rngs):
        drop = lambda w: self.attn_drop(w, deterministic=deterministic, rngs=rngs)
        return self.out(layers.attend(self.q(x), self.k(x), self.v(x), key_mask[:, None, None, :], self.heads,
                                      on_weights=drop))


class FusionLayer(nnx.Module):
    """torch ``TransformerEncoderLayer(norm_first=True, activation="gelu")``: x + drop(attn(ln(x))), then MLP."""

    def __init__(self, cfg: FusionConfig, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = _norm(cfg.dim, **kw)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout, **kw)
        self.norm2 = _norm(cfg.dim, **kw)
        self.fc1 = _dense(cfg.dim, cfg.mlp_ratio * cfg.dim, ("embed", "mlp"), **kw)
        self.fc2 = _dense(cfg.mlp_ratio * cfg.dim, cfg.dim, ("mlp", "embed"), **kw)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x, key_mask, *, deterministic, rngs):
        d = lambda y: self.drop(y, deterministic=deterministic, rngs=rngs)
        x = x + d(self.attn(self.norm1(x), key_mask, deterministic=deterministic, rngs=rngs))
        h = d(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
        x = x + d(self.fc2(h))
        return sharding.constrain(x, ("batch", "length", "embed"))


class Fusion(nnx.Module):
    """Prompted fusion transformer + adaptive aggregation; returns the L2-normalised query [B, dim]."""

    def __init__(self, cfg: FusionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.config = cfg
        n_sets = cfg.depth if cfg.prompt_mode == "deep" else 1
        init = nnx.with_partitioning(nnx.initializers.normal(cfg.prompt_init_std), (None, None, "embed"))
        self.prompts = nnx.Param(init(rngs.params(), (n_sets, cfg.num_prompts, cfg.dim), param_dtype))
        self.layers = nnx.List([FusionLayer(cfg, **kw) for _ in range(cfg.depth)])
        hidden = cfg.combiner_ratio * 2 * cfg.dim
        self.combiner = _dense(2 * cfg.dim, hidden, ("embed", "mlp"), **kw)
        self.combiner_out = _dense(hidden, cfg.dim, ("mlp", "embed"), **kw)
        self.weights = _dense(cfg.dim, 3, ("embed", None), **kw)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, text_tokens, text_mask, text_pos, image_tokens, *, deterministic: bool = True, rngs=None):
        """text_tokens [B,L,D], text_mask [B,L] (1 = real token), text_pos [B] (EOT index), image_tokens [B,1+m,D]."""
        cfg = self.config
        b, l, _ = text_tokens.shape
        m1 = image_tokens.shape[1]
        p = cfg.num_prompts
        prompts = self.prompts[...].astype(text_tokens.dtype)
        x = jnp.concatenate([text_tokens, jnp.broadcast_to(prompts[0], (b, p, cfg.dim)), image_tokens], axis=1)
        key_mask = jnp.concatenate([text_mask > 0, jnp.ones((b, p + m1), bool)], axis=1)
        for i, layer in enumerate(self.layers):
            if i > 0 and cfg.prompt_mode == "deep":  # eq. 12: the previous layer's prompt outputs are discarded
                x = x.at[:, l:l + p].set(jnp.broadcast_to(prompts[i], (b, p, cfg.dim)))
            x = layer(x, key_mask, deterministic=deterministic, rngs=rngs)
        img = x[:, l + p]
        txt = x[jnp.arange(b), text_pos]
        h = self.drop(jax.nn.relu(self.combiner(jnp.concatenate([img, txt], axis=-1))),
                      deterministic=deterministic, rngs=rngs)
        f_u = self.combiner_out(h)
        w = self.weights(f_u).astype(jnp.float32)
        if cfg.weighting == "softmax":
            w = jax.nn.softmax(w, axis=-1)
        query = w[:, 0:1] * img + w[:, 1:2] * f_u + w[:, 2:3] * txt
        return l2_normalize(query)

