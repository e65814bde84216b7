"""CLIP vision and text towers in Flax NNX, numerically matching transformers' ``CLIPModel``.

Module and parameter names mirror the Hugging Face layout (``vision_model.encoder.layers.0.self_attn.q_proj``...), so
the weight map in ``zscir_jax/weights/clip.py`` stays a handful of suffix rules. Besides the pooled embeddings the
towers expose every token (``image_tokens`` / ``text_tokens``), which the fusion models consume.

Images are NHWC float arrays, already normalised with the checkpoint's mean and std.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import layers
from zscir_jax.models.layers import resize_position_table

Dtype = Any


# --------------------------------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf_dict(cls, d: dict) -> "CLIPVisionConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # 2 selects the legacy pooling rule (argmax of the ids), as transformers does; any other id is searched for.
    eos_token_id: int = 2
    pad_token_id: int = 1

    @classmethod
    def from_hf_dict(cls, d: dict) -> "CLIPTextConfig":
        kwargs = layers.known_fields(cls, d)
        # A config.json without the key gets transformers' default (49407), not our legacy-rule default.
        kwargs.setdefault("eos_token_id", 49407)
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    vision: CLIPVisionConfig = CLIPVisionConfig()
    text: CLIPTextConfig = CLIPTextConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_hf_dict(cls, d: dict) -> "CLIPConfig":
        return cls(
            vision=CLIPVisionConfig.from_hf_dict(d.get("vision_config", {})),
            text=CLIPTextConfig.from_hf_dict(d.get("text_config", {})),
            projection_dim=d.get("projection_dim", 512),
            logit_scale_init_value=d.get("logit_scale_init_value", 2.6592),
        )

    def to_hf_dict(self) -> dict:
        return {
            "model_type": "clip",
            "architectures": ["CLIPModel"],
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "vision_config": dataclasses.asdict(self.vision),
            "text_config": dataclasses.asdict(self.text),
        }

    # Published sizes (OpenAI CLIP).
    @classmethod
    def vit_b32(cls) -> "CLIPConfig":
        return cls(CLIPVisionConfig(patch_size=32), CLIPTextConfig(), projection_dim=512)

    @classmethod
    def vit_b16(cls) -> "CLIPConfig":
        return cls(CLIPVisionConfig(patch_size=16), CLIPTextConfig(), projection_dim=512)

    @classmethod
    def vit_l14(cls) -> "CLIPConfig":
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, patch_size=14)
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
        return cls(vision, text, projection_dim=768)

    @classmethod
    def tiny(cls, vocab_size: int = 1000, image_size: int = 32, patch_size: int = 8, width: int = 32,
             layers: int = 2, max_length: int = 16, eos_token_id: int = 2) -> "CLIPConfig":
        """A few-thousand-parameter CLIP for tests and the CPU demo."""
        vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                  num_attention_heads=max(1, width // 16), image_size=image_size,
                                  patch_size=patch_size)
        text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=layers, num_attention_heads=max(1, width // 16),
                              max_position_embeddings=max_length, eos_token_id=eos_token_id)
        return cls(vision, text, projection_dim=width)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


class TowerOutput(NamedTuple):
    last_hidden_state: jax.Array  # vision: before post_layernorm (as HF); text: after final_layer_norm (as HF)
    pooler_output: jax.Array  # vision: post_layernorm(CLS); text: the EOS token's state
    hidden_states: tuple[jax.Array, ...] | None  # the encoder input, then every layer's output


class CLIPAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, dtype, param_dtype, rngs):
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = layers.dense(dim, dim, ("embed", "heads"), **kw)
        self.k_proj = layers.dense(dim, dim, ("embed", "heads"), **kw)
        self.v_proj = layers.dense(dim, dim, ("embed", "heads"), **kw)
        self.out_proj = layers.dense(dim, dim, ("heads", "embed"), **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        # mask: bool [b, 1 | h, q, k], True = may attend
        return self.out_proj(layers.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), mask, self.heads))


class CLIPMLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, act: str, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = layers.dense(dim, hidden, ("embed", "mlp"), **kw)
        self.fc2 = layers.dense(hidden, dim, ("mlp", "embed"), **kw)
        layers.activation(act)  # fail at construction on an unknown name
        self.act = act  # the name, not a function: keeps the module's static data hashable and comparable

    def __call__(self, x):
        return self.fc2(layers.activation(self.act)(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, dim, heads, hidden, act, eps, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm1 = layers.layer_norm(dim, eps, **kw)
        self.self_attn = CLIPAttention(dim, heads, **kw)
        self.layer_norm2 = layers.layer_norm(dim, eps, **kw)
        self.mlp = CLIPMLP(dim, hidden, act, **kw)

    def __call__(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        x = x + self.mlp(self.layer_norm2(x))
        return sharding.constrain(x, ("batch", "length", "embed"))


def _call_layer(layer, x, mask):
    return layer(x, mask)


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig | CLIPTextConfig, *, dtype, param_dtype, rngs):
        self.layers = nnx.List([
            CLIPEncoderLayer(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_act,
                             cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for _ in range(cfg.num_hidden_layers)
        ])
        # config.model.remat (set by methods.base.set_remat): "layer" recomputes each layer's activations in the
        # backward pass (nnx.remat) instead of keeping them; same numbers, less memory, more compute.
        self.remat = "none"

    def __call__(self, x, mask, output_hidden_states: bool):
        if self.remat not in ("none", "layer"):
            raise ValueError(f"remat must be 'none' or 'layer', got {self.remat!r}")
        call = nnx.remat(_call_layer) if self.remat == "layer" else _call_layer
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = call(layer, x, mask)
            if output_hidden_states:
                states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


# --------------------------------------------------------------------------------------------------------------------
# Towers


class CLIPVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype, param_dtype, rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_size = p
        self.patch_embedding = nnx.Conv(
            cfg.num_channels, d, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=False,
            dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "channels", "embed")),
        )
        self.class_embedding = layers.param(nnx.initializers.normal(d ** -0.5), (d,), ("embed",),
                                            param_dtype=param_dtype, rngs=rngs)
        num_positions = (cfg.image_size // p) ** 2 + 1
        self.position_embedding = layers.embed(num_positions, d, (None, "embed"), dtype=dtype, param_dtype=param_dtype,
                                               rngs=rngs)
        self.dtype = dtype

    def __call__(self, pixels: jax.Array) -> jax.Array:
        b, h, w, _ = pixels.shape
        patches = self.patch_embedding(pixels.astype(self.dtype))  # [b, h/p, w/p, d]
        gh, gw = patches.shape[1], patches.shape[2]
        patches = patches.reshape(b, gh * gw, -1)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, patches.shape[-1]))
        positions = resize_position_table(self.position_embedding.embedding[...], gh, gw)
        return jnp.concatenate([cls, patches], axis=1) + positions.astype(patches.dtype)[None]


class CLIPVisionTransformer(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg, **kw)
        self.pre_layrnorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)  # (sic: HF's spelling)
        self.encoder = CLIPEncoder(cfg, **kw)
        self.post_layernorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def __call__(self, pixels: jax.Array, output_hidden_states: bool = False) -> TowerOutput:
        x = self.pre_layrnorm(self.embeddings(pixels))
        x, states = self.encoder(x, None, output_hidden_states)
        return TowerOutput(x, self.post_layernorm(x[:, 0]), states)


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embedding = layers.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
        self.position_embedding = layers.embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), **kw)

    def __call__(self, input_ids: jax.Array, token_embeds: jax.Array | None = None) -> jax.Array:
        positions = self.position_embedding.embedding[...][: input_ids.shape[1]]
        tokens = self.token_embedding(input_ids) if token_embeds is None else token_embeds
        return tokens + positions.astype(self.token_embedding.dtype)[None]


class CLIPTextTransformer(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg, **kw)
        self.encoder = CLIPEncoder(cfg, **kw)
        self.final_layer_norm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def eos_positions(self, input_ids: jax.Array) -> jax.Array:
        if self.config.eos_token_id == 2:
            # Legacy checkpoints: the EOS token has the largest id in the vocabulary.
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax((input_ids == self.config.eos_token_id).astype(jnp.int32), axis=-1)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 output_hidden_states: bool = False, token_embeds: jax.Array | None = None) -> TowerOutput:
        """``token_embeds`` [B, L, D] replace the token-embedding lookup (Pic2Word's pseudo word token); the ids
        still say where EOS is."""
        b, l = input_ids.shape
        if l > self.config.max_position_embeddings:
            raise ValueError(f"text length {l} exceeds the model's context length "
                             f"{self.config.max_position_embeddings}; tokenize with truncation")
        x = self.embeddings(input_ids, token_embeds)
        mask = jnp.tril(jnp.ones((l, l), bool))[None, None]
        if attention_mask is not None:
            mask = mask & (attention_mask[:, None, None, :] > 0)
        x, states = self.encoder(x, mask, output_hidden_states)
        x = self.final_layer_norm(x)
        pooled = x[jnp.arange(b), self.eos_positions(input_ids)]
        return TowerOutput(x, pooled, states)


class CLIPVisionModel(nnx.Module):
    """The vision tower alone (LLaVA's image encoder); same call as ``CLIPModel.vision_model``."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.vision_model = CLIPVisionTransformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixels, output_hidden_states: bool = False) -> TowerOutput:
        return self.vision_model(pixels, output_hidden_states)


class CLIPModel(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.vision_model = CLIPVisionTransformer(cfg.vision, **kw)
        self.text_model = CLIPTextTransformer(cfg.text, **kw)
        self.visual_projection = layers.dense(cfg.vision.hidden_size, cfg.projection_dim, ("embed", "proj"),
                                              use_bias=False, **kw)
        self.text_projection = layers.dense(cfg.text.hidden_size, cfg.projection_dim, ("embed", "proj"),
                                            use_bias=False, **kw)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init_value, param_dtype))

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """Projected CLS embedding [B, proj_dim], not normalised (= HF ``get_image_features``)."""
        return self.visual_projection(self.vision_model(pixels).pooler_output)

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Projected EOS embedding [B, proj_dim], not normalised (= HF ``get_text_features``)."""
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

    def encode_text_embeds(self, input_ids: jax.Array, attention_mask: jax.Array | None,
                           token_embeds: jax.Array) -> jax.Array:
        """``encode_text`` with the token embeddings given (e.g. with a pseudo word token spliced in)."""
        return self.text_projection(self.text_model(input_ids, attention_mask, token_embeds=token_embeds).pooler_output)

    def text_global_positions(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Where the text's global feature sits: the EOT token (``models.towers``' surface)."""
        return self.text_model.eos_positions(input_ids)

    def image_tokens(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Every token (CLS + patches) through post_layernorm and the projection: ([B, 1+m, P], pooled [B, P])."""
        tokens = self.visual_projection(self.vision_model.post_layernorm(self.vision_model(pixels).last_hidden_state))
        return tokens, tokens[:, 0]

    def text_tokens(self, input_ids: jax.Array, attention_mask: jax.Array | None = None):
        """Every token through the (already final-normed) projection: ([B, L, P], pooled at EOS [B, P])."""
        out = self.text_model(input_ids, attention_mask)
        tokens = self.text_projection(out.last_hidden_state)
        return tokens, tokens[jnp.arange(tokens.shape[0]), self.text_model.eos_positions(input_ids)]


# --------------------------------------------------------------------------------------------------------------------
# Loading


def from_pretrained(path: str, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> CLIPModel:
    """A CLIPModel from a local checkpoint: a transformers CLIP directory or an OpenCLIP checkpoint.

    Inside ``zscir_jax.sharding.activate(mesh)`` every weight is placed with its target sharding.
    """
    from zscir_jax.models.clip import params as clip_weights

    return clip_weights.load_clip(path, dtype=dtype, param_dtype=param_dtype)


def load_tokenizer(path: str, max_length: int | None = None):
    """The checkpoint's own tokenizer files (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``) through
    transformers, padded and truncated to the text tower's context length: a ``zscir_jax.data.tokenizer.Tokenizer``."""
    from zscir_jax.data import tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    return tokenizer.Tokenizer.from_dir(path, _context_length(path) if max_length is None else max_length)


def _context_length(path: str) -> int:
    """The text tower's context length from an HF ``config.json`` or an OpenCLIP config; 77 when neither says."""
    hf = os.path.join(path, "config.json")
    if os.path.isfile(hf):
        with open(hf) as f:
            length = (json.load(f).get("text_config") or {}).get("max_position_embeddings")
        if length:
            return int(length)
    for name in ("open_clip_config.json", "open_clip_model_config.json", "model_config.json"):
        oc = os.path.join(path, name)
        if os.path.isfile(oc):
            with open(oc) as f:
                d = json.load(f)
            length = (d.get("model_cfg", d).get("text_cfg") or {}).get("context_length")
            if length:
                return int(length)
    return 77
