"""transformers ``BlipForImageTextRetrieval`` checkpoints -> ``zscir_jax.models.blip`` (the ITC towers only).

Our modules use HF's names, so the map is a few suffix rules: Linear ``weight`` -> transposed ``kernel``, LayerNorm
``weight`` -> ``scale``, Embedding ``weight`` -> ``embedding``, the patch Conv2d -> an HWIO kernel, and the vision
embeddings' plain ``[1, (n,) d]`` parameters lose their leading ones.

A retrieval checkpoint also holds what the ITC path never reads: the ITM head (``itm_head.*``) and the text encoder's
cross-attention layers (``text_encoder.encoder.layer.N.crossattention.*``, present because BLIP's text config has
``is_decoder=True``). They are skipped by the ``IGNORE`` rules below, so they are neither loaded nor reported.

Tower membership by parameter path: image tower ``^(vision_model|vision_proj)\\.``, text tower
``^(text_encoder|text_proj)\\.``; ``logit_scale`` belongs to neither.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax.models.blip import modeling as blip
from zscir_jax.weights import loader

IMAGE_TOWER = r"^(vision_model|vision_proj)\."
TEXT_TOWER = r"^(text_encoder|text_proj)\."

_NORMS = r"(layer_norm1|layer_norm2|post_layernorm|LayerNorm)"

IGNORE = (
    r"itm_head\..*",  # the image-text matching head (ITM mode)
    r"text_encoder\.encoder\.layer\.\d+\.crossattention\..*",  # text-to-image cross-attention (ITM mode)
    r"text_encoder\.pooler\..*",  # BERT's tanh pooler, absent from retrieval checkpoints (add_pooling_layer=False)
    r".*position_ids",  # a buffer some checkpoints carry
)


def _class_embedding(x: np.ndarray) -> np.ndarray:
    """HF's [1, 1, d] parameter -> [d]."""
    return x.reshape(x.shape[-1])


def _position_table(x: np.ndarray) -> np.ndarray:
    """HF's [1, n, d] parameter -> [n, d]."""
    return x.reshape(x.shape[-2:])


def _temp_to_logit_scale(temp: np.ndarray) -> np.ndarray:
    return np.log(1.0 / np.asarray(temp, np.float32))


def rules() -> list[loader.Rule]:
    return [
        loader.Rule(r"(.*\.embeddings\.class_embedding)", r"\1", _class_embedding),
        loader.Rule(r"(.*\.embeddings\.position_embedding)", r"\1", _position_table),
        loader.Rule(r"(.*)\.patch_embedding\.weight", r"\1.patch_embedding.kernel", loader.conv_oihw_to_hwio),
        loader.Rule(r"(.*)\.(word_embeddings|position_embeddings)\.weight", r"\1.\2.embedding"),
        loader.Rule(rf"(.*)\.{_NORMS}\.weight", r"\1.\2.scale"),
        loader.Rule(rf"(.*)\.{_NORMS}\.bias", r"\1.\2.bias"),
        loader.Rule(r"logit_scale", "logit_scale"),
        loader.Rule(r"temp", "logit_scale", _temp_to_logit_scale),  # original BLIP's temperature, if converted
        loader.Rule(r"(.*)\.weight", r"\1.kernel", loader.transpose),
        loader.Rule(r"(.*)\.bias", r"\1.bias"),
    ]


class _WithLogitScale(Mapping):
    """``tensors`` plus a ``logit_scale`` of ``value`` when the checkpoint has no temperature of its own (HF's
    retrieval checkpoints do not: their ITC score is the plain cosine)."""

    def __init__(self, tensors: Mapping, value: float):
        self.tensors = tensors
        self.extra = {} if {"logit_scale", "temp"} & set(tensors) else {"logit_scale": np.float32(value)}

    def __getitem__(self, name):
        return self.extra[name] if name in self.extra else self.tensors[name]

    def __iter__(self):
        yield from self.tensors
        yield from self.extra

    def __len__(self) -> int:
        return len(self.tensors) + len(self.extra)


def load_blip(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32) -> blip.BlipModel:
    """Load a transformers ``BlipForImageTextRetrieval`` directory (one or sharded safetensors) into a BlipModel."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"BLIP checkpoint directory {path!r} (with config.json) does not exist. Nothing is downloaded at run time: "
            f"on a machine with internet, run e.g. `huggingface-cli download Salesforce/blip-itm-base-coco "
            f"--local-dir DIR` and pass DIR."
        )
    cfg = blip.BlipConfig.from_hf_dict(loader.read_json(os.path.join(path, "config.json")))
    tensors = _WithLogitScale(loader.LazyTensors(loader.safetensors_files(path)), cfg.logit_scale_init_value)
    abstract = loader.abstract_model(lambda: blip.BlipModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                                            rngs=nnx.Rngs(0)))
    return loader.load_state(abstract, tensors, rules(), ignore=IGNORE, source=path)
