"""BLIP-2's retrieval towers (EVA ViT + Q-Former, the ITC path) in Flax NNX, numerically matching transformers'
``Blip2ForImageTextRetrieval`` with ``use_image_text_matching_head=False``.

The image side is the vision transformer followed by the Q-Former's *query* path: ``num_query_tokens`` learned queries
self-attend, cross-attend to the (post-normed) patch states every ``cross_attention_frequency`` layers, and go through
the query feed-forward; ``vision_projection`` maps each to the joint space. An image is therefore a *set* of
embeddings ``[B, Q, D]``, and BLIP-2 scores it against a text by the MAX over its queries of the cosine similarity
(:func:`image_text_similarity`). The text side is the same Q-Former run on word embeddings alone (no cross-attention,
the text feed-forward), its [CLS] state (position 0) through ``text_projection``.

Module and parameter names mirror the Hugging Face layout (``qformer.encoder.layer.0.attention.attention.query``...),
so the weight map in ``params.py`` is a handful of suffix rules. The ITM head and the mixed query+text pass it needs
are not built. transformers keeps the Q-Former in float32 under half precision; here ``dtype`` applies to every
module (LAVIS trains the Q-Former under autocast, so bfloat16 compute is sound).

Images are NHWC float arrays, already normalised with the checkpoint's mean and std.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import layers
from zscir_jax.models.blip import modeling as blip

Dtype = Any

# LAVIS's ITC text length (``max_txt_len``) for the BLIP-2 Q-Former.
DEFAULT_TEXT_LENGTH = 32


# --------------------------------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True)
class Blip2VisionConfig:
    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True

    @classmethod
    def from_hf_dict(cls, d: dict) -> "Blip2VisionConfig":
        kwargs = layers.known_fields(cls, d)
        for key in ("image_size", "patch_size"):
            if key in kwargs:
                kwargs[key] = int(layers.square_side(kwargs[key], key))
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Blip2QFormerConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408  # the vision width; Blip2Config overwrites it, so does ours
    use_qformer_text_input: bool = True  # the text feed-forward; retrieval checkpoints have it

    @classmethod
    def from_hf_dict(cls, d: dict) -> "Blip2QFormerConfig":
        kwargs = layers.known_fields(cls, d)
        kwargs.setdefault("use_qformer_text_input", False)  # transformers' default when the key is absent
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Blip2Config:
    vision: Blip2VisionConfig = Blip2VisionConfig()
    qformer: Blip2QFormerConfig = Blip2QFormerConfig()
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256
    # The checkpoint stores no temperature (LAVIS's ``temp`` is dropped by the conversion): CLIP's init, 1/0.07.
    logit_scale_init_value: float = math.log(1 / 0.07)

    @property
    def projection_dim(self) -> int:
        return self.image_text_hidden_size

    @property
    def text(self) -> Blip2QFormerConfig:
        """The text side's config (``config.text`` of the tower surface): the Q-Former's, whose word embeddings and
        width the text path uses."""
        return self.qformer

    @classmethod
    def from_hf_dict(cls, d: dict) -> "Blip2Config":
        vision = Blip2VisionConfig.from_hf_dict(d.get("vision_config") or {})
        qformer = Blip2QFormerConfig.from_hf_dict(d.get("qformer_config") or {})
        return cls(
            vision=vision,
            qformer=dataclasses.replace(qformer, encoder_hidden_size=vision.hidden_size),
            num_query_tokens=d.get("num_query_tokens", 32),
            image_text_hidden_size=d.get("image_text_hidden_size", 256),
            logit_scale_init_value=d.get("logit_scale_init_value", math.log(1 / 0.07)),  # ours; HF has none
        )

    def to_hf_dict(self) -> dict:
        return {
            "model_type": "blip-2",
            "architectures": ["Blip2ForImageTextRetrieval"],
            "num_query_tokens": self.num_query_tokens,
            "image_text_hidden_size": self.image_text_hidden_size,
            "logit_scale_init_value": self.logit_scale_init_value,
            "vision_config": dataclasses.asdict(self.vision),
            "qformer_config": dataclasses.asdict(self.qformer),
        }

    # Published size: Salesforce/blip2-itm-vit-g (EVA ViT-g/14 + BERT-base Q-Former).
    @classmethod
    def itm_vit_g(cls) -> "Blip2Config":
        return cls()

    @classmethod
    def tiny(cls, vocab_size: int = 1000, image_size: int = 32, patch_size: int = 8, width: int = 32,
             layers: int = 2, max_length: int = 16, num_query_tokens: int = 4,
             cross_attention_frequency: int = 2) -> "Blip2Config":
        """A few-thousand-parameter BLIP-2 for tests and the CPU demo."""
        heads = max(1, width // 16)
        vision = Blip2VisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                   num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
        qformer = Blip2QFormerConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * width,
                                     max_position_embeddings=max_length,
                                     cross_attention_frequency=cross_attention_frequency, encoder_hidden_size=width)
        return cls(vision, qformer, num_query_tokens=num_query_tokens, image_text_hidden_size=width)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


class VisionOutput(NamedTuple):
    last_hidden_state: jax.Array  # after post_layernorm (as HF): what the Q-Former cross-attends to
    pooler_output: jax.Array  # post_layernorm applied again to the CLS state (as HF)
    hidden_states: tuple[jax.Array, ...] | None  # the encoder input, then every layer's output


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch's ``F.normalize``: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def image_text_similarity(image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """BLIP-2's ITC score: [B, Q, D] query embeddings x [N, D] texts -> [B, N], the max over the queries of the
    cosine similarity (both sides normalised first, as ``Blip2ForImageTextRetrieval`` does). No temperature."""
    per_query = jnp.einsum("bqd,nd->bqn", l2_normalize(image_emb), l2_normalize(text_emb))
    return per_query.max(axis=1)


# --------------------------------------------------------------------------------------------------------------------
# Vision transformer: BLIP's ViT (``models.blip``: fused qkv, here with q and v biases or none, pre-LN blocks, no
# pre-norm); only the embedding tables' layout and the output differ


class Blip2VisionEmbeddings(blip.BlipVisionEmbeddings):
    @staticmethod
    def _tables(d: int, num_positions: int, *, param_dtype, rngs) -> tuple[nnx.Param, nnx.Param]:
        """HF's shapes kept: the class token [1, 1, d] and the position table [1, n, d] (EVA's truncated normal)."""
        init, kw = nnx.initializers.truncated_normal(0.02), dict(param_dtype=param_dtype, rngs=rngs)
        return (layers.param(init, (1, 1, d), (None, None, "embed"), **kw),
                layers.param(init, (1, num_positions, d), (None, None, "embed"), **kw))


class Blip2VisionModel(blip.BlipVisionModel):
    """BLIP's vision model on a ``Blip2VisionConfig`` (its ``qkv_bias``), returning HF's ``pooler_output`` too."""

    embeddings_class = Blip2VisionEmbeddings

    def __call__(self, pixels: jax.Array, output_hidden_states: bool = False) -> VisionOutput:
        x, states = self.encoder(self.embeddings(pixels), output_hidden_states)
        x = self.post_layernorm(x)
        return VisionOutput(x, self.post_layernorm(x[:, 0]), states)


# --------------------------------------------------------------------------------------------------------------------
# Q-Former (BERT-style post-LN layers; queries and text share the attention weights, not the feed-forwards)


class Blip2QFormerMultiHeadAttention(nnx.Module):
    def __init__(self, cfg: Blip2QFormerConfig, is_cross_attention: bool, *, dtype, param_dtype, rngs):
        d = cfg.hidden_size
        if d % cfg.num_attention_heads:
            raise ValueError(f"Q-Former width {d} is not divisible by {cfg.num_attention_heads} attention heads")
        self.heads = cfg.num_attention_heads
        kv_in = cfg.encoder_hidden_size if is_cross_attention else d
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = layers.dense(d, d, ("embed", "heads"), **kw)
        self.key = layers.dense(kv_in, d, ("embed", "heads"), **kw)
        self.value = layers.dense(kv_in, d, ("embed", "heads"), **kw)

    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None) -> jax.Array:
        return layers.attend(self.query(x), self.key(context), self.value(context), mask, self.heads)


class Blip2QFormerSelfOutput(nnx.Module):
    """dense, then LayerNorm of the residual sum (post-LN)."""

    def __init__(self, din: int, cfg: Blip2QFormerConfig, axes, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = layers.dense(din, cfg.hidden_size, axes, **kw)
        self.LayerNorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)  # (sic: HF's BERT spelling)

    def __call__(self, hidden: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(hidden) + residual)


class Blip2QFormerAttention(nnx.Module):
    def __init__(self, cfg: Blip2QFormerConfig, is_cross_attention: bool = False, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = Blip2QFormerMultiHeadAttention(cfg, is_cross_attention, **kw)
        self.output = Blip2QFormerSelfOutput(cfg.hidden_size, cfg, ("heads", "embed"), **kw)

    def __call__(self, x, context, mask):
        return self.output(self.attention(x, context, mask), x)


class Blip2QFormerIntermediate(nnx.Module):
    def __init__(self, cfg: Blip2QFormerConfig, *, dtype, param_dtype, rngs):
        self.dense = layers.dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
        layers.activation(cfg.hidden_act)
        self.act = cfg.hidden_act

    def __call__(self, x):
        return layers.activation(self.act)(self.dense(x))


class Blip2QFormerLayer(nnx.Module):
    """Self-attention, cross-attention to the image (every ``cross_attention_frequency``-th layer, queries only), then
    the feed-forward of the stream: ``*_query`` for the queries, the plain one for text."""

    def __init__(self, cfg: Blip2QFormerConfig, layer_idx: int, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = Blip2QFormerAttention(cfg, **kw)
        self.has_cross_attention = layer_idx % cfg.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.crossattention = Blip2QFormerAttention(cfg, is_cross_attention=True, **kw)
        self.intermediate = Blip2QFormerIntermediate(cfg, **kw)
        self.output = Blip2QFormerSelfOutput(cfg.intermediate_size, cfg, ("mlp", "embed"), **kw)
        self.intermediate_query = Blip2QFormerIntermediate(cfg, **kw)
        self.output_query = Blip2QFormerSelfOutput(cfg.intermediate_size, cfg, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None, image: jax.Array | None) -> jax.Array:
        """``image`` given: x are the queries; None: x is text (``mask`` its key padding)."""
        x = self.attention(x, x, mask)
        if image is None:
            x = self.output(self.intermediate(x), x)
        else:
            if self.has_cross_attention:
                x = self.crossattention(x, image, None)  # every image token is real: no mask
            x = self.output_query(self.intermediate_query(x), x)
        return sharding.constrain(x, ("batch", "length", "embed"))


class Blip2QFormerEncoder(nnx.Module):
    def __init__(self, cfg: Blip2QFormerConfig, *, dtype, param_dtype, rngs):
        self.layer = nnx.List([Blip2QFormerLayer(cfg, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                               for i in range(cfg.num_hidden_layers)])  # (sic: HF's singular)

    def __call__(self, x, mask, image):
        for layer in self.layer:
            x = layer(x, mask, image)
        return x


class Blip2QFormerModel(nnx.Module):
    def __init__(self, cfg: Blip2QFormerConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.layernorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.encoder = Blip2QFormerEncoder(cfg, **kw)

    def __call__(self, embeds: jax.Array, attention_mask: jax.Array | None = None,
                 image: jax.Array | None = None) -> jax.Array:
        """Every output state [B, L, H]. With ``image`` [B, T, E] the input are the queries (cross-attending to it);
        without, text embeddings whose padding ``attention_mask`` [B, L] hides from the keys."""
        mask = None if attention_mask is None else (attention_mask[:, None, None, :] > 0)
        return self.encoder(self.layernorm(embeds), mask, image)


class Blip2TextEmbeddings(nnx.Module):
    """Word plus absolute position embeddings; the Q-Former's own LayerNorm follows."""

    def __init__(self, cfg: Blip2QFormerConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.word_embeddings = layers.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
        self.position_embeddings = layers.embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), **kw)

    def __call__(self, input_ids: jax.Array, token_embeds: jax.Array | None = None) -> jax.Array:
        positions = self.position_embeddings.embedding[...][: input_ids.shape[1]]
        tokens = self.word_embeddings(input_ids) if token_embeds is None else token_embeds
        return tokens + positions.astype(self.word_embeddings.dtype)[None]


# --------------------------------------------------------------------------------------------------------------------
# The retrieval model


class Blip2Model(nnx.Module):
    """``Blip2ForImageTextRetrieval``'s ITC path with the tower surface of ``clip.CLIPModel``.

    Differences from CLIP the methods must know: ``encode_image`` is [B, Q, D] (one embedding per query) and is
    scored with :func:`image_text_similarity` (max over queries); ``image_tokens``' pooled [B, D] is a single-vector
    stand-in (see there); the text's global feature sits at [CLS], position 0.
    """

    def __init__(self, cfg: Blip2Config, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        q = cfg.qformer
        self.config = cfg
        self.vision_model = Blip2VisionModel(cfg.vision, **kw)
        self.query_tokens = layers.param(nnx.initializers.zeros_init(), (1, cfg.num_query_tokens, q.hidden_size),
                                         (None, None, "embed"), param_dtype=param_dtype, rngs=rngs)
        self.embeddings = Blip2TextEmbeddings(q, **kw)
        self.qformer = Blip2QFormerModel(q, **kw)
        self.vision_projection = layers.dense(q.hidden_size, cfg.projection_dim, ("embed", "proj"), **kw)
        self.text_projection = layers.dense(q.hidden_size, cfg.projection_dim, ("embed", "proj"), **kw)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init_value, param_dtype))
        self.dtype = dtype

    # Image side

    def query_states(self, pixels: jax.Array) -> jax.Array:
        """The Q-Former's query outputs [B, Q, H] for images (before ``vision_projection``)."""
        image = self.vision_model(pixels).last_hidden_state
        tokens = self.query_tokens[...]
        queries = jnp.broadcast_to(tokens, (image.shape[0],) + tokens.shape[1:])
        return self.qformer(queries.astype(self.dtype), image=image)

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """Projected query embeddings [B, Q, proj_dim], not normalised (HF's ITC ``image_embeds`` before
        ``normalize``). Score them against texts with :func:`image_text_similarity`."""
        return self.vision_projection(self.query_states(pixels))

    def image_tokens(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The projected queries as tokens [B, Q, P], and a single pooled vector [B, P]: the mean of the
        per-query *normalised* embeddings, so every query weighs the same whatever its norm (as under the max of
        cosines BLIP-2 scores with). The pooled vector is not normalised again."""
        tokens = self.encode_image(pixels)
        return tokens, l2_normalize(tokens).mean(axis=1)

    # Text side

    def text_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                    token_embeds: jax.Array | None = None) -> jax.Array:
        """The Q-Former's outputs [B, L, H] for text alone (no queries, no cross-attention)."""
        length, positions = input_ids.shape[1], self.config.qformer.max_position_embeddings
        if length > positions:
            raise ValueError(f"text length {length} exceeds the Q-Former's {positions} positions; tokenize with "
                             "truncation")
        return self.qformer(self.embeddings(input_ids, token_embeds), attention_mask)

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Projected [CLS] embedding [B, proj_dim], not normalised (HF's ITC ``text_embeds`` before ``normalize``)."""
        return self.text_projection(self.text_states(input_ids, attention_mask)[:, 0])

    def encode_text_embeds(self, input_ids: jax.Array, attention_mask: jax.Array | None,
                           token_embeds: jax.Array) -> jax.Array:
        """``encode_text`` with the word embeddings given (e.g. with a pseudo word token spliced in)."""
        return self.text_projection(self.text_states(input_ids, attention_mask, token_embeds)[:, 0])

    def text_tokens(self, input_ids: jax.Array, attention_mask: jax.Array | None = None):
        """Every text state through ``text_projection``: ([B, L, P], pooled at [CLS] = position 0 [B, P])."""
        tokens = self.text_projection(self.text_states(input_ids, attention_mask))
        return tokens, tokens[:, 0]

    def text_global_positions(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """[CLS] carries the global feature: position 0 for every row."""
        return jnp.zeros(input_ids.shape[:1], jnp.int32)

    def image_text_similarity(self, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
        """See the module function :func:`image_text_similarity` (max over queries of cosines, [B, N])."""
        return image_text_similarity(image_emb, text_emb)


# --------------------------------------------------------------------------------------------------------------------
# Loading


def from_pretrained(path: str, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> Blip2Model:
    """A Blip2Model from a transformers ``Blip2ForImageTextRetrieval`` directory (e.g. Salesforce/blip2-itm-vit-g).

    Inside ``zscir_jax.sharding.activate(mesh)`` every weight is placed with its target sharding.
    """
    from zscir_jax.models.blip2 import params as blip2_weights

    return blip2_weights.load_blip2(path, dtype=dtype, param_dtype=param_dtype)


def load_tokenizer(path: str, max_length: int | None = None):
    """The checkpoint's BERT tokenizer (``vocab.txt`` / ``tokenizer.json``) through transformers, padded and truncated
    to ``max_length`` (default: LAVIS's 32, capped by the Q-Former's positions): a
    ``zscir_jax.data.tokenizer.Tokenizer``. Its ids start with [CLS], whose state is the text embedding."""
    from zscir_jax.data import tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    return tokenizer.Tokenizer.from_dir(path, _text_length(path) if max_length is None else max_length)


def _text_length(path: str) -> int:
    config = os.path.join(path, "config.json")
    positions = None
    if os.path.isfile(config):
        with open(config) as f:
            positions = (json.load(f).get("qformer_config") or {}).get("max_position_embeddings")
    return min(DEFAULT_TEXT_LENGTH, int(positions)) if positions else DEFAULT_TEXT_LENGTH
