"""transformers CLIP checkpoints -> ``zscir_jax.models.clip``.

Our modules use HF's names, so the map is a few suffix rules: Linear ``weight`` -> transposed ``kernel``, LayerNorm
``weight`` -> ``scale``, Embedding ``weight`` -> ``embedding``, the patch Conv2d -> an HWIO kernel.
"""
from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
from flax import nnx

from zscir_jax.models.clip import modeling as clip
from zscir_jax.weights import loader

_NORMS = r"(layer_norm1|layer_norm2|pre_layrnorm|post_layernorm|final_layer_norm)"

# Buffers some checkpoints carry that are not parameters.
IGNORE = (r".*position_ids",)


def rules(src_prefix: str = "", dst_prefix: str = "") -> list[loader.Rule]:
    """Rules for a CLIP (or CLIP vision tower) whose HF names start with ``src_prefix`` (a regex) and whose place in
    our module tree starts with ``dst_prefix`` (e.g. LLaVA's ``model\\.vision_tower\\.`` -> ``vision_tower.``)."""
    s, d = src_prefix, dst_prefix
    return [
        loader.Rule(rf"{s}(.*)\.(token_embedding|position_embedding)\.weight", rf"{d}\1.\2.embedding"),
        loader.Rule(rf"{s}(.*)\.patch_embedding\.weight", rf"{d}\1.patch_embedding.kernel", loader.conv_oihw_to_hwio),
        loader.Rule(rf"{s}(.*)\.{_NORMS}\.weight", rf"{d}\1.\2.scale"),
        loader.Rule(rf"{s}(.*)\.{_NORMS}\.bias", rf"{d}\1.\2.bias"),
        loader.Rule(rf"{s}(.*\.embeddings\.class_embedding)", rf"{d}\1"),
        loader.Rule(rf"{s}(logit_scale)", rf"{d}\1"),
        loader.Rule(rf"{s}(.*)\.weight", rf"{d}\1.kernel", loader.transpose),
        loader.Rule(rf"{s}(.*)\.bias", rf"{d}\1.bias"),
    ]


def _is_hf_dir(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return "vision_config" in json.load(f)


def load_clip(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32) -> clip.CLIPModel:
    """Load a transformers CLIP directory or an OpenCLIP checkpoint (file or directory) into a CLIPModel."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"CLIP checkpoint {path!r} does not exist. Nothing is downloaded at run time: on a machine with internet, "
            f"run e.g. `huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR` and pass DIR."
        )
    if os.path.isdir(path) and _is_hf_dir(path):
        cfg = clip.CLIPConfig.from_hf_dict(loader.read_json(os.path.join(path, "config.json")))
        tensors = loader.LazyTensors(loader.safetensors_files(path))
        source = path
    else:
        from zscir_jax.models.clip import openclip

        cfg, tensors = openclip.read_as_hf(path)
        source = f"{path} (OpenCLIP layout)"
    abstract = loader.abstract_model(lambda: clip.CLIPModel(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    return loader.load_state(abstract, tensors, rules(), ignore=IGNORE, source=source)


def load_vision(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32) -> clip.CLIPVisionModel:
    """The vision tower alone from a transformers CLIP (or CLIPVisionModel) directory; text weights are skipped."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"CLIP checkpoint directory {path!r} (with config.json) does not exist. On a machine with internet run "
            f"e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR` and pass DIR."
        )
    d = loader.read_json(os.path.join(path, "config.json"))
    cfg = clip.CLIPVisionConfig.from_hf_dict(d.get("vision_config", d))
    abstract = loader.abstract_model(lambda: clip.CLIPVisionModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                                           rngs=nnx.Rngs(0)))
    skip = IGNORE + (r"text_model\..*", r"(text|visual)_projection\..*", r"logit_scale")
    return loader.load_state(abstract, loader.LazyTensors(loader.safetensors_files(path)), rules(), ignore=skip,
                             source=path)


def strip_prefix(tensors, prefix: str) -> dict:
    """The tensors under ``prefix`` with it removed (e.g. one tower out of a bigger checkpoint)."""
    pattern = re.compile(re.escape(prefix))
    return {k[len(prefix):]: tensors[k] for k in tensors if pattern.match(k)}
