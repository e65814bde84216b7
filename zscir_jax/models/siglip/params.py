"""transformers SigLIP checkpoints (``SiglipModel``; ``Siglip2Model`` at its native grid) -> ``models.siglip``.

Our modules use HF's names, so the map is a few suffix rules: Linear ``weight`` -> transposed ``kernel``, LayerNorm
``weight`` -> ``scale``, Embedding ``weight`` -> ``embedding``, the patch Conv2d -> an HWIO kernel (SigLIP 2's patch
Linear over flattened (p, p, C) patches is the same kernel, reshaped), the MAP head's fused ``in_proj_weight`` -> the
``in_proj`` Linear, and the [1]-shaped ``logit_scale`` / ``logit_bias`` -> scalars.

Parameter paths (ours): the text tower is ``^text_model\\.``, the image tower ``^vision_model\\.`` (MAP head
included: ``^vision_model\\.head\\.``); ``logit_scale`` / ``logit_bias`` belong to neither.
"""
from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax.models.siglip import modeling as siglip
from zscir_jax.weights import loader

_NORMS = r"(layer_norm1|layer_norm2|post_layernorm|final_layer_norm|layernorm)"

# Buffers some checkpoints carry that are not parameters.
IGNORE = (r".*position_ids",)

TEXT_TOWER = r"^text_model\."
IMAGE_TOWER = r"^vision_model\."


def scalar(x: np.ndarray) -> np.ndarray:
    """transformers' [1]-shaped logit_scale / logit_bias -> a scalar."""
    return np.asarray(x).reshape(())


def patch_kernel(num_channels: int):
    """The patch embedding -> an HWIO conv kernel: SigLIP's Conv2d [D, C, p, p], or SigLIP 2's Linear [D, p*p*C]
    whose input is a patch flattened in (row, column, channel) order, i.e. the same kernel reshaped."""

    def convert(x: np.ndarray) -> np.ndarray:
        if x.ndim == 4:
            return loader.conv_oihw_to_hwio(x)
        p = math.isqrt(x.shape[1] // num_channels)
        return np.ascontiguousarray(x.reshape(x.shape[0], p, p, num_channels).transpose(1, 2, 3, 0))

    return convert


def rules(num_channels: int = 3) -> list[loader.Rule]:
    return [
        loader.Rule(r"(.*)\.(token_embedding|position_embedding)\.weight", r"\1.\2.embedding"),
        loader.Rule(r"(.*)\.patch_embedding\.weight", r"\1.patch_embedding.kernel", patch_kernel(num_channels)),
        loader.Rule(rf"(.*)\.{_NORMS}\.weight", r"\1.\2.scale"),
        loader.Rule(rf"(.*)\.{_NORMS}\.bias", r"\1.\2.bias"),
        loader.Rule(r"(.*\.head\.probe)", r"\1"),
        loader.Rule(r"(.*)\.in_proj_weight", r"\1.in_proj.kernel", loader.transpose),
        loader.Rule(r"(.*)\.in_proj_bias", r"\1.in_proj.bias"),
        loader.Rule(r"(logit_scale|logit_bias)", r"\1", scalar),
        loader.Rule(r"(.*)\.weight", r"\1.kernel", loader.transpose),
        loader.Rule(r"(.*)\.bias", r"\1.bias"),
    ]


def load_siglip(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32,
                text_attention_mask: bool | None = None) -> siglip.SiglipModel:
    """Load a transformers SigLIP / SigLIP 2 directory (config.json + safetensors, sharded or not)."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"SigLIP checkpoint directory {path!r} (with config.json) does not exist. Nothing is downloaded at run "
            f"time: on a machine with internet, run e.g. `huggingface-cli download google/siglip-base-patch16-224 "
            f"--local-dir DIR` and pass DIR."
        )
    d = loader.read_json(os.path.join(path, "config.json"))
    if d.get("model_type") not in (None, "siglip", "siglip2"):
        raise ValueError(f"{path!r} holds a {d.get('model_type')!r} checkpoint, not SigLIP")
    cfg = siglip.SiglipConfig.from_hf_dict(d, text_attention_mask=text_attention_mask)
    abstract = loader.abstract_model(lambda: siglip.SiglipModel(cfg, dtype=dtype, param_dtype=param_dtype,
                                                                rngs=nnx.Rngs(0)))
    tensors = loader.LazyTensors(loader.safetensors_files(path))
    return loader.load_state(abstract, tensors, rules(cfg.vision.num_channels), ignore=IGNORE, source=path)
