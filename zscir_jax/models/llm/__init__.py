"""The llm family: ``modeling.py`` (Flax NNX modules, no training logic), ``params.py`` (the checkpoint name map) and
``tokenizer.py`` (the checkpoint's own tokenizer: chat prompts, decoding, left-padded batches)."""
import dataclasses as _dataclasses
import os as _os

import jax.numpy as _jnp

from zscir_jax.models.llm.modeling import *  # noqa: F401,F403
from zscir_jax.models.llm.modeling import _generate_jit  # noqa: F401  (tests count its compiles)
from zscir_jax.models.llm import modeling as _modeling
from zscir_jax.models.llm import params as _params
from zscir_jax.models.llm.tokenizer import ChatTokenizer, load_tokenizer  # noqa: F401


def from_pretrained(path: str, *, dtype=_jnp.float32, param_dtype=_jnp.float32,
                    cache_dir: str | None = None) -> "_modeling.LLM":
    """:func:`zscir_jax.models.llm.modeling.from_pretrained` (a local HF Llama / Mistral / Qwen2 directory), plus
    ``cache_dir``: convert the safetensors once and restore the converted parameters with Orbax afterwards
    (:func:`zscir_jax.weights.cache.cached_load`), with the active mesh's shardings and in ``param_dtype``.
    ``cache_dir=None`` reads the safetensors every time."""
    if not cache_dir or not _os.path.isdir(path):
        return _modeling.from_pretrained(path, dtype=dtype, param_dtype=param_dtype)
    from flax import nnx

    from zscir_jax.weights import cache, loader

    cfg = _modeling.LLMConfig.from_hf_dict(loader.read_json(_os.path.join(path, "config.json")))
    # The head rule of modeling.from_pretrained; only the safetensors headers are read.
    names = loader.LazyTensors(loader.safetensors_files(path))
    if not any(_params.is_lm_head(n) for n in names) and not cfg.tie_word_embeddings:
        cfg = _dataclasses.replace(cfg, has_lm_head=False)
    return cache.cached_load(
        path, cache_dir, lambda: _modeling.LLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
        lambda: _modeling.from_pretrained(path, dtype=dtype, param_dtype=param_dtype), tag="llm")
