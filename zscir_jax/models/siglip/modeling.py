"""SigLIP (and fixed-resolution SigLIP 2) towers in Flax NNX, numerically matching transformers' ``SiglipModel``.

Module and parameter names mirror the Hugging Face layout (``vision_model.encoder.layers.0.self_attn.q_proj``,
``vision_model.head.probe``, ``text_model.head``...), so the weight map in ``params.py`` stays a few suffix rules. The
encoder blocks are CLIP's (same pre-LN layer, same names); what differs from CLIP:

- Vision: patches only (no CLS), a biased patch conv, and the pooled embedding is the MAP head's output (multihead
  attention pooling: a learned probe attends over every post-layernormed patch, then LayerNorm + MLP residual).
- Text: bidirectional attention and the pooled embedding is the LAST position (SigLIP pads to ``max_length`` with its
  pad id and was trained that way), sent through the text ``head`` Linear.
- No projection after either tower: the joint space is the vision width (= the text head's ``projection_size``).
- ``logit_scale`` and ``logit_bias`` are kept for the sigmoid loss: ``logits = cos * exp(scale) + bias``.

Images are NHWC float arrays, already normalised with the checkpoint's mean and std (SigLIP: 0.5, 0.5).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax.models import layers
from zscir_jax.models.clip import modeling as clip

Dtype = Any
TowerOutput = clip.TowerOutput


# --------------------------------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True
    # SigLIP 2 (``Siglip2Model``) checkpoints: the patch embedding is a Linear over flattened (p, p, C) patches and the
    # position table is resized per image (NaFlex). Only the table's own square grid is supported here.
    naflex: bool = False

    @classmethod
    def from_hf_dict(cls, d: dict, naflex: bool = False) -> "SiglipVisionConfig":
        kwargs = layers.known_fields(cls, d)
        for key in ("image_size", "patch_size"):  # transformers also accepts [h, w]; SigLIP's are square
            if key in kwargs:
                kwargs[key] = layers.square_side(kwargs[key], key)
        if naflex:
            side = math.isqrt(int(d.get("num_patches", 256)))
            kwargs["image_size"] = side * int(kwargs.get("patch_size", cls.patch_size))
        return cls(**kwargs, naflex=naflex)


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    pad_token_id: int = 1
    projection_size: int | None = None  # the text head's output width; None = hidden_size (as transformers)

    @property
    def head_size(self) -> int:
        return self.hidden_size if self.projection_size is None else self.projection_size

    @classmethod
    def from_hf_dict(cls, d: dict) -> "SiglipTextConfig":
        return cls(**layers.known_fields(cls, d))


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    vision: SiglipVisionConfig = SiglipVisionConfig()
    text: SiglipTextConfig = SiglipTextConfig()
    # transformers applies a given attention_mask; the released checkpoints were trained without one (every position,
    # padding included, is attended and the last one pooled). False: encode_text ignores the mask, as
    # ``get_text_features(input_ids)``; True: it is applied, as ``get_text_features(input_ids, attention_mask)``.
    text_attention_mask: bool = False

    def __post_init__(self):
        if not self.vision.vision_use_head:
            raise ValueError("a SigLIP vision tower without its MAP head (vision_use_head=False) has no pooled "
                             "image embedding; load it as a vision encoder, not as a SiglipModel")
        if self.text.head_size != self.vision.hidden_size:
            raise ValueError(f"the text head's width {self.text.head_size} differs from the vision width "
                             f"{self.vision.hidden_size}: the two towers do not share a joint space")

    @property
    def projection_dim(self) -> int:
        """The joint space's width: SigLIP has no projection, so it is the vision width (= the text head's)."""
        return self.vision.hidden_size

    @classmethod
    def from_hf_dict(cls, d: dict, text_attention_mask: bool | None = None) -> "SiglipConfig":
        """A transformers ``config.json`` (model_type siglip or siglip2) or our ``to_hf_dict``; the mask option is
        ours (absent from transformers' configs: False) unless given."""
        if text_attention_mask is None:
            text_attention_mask = bool(d.get("text_attention_mask", False))
        return cls(
            vision=SiglipVisionConfig.from_hf_dict(d.get("vision_config", {}), naflex=d.get("model_type") == "siglip2"),
            text=SiglipTextConfig.from_hf_dict(d.get("text_config", {})),
            text_attention_mask=text_attention_mask,
        )

    def to_hf_dict(self) -> dict:
        vision = {k: v for k, v in dataclasses.asdict(self.vision).items() if k != "naflex"}
        if self.vision.naflex:
            vision["num_patches"] = (self.vision.image_size // self.vision.patch_size) ** 2
        return {
            "model_type": "siglip2" if self.vision.naflex else "siglip",
            "architectures": ["Siglip2Model" if self.vision.naflex else "SiglipModel"],
            "text_attention_mask": self.text_attention_mask,
            "vision_config": vision,
            "text_config": dataclasses.asdict(self.text),
        }

    @classmethod
    def tiny(cls, vocab_size: int = 1000, image_size: int = 32, patch_size: int = 8, width: int = 32,
             layers: int = 2, max_length: int = 16, pad_token_id: int = 1) -> "SiglipConfig":
        """A few-thousand-parameter SigLIP for tests and the CPU demo."""
        heads = max(1, width // 16)
        vision = SiglipVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                    num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
        text = SiglipTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                                num_hidden_layers=layers, num_attention_heads=heads,
                                max_position_embeddings=max_length, pad_token_id=pad_token_id)
        return cls(vision, text)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks (the encoder layers and MLP are CLIP's: identical computation and parameter names)


def _resize_patch_positions(table: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
    """Resize a [g*g, D] patch position table to grid_h x grid_w with torch's bicubic (as transformers'
    ``interpolate_pos_encoding``). ``layers.resize_position_table`` expects a CLS row first: a zero row is put in
    front and dropped."""
    with_cls = jnp.concatenate([jnp.zeros_like(table[:1]), table], axis=0)
    return layers.resize_position_table(with_cls, grid_h, grid_w)[1:]


class SiglipVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, dtype, param_dtype, rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.grid = cfg.image_size // p
        self.naflex = cfg.naflex
        self.patch_embedding = nnx.Conv(
            cfg.num_channels, d, kernel_size=(p, p), strides=(p, p), padding="VALID",
            dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "channels", "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
        )
        self.position_embedding = nnx.Embed(
            self.grid * self.grid, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(d ** -0.5), (None, "embed")),
        )
        self.dtype = dtype

    def __call__(self, pixels: jax.Array) -> jax.Array:
        b = pixels.shape[0]
        patches = self.patch_embedding(pixels.astype(self.dtype))  # [b, h/p, w/p, d]
        gh, gw = patches.shape[1], patches.shape[2]
        if self.naflex and (gh, gw) != (self.grid, self.grid):
            raise ValueError(f"this SigLIP 2 (NaFlex) tower runs only at its native {self.grid}x{self.grid} patch "
                             f"grid, got {gh}x{gw}: its per-image bilinear position resizing is not implemented")
        positions = _resize_patch_positions(self.position_embedding.embedding[...], gh, gw)
        return patches.reshape(b, gh * gw, -1) + positions.astype(patches.dtype)[None]


class SiglipAttentionPool(nnx.Module):
    """torch's ``nn.MultiheadAttention`` for one query (the probe): q, k, v come out of one fused ``in_proj``."""

    def __init__(self, dim: int, heads: int, *, dtype, param_dtype, rngs):
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = layers.dense(dim, 3 * dim, ("embed", "heads"), **kw)
        self.out_proj = layers.dense(dim, dim, ("heads", "embed"), **kw)

    def __call__(self, query: jax.Array, x: jax.Array) -> jax.Array:
        # The fused projection is applied in slices: q comes from the probe, k and v from the tokens.
        d = x.shape[-1]
        kernel, bias = self.in_proj.kernel[...], self.in_proj.bias[...]
        q = self._project(query, kernel[:, :d], bias[:d])
        k = self._project(x, kernel[:, d:2 * d], bias[d:2 * d])
        v = self._project(x, kernel[:, 2 * d:], bias[2 * d:])
        return self.out_proj(layers.attend(q, k, v, None, self.heads))

    def _project(self, x, kernel, bias):
        dtype = self.in_proj.dtype
        return jnp.dot(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class SiglipMultiheadAttentionPoolingHead(nnx.Module):
    """MAP: a learned probe attends over every token; then probe + mlp(layernorm(probe)). Returns [B, D]."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.probe = nnx.Param(
            nnx.with_partitioning(nnx.initializers.xavier_uniform(), (None, None, "embed"))(
                rngs.params(), (1, 1, d), param_dtype)
        )
        self.attention = SiglipAttentionPool(d, cfg.num_attention_heads, **kw)
        self.layernorm = layers.layer_norm(d, cfg.layer_norm_eps, **kw)
        self.mlp = clip.CLIPMLP(d, cfg.intermediate_size, cfg.hidden_act, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        pooled = self.attention(probe, x)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


# --------------------------------------------------------------------------------------------------------------------
# Towers


class SiglipVisionTransformer(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embeddings = SiglipVisionEmbeddings(cfg, **kw)
        self.encoder = clip.CLIPEncoder(cfg, **kw)
        self.post_layernorm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.head = SiglipMultiheadAttentionPoolingHead(cfg, **kw)

    def __call__(self, pixels: jax.Array, output_hidden_states: bool = False) -> TowerOutput:
        x, states = self.encoder(self.embeddings(pixels), None, output_hidden_states)
        x = self.post_layernorm(x)  # transformers' last_hidden_state is after post_layernorm (CLIP's is before)
        return TowerOutput(x, self.head(x), states)


class SiglipTextTransformer(nnx.Module):
    def __init__(self, cfg: SiglipTextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.embeddings = clip.CLIPTextEmbeddings(cfg, **kw)
        self.encoder = clip.CLIPEncoder(cfg, **kw)
        self.final_layer_norm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.head = layers.dense(cfg.hidden_size, cfg.head_size, ("embed", "proj"), **kw)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 output_hidden_states: bool = False, token_embeds: jax.Array | None = None) -> TowerOutput:
        """As transformers' ``SiglipTextModel``: bidirectional attention, masked only where ``attention_mask`` is
        given; ``last_hidden_state`` after final_layer_norm; pooled = head(last position)."""
        l = input_ids.shape[1]
        if l > self.config.max_position_embeddings:
            raise ValueError(f"text length {l} exceeds the model's context length "
                             f"{self.config.max_position_embeddings}; tokenize with truncation")
        mask = None if attention_mask is None else (attention_mask[:, None, None, :] > 0)
        x, states = self.encoder(self.embeddings(input_ids, token_embeds), mask, output_hidden_states)
        x = self.final_layer_norm(x)
        return TowerOutput(x, self.head(x[:, -1]), states)


class SiglipModel(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        self.vision_model = SiglipVisionTransformer(cfg.vision, **kw)
        self.text_model = SiglipTextTransformer(cfg.text, **kw)
        # Scalars here; the checkpoint's [1]-shaped tensors are reshaped on load. Inits are big_vision's.
        self.logit_scale = nnx.Param(jnp.asarray(math.log(10.0), param_dtype))
        self.logit_bias = nnx.Param(jnp.asarray(-10.0, param_dtype))

    def _text_mask(self, attention_mask):
        return attention_mask if self.config.text_attention_mask else None

    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """MAP-pooled embedding [B, D], not normalised (= HF ``get_image_features(...).pooler_output``)."""
        return self.vision_model(pixels).pooler_output

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """head(last position) [B, D], not normalised (= HF ``get_text_features(input_ids).pooler_output``; the mask
        is used only with ``config.text_attention_mask``, see ``SiglipConfig``)."""
        return self.text_model(input_ids, self._text_mask(attention_mask)).pooler_output

    def encode_text_embeds(self, input_ids: jax.Array, attention_mask: jax.Array | None,
                           token_embeds: jax.Array) -> jax.Array:
        """``encode_text`` with the token embeddings given (e.g. with a pseudo word token spliced in)."""
        return self.text_model(input_ids, self._text_mask(attention_mask), token_embeds=token_embeds).pooler_output

    def image_tokens(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Every patch token after post_layernorm ([B, m, D]; no CLS, no projection: the joint space is the hidden
        width) and the MAP head's output [B, D], which is not one of the tokens."""
        out = self.vision_model(pixels)
        return out.last_hidden_state, out.pooler_output

    def text_tokens(self, input_ids: jax.Array, attention_mask: jax.Array | None = None):
        """Every token after final_layer_norm through the text head ([B, L, D]), and the last one [B, D]."""
        out = self.text_model(input_ids, self._text_mask(attention_mask))
        tokens = self.text_model.head(out.last_hidden_state)
        return tokens, tokens[jnp.arange(tokens.shape[0]), self.text_global_positions(input_ids, attention_mask)]

    def text_global_positions(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """The last position of every row, padding or not: SigLIP pools there (its texts are padded to max_length)."""
        b, l = input_ids.shape
        return jnp.full((b,), l - 1, jnp.int32)

    def logits(self, image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
        """Sigmoid-loss logits [n_images, n_texts]: cosine * exp(logit_scale) + logit_bias (as transformers)."""
        normalise = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)
        cos = normalise(image_embeds) @ normalise(text_embeds).T
        return cos * jnp.exp(self.logit_scale[...]) + self.logit_bias[...]


# --------------------------------------------------------------------------------------------------------------------
# Loading


def from_pretrained(path: str, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                    text_attention_mask: bool | None = None) -> SiglipModel:
    """A SiglipModel from a local transformers SigLIP (or fixed-grid SigLIP 2) directory. ``text_attention_mask``:
    see ``SiglipConfig`` (None: what config.json says; transformers' configs do not, which means False).

    Inside ``zscir_jax.sharding.activate(mesh)`` every weight is placed with its target sharding.
    """
    from zscir_jax.models.siglip import params as siglip_weights

    return siglip_weights.load_siglip(path, dtype=dtype, param_dtype=param_dtype,
                                      text_attention_mask=text_attention_mask)


def load_tokenizer(path: str, max_length: int | None = None):
    """The checkpoint's tokenizer through transformers, padded to ``max_length`` with its pad id (SigLIP was trained
    on max_length-padded texts) and truncated: a ``zscir_jax.data.tokenizer.Tokenizer``. ``max_length`` defaults to
    the text tower's context length (64 when config.json does not say).

    SigLIP's own tokenizer is SentencePiece (``spiece.model``) and needs the ``sentencepiece`` package; SigLIP 2's
    (Gemma) ships a ``tokenizer.json`` and does not.
    """
    from zscir_jax.data import tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    _require_sentencepiece_if_needed(path)
    return tokenizer.Tokenizer.from_dir(path, _context_length(path) if max_length is None else max_length)


def _require_sentencepiece_if_needed(path: str) -> None:
    if os.path.isfile(os.path.join(path, "tokenizer.json")) or not os.path.isfile(os.path.join(path, "spiece.model")):
        return
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise ImportError(f"{path!r} holds a SentencePiece tokenizer (spiece.model): `pip install sentencepiece` "
                          "to load it") from None


def _context_length(path: str) -> int:
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            length = (json.load(f).get("text_config") or {}).get("max_position_embeddings")
        if length:
            return int(length)
    return SiglipTextConfig.max_position_embeddings
