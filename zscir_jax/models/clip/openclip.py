"""OpenCLIP checkpoints -> transformers CLIP names (then ``weights/clip.py`` applies).

OpenCLIP stores a fused attention input projection (``attn.in_proj_weight`` = [q; k; v]), projections as plain
matrices used as ``x @ proj`` and its own module names; this file renames, splits and transposes them into the HF
layout, and turns OpenCLIP's model config into our ``CLIPConfig``. It never imports open_clip.
"""
from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Mapping

import numpy as np

from zscir_jax.models.clip import modeling as clip
from zscir_jax.weights import loader

CONFIG_NAMES = ("open_clip_config.json", "open_clip_model_config.json", "model_config.json", "config.json")
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                "open_clip_pytorch_model.bin", "pytorch_model.bin")

# OpenCLIP block names -> HF encoder-layer names.
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}


# OpenCLIP options that change the math of the tower; (option, value it must have for a plain CLIP ViT).
_PLAIN_VISION = (("ls_init_value", None), ("attentional_pool", False), ("no_ln_pre", False),
                 ("final_ln_after_pool", False), ("pool_type", "tok"), ("pos_embed_type", "learnable"),
                 ("timm_model_name", None), ("output_tokens", False))
_PLAIN_TEXT = (("ls_init_value", None), ("embed_cls", False), ("no_causal_mask", False),
               ("final_ln_after_pool", False), ("pool_type", "argmax"), ("proj_bias", False), ("proj_type", "linear"),
               ("hf_model_name", None))


def _check_plain(cfg: dict, plain, tower: str) -> None:
    bad = [f"{tower}.{k}={cfg[k]!r}" for k, ok in plain if k in cfg and cfg[k] != ok]
    if bad:
        raise ValueError(f"OpenCLIP model config uses options this CLIP does not implement: {', '.join(bad)}")


def config_from_openclip(d: dict) -> clip.CLIPConfig:
    """Our config from an OpenCLIP model config (``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}``), also
    accepted nested under ``model_cfg`` as in ``open_clip_config.json``. Non-ViT towers (ModifiedResNet, timm, HF
    text models) and options that change the computation are refused with a clear error."""
    d = d.get("model_cfg", d)
    if "vision_cfg" not in d or "text_cfg" not in d or "embed_dim" not in d:
        raise ValueError("not an OpenCLIP model config: expected keys embed_dim, vision_cfg and text_cfg")
    v, t = d["vision_cfg"], d["text_cfg"]
    if not isinstance(v.get("layers", 12), int):
        raise ValueError(f"OpenCLIP vision_cfg.layers={v['layers']!r} is a ModifiedResNet; only ViT towers are supported")
    _check_plain(v, _PLAIN_VISION, "vision_cfg")
    _check_plain(t, _PLAIN_TEXT, "text_cfg")
    image_size = v.get("image_size", 224)
    if not isinstance(image_size, int):
        if len(set(image_size)) != 1:
            raise ValueError(f"OpenCLIP vision_cfg.image_size={image_size!r}: only square position tables are supported")
        image_size = image_size[0]
    act = "quick_gelu" if d.get("quick_gelu", False) else "gelu"
    v_width = v.get("width", 768)
    t_width = t.get("width", 512)
    vision = clip.CLIPVisionConfig(
        hidden_size=v_width, intermediate_size=int(v_width * v.get("mlp_ratio", 4.0)),
        num_hidden_layers=v.get("layers", 12), num_attention_heads=v_width // v.get("head_width", 64),
        image_size=image_size, patch_size=v.get("patch_size", 16), hidden_act=act,
        layer_norm_eps=(v.get("norm_kwargs") or {}).get("eps", 1e-5),
    )
    text = clip.CLIPTextConfig(
        vocab_size=t.get("vocab_size", 49408), hidden_size=t_width,
        intermediate_size=int(t_width * t.get("mlp_ratio", 4.0)), num_hidden_layers=t.get("layers", 12),
        num_attention_heads=t.get("heads", 8), max_position_embeddings=t.get("context_length", 77),
        hidden_act=act, layer_norm_eps=(t.get("norm_kwargs") or {}).get("eps", 1e-5),
        eos_token_id=2,  # OpenCLIP pools at argmax(token ids): transformers' legacy rule
        pad_token_id=t.get("pad_id", 0),
    )
    return clip.CLIPConfig(vision, text, projection_dim=d["embed_dim"])


def _take(i: int):
    return lambda x: np.split(x, 3, axis=0)[i]


def _plan(names) -> tuple[dict[str, tuple[str, object]], list[str]]:
    """HF name -> (OpenCLIP name, transform) for every tensor, and the OpenCLIP names that have no HF place."""
    plan: dict[str, tuple[str, object]] = {}
    unknown = []
    for name in names:
        tower, rest = ("vision_model", name[len("visual."):]) if name.startswith("visual.") else ("text_model", name)
        block = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)", rest)
        if block:
            layer, module, kind = block.groups()
            prefix = f"{tower}.encoder.layers.{layer}"
            if module == "attn.in_proj":  # fused [q; k; v] rows
                for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                    plan[f"{prefix}.self_attn.{part}.{kind}"] = (name, _take(i))
            elif module in _BLOCK:
                plan[f"{prefix}.{_BLOCK[module]}.{kind}"] = (name, None)
            else:
                unknown.append(name)
            continue
        simple = {
            "class_embedding": f"{tower}.embeddings.class_embedding",
            "positional_embedding": f"{tower}.embeddings.position_embedding.weight",
            "conv1.weight": f"{tower}.embeddings.patch_embedding.weight",
            "token_embedding.weight": f"{tower}.embeddings.token_embedding.weight",
            "ln_pre.weight": f"{tower}.pre_layrnorm.weight", "ln_pre.bias": f"{tower}.pre_layrnorm.bias",
            "ln_post.weight": f"{tower}.post_layernorm.weight", "ln_post.bias": f"{tower}.post_layernorm.bias",
            "ln_final.weight": f"{tower}.final_layer_norm.weight", "ln_final.bias": f"{tower}.final_layer_norm.bias",
        }
        if rest in simple:
            plan[simple[rest]] = (name, None)
        elif name == "visual.proj":  # OpenCLIP computes x @ proj; HF's Linear computes x @ W.T
            plan["visual_projection.weight"] = (name, np.transpose)
        elif name == "text_projection":
            plan["text_projection.weight"] = (name, np.transpose)
        elif name == "logit_scale":
            plan["logit_scale"] = (name, lambda x: np.reshape(x, ()))  # some exports store it as shape (1,)
        elif rest in ("attn_mask", "logit_bias"):
            continue  # a causal-mask buffer older checkpoints saved; SigLIP's bias is not part of CLIP
        else:
            unknown.append(name)
    return plan, unknown


class HFView(Mapping):
    """An OpenCLIP state dict seen under transformers' names; tensors are read (and split) only when asked for, so a
    lazily opened safetensors file is streamed, not loaded whole."""

    def __init__(self, state: Mapping[str, np.ndarray]):
        self._state = state
        self._plan, unknown = _plan(list(state))
        if unknown:
            raise loader.WeightLoadError("OpenCLIP checkpoint", [f"unexpected: OpenCLIP tensor {n!r}" for n in unknown])

    def __getitem__(self, name: str) -> np.ndarray:
        source, transform = self._plan[name]
        value = np.asarray(self._state[source])
        # .copy(order="C"), not ascontiguousarray: that one turns a 0-d logit_scale into shape (1,).
        return np.asarray(transform(value)).copy(order="C") if transform else value

    def __iter__(self):
        return iter(self._plan)

    def __len__(self) -> int:
        return len(self._plan)


def to_hf_names(state: Mapping) -> dict[str, np.ndarray]:
    """Rename / split / transpose an OpenCLIP state dict into transformers CLIPModel names (all in memory)."""
    return dict(HFView(state))


def _read_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        return loader.LazyTensors([path])
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{path} is a PyTorch pickle; install torch to read it, or convert it to .safetensors") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}


def _looks_openclip(path: str) -> bool:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "vision_cfg" in d.get("model_cfg", d)


def read_as_hf(path: str) -> tuple[clip.CLIPConfig, Mapping[str, np.ndarray]]:
    """(config, HF-named tensors) from an OpenCLIP checkpoint file or a directory holding it and its config."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if os.path.isdir(path):
        weights = next((os.path.join(path, n) for n in WEIGHT_NAMES if os.path.isfile(os.path.join(path, n))), None)
        if weights is None:
            raise FileNotFoundError(f"no OpenCLIP weights ({', '.join(WEIGHT_NAMES)}) in {path!r}")
    else:
        weights = path
    config_path = next((os.path.join(directory, n) for n in CONFIG_NAMES
                        if os.path.isfile(os.path.join(directory, n))), None)
    if config_path is None:  # e.g. ViT-B-32.json copied from open_clip's model_configs
        config_path = next((c for c in sorted(glob.glob(os.path.join(directory, "*.json"))) if _looks_openclip(c)), None)
    if config_path is None:
        raise FileNotFoundError(
            f"no OpenCLIP model config beside {weights!r}: put its JSON (embed_dim, vision_cfg, text_cfg) in "
            f"{directory} as open_clip_config.json"
        )
    with open(config_path) as f:
        cfg = config_from_openclip(json.load(f))
    return cfg, HFView(_read_state(weights))
