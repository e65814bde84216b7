"""Decoder-only language model of the Llama / Qwen2 family in Flax NNX, weight-compatible with HF transformers.

Covers Llama 2/3, Vicuna, Mistral-style (without sliding windows) and Qwen2/2.5 checkpoints: RMSNorm, rotary position
embeddings (default, "linear", "dynamic", "llama3"), grouped-query attention, SwiGLU MLP, optional q/k/v (and o) bias,
tied or untied output embeddings.

One forward path serves everything: a full pass (``hidden_states`` / ``__call__``), and a pass over a preallocated
key/value cache (``forward(..., cache=..., cache_index=...)``) used by :func:`generate` for prefill and decode. The
attention mask is always "key slot ``s`` is visible from query slot ``q`` iff ``s <= q`` and slot ``s`` holds a real
token", so left or right padding and the cache need no special cases.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models.llm import params as llama_weights
from zscir_jax.weights import loader

_SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position: int = 8192  # llama3 only
    qkv_bias: bool = False  # Qwen2: True
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    has_lm_head: bool = True  # False for a bare LlamaModel / Qwen2Model checkpoint (hidden states only)
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    model_type: str = "llama"

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope type {self.rope_type!r} is not supported (supported: {_ROPE_TYPES})")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "LLMConfig":
        """From a transformers ``config.json`` of a Llama / Mistral / Qwen2 model (v4 or v5 layout)."""
        model_type = d.get("model_type", "llama")
        if model_type not in _SUPPORTED_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported by llm.LLM (supported: {_SUPPORTED_TYPES})")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {d.get('hidden_act')!r} is not supported (only 'silu')")
        if d.get("use_sliding_window"):
            raise ValueError("sliding-window attention (use_sliding_window=true) is not supported")
        # v5 keeps rope settings in `rope_parameters`; v4 had `rope_theta` at top level and `rope_scaling`.
        rope = dict(d.get("rope_parameters") or {})
        rope.update({k: v for k, v in (d.get("rope_scaling") or {}).items() if v is not None})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        eos = d.get("eos_token_id", 2)
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        qwen = model_type == "qwen2"
        attention_bias = bool(d.get("attention_bias", False))
        # Missing keys take transformers' Llama defaults (old LLaVA configs list only what differs from them).
        heads = d.get("num_attention_heads", cls.num_heads)
        hidden = d.get("hidden_size", cls.hidden_size)
        return cls(
            vocab_size=d.get("vocab_size", cls.vocab_size),
            hidden_size=hidden,
            intermediate_size=d.get("intermediate_size", cls.intermediate_size),
            num_layers=d.get("num_hidden_layers", cls.num_layers),
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position=int(
                rope.get("original_max_position_embeddings", d.get("max_position_embeddings", 8192))
            ),
            qkv_bias=True if qwen else attention_bias,
            o_bias=False if qwen else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_ids=eos,
            pad_token_id=d.get("pad_token_id"),
            model_type=model_type,
        )

    @classmethod
    def tiny(cls, **overrides) -> "LLMConfig":
        """A few-kilobyte model for tests and demos."""
        base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    max_position_embeddings=256, eos_token_ids=(2,), pad_token_id=0)
        base.update(overrides)
        return cls(**base)


# ----------------------------------------------------------------------------------------------------------------------
# Rotary position embeddings


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    # float32 like transformers, so the angles match bit for bit as far as possible.
    return (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))).astype(np.float32)


def _llama3_inv_freq(cfg: LLMConfig) -> np.ndarray:
    """Llama 3.1 rule: long wavelengths divided by ``factor``, short ones kept, a smooth blend in between."""
    inv = _base_inv_freq(cfg.rope_theta, cfg.head_dim)
    factor, lo, hi, old = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_position
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return np.where(medium, blended, scaled).astype(np.float32)


def rope_inv_freq(cfg: LLMConfig, positions: jax.Array) -> jax.Array:
    """Inverse frequencies [head_dim/2]; "dynamic" NTK grows the base once positions pass the trained length."""
    dim = cfg.head_dim
    if cfg.rope_type == "default":
        return jnp.asarray(_base_inv_freq(cfg.rope_theta, dim))
    if cfg.rope_type == "linear":
        return jnp.asarray(_base_inv_freq(cfg.rope_theta, dim) / np.float32(cfg.rope_factor))
    if cfg.rope_type == "llama3":
        return jnp.asarray(_llama3_inv_freq(cfg))
    # dynamic: transformers recomputes the base from the longest position seen (never below the trained length).
    seq_len = jnp.maximum(jnp.max(positions) + 1, cfg.max_position_embeddings).astype(jnp.float32)
    factor = cfg.rope_factor
    base = cfg.rope_theta * ((factor * seq_len / cfg.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    return 1.0 / (base**exponents)


def rope_cos_sin(cfg: LLMConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, L, head_dim] for integer ``positions`` [B, L] (float32)."""
    freqs = positions[..., None].astype(jnp.float32) * rope_inv_freq(cfg, positions)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE (the HF layout, not interleaved) on x [B, L, heads, head_dim]."""
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------------------------------------------------
# Layers


def _init(axes, init=nnx.initializers.normal(0.02)):
    return nnx.with_partitioning(init, axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.scale = nnx.Param(_init(("norm",), nnx.initializers.ones)(rngs.params(), (dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # Normalise in float32, cast back, then scale (transformers' order, which matters in bf16).
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def _linear(din, dout, axes, bias, *, rngs, dtype, param_dtype):
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=_init(axes), bias_init=_init(axes[1:], nnx.initializers.zeros),
    )


class Attention(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype, param_dtype):
        D, H, K, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        lin = functools.partial(_linear, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = lin(D, H * hd, ("embed", "heads"), cfg.qkv_bias)
        self.k_proj = lin(D, K * hd, ("embed", "kv_heads"), cfg.qkv_bias)
        self.v_proj = lin(D, K * hd, ("embed", "kv_heads"), cfg.qkv_bias)
        self.o_proj = lin(H * hd, D, ("heads", "embed"), cfg.o_bias)
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, hd

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        """x [B, L, D]; mask [B, L, S] (True = visible); cache (k, v) each [B, S, K, hd] written at cache_index."""
        B, L, _ = x.shape
        H, K, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = apply_rope(self.q_proj(x).reshape(B, L, H, hd), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(B, L, K, hd), cos, sin)
        v = self.v_proj(x).reshape(B, L, K, hd)
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        k = sharding.constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        if cache is not None:
            ck, cv = cache
            start = (0, cache_index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
            k, v, cache = ck, cv, (ck, cv)
        # Grouped-query attention: each of the K key/value heads serves G = H / K query heads.
        q = q.reshape(B, L, K, H // K, hd)
        scores = jnp.einsum("blkgd,bskd->bkgls", q, k) * (hd**-0.5)
        scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(B, L, H * hd)
        return self.o_proj(out), cache


class MLP(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype, param_dtype):
        lin = functools.partial(_linear, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        D, F = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = lin(D, F, ("embed", "mlp"), cfg.mlp_bias)
        self.up_proj = lin(D, F, ("embed", "mlp"), cfg.mlp_bias)
        self.down_proj = lin(F, D, ("mlp", "embed"), cfg.mlp_bias)

    def __call__(self, x):
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = sharding.constrain(h, ("batch", "length", "mlp"))
        return self.down_proj(h)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, rngs, dtype, param_dtype):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        attn, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return sharding.constrain(x, ("batch", "length", "embed")), cache


# ----------------------------------------------------------------------------------------------------------------------
# The model


def _call_layer(layer, x, cos, sin, mask):
    return layer(x, cos, sin, mask)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """HF's generate rule: position = number of real tokens before this one (pads get 0)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def last_token_pool(hidden: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    """The hidden state of the last real token of each row [B, D]; right or left padding."""
    if attention_mask is None:
        return hidden[:, -1]
    L = attention_mask.shape[1]
    last = L - 1 - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class LLM(nnx.Module):
    """Llama / Qwen2 decoder; ``dtype`` is the compute dtype (e.g. bf16), ``param_dtype`` the storage dtype."""

    def __init__(self, cfg: LLMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = cfg
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            embedding_init=_init(("vocab", "embed")),
        )
        self.layers = nnx.List(
            [DecoderLayer(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype) for _ in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, param_dtype=param_dtype)
        # config.model.remat (set by methods.base.set_remat): "layer" recomputes each decoder layer's activations in
        # the backward pass (nnx.remat) instead of keeping them; same numbers, less memory, more compute. Passes over
        # a KV cache (generation) are never rematerialised.
        self.remat = "none"
        if cfg.has_lm_head and not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), False,
                                   rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        else:
            self.lm_head = nnx.data(None)

    # -- pieces ---------------------------------------------------------------------------------------------------
    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.embed_tokens(input_ids)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Output projection of final-norm hidden states."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden)
        if self.lm_head is None:
            raise ValueError("this model was loaded from a checkpoint without an lm_head: only hidden states exist")
        return self.lm_head(hidden)

    def init_cache(self, batch: int, length: int, dtype=None) -> list[tuple[jax.Array, jax.Array]]:
        cfg = self.config
        shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or self.dtype
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]

    def forward(self, inputs_embeds, positions, kv_mask, cache=None, cache_index=0):
        """The core pass. ``inputs_embeds`` [B, L, D] fill slots ``cache_index .. cache_index+L`` of the sequence.

        ``kv_mask`` [B, S] marks real tokens among all S key slots (S = L without a cache, the cache length with
        one). Returns final-norm hidden states [B, L, D] and the updated cache (None without one).
        """
        B, L, _ = inputs_embeds.shape
        S = kv_mask.shape[1]
        q_slots = cache_index + jnp.arange(L)
        mask = (jnp.arange(S)[None, :] <= q_slots[:, None])[None] & kv_mask[:, None, :].astype(bool)
        cos, sin = rope_cos_sin(self.config, positions)
        x = sharding.constrain(inputs_embeds.astype(self.dtype), ("batch", "length", "embed"))
        new_cache = [] if cache is not None else None
        if self.remat not in ("none", "layer"):
            raise ValueError(f"remat must be 'none' or 'layer', got {self.remat!r}")
        remat = self.remat == "layer" and cache is None
        for i, layer in enumerate(self.layers):
            if remat:
                x, layer_cache = nnx.remat(_call_layer)(layer, x, cos, sin, mask)
            else:
                x, layer_cache = layer(x, cos, sin, mask, None if cache is None else cache[i], cache_index)
            if cache is not None:
                new_cache.append(layer_cache)
        return self.norm(x), new_cache

    # -- public API -----------------------------------------------------------------------------------------------
    def hidden_states(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, positions=None):
        """Final-norm hidden states [B, L, D]; positions default to ``cumsum(mask) - 1`` (left padding safe)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids)
        B, L = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((B, L), jnp.int32)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        hidden, _ = self.forward(inputs_embeds, positions, attention_mask)
        return hidden

    def __call__(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, positions=None):
        """Logits [B, L, V]."""
        return self.logits(self.hidden_states(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                                              positions=positions))


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def from_pretrained(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32) -> LLM:
    """Load a local HF Llama / Mistral / Qwen2 checkpoint directory (``config.json`` + ``*.safetensors``).

    Accepts ``*ForCausalLM`` layouts (``model.`` prefix + ``lm_head``) and bare ``LlamaModel`` / ``Qwen2Model``
    checkpoints (no prefix, no head: the model then gives hidden states only). Under
    ``zscir_jax.sharding.activate(mesh)`` the weights are placed directly with their target shardings.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"LLM checkpoint directory {path!r} not found. Download one first, e.g. "
            "`huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir DIR`, and pass DIR."
        )
    cfg = LLMConfig.from_hf_dict(loader.read_json(os.path.join(path, "config.json")))
    tensors = loader.LazyTensors(loader.safetensors_files(path))
    has_head = any(llama_weights.is_lm_head(name) for name in tensors)
    if not has_head and not cfg.tie_word_embeddings:
        cfg = dataclasses.replace(cfg, has_lm_head=False)
    abstract = loader.abstract_model(lambda: LLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    return loader.load_state(
        abstract, tensors, llama_weights.rules(), ignore=llama_weights.ignore(cfg.tie_word_embeddings), source=path
    )


# ----------------------------------------------------------------------------------------------------------------------
# Generation


def _sample(logits, key, greedy: bool, temperature, top_p):
    """Next token [B] from logits [B, V]: argmax, or temperature + nucleus (top-p) sampling."""
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _decode(model: LLM, inputs_embeds, attention_mask, key, temperature, top_p, *, max_new_tokens, greedy, eos, pad):
    """Prefill + a while_loop of single-token decode steps over one preallocated cache (traced once)."""
    B, P = attention_mask.shape
    N = max_new_tokens
    total = P + N
    attention_mask = attention_mask.astype(bool)
    cache = model.init_cache(B, total)
    kv_mask = jnp.zeros((B, total), bool).at[:, :P].set(attention_mask)
    positions = positions_from_mask(attention_mask)
    hidden, cache = model.forward(inputs_embeds, positions, kv_mask, cache, 0)
    key, sub = jax.random.split(key)
    tok = _sample(model.logits(last_token_pool(hidden, attention_mask)), sub, greedy, temperature, top_p)
    eos_ids = jnp.asarray(eos if eos else (-1,), jnp.int32)
    done = jnp.isin(tok, eos_ids)
    out = jnp.full((B, N), pad, jnp.int32).at[:, 0].set(tok)
    n_real = jnp.sum(attention_mask, axis=1).astype(jnp.int32)

    def cond(carry):
        i, _, done, *_ = carry
        return (i < N) & ~jnp.all(done)

    def body(carry):
        i, tok, done, cache, kv_mask, out, key = carry
        slot = P + i - 1  # where the token produced at step i-1 goes
        kv_mask = jax.lax.dynamic_update_slice(kv_mask, jnp.ones((B, 1), bool), (0, slot))
        pos = (n_real + i - 1)[:, None]
        hidden, cache = model.forward(model.embed(tok[:, None]), pos, kv_mask, cache, slot)
        key, sub = jax.random.split(key)
        new = _sample(model.logits(hidden[:, 0]), sub, greedy, temperature, top_p)
        new = jnp.where(done, pad, new)
        out = jax.lax.dynamic_update_slice(out, new[:, None], (0, i))
        return i + 1, new, done | jnp.isin(new, eos_ids), cache, kv_mask, out, key

    carry = (jnp.int32(1), tok, done, cache, kv_mask, out, key)
    return jax.lax.while_loop(cond, body, carry)[5]


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "eos", "pad"))
def _generate_jit(graphdef, state, inputs_embeds, input_ids, attention_mask, key, temperature, top_p, *,
                  max_new_tokens, greedy, eos, pad):
    model = nnx.merge(graphdef, state)
    model.eval()  # LoRA dropout and the like off; affects only this traced copy
    if inputs_embeds is None:
        inputs_embeds = model.embed(input_ids)
    return _decode(model, inputs_embeds, attention_mask, key, temperature, top_p,
                   max_new_tokens=max_new_tokens, greedy=greedy, eos=eos, pad=pad)


def generate(model: LLM, input_ids=None, attention_mask=None, max_new_tokens: int = 32, *, inputs_embeds=None,
             temperature: float = 0.0, top_p: float = 1.0, rng: jax.Array | None = None,
             eos_token_ids=None, pad_token_id: int | None = None) -> jax.Array:
    """Generate ``max_new_tokens`` tokens [B, N] int32 after each prompt (greedy when ``temperature == 0``).

    Prompts of different lengths are batched with LEFT padding (right padding works as well). A row stops at its
    first stop token (``eos_token_ids``, default: the config's); later entries hold ``pad_token_id`` (default: the
    config's pad id, else the first eos id, as transformers does). The whole loop is one compiled function: calling
    again with the same shapes and settings does not recompile.
    """
    cfg = model.config
    eos = tuple(int(e) for e in (cfg.eos_token_ids if eos_token_ids is None else eos_token_ids))
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    ref = input_ids if inputs_embeds is None else inputs_embeds
    if attention_mask is None:
        attention_mask = jnp.ones(ref.shape[:2], jnp.int32)
    greedy = temperature is None or float(temperature) == 0.0
    if not greedy and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng key: generate(..., rng=jax.random.key(0))")
    key = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    return _generate_jit(
        graphdef, state, inputs_embeds, None if input_ids is None or inputs_embeds is not None else jnp.asarray(input_ids),
        jnp.asarray(attention_mask), key, jnp.float32(temperature or 1.0), jnp.float32(top_p),
        max_new_tokens=int(max_new_tokens), greedy=greedy, eos=eos, pad=int(pad_token_id),
    )
