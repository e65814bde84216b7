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

import numpy as np

from zscir_jax.models import clip
from zscir_jax.weights import loader

CONFIG_NAMES = ("open_clip_config.json", "open_clip_model_config.json", "model_config.json", "config.json")
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                "open_clip_pytorch_model.bin", "pytorch_model.bin")

# OpenCLIP block names -> HF encoder-layer names.
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}


def config_from_openclip(d: dict) -> clip.CLIPConfig:
    """Our config from an OpenCLIP model config (``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}``), also
    accepted nested under ``model_cfg`` as in ``open_clip_config.json``."""
    d = d.get("model_cfg", d)
    v, t = d["vision_cfg"], d["text_cfg"]
    act = "quick_gelu" if d.get("quick_gelu", False) else "gelu"
    v_width = v.get("width", 768)
    t_width = t.get("width", 512)
    vision = clip.CLIPVisionConfig(
        hidden_size=v_width, intermediate_size=int(v_width * v.get("mlp_ratio", 4.0)),
        num_hidden_layers=v["layers"], num_attention_heads=v_width // v.get("head_width", 64),
        image_size=v["image_size"] if isinstance(v["image_size"], int) else v["image_size"][0],
        patch_size=v["patch_size"], hidden_act=act,
    )
    text = clip.CLIPTextConfig(
        vocab_size=t.get("vocab_size", 49408), hidden_size=t_width,
        intermediate_size=int(t_width * t.get("mlp_ratio", 4.0)), num_hidden_layers=t["layers"],
        num_attention_heads=t.get("heads", 8), max_position_embeddings=t.get("context_length", 77),
        hidden_act=act,
        eos_token_id=2,  # OpenCLIP pools at argmax(token ids): transformers' legacy rule
    )
    return clip.CLIPConfig(vision, text, projection_dim=d["embed_dim"])


def to_hf_names(state: dict) -> dict[str, np.ndarray]:
    """Rename / split / transpose an OpenCLIP state dict into transformers CLIPModel names."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in state.items():
        value = np.asarray(value)
        tower, rest = ("vision_model", name[len("visual."):]) if name.startswith("visual.") else ("text_model", name)
        block = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)", rest)
        if block:
            layer, module, kind = block.groups()
            prefix = f"{tower}.encoder.layers.{layer}"
            if module == "attn.in_proj":
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=0)):
                    out[f"{prefix}.self_attn.{part}.{kind}"] = chunk
            elif module in _BLOCK:
                out[f"{prefix}.{_BLOCK[module]}.{kind}"] = value
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
            out[simple[rest]] = value
        elif name == "visual.proj":
            out["visual_projection.weight"] = value.T  # OpenCLIP computes x @ proj; HF Linear computes x @ W.T
        elif name == "text_projection":
            out["text_projection.weight"] = value.T
        elif name == "logit_scale":
            out["logit_scale"] = value.reshape(())  # some exports store it as shape (1,)
        elif rest in ("attn_mask", "logit_bias"):
            continue  # a causal-mask buffer older checkpoints saved; SigLIP's bias is not part of CLIP
        else:
            unknown.append(name)
    if unknown:
        raise loader.WeightLoadError("OpenCLIP checkpoint", [f"unexpected: OpenCLIP tensor {n!r}" for n in unknown])
    return out


def _read_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{path} is a PyTorch pickle; install torch to read it, or convert it to .safetensors") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}


def read_as_hf(path: str) -> tuple[clip.CLIPConfig, dict[str, np.ndarray]]:
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
    if config_path is None:
        candidates = sorted(glob.glob(os.path.join(directory, "*.json")))
        config_path = candidates[0] if candidates else None
    if config_path is None:
        raise FileNotFoundError(
            f"no OpenCLIP model config beside {weights!r}: put its JSON (embed_dim, vision_cfg, text_cfg) in "
            f"{directory} as open_clip_config.json"
        )
    with open(config_path) as f:
        cfg = config_from_openclip(json.load(f))
    return cfg, to_hf_names(_read_state(weights))
