"""CoLLM: an (M)LLM as the joint embedder of (reference image, modification text), trained on triplets built on the
fly from image-caption pairs.

Query side: the reference image goes through a CLIP vision tower and a projector into LLM image tokens; the
modification text tokens follow; the LLM's last real token's hidden state (``llm.last_token_pool``) is mapped by a
linear ``projection`` into the image-embedding space of a FROZEN CLIP. Gallery side: that CLIP's ``encode_image``.

Training (``batch="pairs"``), all inside the jitted loss on the global batch of (image, caption) pairs:
  1. the captions are embedded by the frozen CLIP text tower;
  2. each image i is paired with the OTHER image j whose caption is most similar (diagonal masked);
  3. the modification text is rule-based (``config.model.collm.rule``): ``[BOS] + prefix + tokens`` where
     ``prefix`` is the token ids of ``config.model.collm.prefix_text`` (default "change it to"), tokenised once at
     build time, and ``tokens`` are caption j's tokens that caption i lacks ("difference", default) or all of
     caption j ("caption"). Row j's ids are gathered, packed by a stable sort and shifted right by ``len(prefix)``,
     so every shape stays static (length L + len(prefix));
  4. InfoNCE of query (image_i, modification_ij) against every image of the batch, the positive being image j.
     Scoring against the batch's images (label j) rather than against ``target[j]`` rows avoids false negatives
     when two queries pick the same target, and keeps the reference image i as a hard negative.
The paper lets an LLM write the modification from the two captions (its MTCIR-style generation, e.g. with
``llm.generate`` on a prompt holding both captions); that is the configurable alternative when a generator model is
given. It is NOT implemented here: only the rule above is.

Two options of ours, off by default (the paper has neither; see the README's "CoLLM below Image-only"):
  ``config.model.collm.reference_residual``  the query is ``normalize(projection(h) + clip_image(reference))``:
      the frozen CLIP's unit reference embedding plus what the LLM adds, with the projection initialised to zero
      so training starts from the Image-only query;
  ``config.data.pair_neighbours = k``  batches hold each shuffled pair with its k nearest captions over the whole
      set (``zscir_jax.data.neighbours``), so the in-batch pairing finds edit-like targets in small batches.

Modes (``config.model.collm.mode``):
  "frozen"  the LLM is frozen; the image projector and the output projection are trained;
  "lora"    LoRA adapters (rank / alpha / targets from ``config.model.collm.lora``) on the LLM; only the adapters and
            the output projection are trained.
Freezing goes through the optimizer's regex groups: use :data:`GROUPS` and :func:`frozen_labels` for
``config.optim.groups`` / ``config.optim.frozen`` (configs/collm_demo.py does).

The joint embedder is either a pretrained LLaVA (``config.model.mllm_path``: a transformers LLaVA directory or a
zscir_jax MLLM export, loaded with ``mllm.load``) whose own tokenizer writes the query side (the ``llm_text`` batch
field; the captions used for pairing stay on the CLIP tokenizer), or, without that path, a random LLaVA-style model
(``config.model.collm.llm`` sizes, vision tower copied from the frozen CLIP) reading the CLIP tokenizer's ids. The
reference pixels are resized to the LLaVA vision tower's input size when the two towers differ.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax.methods import base, losses
from zscir_jax.methods.surface import PAIRS, Method
from zscir_jax.models import clip, lora, mllm
from zscir_jax.numerics import l2_normalize

# Parameter paths -> optimizer labels (first match wins).
GROUPS = (
    (r"mllm/llm/.*/lora_[ab](/.*)?", "lora"),  # (/.*)?: jax key paths end in /value
    (r"mllm/llm/.*", "llm"),
    (r"mllm/multi_modal_projector/.*", "projector"),
    (r"mllm/vision_tower/.*", "image_tower"),  # a copy of the frozen CLIP's vision tower
    (r"projection/.*", "projection"),
    (r"clip/(text_model|text_projection)(/.*)?", "text_tower"),
    (r"clip/.*", "image_tower"),
)
_FROZEN = {"frozen": ("llm", "image_tower", "text_tower"),
           "lora": ("llm", "projector", "image_tower", "text_tower")}


def frozen_labels(mode: str) -> tuple[str, ...]:
    """The optimizer labels (of :data:`GROUPS`) that ``mode`` never updates."""
    if mode not in _FROZEN:
        raise ValueError(f"config.model.collm.mode must be one of {sorted(_FROZEN)}, got {mode!r}")
    return _FROZEN[mode]


class CoLLM(nnx.Module):
    def __init__(self, towers: clip.CLIPModel, mm: mllm.MLLM, prefix_ids: tuple[int, ...], has_bos: bool,
                 rule: str = "difference", reference_residual: bool = False, *,
                 rngs: nnx.Rngs, dtype, param_dtype):
        self.clip = towers
        self.mllm = mm
        d_llm, d_img = mm.config.text.hidden_size, towers.config.projection_dim
        # With the residual the projection starts at zero, so the untrained query IS the Image-only query.
        init = nnx.initializers.zeros if reference_residual else nnx.initializers.normal(0.02)
        self.projection = nnx.Linear(d_llm, d_img, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                     kernel_init=nnx.with_partitioning(init, ("embed", "proj")))
        self.prefix_ids = tuple(int(i) for i in prefix_ids)  # static: part of the graph, not a parameter
        self.has_bos = bool(has_bos)
        self.rule = rule
        self.reference_residual = bool(reference_residual)

    def query(self, ref_pixels, text_ids, text_mask, reference=None):
        """[B, D_img] L2-normalised joint embedding of (image, text): image tokens first, then the text; with
        ``reference_residual`` the LLM's projected state is added to the frozen CLIP's unit reference embedding
        (``reference``, when the caller has it already: the loss encodes the batch's images anyway)."""
        out = self.projection(base.mllm_last_token(self.mllm, text_ids, text_mask, ref_pixels))
        if self.reference_residual:
            reference = self.image(ref_pixels) if reference is None else reference
            out = out + jax.lax.stop_gradient(reference).astype(out.dtype)
        return l2_normalize(out)

    def image(self, pixels):
        return l2_normalize(self.clip.encode_image(pixels))


# ----------------------------------------------------------------------------------------------------------------
# Build


def _settings(config):
    return config.model.collm


def prefix_ids(config) -> tuple[int, ...]:
    """``config.model.collm.prefix_ids`` if given, else the tokenizer's ids of ``prefix_text`` (no special tokens)."""
    c = _settings(config)
    if c.get("prefix_ids"):
        return tuple(int(i) for i in c.prefix_ids)
    return tuple(int(i) for i in _llm_tokenizer(config).hf(c.prefix_text, add_special_tokens=False)["input_ids"])


def _llm_tokenizer(config):
    from zscir_jax.data import sources  # the one place that knows which tokenizer a config uses

    return sources.tokenizer_for(config, "llm")


def _adds_bos(config) -> bool:
    """Whether the query tokenizer starts a text with BOS (the modification prefix goes after it)."""
    c = _settings(config)
    if not config.model.get("mllm_path"):
        return c.get("has_bos", True)
    hf = _llm_tokenizer(config).hf
    ids = hf("a")["input_ids"]
    return hf.bos_token_id is not None and len(ids) > 0 and ids[0] == hf.bos_token_id


def build(config, rngs: nnx.Rngs) -> CoLLM:
    c = _settings(config)
    dtype, param_dtype = base.dtypes(config)
    towers = base.build_towers(config, rngs)
    mm = base.build_mllm(config, towers, c.llm, rngs)
    if c.mode == "lora":
        lc = c.lora
        lora.apply(mm.llm, rank=lc.rank, alpha=lc.alpha, dropout=lc.get("dropout", 0.0), targets=tuple(lc.targets),
                   rngs=rngs)
    else:
        frozen_labels(c.mode)  # validates the name
    return CoLLM(towers, mm, prefix_ids(config), _adds_bos(config), c.get("rule", "difference"),
                 bool(c.get("reference_residual", False)), rngs=rngs, dtype=dtype, param_dtype=param_dtype)


# ----------------------------------------------------------------------------------------------------------------
# On-the-fly triplets


def pair_by_caption(caption_emb: jax.Array) -> jax.Array:
    """[B] index of each row's most similar OTHER row (cosine), i.e. the target image of reference i."""
    e = l2_normalize(caption_emb.astype(jnp.float32))
    sim = e @ e.T
    sim = jnp.where(jnp.eye(sim.shape[0], dtype=bool), -jnp.inf, sim)
    return jnp.argmax(sim, axis=-1)


def difference_tokens(ids_ref, mask_ref, ids_tgt, mask_tgt, has_bos: bool = True):
    """The target caption's tokens that the reference caption lacks, in order, left-packed: ([B, L], [B, L]).

    BOS and the last real token (EOS) of the target are always kept. A stable sort of the kept positions first is
    the static-shape way to drop tokens.
    """
    B, L = ids_tgt.shape
    pos = jnp.arange(L)
    shared = jnp.any((ids_tgt[:, :, None] == ids_ref[:, None, :]) & (mask_ref[:, None, :] > 0), axis=-1)
    last = jnp.sum(mask_tgt, axis=-1, keepdims=True) - 1
    special = (pos[None] == last) | ((pos[None] == 0) & has_bos)
    keep = (mask_tgt > 0) & (~shared | special)
    order = jnp.argsort(jnp.where(keep, pos[None], L + pos[None]), axis=-1, stable=True)
    ids = jnp.take_along_axis(jnp.where(keep, ids_tgt, 0), order, axis=-1)
    return ids, jnp.take_along_axis(keep, order, axis=-1).astype(mask_tgt.dtype)


def insert_prefix(ids, mask, prefix: tuple[int, ...], has_bos: bool = True):
    """``[BOS] + prefix + rest`` for every row, as ([B, L+P], [B, L+P]): tokens shifted right by P = len(prefix)
    behind the kept BOS, a static-shape re-pad by gather."""
    B, L = ids.shape
    P = len(prefix)
    start = 1 if has_bos else 0  # prefix goes after the BOS token when captions carry one
    pos = jnp.arange(L + P)
    src = jnp.where(pos < start, pos, jnp.clip(pos - P, 0, L - 1))  # where each output token comes from
    in_prefix = (pos >= start) & (pos < start + P)
    prefix_row = jnp.asarray(prefix if P else (0,), ids.dtype)[jnp.clip(pos - start, 0, max(P - 1, 0))]
    out_ids = jnp.where(in_prefix[None], prefix_row[None], ids[:, src])
    out_mask = jnp.where(in_prefix[None], 1, mask[:, src]).astype(mask.dtype)
    return out_ids, out_mask


def modification(text_ids, text_mask, target_index, prefix: tuple[int, ...], has_bos: bool = True,
                 rule: str = "caption"):
    """Rule-based modification tokens for reference i -> target j = ``target_index[i]``:

    "caption"     ``[BOS] + prefix + caption_j``
    "difference"  ``[BOS] + prefix + (caption_j's tokens absent from caption_i)``: says what changes, so the
                  reference image must supply what stays (the full caption lets a model ignore the image).
    """
    ids, mask = text_ids[target_index], text_mask[target_index]
    if rule == "difference":
        ids, mask = difference_tokens(text_ids, text_mask, ids, mask, has_bos)
    elif rule != "caption":
        raise ValueError(f"config.model.collm.rule must be 'caption' or 'difference', got {rule!r}")
    return insert_prefix(ids, mask, prefix, has_bos)


# ----------------------------------------------------------------------------------------------------------------
# The method surface


def loss(model: CoLLM, batch, config, rngs=None):
    pixels, ids, mask = batch["pixels"], batch["text_ids"], batch["text_mask"]
    # The frozen CLIP only proposes pairs and targets: no gradient flows into it.
    captions = jax.lax.stop_gradient(model.clip.encode_text(ids, mask))
    images = jax.lax.stop_gradient(model.image(pixels))
    j = pair_by_caption(captions)
    # The modification is made of the query tokenizer's ids of the captions (the CLIP ids when they are the same).
    q_ids, q_mask = batch.get("llm_text_ids", ids), batch.get("llm_text_mask", mask)
    mod_ids, mod_mask = modification(q_ids, q_mask, j, model.prefix_ids, model.has_bos, model.rule)
    query = model.query(pixels, mod_ids, mod_mask, reference=images)  # the references are the batch's images
    log_p = jax.nn.log_softmax(losses.cosine_logits(query, images, config.loss.temperature), axis=-1)
    log_pt = jnp.take_along_axis(log_p, j[:, None], axis=1)[:, 0]
    metrics = {"batch_recall@1": jnp.mean((jnp.argmax(log_p, -1) == j).astype(jnp.float32)),
               "mean_log_pt": jnp.mean(log_pt),
               "pair_caption_sim": jnp.mean(jnp.sum(l2_normalize(captions) * l2_normalize(captions[j]), -1))}
    return -jnp.mean(log_pt), metrics


def encode_query(model: CoLLM, ref_pixels, text_ids, text_mask):
    return model.query(ref_pixels, text_ids, text_mask)


def encode_image(model: CoLLM, pixels):
    return model.image(pixels)


METHOD = Method("collm", build=build, loss=loss, encode_query=encode_query, encode_image=encode_image, batch=PAIRS,
                text_fields={"text": "clip", "llm_text": "llm"}, query_field="llm_text")
