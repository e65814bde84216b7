"""Our own MLLM directory format, and one ``load`` for it and for transformers LLaVA directories.

An export is a directory holding

* ``zscir_mllm.json``: ``dataclasses.asdict(MLLMConfig)`` (nested ``vision`` = ``CLIPVisionConfig`` and ``text`` =
  ``LLMConfig``; tuples are written as JSON lists and read back as tuples),
* ``params/``: an Orbax ``StandardCheckpointer`` checkpoint of ``nnx.state(model, nnx.Param)``,
* the tokenizer files copied from ``tokenizer_dir`` (``tokenizer.json``, ``tokenizer_config.json``, chat template,
  ``generation_config.json``, ``processor_config.json`` ...), and ``preprocessor_config.json`` (the image
  preprocessing), so that :func:`zscir_jax.models.mllm.load_processor` works on the directory.

It is written into a hidden sibling directory and renamed into place once complete: a killed export leaves no
directory that :func:`load` accepts (only a ``.NAME.partial-*`` sibling, safe to delete).
"""
from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import clip, llm
from zscir_jax.models.mllm.modeling import MLLM, MLLMConfig, from_pretrained
from zscir_jax.weights import cache, loader

EXPORT_MARKER = "zscir_mllm.json"
PARAMS_DIR = "params"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Files of a checkpoint directory that belong to its tokenizer / processor (never weights or the model config).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "processor_config.json", PREPROCESSOR_FILE,
)


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, EXPORT_MARKER))


# ----------------------------------------------------------------------------------------------------------------------
# The config file


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _dataclass_from_dict(cls, d: Mapping[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}; written by a newer zscir_jax?")
    return cls(**{k: _tuples(v) for k, v in d.items()})


def config_to_dict(cfg: MLLMConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: Mapping[str, Any], where: str = EXPORT_MARKER) -> MLLMConfig:
    """The inverse of ``dataclasses.asdict(MLLMConfig)`` after a JSON round trip (lists back to tuples)."""
    d = dict(d)
    vision = _dataclass_from_dict(clip.CLIPVisionConfig, d.pop("vision", {}), f"{where} [vision]")
    text = _dataclass_from_dict(llm.LLMConfig, d.pop("text", {}), f"{where} [text]")
    rest = _dataclass_from_dict(MLLMConfig, d, where)
    return dataclasses.replace(rest, vision=vision, text=text)


def read_config(path: str) -> MLLMConfig:
    """The MLLMConfig of an export directory (``zscir_mllm.json``) or of a transformers LLaVA one (``config.json``)."""
    marker = os.path.join(path, EXPORT_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            return config_from_dict(json.load(f), marker)
    return MLLMConfig.from_hf_dict(loader.read_json(os.path.join(path, "config.json")))


# ----------------------------------------------------------------------------------------------------------------------
# Export


def _preprocessor_dict(preprocessor) -> dict[str, Any]:
    if isinstance(preprocessor, Mapping):
        return dict(preprocessor)
    for attr in ("preprocessor_config", "to_dict"):  # our Processor, or a transformers image processor
        value = getattr(preprocessor, attr, None)
        if value is not None:
            return dict(value() if callable(value) else value)
    raise TypeError(f"preprocessor must be a dict (preprocessor_config.json's contents), got {type(preprocessor)}")


def export(model: MLLM, path: str, *, tokenizer_dir: str | None = None, preprocessor=None) -> str:
    """Write ``model`` to the directory ``path`` (replacing an existing one) in our format; returns ``path``.

    ``tokenizer_dir``: a directory whose tokenizer / processor files are copied along (e.g. the LLaVA checkpoint the
    model came from). ``preprocessor``: the image preprocessing as ``preprocessor_config.json``'s dict (transformers'
    CLIPImageProcessor keys: ``size``, ``crop_size``, ``image_mean``, ``image_std``, ``resample`` ...); it wins over
    a ``preprocessor_config.json`` found in ``tokenizer_dir``. Every process of a multi-host job must call it.
    """
    path = os.path.abspath(path)
    copies = []
    if tokenizer_dir is not None:
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir!r} does not exist")
        copies = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, n))]
        if not any(n.startswith("tokenizer") or n in ("vocab.json", "vocab.txt") for n in copies):
            raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir!r} holds no tokenizer files ({TOKENIZER_FILES[:5]}...)")
    pre = None if preprocessor is None else _preprocessor_dict(preprocessor)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = cache.temp_dir_for(path)
    main = jax.process_index() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    sharding.sync(f"export-start:{path}")
    try:
        cache.save_params(model, os.path.join(tmp, PARAMS_DIR))
        if main:
            for name in copies:
                shutil.copy2(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
            if pre is not None:
                with open(os.path.join(tmp, PREPROCESSOR_FILE), "w") as f:
                    json.dump(pre, f, indent=1)
            # The marker last: a directory with it is complete.
            with open(os.path.join(tmp, EXPORT_MARKER), "w") as f:
                json.dump(config_to_dict(model.config), f, indent=1)
        sharding.sync(f"export-written:{path}")
        cache.publish(tmp, path)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Load


def load(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32, cache_dir: str | None = None) -> MLLM:
    """An MLLM from our export (``zscir_mllm.json`` + Orbax ``params/``) or a transformers LLaVA directory
    (``config.json`` + safetensors).

    Parameters are restored into an abstract model, so inside ``zscir_jax.sharding.activate(mesh)`` they come with
    the mesh's shardings (not the ones they were saved with) and in ``param_dtype``. ``cache_dir`` (LLaVA directories
    only) converts the safetensors once and restores the converted parameters from Orbax afterwards
    (:func:`zscir_jax.weights.cache.cached_load`): the practical way to reload a 7B model.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"MLLM directory {path!r} not found: pass a directory written by zscir_jax.models.mllm.export or a "
            "transformers LLaVA checkpoint (e.g. `huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir DIR`)")
    cfg = read_config(path) if is_export(path) or os.path.isfile(os.path.join(path, "config.json")) else None
    if cfg is None:
        raise FileNotFoundError(f"{path!r} holds neither {EXPORT_MARKER} (our export) nor config.json (transformers)")

    def build():
        return MLLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)

    if is_export(path):
        return cache.restore_params(loader.abstract_model(build), os.path.join(path, PARAMS_DIR))
    return cache.cached_load(path, cache_dir, build,
                             lambda: from_pretrained(path, dtype=dtype, param_dtype=param_dtype), tag="mllm")
