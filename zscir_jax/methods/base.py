"""Pieces the CIR methods share: the CLIP towers (load / export), the fusion retriever's build and loss, and the
config readers. The method surface itself is ``methods.surface.Method``."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import files
from zscir_jax.models import clip, fusion, towers
from zscir_jax.weights import loader

EXPORT_MARKER = "zscir_clip.json"  # towers exported by this library, any family (see export_towers; name kept)


def dtypes(config):
    names = config.model.get("dtype", "float32"), config.model.get("param_dtype", "float32")
    return tuple(jnp.dtype(n) for n in names)


def clip_config(config):
    """The towers' config for a fresh (randomly initialised) tower of ``config.model.backbone`` (default CLIP):
    ``config.model.clip_tiny`` keyword arguments."""
    return towers.tiny(config.model.get("backbone", "clip"), **dict(config.model.get("clip_tiny", {})))


def skeleton(config):
    """A copy of ``config`` whose ``build`` makes the same architecture without reading weights: for building an
    abstract model (``nnx.eval_shape``) to restore a checkpoint into."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.skeleton = True
    return config


def towers_config_from_path(path: str):
    """The tower config of our export or a transformers directory (any family), or None (an OpenCLIP file)."""
    if os.path.isfile(os.path.join(path, EXPORT_MARKER)):
        with open(os.path.join(path, EXPORT_MARKER)) as f:
            return towers.config_from_export(json.load(f))
    if os.path.isfile(os.path.join(path, "config.json")):
        return towers.hf_config(path, towers.family_of(path, EXPORT_MARKER))
    return None


REMAT_MODES = ("none", "layer")  # config.model.remat


def set_remat(model: nnx.Module, config) -> nnx.Module:
    """``config.model.remat`` on every transformer layer loop of ``model`` (CLIP's encoder, which SigLIP shares; the
    LLM decoder): "layer" wraps each layer call in ``nnx.remat`` (activations recomputed in the backward pass: the same
    numbers, less memory, more compute), "none" keeps them. A model without such a loop (BLIP's towers) refuses
    "layer" rather than ignoring it."""
    mode = config.model.get("remat", "none")
    if mode not in REMAT_MODES:
        raise ValueError(f"config.model.remat must be one of {', '.join(map(repr, REMAT_MODES))}, got {mode!r} "
                         "('layer' recomputes each transformer layer in the backward pass to save memory)")
    if mode == "none":
        return model
    loops = [m for _, m in nnx.iter_modules(model) if isinstance(getattr(m, "remat", None), str)]
    if not loops:
        raise ValueError(f"config.model.remat={mode!r}: {type(model).__name__} has no layer loop that supports it "
                         "(CLIP and SigLIP towers and the LLM do); use 'none'")
    for m in loops:
        m.remat = mode
    return model


def build_towers(config, rngs: nnx.Rngs):
    """Image-text towers (``models.towers``): loaded from ``config.model.clip_path`` if set (its family is the
    checkpoint's), else random from ``config.model.clip_tiny`` in the family ``config.model.backbone``; with
    ``config.model.remat`` applied (``set_remat``)."""
    return set_remat(_towers(config, rngs), config)


def _towers(config, rngs: nnx.Rngs):
    dtype, param_dtype = dtypes(config)
    path = config.model.get("clip_path")
    if not path:
        return towers.new(clip_config(config), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    if config.model.get("skeleton") and os.path.exists(path):
        cfg = towers_config_from_path(path)
        if cfg is not None:
            return towers.new(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config.model.clip_path={path!r} does not exist: point it at a local transformers CLIP / BLIP / SigLIP "
            "directory (config.json + *.safetensors, e.g. from `huggingface-cli download "
            "openai/clip-vit-base-patch32`), an OpenCLIP checkpoint, or towers exported by zscir_jax")
    if os.path.isfile(os.path.join(path, EXPORT_MARKER)):
        return load_exported(path, dtype=dtype, param_dtype=param_dtype)
    return towers.from_pretrained(path, towers.family_of(path, EXPORT_MARKER), dtype=dtype, param_dtype=param_dtype)


def save_params(module: nnx.Module, path: str, marker: str, info: dict) -> str:
    """A module's parameters (Orbax, ``path/params``) and the JSON file ``marker`` saying what they are (written
    last: its presence means the export is complete)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(path, "params"), nnx.state(module, nnx.Param), force=True)
    ckpt.wait_until_finished()
    if jax.process_index() == 0:
        files.write_json_atomic(os.path.join(path, marker), info)
    return path


def export_towers(model, path: str) -> None:
    """Write towers' parameters (Orbax) and config (JSON, with their family) so ``build_towers`` can read them back."""
    save_params(model, path, EXPORT_MARKER, towers.export_info(model.config))


def load_exported(path: str, *, dtype=jnp.float32, param_dtype=jnp.float32):
    import orbax.checkpoint as ocp

    cfg = towers_config_from_path(path)
    # Restore into an abstract model whose shardings come from the active mesh and rules, not from the files.
    abstract = loader.abstract_model(lambda: towers.new(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    graphdef, abstract_state = nnx.split(abstract)
    mesh = jax.sharding.get_mesh()
    if mesh is not None and not mesh.empty:
        abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state, nnx.get_named_sharding(abstract_state, mesh))
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                      abstract_state)
    state = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "params"), abstract_state)
    return nnx.merge(graphdef, state)


def build_mllm(config, towers: clip.CLIPModel, llm_sizes, rngs: nnx.Rngs):
    """The LLaVA at ``config.model.mllm_path`` (its weights; only its architecture in a restore skeleton), or without
    that path a random LLaVA-style model of ``llm_sizes`` (``llm.LLMConfig.tiny`` keywords) that reads the towers'
    token ids, its vision tower a copy of the towers' (tests, the tiny configs)."""
    from zscir_jax.models import llm, mllm

    dtype, param_dtype = dtypes(config)
    path = config.model.get("mllm_path")
    if path:
        if config.model.get("skeleton"):
            from zscir_jax.models.mllm.export import read_config

            return set_remat(mllm.MLLM(read_config(path), rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype),
                             config)
        return set_remat(mllm.load(path, dtype=dtype, param_dtype=param_dtype), config)
    vocab = towers.config.text.vocab_size
    text_cfg = llm.LLMConfig.tiny(vocab_size=vocab, **dict(llm_sizes))
    mm_cfg = mllm.MLLMConfig(vision=towers.config.vision, text=text_cfg, image_token_id=vocab)  # outside vocab
    mm = mllm.MLLM(mm_cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    # Copied arrays (jnp.copy), so the module tree shares nothing: an eager build (clip_path set) would otherwise
    # hand the train step one buffer twice to donate.
    nnx.update(mm.vision_tower.vision_model, jax.tree.map(jnp.copy, nnx.state(towers.vision_model)))
    return set_remat(mm, config)


def mllm_last_token(mm, text_ids, text_mask, pixels=None):
    """[B, D_llm] the LLM's hidden state at each row's last real token (not normalised): of (image tokens, text) when
    ``pixels`` are given (resized to the MLLM's vision input when they differ), else of the text alone."""
    from zscir_jax.models import llm

    if pixels is None:
        return llm.last_token_pool(mm.hidden_states(text_ids, None, text_mask), text_mask)
    B = text_ids.shape[0]
    size = mm.config.vision.image_size
    if pixels.shape[1:3] != (size, size):
        pixels = jax.image.resize(pixels, (B, size, size, pixels.shape[-1]), "bicubic")
    T = mm.config.image_seq_length
    ids = jnp.concatenate([jnp.full((B, T), mm.config.image_token_id, text_ids.dtype), text_ids], axis=1)
    mask = jnp.concatenate([jnp.ones((B, T), text_mask.dtype), text_mask], axis=1)
    return llm.last_token_pool(mm.hidden_states(ids, pixels, mask), mask)


def is_stage_output(config, key: str) -> bool:
    """Whether one of ``config.stages`` (``train.stages``) will set the dotted ``key`` before the method is built: a
    method's check must not ask for that path yet."""
    return any(dict(s).get("output") == key for s in (config.get("stages") or {}).values())


def fusion_config(config, dim: int) -> fusion.FusionConfig:
    f = config.model.fusion
    return fusion.FusionConfig(
        dim=dim, depth=f.depth, heads=f.heads, mlp_ratio=f.mlp_ratio, num_prompts=f.num_prompts,
        prompt_mode=f.prompt_mode, weighting=f.weighting, dropout=f.dropout,
        combiner_ratio=f.get("combiner_ratio", 4))


def build_fusion_retriever(config, rngs: nnx.Rngs) -> fusion.FusionRetriever:
    towers = build_towers(config, rngs)
    dtype, param_dtype = dtypes(config)
    return fusion.FusionRetriever(towers, fusion_config(config, towers.config.projection_dim), rngs=rngs, dtype=dtype,
                           param_dtype=param_dtype)


def triplet_loss(query, target, config, valid=None):
    """The contrastive objective named by ``config.loss`` over the (global) batch; rows where ``valid`` is False
    (no target) take no part."""
    from zscir_jax.methods import losses

    l = config.loss
    if l.name == "focal":
        return losses.focal_contrastive(query, target, temperature=l.temperature, alpha=l.alpha, gamma=l.gamma,
                                        valid=valid)
    if l.name == "info_nce":
        return losses.info_nce(query, target, temperature=l.temperature, valid=valid)
    raise ValueError(f"config.loss.name must be 'focal' or 'info_nce', got {l.name!r}")


def fusion_loss(model: fusion.FusionRetriever, batch, config, rngs=None):
    """Composed query vs target image. A record without a target image (text-only triplets) has blank target pixels:
    its row is masked out of the positives and the negatives, so a blank image is never learned as a target."""
    query = model.query(batch["reference_pixels"], batch["text_ids"], batch["text_mask"], deterministic=rngs is None,
                        rngs=rngs)
    target = model.image(batch["target_pixels"])
    return triplet_loss(query, target, config, batch.get("has_target_image"))
