"""The fashion method (seed 002): attribute-aware triplets written by an MLLM, a two-stage fine-tuning of CLIP, and
negatives scaled with static representations. Two registered methods, run as stages of one job (``config.stages``):

``fashion_align`` (stage 1). CLIP (both towers, small learning rate) aligned to attribute-aware sentence prompts:
symmetric InfoNCE between each image and the phrase of its attributes as the MLLM listed them ("category dress,
colour red, pattern striped, ...": the records' ``caption`` for the reference and ``target_text`` for the target,
written by ``synthesize --recipe fashion``), at CLIP's own learned temperature. Its export is the aligned towers.

``fashion`` (stage 2). Composed retrieval on the same triplets:

    s(I)   the reference's sentence-level prompt, made by the CLIP towers themselves: for every attribute key of
           ``model.fashion.attributes`` the value whose phrase "key value" is nearest to the image (zero-shot),
           "key v1, key v2, ..." (the same phrase form the MLLM's lists take in stage 1)
    t      text(s(I) + joiner + relative caption)                  the prompt concatenated with the caption
    q      normalize(w_i normalize(image(I)) + w_t normalize(t))
    L      InfoNCE of q against the batch's targets plus the static bank's entries as extra negatives

The prompt is assembled from token tables inside the jitted step (no host round trip), at training and evaluation
alike. The static bank holds ``model.fashion.bank_size`` image embeddings of the training images, computed once by
the towers stage 2 starts from (stage 1's when it ran) when the model is first built, frozen (not a parameter),
saved in the checkpoints (a resumed run reads the same bank) and sharded over the mesh's batch axes. A bank entry
that is a row's own target (same image path: the batch's ``target_key``) is masked out of that row.

Ours where the seed is silent (each a config value, see the README):
    prompts     the "key value, ..." phrase, generic over any MLLM's attribute keys; the zero-shot choice per key;
                ``joiner`` "that" between prompt and caption
    query       ``image_weight`` = ``text_weight`` = 1 (the Image+Text combination, fine-tuned)
    bank        ``bank_size`` training images (4096 in the demo; FashionIQ scale 32768), the first of a seeded
                shuffle; computed with the starting towers and kept through training and resumption (it is in
                the checkpoints); refreshed only on request: a fresh start of stage 2 (its run directory removed)
    stage 1     InfoNCE at CLIP's learned scale, reference and target pairs as two batches
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax.errors import UserError
from zscir_jax.methods import base, baselines, losses
from zscir_jax.methods.surface import TRIPLETS, Method
from zscir_jax.models import clip
from zscir_jax.numerics import l2_normalize

GROUPS = (
    (r"clip/(text_model|text_projection|text_encoder|text_proj)(/.*)?", "text_tower"),
    (r"clip/.*", "image_tower"),
)
_MASKED = -1e9


class StaticBank(nnx.Variable):
    """Frozen image embeddings used as extra negatives: not a ``nnx.Param``, so no optimizer ever updates them."""


def _static(value: np.ndarray, axes: tuple) -> StaticBank:
    """A host array as a ``StaticBank``, sharded over the active mesh by its logical ``axes`` (numpy in: placed
    straight into its sharding)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return StaticBank(jnp.asarray(value))
    return StaticBank(value, sharding_names=axes)


def settings(config):
    return config.model.fashion


def attributes(config) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((str(k), tuple(str(v) for v in vs)) for k, vs in settings(config).attributes)


def key_phrase(key: str, value: str) -> str:
    return f"{key} {value}"


# ------------------------------------------------------------------------------------------------------ the prompt

@dataclasses.dataclass(frozen=True)
class PromptTables:
    """Token tables for assembling "key v1, key v2, ..., joiner caption" inside the step (tuples: static, hashable).

    class_*  [V, L]  every "key value" phrase tokenized whole (for the zero-shot choice), V = all values of all keys
    piece_*  [V, P]  the same phrase's content tokens followed by the separator's ("," except after the last key)
    joiner_* [J]     the joiner's content tokens
    key_rows         per key, the rows of its values
    """
    class_ids: tuple
    class_mask: tuple
    piece_ids: tuple
    piece_valid: tuple
    joiner_ids: tuple
    joiner_valid: tuple
    key_rows: tuple
    bos: int
    eos: int
    pad: int


def _content(ids: np.ndarray, mask: np.ndarray, specials: set) -> list[int]:
    return [int(t) for t, m in zip(ids, mask) if m and int(t) not in specials]


def prompt_tables(config, tokenizer) -> PromptTables:
    """The tables of ``model.fashion.attributes`` and ``joiner`` in ``tokenizer``'s ids."""
    attrs = attributes(config)
    hf = tokenizer.hf
    bos = hf.bos_token_id if hf.bos_token_id is not None else -1
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    specials = {bos, eos, pad} - {-1}
    phrases = [key_phrase(k, v) for k, vs in attrs for v in vs]
    class_ids, class_mask = tokenizer(phrases)
    last = len(attrs) - 1
    pieces, key_rows, row = [], [], 0
    for n, (k, vs) in enumerate(attrs):
        key_rows.append(tuple(range(row, row + len(vs))))
        for v in vs:
            text = key_phrase(k, v) + ("" if n == last else " ,")
            ids, mask = tokenizer([text])
            pieces.append(_content(ids[0], mask[0], specials))
        row += len(vs)
    width = max(len(p) for p in pieces)
    ids, mask = tokenizer([settings(config).get("joiner", "")])
    joiner = _content(ids[0], mask[0], specials)
    return PromptTables(
        class_ids=tuple(map(tuple, np.asarray(class_ids).tolist())),
        class_mask=tuple(map(tuple, np.asarray(class_mask).tolist())),
        piece_ids=tuple(tuple(p + [pad] * (width - len(p))) for p in pieces),
        piece_valid=tuple(tuple([1] * len(p) + [0] * (width - len(p))) for p in pieces),
        joiner_ids=tuple(joiner), joiner_valid=tuple([1] * len(joiner)),
        key_rows=tuple(key_rows), bos=int(bos), eos=eos, pad=pad)


def concat_tokens(parts, max_length: int, eos: int, pad: int):
    """The valid tokens of ``parts`` ((ids [B, n_i], valid [B, n_i]) in order) packed to the left of [B, max_length]
    rows; a row that overflows keeps its first tokens and ends in ``eos``. Returns (ids, mask)."""
    ids = jnp.concatenate([p[0] for p in parts], axis=1)
    valid = jnp.concatenate([p[1].astype(bool) for p in parts], axis=1)
    short = max_length - ids.shape[1]
    if short > 0:  # every row fits: pad to the fixed width
        ids = jnp.pad(ids, ((0, 0), (0, short)), constant_values=pad)
        valid = jnp.pad(valid, ((0, 0), (0, short)))
    order = jnp.argsort(jnp.logical_not(valid), axis=1, stable=True)  # valid first, each group in place
    ids = jnp.take_along_axis(ids, order, axis=1)[:, :max_length]
    n = jnp.sum(valid, axis=1)
    positions = jnp.arange(ids.shape[1])[None, :]
    ids = jnp.where((n[:, None] > max_length) & (positions == max_length - 1), eos, ids)
    mask = positions < jnp.minimum(n, max_length)[:, None]
    return jnp.where(mask, ids, pad).astype(jnp.int32), mask.astype(jnp.int32)


class FashionRetriever(nnx.Module):
    def __init__(self, towers: clip.CLIPModel, tables: PromptTables | None, image_weight: float, text_weight: float,
                 bank: np.ndarray | None, bank_keys: np.ndarray | None):
        self.clip = towers
        self.tables = tables  # None: the caption alone (no sentence-level prompt)
        self.image_weight, self.text_weight = float(image_weight), float(text_weight)
        self.bank = _static(bank, ("batch", None)) if bank is not None else None
        self.bank_keys = _static(bank_keys, ("batch",)) if bank_keys is not None else None

    def image(self, pixels):
        return l2_normalize(self.clip.encode_image(pixels))

    def choose(self, image_emb):
        """[B, K] the row of the zero-shot value per attribute key (no gradient: a choice, not a feature)."""
        t = self.tables
        phrases = l2_normalize(self.clip.encode_text(jnp.asarray(t.class_ids, jnp.int32),
                                                     jnp.asarray(t.class_mask, jnp.int32)))
        sims = jax.lax.stop_gradient(image_emb @ phrases.T)
        picks = [jnp.asarray(rows)[jnp.argmax(sims[:, jnp.asarray(rows)], axis=-1)] for rows in t.key_rows]
        return jnp.stack(picks, axis=1)

    def prompted(self, image_emb, text_ids, text_mask):
        """(ids, mask) of [BOS] prompt joiner caption [EOS]; the caption's own BOS / EOS / padding dropped."""
        t = self.tables
        B = text_ids.shape[0]
        picks = self.choose(image_emb)
        pieces = jnp.asarray(t.piece_ids, jnp.int32)[picks].reshape(B, -1)
        piece_valid = jnp.asarray(t.piece_valid, jnp.int32)[picks].reshape(B, -1)
        caption_valid = (text_mask > 0) & (text_ids != t.eos) & (text_ids != t.bos) & (text_ids != t.pad)

        def const(values):
            return jnp.broadcast_to(jnp.asarray(values, jnp.int32)[None, :], (B, len(values)))

        parts = [(pieces, piece_valid), (text_ids, caption_valid), (const([t.eos]), const([1]))]
        if t.joiner_ids:
            parts.insert(1, (const(t.joiner_ids), const(t.joiner_valid)))
        if t.bos >= 0:
            parts.insert(0, (const([t.bos]), const([1])))
        return concat_tokens(parts, text_ids.shape[1], t.eos, t.pad)

    def query(self, ref_pixels, text_ids, text_mask):
        v = self.image(ref_pixels)
        if self.tables is not None:
            text_ids, text_mask = self.prompted(v, text_ids, text_mask)
        t = l2_normalize(self.clip.encode_text(text_ids, text_mask))
        return l2_normalize(self.image_weight * v + self.text_weight * t)


# ------------------------------------------------------------------------------------------------------- stage 2

def check(config) -> None:
    f = settings(config)
    attrs = f.get("attributes") or ()
    try:
        ok = len(attrs) > 0 and all(len(vs) > 0 and isinstance(k, str) for k, vs in attrs)
    except (TypeError, ValueError):
        ok = False
    if f.get("prompt", "clip") == "clip" and not ok:
        raise UserError("config.model.fashion.attributes must be a non-empty tuple of (key, (value, ...)) pairs "
                        "(the attribute vocabulary of the sentence-level prompt), or set "
                        "config.model.fashion.prompt='none'")
    if f.get("prompt", "clip") not in ("clip", "none"):
        raise UserError(f"config.model.fashion.prompt={f.prompt!r}: allowed values are clip, none")
    if int(f.get("bank_size", 0)) < 0:
        raise UserError(f"config.model.fashion.bank_size={f.bank_size}: must be >= 0 (0 = no static bank)")
    if f.get("bank_dtype", "float32") not in ("float32", "bfloat16"):
        raise UserError(f"config.model.fashion.bank_dtype={f.bank_dtype!r}: allowed values are float32, bfloat16")


def _towers(config, rngs):
    """Stage 1's towers (``model.fashion.init_from``) when given, else ``model.clip_path`` / random."""
    init = settings(config).get("init_from", "")
    if init:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.model.clip_path = init
    return base.build_towers(config, rngs)


def build(config, rngs: nnx.Rngs) -> FashionRetriever:
    from zscir_jax.data import sources

    f = settings(config)
    towers = _towers(config, rngs)
    tables = None
    if f.get("prompt", "clip") == "clip":
        tables = prompt_tables(config, sources.query_tokenizer(config, METHOD))
    bank = keys = None
    if int(f.get("bank_size", 0)) > 0:
        bank, keys = static_bank(config, towers)
    return FashionRetriever(towers, tables, f.get("image_weight", 1.0), f.get("text_weight", 1.0), bank, keys)


def bank_images(config) -> list[str]:
    """The bank's images: the distinct images of the training records (as the records spell them), the first
    ``bank_size`` of a shuffle seeded by ``config.seed``."""
    from zscir_jax.data import sources

    records = sources.load_triplets(config)
    paths = sorted({r.reference_image for r in records} | {r.target_image for r in records if r.target_image})
    order = np.random.default_rng(int(config.seed)).permutation(len(paths))
    return [paths[i] for i in order[: int(settings(config).bank_size)]]


def static_bank(config, towers: clip.CLIPModel):
    """(embeddings [N, D], keys [N]) with N = ``bank_size`` rounded up to the mesh's batch width; padding rows have
    key -1 and zero embeddings (masked in the loss). A restore skeleton gets zeros of the same shape."""
    from zscir_jax.data import images
    from zscir_jax.data.pipeline import _resolve as resolve, image_key
    from zscir_jax.train import writers

    f = settings(config)
    mesh = jax.sharding.get_abstract_mesh()
    width = 1
    if mesh is not None and not mesh.empty:
        width = int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
    size = int(f.bank_size)
    n = -(-size // width) * width
    dtype = jnp.dtype(f.get("bank_dtype", "float32"))
    dim = towers.config.projection_dim
    emb, keys = np.zeros((n, dim), np.float32), np.full((n,), -1, np.int32)
    if not config.model.get("skeleton"):
        paths = bank_images(config)
        mean, std = images.normalization_for(config.model.get("clip_path", ""))
        image_dir = config.data.get("image_dir", "") or None
        graphdef, state = nnx.split(towers)
        encode = jax.jit(lambda state, x: l2_normalize(nnx.merge(graphdef, state).encode_image(x)))
        chunk, size_px = int(config.eval.batch_size), int(config.data.image_size)
        bar = writers.progress(len(paths), 0, "fashion: static bank", config.train.get("progress_bar", True),
                               unit="image")
        try:
            for a in range(0, len(paths), chunk):
                part = paths[a:a + chunk]
                px = np.zeros((chunk, size_px, size_px, 3), np.float32)
                for i, p in enumerate(part):
                    px[i] = images.preprocess(images.load_image(resolve(p, image_dir)), size_px, mean, std)
                emb[a:a + len(part)] = np.asarray(encode(state, px))[: len(part)]
                bar.update(len(part))
        finally:
            bar.close()
        keys[: len(paths)] = [image_key(p) for p in paths]
    return emb.astype(dtype), keys


def loss(model: FashionRetriever, batch, config, rngs=None):
    tau = config.loss.temperature
    q = model.query(batch["reference_pixels"], batch["text_ids"], batch["text_mask"])
    target = model.image(batch["target_pixels"])
    valid = batch.get("has_target_image")
    logits = losses.cosine_logits(q, target, tau, valid)
    metrics = {}
    if model.bank is not None:
        bank = model.bank[...].astype(q.dtype)
        keys = model.bank_keys[...]
        own = keys[None, :] == batch["target_key"][:, None]
        extra = jnp.where(own | (keys[None, :] < 0), _MASKED, q @ bank.T / tau)
        metrics["bank_hardest"] = jnp.mean(jnp.max(extra, axis=-1) * tau)
        logits = jnp.concatenate([logits, extra], axis=1)
    log_pt = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)[:, : q.shape[0]])
    w = valid.astype(log_pt.dtype) if valid is not None else jnp.ones_like(log_pt)
    l = -jnp.sum(log_pt * w) / jnp.maximum(jnp.sum(w), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == jnp.arange(q.shape[0])).astype(jnp.float32)
    metrics["batch_recall@1"] = jnp.sum(correct * w) / jnp.maximum(jnp.sum(w), 1.0)
    return l, metrics


def encode_query(model: FashionRetriever, ref_pixels, text_ids, text_mask):
    return model.query(ref_pixels, text_ids, text_mask)


def encode_image(model: FashionRetriever, pixels):
    return model.image(pixels)


def encode_text(model: FashionRetriever, text_ids, text_mask):
    return l2_normalize(model.clip.encode_text(text_ids, text_mask))


METHOD = Method("fashion", build=build, loss=loss, encode_query=encode_query, encode_image=encode_image,
                encode_text=encode_text, check=check, batch=TRIPLETS, reads_data_at_build=True)


# ------------------------------------------------------------------------------------------------------- stage 1

def align_loss(model: clip.CLIPModel, batch, config, rngs=None):
    """Images against the phrases of their MLLM-listed attributes: the references with ``caption``, the targets
    with ``target_text`` (two batches, so an image that is both never meets itself as a negative)."""
    scale = jnp.minimum(jnp.exp(model.logit_scale[...].astype(jnp.float32)), 100.0)
    ref = model.encode_image(batch["reference_pixels"])
    l_ref, m = losses.info_nce(ref, model.encode_text(batch["caption_ids"], batch["caption_mask"]),
                               temperature=1.0 / scale, symmetric=True, valid=batch["has_caption"])
    has_target = batch["has_target_text"] & batch["has_target_image"]
    tgt = model.encode_image(batch["target_pixels"])
    l_tgt, _ = losses.info_nce(tgt, model.encode_text(batch["target_text_ids"], batch["target_text_mask"]),
                               temperature=1.0 / scale, symmetric=True, valid=has_target)
    return 0.5 * (l_ref + l_tgt), {"batch_recall@1": m["batch_recall@1"], "logit_scale": scale}


def align_export(model: clip.CLIPModel, config, out_dir: str) -> str:
    base.export_towers(model, out_dir)
    return out_dir


ALIGN = dataclasses.replace(baselines.image_plus_text, name="fashion_align", batch=TRIPLETS, loss=align_loss,
                            export=align_export,
                            text_fields={"text": "clip", "caption": "clip", "target_text": "clip"})
