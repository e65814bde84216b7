"""BLIP's unimodal towers in Flax NNX, numerically matching the ITC path of transformers' ``BlipForImageTextRetrieval``.

That path (``use_itm_head=False``) runs the ViT vision model and the BERT-style text encoder separately (no
cross-attention) and compares ``vision_proj(image_embeds[:, 0])`` with ``text_proj(question_embeds[:, 0])``: both
towers read their [CLS] token. Only what this path needs is built here; the ITM head and the text encoder's
cross-attention layers of a retrieval checkpoint are skipped by ``params.py``.

Module and parameter names mirror the Hugging Face layout (``vision_model.encoder.layers.0.self_attn.qkv``,
``text_encoder.encoder.layer.0.attention.self.query``...), so the checkpoint map is a few suffix rules and a
parameter's path says its tower: ``vision_model.*`` / ``vision_proj.*`` for the image tower, ``text_encoder.*`` /
``text_proj.*`` for the text tower.

Images are NHWC float arrays, already normalised with the checkpoint's mean and std.
"""
from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax import sharding
from zscir_jax.data import tokenizer
from zscir_jax.models import layers
from zscir_jax.models.clip import modeling as clip

Dtype = Any


# --------------------------------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True)
class BlipVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 384
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    @property
    def qkv_bias(self) -> bool:
        """BLIP's fused qkv projection always has a bias (a field of BLIP-2's vision config, which shares the ViT)."""
        return True

    @classmethod
    def from_hf_dict(cls, d: dict) -> "BlipVisionConfig":
        return cls(**layers.known_fields(cls, d))


@dataclasses.dataclass(frozen=True)
class BlipTextConfig:
    vocab_size: int = 30524
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf_dict(cls, d: dict) -> "BlipTextConfig":
        return cls(**layers.known_fields(cls, d))


@dataclasses.dataclass(frozen=True)
class BlipConfig:
    vision: BlipVisionConfig = BlipVisionConfig()
    text: BlipTextConfig = BlipTextConfig()
    # HF's name for the ITC joint space; HF's own ``projection_dim`` belongs to ``BlipModel`` and is not used here.
    image_text_hidden_size: int = 256
    # log(1 / temp): 2.6592 = log(1 / 0.07), BLIP's initial temperature (see ``BlipModel.logit_scale``).
    logit_scale_init_value: float = 2.6592

    @property
    def projection_dim(self) -> int:
        """The joint image-text space width (the tower surface's name for ``image_text_hidden_size``)."""
        return self.image_text_hidden_size

    @classmethod
    def from_hf_dict(cls, d: dict) -> "BlipConfig":
        return cls(
            vision=BlipVisionConfig.from_hf_dict(d.get("vision_config") or {}),
            text=BlipTextConfig.from_hf_dict(d.get("text_config") or {}),
            image_text_hidden_size=d.get("image_text_hidden_size", 256),
            logit_scale_init_value=d.get("logit_scale_init_value", 2.6592),
        )

    def to_hf_dict(self) -> dict:
        return {
            "model_type": "blip",
            "architectures": ["BlipForImageTextRetrieval"],
            "image_text_hidden_size": self.image_text_hidden_size,
            "logit_scale_init_value": self.logit_scale_init_value,
            "vision_config": dataclasses.asdict(self.vision),
            "text_config": dataclasses.asdict(self.text),
        }

    # Published sizes (Salesforce/blip-itm-{base,large}-{coco,flickr}).
    @classmethod
    def itm_base(cls) -> "BlipConfig":
        return cls(BlipVisionConfig(), BlipTextConfig())

    @classmethod
    def itm_large(cls) -> "BlipConfig":
        vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16)
        return cls(vision, BlipTextConfig())

    @classmethod
    def tiny(cls, vocab_size: int = 1000, image_size: int = 32, patch_size: int = 8, width: int = 32,
             layers: int = 2, max_length: int = 16, hidden_act: str = "gelu") -> "BlipConfig":
        """A few-thousand-parameter BLIP for tests and the CPU demo."""
        heads = max(1, width // 16)
        vision = BlipVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                                  hidden_act=hidden_act)
        text = BlipTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                              hidden_act=hidden_act)
        return cls(vision, text, image_text_hidden_size=width)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks (the dense / norm / embedding helpers are ``models.layers``', the ViT's MLP is CLIP's)


class TowerOutput(NamedTuple):
    # vision: after post_layernorm (HF's ``last_hidden_state``; the ITC path reads its token 0);
    # text: the encoder's last layer (post-LN BERT, so already normalised)
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None  # the encoder input, then every layer's output


def _check_heads(dim: int, heads: int) -> None:
    if dim % heads:
        raise ValueError(f"hidden size {dim} is not divisible by {heads} attention heads")


# --------------------------------------------------------------------------------------------------------------------
# Vision tower: a pre-LN ViT with a fused qkv projection (BLIP-2's EVA ViT is the same network: ``models.blip2``
# builds it from these modules)


class BlipAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True, dtype, param_dtype, rngs):
        _check_heads(dim, heads)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        # One [dim, 3 * dim] kernel as in the checkpoint (q, k, v concatenated on the output axis). BLIP's has a
        # bias; BLIP-2's may have none (``qkv_bias``), and where it has one its k part is stored as zeros, as in HF.
        self.qkv = layers.dense(dim, 3 * dim, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.projection = layers.dense(dim, dim, ("heads", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        return self.projection(layers.attend(q, k, v, None, self.heads))


class BlipEncoderLayer(nnx.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)). ``cfg``: a BLIP or BLIP-2 vision config."""

    def __init__(self, cfg: BlipVisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.layer_norm1 = layers.layer_norm(d, cfg.layer_norm_eps, **kw)
        self.self_attn = BlipAttention(d, cfg.num_attention_heads, qkv_bias=cfg.qkv_bias, **kw)
        self.layer_norm2 = layers.layer_norm(d, cfg.layer_norm_eps, **kw)
        self.mlp = clip.CLIPMLP(d, cfg.intermediate_size, cfg.hidden_act, **kw)  # same fc1 / fc2 layout

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return sharding.constrain(x, ("batch", "length", "embed"))


class BlipEncoder(nnx.Module):
    def __init__(self, cfg: BlipVisionConfig, *, dtype, param_dtype, rngs):
        self.layers = nnx.List([BlipEncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, output_hidden_states: bool):
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x)
            if output_hidden_states:
                states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


class BlipVisionEmbeddings(nnx.Module):
    """A biased patch conv, a class token and a position table (resized bicubically for another image size).

    BLIP keeps the class token and the table as [d] and [n, d] (its loader drops HF's leading ones); BLIP-2's
    subclass keeps HF's [1, 1, d] and [1, n, d] (``_tables``).
    """

    def __init__(self, cfg: BlipVisionConfig, *, dtype, param_dtype, rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_embedding = nnx.Conv(
            3, d, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=True,
            dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "channels", "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
        )
        num_positions = (cfg.image_size // p) ** 2 + 1
        self.class_embedding, self.position_embedding = self._tables(d, num_positions, param_dtype=param_dtype,
                                                                     rngs=rngs)
        self.dtype = dtype

    @staticmethod
    def _tables(d: int, num_positions: int, *, param_dtype, rngs) -> tuple[nnx.Param, nnx.Param]:
        """The class token [d] and the position table [n, d]: plain parameters in HF too ([1, 1, d] and [1, n, d]
        there; the loader drops the leading ones)."""
        init, kw = nnx.initializers.normal(0.02), dict(param_dtype=param_dtype, rngs=rngs)
        return (layers.param(init, (d,), ("embed",), **kw),
                layers.param(init, (num_positions, d), (None, "embed"), **kw))

    def __call__(self, pixels: jax.Array) -> jax.Array:
        b = pixels.shape[0]
        patches = self.patch_embedding(pixels.astype(self.dtype))  # [b, h/p, w/p, d]
        gh, gw = patches.shape[1], patches.shape[2]
        patches = patches.reshape(b, gh * gw, -1)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, patches.shape[-1]))
        # Another image size resizes the table bicubically (HF's ``interpolate_pos_encoding=True``).
        table = self.position_embedding[...]
        positions = layers.resize_position_table(table.reshape(table.shape[-2:]), gh, gw)
        return jnp.concatenate([cls, patches], axis=1) + positions.astype(patches.dtype)[None]


class BlipVisionModel(nnx.Module):
    embeddings_class = BlipVisionEmbeddings  # BLIP-2's subclass swaps in its own table layout

    def __init__(self, cfg: BlipVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embeddings = self.embeddings_class(cfg, **kw)
        self.encoder = BlipEncoder(cfg, **kw)
        self.post_layernorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def __call__(self, pixels: jax.Array, output_hidden_states: bool = False) -> TowerOutput:
        # HF's pooler_output applies post_layernorm a second time; retrieval reads last_hidden_state[:, 0] instead.
        x, states = self.encoder(self.embeddings(pixels), output_hidden_states)
        return TowerOutput(self.post_layernorm(x), states)


# --------------------------------------------------------------------------------------------------------------------
# Text tower: a post-LN BERT encoder (self-attention only: the ITC path passes no image)


class BlipTextEmbeddings(nnx.Module):
    def __init__(self, cfg: BlipTextConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.word_embeddings = layers.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
        self.position_embeddings = layers.embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), **kw)
        self.LayerNorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        positions = self.position_embeddings.embedding[...][: input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + positions.astype(self.word_embeddings.dtype)[None]
        return self.LayerNorm(x)


class BlipTextSelfAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, dtype, param_dtype, rngs):
        _check_heads(dim, heads)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.query = layers.dense(dim, dim, ("embed", "heads"), **kw)
        self.key = layers.dense(dim, dim, ("embed", "heads"), **kw)
        self.value = layers.dense(dim, dim, ("embed", "heads"), **kw)

    def __call__(self, x, mask):
        return layers.attend(self.query(x), self.key(x), self.value(x), mask, self.heads)


class BlipTextDenseNorm(nnx.Module):
    """BERT's ``*Output`` block: LayerNorm(dense(x) + residual)."""

    def __init__(self, din: int, dim: int, eps: float, axes, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = layers.dense(din, dim, axes, **kw)
        self.LayerNorm = layers.layer_norm(dim, eps, **kw)

    def __call__(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BlipTextAttention(nnx.Module):
    def __init__(self, cfg: BlipTextConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.self = BlipTextSelfAttention(d, cfg.num_attention_heads, **kw)  # (sic: HF's name)
        self.output = BlipTextDenseNorm(d, d, cfg.layer_norm_eps, ("heads", "embed"), **kw)

    def __call__(self, x, mask):
        return self.output(self.self(x, mask), x)


class BlipTextIntermediate(nnx.Module):
    def __init__(self, cfg: BlipTextConfig, *, dtype, param_dtype, rngs):
        self.dense = layers.dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
        layers.activation(cfg.hidden_act)  # fail at construction on an unknown name
        self.act = cfg.hidden_act  # the name, not a function: keeps the module's static data hashable

    def __call__(self, x):
        return layers.activation(self.act)(self.dense(x))


class BlipTextLayer(nnx.Module):
    """Post-LN BERT block: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, cfg: BlipTextConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = BlipTextAttention(cfg, **kw)
        self.intermediate = BlipTextIntermediate(cfg, **kw)
        self.output = BlipTextDenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps, ("mlp", "embed"),
                                        **kw)

    def __call__(self, x, mask):
        x = self.attention(x, mask)
        x = self.output(self.intermediate(x), x)
        return sharding.constrain(x, ("batch", "length", "embed"))


class BlipTextEncoder(nnx.Module):
    def __init__(self, cfg: BlipTextConfig, *, dtype, param_dtype, rngs):
        self.layer = nnx.List([BlipTextLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                               for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask, output_hidden_states: bool):
        states = [x] if output_hidden_states else None
        for layer in self.layer:
            x = layer(x, mask)
            if output_hidden_states:
                states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


class BlipTextModel(nnx.Module):
    def __init__(self, cfg: BlipTextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embeddings = BlipTextEmbeddings(cfg, **kw)
        self.encoder = BlipTextEncoder(cfg, **kw)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 output_hidden_states: bool = False) -> TowerOutput:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"text length {input_ids.shape[1]} exceeds the model's "
                             f"{self.config.max_position_embeddings} positions; tokenize with truncation")
        # Bidirectional: every token attends to every non-padding token (HF's is_decoder=False mode).
        mask = None if attention_mask is None else (attention_mask[:, None, None, :] > 0)
        x, states = self.encoder(self.embeddings(input_ids), mask, output_hidden_states)
        return TowerOutput(x, states)


# --------------------------------------------------------------------------------------------------------------------
# The retrieval model's ITC towers


class BlipModel(nnx.Module):
    """``BlipForImageTextRetrieval``'s unimodal (ITC) path: both towers, ``vision_proj``, ``text_proj``.

    ``logit_scale`` is log(1 / temp), CLIP's convention: similarities are multiplied by ``exp(logit_scale)`` =
    1 / temp. HF's retrieval checkpoints carry no temperature (their ITC score is the plain cosine), so it starts at
    ``config.logit_scale_init_value`` (BLIP's initial temp 0.07) unless the checkpoint has ``logit_scale`` or
    original BLIP's ``temp``.
    """

    def __init__(self, cfg: BlipConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.vision_model = BlipVisionModel(cfg.vision, **kw)
        self.text_encoder = BlipTextModel(cfg.text, **kw)
        self.vision_proj = layers.dense(cfg.vision.hidden_size, cfg.projection_dim, ("embed", "proj"), **kw)
        self.text_proj = layers.dense(cfg.text.hidden_size, cfg.projection_dim, ("embed", "proj"), **kw)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init_value, param_dtype))

    @property
    def temp(self) -> jax.Array:
        """BLIP's temperature: 1 / exp(logit_scale)."""
        return jnp.exp(-self.logit_scale[...])

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """``vision_proj`` of the [CLS] token [B, P], not normalised (= HF's ITC ``image_feat`` before normalize)."""
        return self.vision_proj(self.vision_model(pixels).last_hidden_state[:, 0])

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """``text_proj`` of the [CLS] token [B, P], not normalised (= HF's ITC ``text_feat`` before normalize)."""
        return self.text_proj(self.text_encoder(input_ids, attention_mask).last_hidden_state[:, 0])

    def image_tokens(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Every token (CLS + patches, post_layernorm'd) through ``vision_proj``: ([B, 1+m, P], pooled [B, P])."""
        tokens = self.vision_proj(self.vision_model(pixels).last_hidden_state)
        return tokens, tokens[:, 0]

    def text_tokens(self, input_ids: jax.Array, attention_mask: jax.Array | None = None):
        """Every token through ``text_proj``: ([B, L, P], pooled at [CLS] = position 0 [B, P])."""
        tokens = self.text_proj(self.text_encoder(input_ids, attention_mask).last_hidden_state)
        return tokens, tokens[:, 0]

    def text_global_positions(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """BLIP's text carries its global feature at [CLS]: position 0 for every row (PVLF's eq. 6)."""
        return jnp.zeros((input_ids.shape[0],), jnp.int32)


# --------------------------------------------------------------------------------------------------------------------
# Loading


def from_pretrained(path: str, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> BlipModel:
    """A BlipModel (the ITC towers) from a local transformers ``BlipForImageTextRetrieval`` directory.

    The checkpoint's ITM head and cross-attention weights are skipped by rule (see ``params.IGNORE``). Inside
    ``zscir_jax.sharding.activate(mesh)`` every weight is placed with its target sharding.
    """
    from zscir_jax.models.blip import params as blip_weights

    return blip_weights.load_blip(path, dtype=dtype, param_dtype=param_dtype)


class BlipTokenizer(tokenizer.Tokenizer):
    """BERT's tokenizer padded / truncated to ``max_length``; ids exactly as ``BlipProcessor`` gives them for text.

    Unlike the base class no token is rewritten after truncation: BERT's truncation already keeps [SEP] last, and
    BLIP pools at [CLS], not at an end token.
    """

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.hf(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                      return_token_type_ids=False, return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def load_tokenizer(path: str, max_length: int | None = None) -> BlipTokenizer:
    """The checkpoint's BERT tokenizer (``tokenizer.json`` or ``vocab.txt``) through transformers, padded and truncated
    to ``max_length`` (default: the text tower's position count): a ``zscir_jax.data.tokenizer.Tokenizer``.

    The ids are what ``BlipProcessor`` gives for text, [CLS] first: the ITC path reads them as they are (BLIP swaps
    in [ENC] only for its ITM mode, which is not built here).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    return BlipTokenizer.from_dir(path, _context_length(path) if max_length is None else max_length)


def _context_length(path: str) -> int:
    """The text tower's position count from an HF ``config.json``; BERT's 512 when it does not say."""
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            length = (json.load(f).get("text_config") or {}).get("max_position_embeddings")
        if length:
            return int(length)
    return 512
