"""LLaVA-style multimodal LM: CLIP vision tower -> 2-layer GELU projector -> image tokens inside an LLM prompt.

Matches transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5): the image features are one vision layer's hidden
states (``vision_feature_layer``, default -2) without the CLS token ("default" strategy) or with it ("full"); the
prompt carries one ``image_token_id`` placeholder per image feature (as transformers v5's processor expands it), and
the projected features replace those placeholders in order, image after image.

The composed embedding of (image, text) for retrieval is ``llm.last_token_pool(model.hidden_states(...), mask)``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import clip, llm
from zscir_jax.weights import loader

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class MLLMConfig:
    vision: clip.CLIPVisionConfig = clip.CLIPVisionConfig()
    text: llm.LLMConfig = llm.LLMConfig()
    image_token_id: int = 32000
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', "
                             f"got {self.vision_feature_select_strategy!r}")
        if self.projector_hidden_act not in _ACTIVATIONS:
            raise ValueError(f"projector_hidden_act {self.projector_hidden_act!r} is not supported")

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

    @property
    def image_seq_length(self) -> int:
        """Placeholders per image: patches (+1 with the "full" strategy)."""
        n = (self.vision.image_size // self.vision.patch_size) ** 2
        return n + (self.vision_feature_select_strategy == "full")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "MLLMConfig":
        if d.get("model_type", "llava") != "llava":
            raise ValueError(f"model_type {d.get('model_type')!r} is not a LLaVA config")
        vision = dict(d.get("vision_config") or {})
        if vision.get("model_type", "clip_vision_model") not in ("clip_vision_model", "clip"):
            raise ValueError(f"vision tower {vision.get('model_type')!r} is not supported (CLIP only)")
        text = dict(d.get("text_config") or {})
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in d:
            text["tie_word_embeddings"] = d["tie_word_embeddings"]
        layer = d.get("vision_feature_layer", -2)
        return cls(
            vision=clip.CLIPVisionConfig.from_hf_dict(vision),
            text=llm.LLMConfig.from_hf_dict(text),
            image_token_id=d.get("image_token_id", d.get("image_token_index", 32000)),
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
            projector_hidden_act=d.get("projector_hidden_act", "gelu"),
            projector_bias=d.get("multimodal_projector_bias", True),
        )

    @classmethod
    def tiny(cls) -> "MLLMConfig":
        vision = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=16, patch_size=4)
        return cls(vision=vision, text=llm.LLMConfig.tiny(), image_token_id=127)


class Projector(nnx.Module):
    def __init__(self, cfg: MLLMConfig, *, rngs, dtype, param_dtype):
        din = cfg.vision.hidden_size * len(cfg.feature_layers)
        D = cfg.text.hidden_size
        init = nnx.initializers.normal(0.02)
        kw = dict(use_bias=cfg.projector_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))
        self.linear_1 = nnx.Linear(din, D, kernel_init=nnx.with_partitioning(init, (None, "embed")), **kw)
        self.linear_2 = nnx.Linear(D, D, kernel_init=nnx.with_partitioning(init, (None, "embed")), **kw)
        self.act = cfg.projector_hidden_act

    def __call__(self, x):
        return self.linear_2(_ACTIVATIONS[self.act](self.linear_1(x)))


def splice_image_features(text_embeds: jax.Array, input_ids: jax.Array, image_token_id: int,
                          features: jax.Array) -> jax.Array:
    """Put ``features`` [n_images, T, D] at the placeholder positions of ``input_ids``, in reading order.

    Same rule as transformers' ``masked_scatter``: the k-th placeholder of the flattened batch gets the k-th feature.
    """
    is_image = input_ids == image_token_id
    flat = features.reshape(-1, features.shape[-1]).astype(text_embeds.dtype)
    if not isinstance(input_ids, jax.core.Tracer):
        n_tokens, n_feats = int(jnp.sum(is_image)), flat.shape[0]
        if n_tokens != n_feats:
            raise ValueError(f"the prompt holds {n_tokens} image placeholder tokens (id {image_token_id}) but the "
                             f"images give {n_feats} features; expand each image to "
                             f"{features.shape[1]} placeholders")
    index = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, flat.shape[0] - 1).reshape(is_image.shape)
    return jnp.where(is_image[..., None], flat[index], text_embeds)


class MLLM(nnx.Module):
    def __init__(self, cfg: MLLMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = cfg
        self.vision_tower = clip.CLIPVisionModel(cfg.vision, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.multi_modal_projector = Projector(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.llm = llm.LLM(cfg.text, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def image_features(self, pixels: jax.Array) -> jax.Array:
        """Projected image tokens [n_images, T, D_text] from NHWC normalised pixels."""
        states = self.vision_tower(pixels, output_hidden_states=True).hidden_states
        feats = [states[i] for i in self.config.feature_layers]
        if self.config.vision_feature_select_strategy == "default":
            feats = [f[:, 1:] for f in feats]  # drop CLS
        return self.multi_modal_projector(jnp.concatenate(feats, axis=-1))

    def embed(self, input_ids: jax.Array, pixels: jax.Array | None) -> jax.Array:
        """Input embeddings with image features spliced in at the placeholders."""
        is_image = input_ids == self.config.image_token_id
        # The placeholder id may lie outside the text vocabulary: look up a harmless id there.
        text = self.llm.embed(jnp.where(is_image, 0, input_ids))
        if pixels is None:
            return text
        embeds = splice_image_features(text, input_ids, self.config.image_token_id, self.image_features(pixels))
        return sharding.constrain(embeds, ("batch", "length", "embed"))

    def hidden_states(self, input_ids, pixels=None, attention_mask=None):
        """Final-norm LLM hidden states [B, L, D]."""
        return self.llm.hidden_states(attention_mask=attention_mask, inputs_embeds=self.embed(input_ids, pixels))

    def __call__(self, input_ids, pixels=None, attention_mask=None):
        """Logits [B, L, V]."""
        return self.llm.logits(self.hidden_states(input_ids, pixels, attention_mask))


def from_pretrained(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32) -> MLLM:
    """Load a local transformers LLaVA directory (``LlavaForConditionalGeneration``, v4 or v5 tensor names)."""
    from zscir_jax.models.mllm import params as llava_weights

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"LLaVA checkpoint directory {path!r} not found. Download one first, e.g. "
            "`huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir DIR`, and pass DIR."
        )
    cfg = MLLMConfig.from_hf_dict(loader.read_json(os.path.join(path, "config.json")))
    tensors = loader.LazyTensors(loader.safetensors_files(path))
    abstract = loader.abstract_model(lambda: MLLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    return loader.load_state(abstract, tensors, llava_weights.rules(),
                             ignore=llava_weights.ignore(cfg.text.tie_word_embeddings), source=path)


@nnx.jit
def _embed_jit(model: MLLM, input_ids, pixels):
    return model.embed(input_ids, pixels)


def generate(model: MLLM, input_ids, pixels=None, attention_mask=None, max_new_tokens: int = 32, **kwargs) -> jax.Array:
    """Generate [B, N] tokens after (image, text) prompts; ``kwargs`` as :func:`zscir_jax.models.llm.generate`."""
    input_ids = jnp.asarray(input_ids)
    if pixels is not None:  # checks the placeholder count eagerly, with a clear message
        n = int(jnp.sum(input_ids == model.config.image_token_id))
        expected = pixels.shape[0] * model.config.image_seq_length
        if n != expected:
            raise ValueError(f"the prompt holds {n} image placeholder tokens but {pixels.shape[0]} image(s) need "
                             f"{expected}")
    embeds = _embed_jit(model, input_ids, pixels)
    return llm.generate(model.llm, None, attention_mask, max_new_tokens, inputs_embeds=embeds, **kwargs)
