"""The image-text tower families behind one surface, so the methods never ask which one they hold.

Every family's model has ``encode_image`` / ``encode_text`` (retrieval embeddings, not normalised),
``image_tokens`` / ``text_tokens`` (every token in the joint space, and the pooled one), ``text_global_positions``
(where the text's global feature sits: CLIP's EOT, BLIP's [CLS], SigLIP's last token), ``config.projection_dim`` and
``logit_scale``. This module picks the family:

    family_of(path)          of a checkpoint: our export's marker, else transformers' ``config.json`` ``model_type``,
                             else an OpenCLIP file (clip)
    tiny(family, **sizes)    a random tower's config (``config.model.clip_tiny``'s keys; the CPU demo's warm-up)
    new(config, ...)         a random model of that config; from_pretrained(path, ...); load_tokenizer(path, ...)
    export_info(model) / config_from_export(info)   what our export's marker holds, and back

``config.model.backbone`` names the family of a random tower; a checkpoint says its own.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os

from zscir_jax.errors import UserError

FAMILIES = ("clip", "blip", "siglip")
# transformers' model_type -> our family
HF_MODEL_TYPES = {"clip": "clip", "blip": "blip", "siglip": "siglip", "siglip2": "siglip"}
# Parameter paths of each family's text tower (everything else is the image side, logit scale included).
TEXT_TOWER = r"(text_model|text_projection|text_encoder|text_proj)(/.*)?"


def _module(family: str):
    if family not in FAMILIES:
        raise UserError(f"config.model.backbone={family!r}: allowed values are {', '.join(FAMILIES)}")
    return importlib.import_module(f"zscir_jax.models.{family}")


def _config_class(family: str):
    return {"clip": "CLIPConfig", "blip": "BlipConfig", "siglip": "SiglipConfig"}[family]


def _model_class(family: str):
    return {"clip": "CLIPModel", "blip": "BlipModel", "siglip": "SiglipModel"}[family]


def family_of_config(cfg) -> str:
    for family in FAMILIES:
        if type(cfg).__name__ == _config_class(family):
            return family
    raise TypeError(f"not a tower config: {type(cfg).__name__}")


def tiny(family: str, **sizes):
    """A random tower's config; ``sizes`` are ``config.model.clip_tiny``'s keys (``eos_token_id`` is CLIP's pooling
    rule alone: the other families pool at a fixed position)."""
    mod = _module(family)
    if family != "clip":
        sizes = {k: v for k, v in sizes.items() if k != "eos_token_id"}
    return getattr(mod, _config_class(family)).tiny(**sizes)


def new(cfg, *, rngs, dtype, param_dtype):
    family = family_of_config(cfg)
    return getattr(_module(family), _model_class(family))(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def _read(path: str, name: str):
    with open(os.path.join(path, name)) as f:
        return json.load(f)


def family_of(path: str, marker: str) -> str:
    """The family of a checkpoint directory or file (``marker``: our export's marker file name)."""
    if os.path.isfile(os.path.join(path, marker)):
        return _read(path, marker).get("family", "clip")  # exports made before the families had none: CLIP
    if os.path.isfile(os.path.join(path, "config.json")):
        model_type = _read(path, "config.json").get("model_type", "clip")
        if model_type not in HF_MODEL_TYPES:
            raise UserError(f"{path}: config.json has model_type {model_type!r}; the towers this library reads are "
                            f"{', '.join(HF_MODEL_TYPES)}")
        return HF_MODEL_TYPES[model_type]
    return "clip"  # an OpenCLIP checkpoint


def from_pretrained(path: str, family: str, *, dtype, param_dtype):
    return _module(family).from_pretrained(path, dtype=dtype, param_dtype=param_dtype)


def hf_config(path: str, family: str):
    """The config of a transformers directory of ``family`` (for a restore skeleton), or None without one."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    return getattr(_module(family), _config_class(family)).from_hf_dict(_read(path, "config.json"))


def load_tokenizer(path: str, family: str, max_length: int | None = None):
    return _module(family).load_tokenizer(path, max_length)


def export_info(cfg) -> dict:
    """Our export marker's content: CLIP's config as it always was (older exports stay readable), the others as
    their transformers config dict."""
    family = family_of_config(cfg)
    if family == "clip":
        return {**dataclasses.asdict(cfg), "family": "clip"}
    return {"family": family, "config": cfg.to_hf_dict()}


def config_from_export(info: dict):
    family = info.get("family", "clip")
    if family == "clip":
        from zscir_jax.models import clip

        return clip.CLIPConfig(clip.CLIPVisionConfig(**info["vision"]), clip.CLIPTextConfig(**info["text"]),
                               info["projection_dim"], info["logit_scale_init_value"])
    return getattr(_module(family), _config_class(family)).from_hf_dict(info["config"])
