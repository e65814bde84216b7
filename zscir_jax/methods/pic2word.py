"""Pic2Word (Saito et al., CVPR 2023): the classic zero-shot CIR baseline, and DistillCIR's student's starting point.

A mapping network f_phi turns a FROZEN CLIP's image embedding into a pseudo word token ``*``; the composed query is
the CLIP text tower's embedding of a prompt holding ``*`` and the modification text.

    training  (images only, ``batch="pairs"``; the captions are not used)
              v = image(I);  w = text("a photo of *", * = f_phi(v));  symmetric InfoNCE between w and v over the
              global batch (the cycle contrastive: the pseudo token must say what the image shows)
    query     text("a photo of * , {modification}", * = f_phi(image(I_ref)))   (Pic2Word's CIRR prompt)
    gallery   image(I)

``config.model.pic2word``:
    hidden, layers, dropout   f_phi: ``layers`` linear layers (ReLU + dropout between them) from the projection
                              dimension to the text tower's token width; Pic2Word's: 512 wide, 3 layers, 0.1
    prompt                    the query's template (``{text}`` = the modification text), holding ``placeholder``
    train_prompt              the training prompt (holds the placeholder, no text), with the same words before it
    placeholder               the word whose token the pseudo token replaces ("*"; its position is read off the
                              words before it, so any tokenizer works, the demo's word tokenizer too)
    init_from                 f_phi's weights from an earlier run (``export``: a Pic2Word stage of ``config.stages``)
The towers are frozen (``config.optim.finetune="none"``); only f_phi trains.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax.errors import UserError
from zscir_jax.methods import base, losses
from zscir_jax.methods.surface import PAIRS, Method
from zscir_jax.models import clip
from zscir_jax.numerics import l2_normalize

MAPPING_FILE = "pic2word_mapping.json"  # marks an exported f_phi (next to its Orbax ``params``)

GROUPS = (
    (r"clip/.*/lora_[ab](/.*)?", "lora"),  # DistillCIR's student adapts the towers with LoRA
    (r"mapping/.*", "mapping"),
    (r"feature_projection/.*", "projection"),
    (r"clip/(text_model|text_projection|text_encoder|text_proj)(/.*)?", "text_tower"),
    (r"clip/.*", "image_tower"),
)


class MappingNetwork(nnx.Module):
    """f_phi: image embedding [B, D_proj] -> pseudo word token [B, D_token]."""

    def __init__(self, din: int, dout: int, hidden: int, layers: int, dropout: float, *, rngs, dtype, param_dtype):
        if layers < 1:
            raise UserError(f"config.model.pic2word.layers={layers}: must be >= 1")
        dims = [din] + [hidden] * (layers - 1) + [dout]
        init = nnx.initializers.lecun_normal()
        self.layers = nnx.List([
            nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       kernel_init=nnx.with_partitioning(init, (None, "embed")),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))
            for a, b in zip(dims[:-1], dims[1:])])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x, *, deterministic: bool = True, rngs=None):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(jax.nn.relu(x), deterministic=deterministic, rngs=rngs)
        return x


class Pic2Word(nnx.Module):
    def __init__(self, towers: clip.CLIPModel, mapping: MappingNetwork, slot: int,
                 train_prompt: tuple[tuple[int, ...], tuple[int, ...]]):
        self.clip = towers
        self.mapping = mapping
        self.slot = int(slot)  # the pseudo token's position in every prompt (static: part of the graph)
        self.train_prompt = tuple(tuple(int(v) for v in row) for row in train_prompt)  # (ids, mask)

    def compose(self, image_emb, text_ids, text_mask, *, deterministic: bool = True, rngs=None):
        """[B, D] (not normalised): the text tower on ``text_ids`` with the token embedding at the placeholder's
        position replaced by f_phi(image_emb)."""
        tokens = self.clip.text_model.embeddings.token_embedding(text_ids)
        pseudo = self.mapping(image_emb, deterministic=deterministic, rngs=rngs).astype(tokens.dtype)
        at = (jnp.arange(text_ids.shape[1]) == self.slot)[None, :, None]
        return self.clip.encode_text_embeds(text_ids, text_mask, jnp.where(at, pseudo[:, None, :], tokens))

    def query(self, ref_pixels, text_ids, text_mask, *, deterministic: bool = True, rngs=None):
        v = self.clip.encode_image(ref_pixels)
        return l2_normalize(self.compose(v, text_ids, text_mask, deterministic=deterministic, rngs=rngs))

    def image(self, pixels):
        return l2_normalize(self.clip.encode_image(pixels))

    def text(self, ids, mask):
        return l2_normalize(self.clip.encode_text(ids, mask))

    def prompt_batch(self, n: int):
        """The training prompt's (ids, mask) repeated ``n`` times."""
        ids, mask = (jnp.broadcast_to(jnp.asarray(r, jnp.int32)[None], (n, len(r))) for r in self.train_prompt)
        return ids, mask

    def word_of(self, image_emb, *, deterministic: bool = True, rngs=None):
        """[B, D] L2-normalised: the training prompt with * = f_phi(image_emb) (App. C's f_T(f_phi(.)))."""
        ids, mask = self.prompt_batch(image_emb.shape[0])
        return l2_normalize(self.compose(image_emb, ids, mask, deterministic=deterministic, rngs=rngs))


# ----------------------------------------------------------------------------------------------------------------
# Build


def settings(config):
    return config.model.pic2word


def check(config) -> None:
    from zscir_jax.data import tokenizer as tok_lib

    s = settings(config)
    tok_lib.check_template(s.prompt, "config.model.pic2word.prompt")
    for key in ("prompt", "train_prompt"):
        if s.placeholder not in s[key]:
            raise UserError(f"config.model.pic2word.{key}={s[key]!r} lacks the placeholder {s.placeholder!r} "
                            "(config.model.pic2word.placeholder)")
    init = s.get("init_from", "")
    if init and not os.path.isfile(os.path.join(os.path.expanduser(init), MAPPING_FILE)) and not base.is_stage_output(
            config, "model.pic2word.init_from"):
        raise UserError(f"config.model.pic2word.init_from={init!r}: no exported Pic2Word mapping there "
                        f"({MAPPING_FILE} missing)")


def slot_and_prompt(config):
    """(the pseudo token's position, the training prompt's (ids, mask)) for the towers' tokenizer.

    The position is that of the placeholder word, read off the prompt's text before it (BOS + those tokens): the same
    for every query, whatever the tokenizer makes of the placeholder itself (the demo's word tokenizer reads "*" as its
    unknown token, like any other word it never saw)."""
    from zscir_jax.data import sources

    tok = sources.tokenizer_for(config, "clip")
    s = settings(config)
    slots = {}
    for key in ("prompt", "train_prompt"):
        before = s[key].split(s.placeholder, 1)[0].rstrip()
        _, mask = tok([before])
        slots[key] = int(mask[0].sum()) - 1  # where the prefix's EOS sits: the next token's position
    if slots["prompt"] != slots["train_prompt"]:
        raise UserError(f"config.model.pic2word: the placeholder {s.placeholder!r} is token {slots['prompt']} of "
                        f"prompt={s.prompt!r} but token {slots['train_prompt']} of train_prompt={s.train_prompt!r}; "
                        "give both the same words before it")
    ids, mask = tok([s.train_prompt])
    if slots["prompt"] >= int(mask[0].sum()) - 1:
        raise UserError(f"config.model.pic2word.train_prompt={s.train_prompt!r}: its placeholder is cut off at "
                        f"{tok.max_length} tokens")
    return slots["prompt"], (tuple(ids[0].tolist()), tuple(mask[0].tolist()))


def build_mapping(config, towers: clip.CLIPModel, rngs) -> MappingNetwork:
    if not isinstance(towers, clip.CLIPModel):  # the pseudo token is spliced into CLIP's token embeddings
        raise UserError(f"method {config.method} needs CLIP towers (its pseudo word token goes into CLIP's text "
                        f"embeddings); config.model.clip_path / config.model.backbone give {type(towers).__name__}")
    s = settings(config)
    dtype, param_dtype = base.dtypes(config)
    mapping = MappingNetwork(towers.config.projection_dim, towers.config.text.hidden_size, int(s.hidden),
                             int(s.layers), float(s.dropout), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    init = os.path.expanduser(s.get("init_from", "") or "")
    if init and not config.model.get("skeleton"):
        load_mapping(mapping, init)
    return mapping


def build(config, rngs: nnx.Rngs) -> Pic2Word:
    towers = base.build_towers(config, rngs)
    slot, prompt = slot_and_prompt(config)
    return Pic2Word(towers, build_mapping(config, towers, rngs), slot, prompt)


def export_mapping(mapping: MappingNetwork, path: str) -> str:
    """f_phi's parameters (Orbax) and a marker file, for ``config.model.pic2word.init_from``."""
    return base.save_params(mapping, path, MAPPING_FILE, {"layers": len(mapping.layers)})


def load_mapping(mapping: MappingNetwork, path: str) -> None:
    """Restore an exported f_phi into ``mapping`` in place (its shapes must match the config's)."""
    import orbax.checkpoint as ocp

    if not os.path.isfile(os.path.join(path, MAPPING_FILE)):
        raise UserError(f"config.model.pic2word.init_from={path!r}: no exported Pic2Word mapping there")
    target = nnx.state(mapping, nnx.Param)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    try:
        restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "params"), abstract)
    except ValueError as e:
        raise UserError(f"config.model.pic2word.init_from={path!r} does not fit config.model.pic2word "
                        f"(hidden / layers, or other towers): {str(e).splitlines()[0]}") from None
    nnx.update(mapping, restored)


def export(model: Pic2Word, config, out_dir: str) -> str:
    return export_mapping(model.mapping, out_dir)


# ----------------------------------------------------------------------------------------------------------------
# The method surface


def loss(model: Pic2Word, batch, config, rngs=None):
    v = jax.lax.stop_gradient(model.clip.encode_image(batch["pixels"]))  # the towers are frozen
    w = model.word_of(v, deterministic=rngs is None, rngs=rngs)
    l, m = losses.info_nce(w, l2_normalize(v), temperature=config.loss.temperature, symmetric=True)
    return l, {"batch_recall@1": m["batch_recall@1"]}


def encode_query(model: Pic2Word, ref_pixels, text_ids, text_mask):
    return model.query(ref_pixels, text_ids, text_mask)


def encode_image(model: Pic2Word, pixels):
    return model.image(pixels)


def encode_text(model: Pic2Word, text_ids, text_mask):
    return model.text(text_ids, text_mask)


def templates(config):
    return {"text": (settings(config).prompt, False)}


METHOD = Method("pic2word", build=build, loss=loss, encode_query=encode_query, encode_image=encode_image,
                encode_text=encode_text, check=check, templates=templates, export=export, batch=PAIRS)


def patch_attention(model: Pic2Word, ref_pixels, query) -> np.ndarray:
    """DistillCIR App. C (eqs. 17-21, before upsampling): A = P' . q over the patch grid, [B, g, g].

    P = the vision tower's patch tokens through its projection; P' = f_T(f_phi(P)), each patch's pseudo word in the
    training prompt through the text tower; q = the composed query [B, D] (normalised)."""
    tokens, _ = model.clip.image_tokens(ref_pixels)
    patches = tokens[:, 1:]  # drop CLS
    B, n, D = patches.shape
    words = model.word_of(patches.reshape(B * n, D)).reshape(B, n, -1)
    scores = jnp.einsum("bnd,bd->bn", words, query)
    g = int(round(n ** 0.5))
    return np.asarray(scores).reshape(B, g, g)
