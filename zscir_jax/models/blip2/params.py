"""transformers ``Blip2ForImageTextRetrieval`` checkpoints -> ``zscir_jax.models.blip2``.

Our modules use HF's names, so the map is a few suffix rules: Linear ``weight`` -> transposed ``kernel``, LayerNorm
``weight`` -> ``scale``, Embedding ``weight`` -> ``embedding``, the patch Conv2d -> an HWIO kernel; the raw parameters
(``query_tokens``, the vision class and position embeddings) keep their shapes.
"""
from __future__ import annotations

import collections
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax.models.blip2 import modeling as blip2
from zscir_jax.weights import loader

_NORMS = r"(layer_norm1|layer_norm2|post_layernorm|layernorm|LayerNorm)"

# Tensors the ITC path does not use: the ITM head (it scores the mixed query+text pass), and buffers.
IGNORE = (r"itm_head\..*", r".*position_ids")


def rules() -> list[loader.Rule]:
    return [
        loader.Rule(r"(.*)\.(word_embeddings|position_embeddings)\.weight", r"\1.\2.embedding"),
        loader.Rule(r"(.*)\.patch_embedding\.weight", r"\1.patch_embedding.kernel", loader.conv_oihw_to_hwio),
        loader.Rule(rf"(.*)\.{_NORMS}\.weight", r"\1.\2.scale"),
        loader.Rule(rf"(.*)\.{_NORMS}\.bias", r"\1.\2.bias"),
        loader.Rule(r"(vision_model\.embeddings\.(class_embedding|position_embedding))", r"\1"),
        loader.Rule(r"(query_tokens|logit_scale)", r"\1"),
        loader.Rule(r"(.*)\.weight", r"\1.kernel", loader.transpose),
        loader.Rule(r"(.*)\.bias", r"\1.bias"),
    ]


# Which side a parameter path (``nnx`` path joined by dots) belongs to, e.g. for optimizer groups. The Q-Former is
# one network: its input LayerNorm and every layer's self-attention run for the queries and for text alike (SHARED);
# the cross-attention and the ``*_query`` feed-forwards only for the queries, the plain feed-forwards only for text.
TEXT_PARAMS = r"^(embeddings\.|text_projection\.|qformer\.encoder\.layer\.\d+\.(intermediate|output)\.)"
IMAGE_PARAMS = (r"^(vision_model\.|query_tokens$|vision_projection\.|"
                r"qformer\.encoder\.layer\.\d+\.(crossattention|intermediate_query|output_query)\.)")
SHARED_PARAMS = r"^qformer\.(layernorm\.|encoder\.layer\.\d+\.attention\.)"


def load_blip2(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32) -> blip2.Blip2Model:
    """Load a transformers Blip2ForImageTextRetrieval directory (safetensors, sharded or not) into a Blip2Model."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"BLIP-2 checkpoint directory {path!r} does not exist. Nothing is downloaded at run time: on a machine "
            f"with internet, run `huggingface-cli download Salesforce/blip2-itm-vit-g --local-dir DIR` and pass DIR."
        )
    d = loader.read_json(os.path.join(path, "config.json"))
    if not (d.get("qformer_config") or {}).get("use_qformer_text_input", False):
        raise ValueError(
            f"{path!r}: its Q-Former has no text path (qformer_config.use_qformer_text_input is false), so it is not a "
            f"Blip2ForImageTextRetrieval checkpoint; use one such as Salesforce/blip2-itm-vit-g"
        )
    cfg = blip2.Blip2Config.from_hf_dict(d)
    tensors = loader.LazyTensors(loader.safetensors_files(path))
    # HF's retrieval model has no temperature (its ITC logits are raw cosines): ours starts at the config's value.
    tensors = collections.ChainMap(tensors, {"logit_scale": np.asarray(cfg.logit_scale_init_value, np.float32)})
    abstract = loader.abstract_model(lambda: blip2.Blip2Model(cfg, dtype=dtype, param_dtype=param_dtype,
                                                               rngs=nnx.Rngs(0)))
    return loader.load_state(abstract, tensors, rules(), ignore=IGNORE, source=path)
