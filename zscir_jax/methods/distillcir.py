"""DistillCIR (seed 004, from its supplement): an MLLM teacher's instruction-aware embeddings distilled into a CLIP +
Pic2Word student. Two registered methods, run as stages of one job (``config.stages``, ``train.stages``):

``distillcir_teacher`` (App. B, Fig. 6; eqs. 14-16). Triplets (image i, instruction t, modified caption m) written by
``synthesize --recipe distillcir`` (no target image). The teacher is a LLaVA (``config.model.mllm_path``):

    h_(i,t) = the LLM's last hidden state of (image tokens, ``teacher.query_prompt`` around t, [EOS])     eq. 15
    h_m     = the LLM's last hidden state of (``teacher.summary_prompt`` around m, [EOS])                eq. 16
    L_com   = symmetric InfoNCE between h_(i,t) and h_m over the global batch at ``loss.temperature``

trained through LoRA adapters on the LLM (``model.teacher.lora``: rank, alpha, targets, dropout). Its ``export``
embeds every training record's m with the trained teacher once: ``<stage>/export`` (``data.features``), which the
student reads as the batch field ``teacher_target``.

``distillcir`` (the student). CLIP towers with LoRA on their attention projections (Table 7: r=64, alpha=16;
``model.distillcir.lora``) plus Pic2Word's f_phi, started from a Pic2Word stage (App. D;
``model.pic2word.init_from``). The composed query q = text("a photo of * that {t}", * = f_phi(image(i))).

    L_con = symmetric InfoNCE between q and text(m)                              (the student's own term)
    L_fea = distance between q and P(h_m), P a learned D_M -> D_T projection     (feature distillation)
    L     = loss.contrastive_weight * L_con + loss.feature_weight * L_fea

The seed (a supplement: its equations 1-13 are not in it) leaves these to us; each is a config value:
    prompts        teacher ``query_prompt`` "{text}\\nDescribe the changed image in one word:" after the image
                   tokens and ``summary_prompt`` "{text}\\nDescribe this sentence in one word:" (E5-V's "in one word"
                   prompts, which the paper's "last token embedding" follows); student ``model.pic2word.prompt``
                   "a photo of * that {text}"
    L_fea          ``loss.feature_loss``: "info_nce" (default: symmetric InfoNCE between q and P(h_m) over the batch,
                   so P cannot collapse) or "cosine" (mean 1 - cos(q, P(h_m)))
    weights        ``loss.contrastive_weight`` 1.0, ``loss.feature_weight`` 1.0; one temperature
                   ``loss.temperature`` for all InfoNCE terms
    teacher LoRA   on the LLM's attention projections (q/k/v/o), rank and alpha in the config; the vision tower and
                   projector stay frozen
    features       stored as ``model.teacher.feature_dtype`` (float32; float16 halves a 7B teacher's file)
Rows without a modified caption take no part in any term.
App. C: ``explain`` writes the student's attention over the patch grid (P' . q, upsampled over the image) for a few
queries next to each evaluation's output (``<row>/eval/<eval>_attention.png``).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zscir_jax.errors import UserError
from zscir_jax.methods import base, losses, pic2word
from zscir_jax.methods.surface import TRIPLETS, Method
from zscir_jax.models import lora
from zscir_jax.numerics import l2_normalize

FEATURE_KEY = "teacher_target"  # the student's batch field (config.data.features.teacher_target)
FEATURE_LOSSES = ("info_nce", "cosine")

TEACHER_GROUPS = (
    (r"mllm/llm/.*/lora_[ab](/.*)?", "lora"),
    (r"mllm/llm/.*", "llm"),
    (r"mllm/multi_modal_projector/.*", "projector"),
    (r"mllm/vision_tower/.*", "vision"),
)
TEACHER_FROZEN = ("llm", "projector", "vision")


# ---------------------------------------------------------------------------------------------------------- teacher

class Teacher(nnx.Module):
    def __init__(self, mm):
        self.mllm = mm

    def composed(self, pixels, ids, mask):
        """h_(i,t) [B, D_M], not normalised."""
        return base.mllm_last_token(self.mllm, ids, mask, pixels)

    def caption(self, ids, mask):
        """h_m [B, D_M], not normalised."""
        return base.mllm_last_token(self.mllm, ids, mask)


def teacher_settings(config):
    return config.model.teacher


def teacher_check(config) -> None:
    from zscir_jax.data import tokenizer as tok_lib

    t = teacher_settings(config)
    for key in ("query_prompt", "summary_prompt"):
        tok_lib.check_template(t[key], f"config.model.teacher.{key}")
    if int(t.lora.rank) <= 0:
        raise UserError(f"config.model.teacher.lora.rank={t.lora.rank}: must be > 0 (the teacher trains LoRA "
                        "adapters only)")
    if t.get("feature_dtype", "float32") not in ("float32", "float16"):
        raise UserError(f"config.model.teacher.feature_dtype={t.feature_dtype!r}: allowed values are float32, "
                        "float16")


def teacher_build(config, rngs: nnx.Rngs) -> Teacher:
    t = teacher_settings(config)
    towers = None if config.model.get("mllm_path") else base.build_towers(config, rngs)
    mm = base.build_mllm(config, towers, t.get("llm", {}), rngs)
    lora.apply(mm.llm, rank=int(t.lora.rank), alpha=float(t.lora.alpha), dropout=float(t.lora.get("dropout", 0.0)),
               targets=tuple(t.lora.targets), rngs=rngs)
    return Teacher(mm)


def teacher_loss(model: Teacher, batch, config, rngs=None):
    h_it = model.composed(batch["reference_pixels"], batch["text_ids"], batch["text_mask"])
    h_m = model.caption(batch["target_text_ids"], batch["target_text_mask"])
    l, m = losses.info_nce(h_it, h_m, temperature=config.loss.temperature, symmetric=True,
                           valid=batch.get("has_target_text"))
    return l, {"batch_recall@1": m["batch_recall@1"], "target_fraction": m["target_fraction"]}


def teacher_templates(config):
    t = teacher_settings(config)
    return {"text": (t.query_prompt, True), "target_text": (t.summary_prompt, True)}


def teacher_encode_query(model: Teacher, ref_pixels, text_ids, text_mask):
    return l2_normalize(model.composed(ref_pixels, text_ids, text_mask))


def teacher_encode_image(model: Teacher, pixels):
    raise NotImplementedError("the DistillCIR teacher embeds (image, instruction) and captions, not gallery images; "
                              "it is not evaluated on its own")


def teacher_export(model: Teacher, config, out_dir: str) -> str:
    """h_m of every training record's modified caption, row i = record i (``data.features``)."""
    from zscir_jax.data import features, sources
    from zscir_jax.train import writers

    records = sources.load_triplets(config)
    texts = [r.target_text for r in records]
    tok = sources.tokenizers_for(config, TEACHER)["target_text"]
    graphdef, state = nnx.split(model)
    embed = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).caption(ids, mask))
    n, size = len(texts), int(config.eval.batch_size)
    dtype = np.dtype(teacher_settings(config).get("feature_dtype", "float32"))
    out = None
    bar = writers.progress(n, 0, "teacher: embedding the modified captions", config.train.get("progress_bar", True),
                           unit="caption")
    try:
        for a in range(0, n, size):
            chunk = texts[a:a + size]
            ids, mask = tok(chunk + [""] * (size - len(chunk)))  # one shape: one compile
            h = np.asarray(embed(state, ids, mask))[: len(chunk)]
            if out is None:
                out = np.zeros((n, h.shape[1]), dtype)
            out[a:a + len(chunk)] = h
            bar.update(len(chunk))
    finally:
        bar.close()
    if jax.process_index() == 0:
        features.write(out_dir, out, texts, writer="distillcir_teacher", prompt=teacher_settings(config).summary_prompt)
    return out_dir


TEACHER = Method("distillcir_teacher", build=teacher_build, loss=teacher_loss, encode_query=teacher_encode_query,
                 encode_image=teacher_encode_image, check=teacher_check, templates=teacher_templates,
                 export=teacher_export, batch=TRIPLETS, text_fields={"text": "llm", "target_text": "llm"})


# ---------------------------------------------------------------------------------------------------------- student

class Student(pic2word.Pic2Word):
    def __init__(self, towers, mapping, slot, train_prompt, projection):
        super().__init__(towers, mapping, slot, train_prompt)
        self.feature_projection = projection  # D_M -> D_T, or None without a teacher


def settings(config):
    return config.model.distillcir


def loss_weights(config) -> tuple[float, float]:
    return float(config.loss.get("contrastive_weight", 1.0)), float(config.loss.get("feature_weight", 1.0))


def check(config) -> None:
    pic2word.check(config)
    w_con, w_fea = loss_weights(config)
    for name, w in (("contrastive_weight", w_con), ("feature_weight", w_fea)):
        if not w >= 0:
            raise UserError(f"config.loss.{name}={w!r}: must be >= 0")
    if not (w_con or w_fea):
        raise UserError("config.loss: contrastive_weight and feature_weight are both 0: nothing to train")
    kind = config.loss.get("feature_loss", "info_nce")
    if kind not in FEATURE_LOSSES:
        raise UserError(f"config.loss.feature_loss={kind!r}: allowed values are {', '.join(FEATURE_LOSSES)}")
    path = dict(config.data.get("features") or {}).get(FEATURE_KEY, "")
    if w_fea and not path and not base.is_stage_output(config, f"data.features.{FEATURE_KEY}"):
        raise UserError(f"config.loss.feature_weight={w_fea} needs the teacher's features: set "
                        f"config.data.features.{FEATURE_KEY} (a teacher's export) or add a distillcir_teacher "
                        "stage to config.stages, or set config.loss.feature_weight=0")
    if int(settings(config).lora.rank) < 0:
        raise UserError(f"config.model.distillcir.lora.rank={settings(config).lora.rank}: must be >= 0 (0 = no LoRA)")


def teacher_dim(config) -> int:
    """D_M: from the teacher's features (``config.data.features.teacher_target``) when set, else 0 (no L_fea)."""
    from zscir_jax.data import features

    path = dict(config.data.get("features") or {}).get(FEATURE_KEY, "")
    if not path:
        return 0
    return int(features.read_meta(path, f"config.data.features.{FEATURE_KEY}")["dim"])


def build(config, rngs: nnx.Rngs) -> Student:
    towers = base.build_towers(config, rngs)
    lc = settings(config).lora
    if int(lc.rank) > 0:
        lora.apply(towers, rank=int(lc.rank), alpha=float(lc.alpha), dropout=float(lc.get("dropout", 0.0)),
                   targets=tuple(lc.targets), rngs=rngs)
    slot, prompt = pic2word.slot_and_prompt(config)
    mapping = pic2word.build_mapping(config, towers, rngs)
    dim, (dtype, param_dtype) = teacher_dim(config), base.dtypes(config)
    projection = None
    if dim:
        projection = nnx.Linear(dim, towers.config.projection_dim, use_bias=False, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs,
                                kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "proj")))
    return Student(towers, mapping, slot, prompt, projection)


def loss(model: Student, batch, config, rngs=None):
    w_con, w_fea = loss_weights(config)
    tau = config.loss.temperature
    valid = batch.get("has_target_text")
    q = model.query(batch["reference_pixels"], batch["text_ids"], batch["text_mask"], deterministic=rngs is None,
                    rngs=rngs)
    total, metrics = 0.0, {}
    if w_con:
        target = model.text(batch["target_text_ids"], batch["target_text_mask"])
        l_con, m = losses.info_nce(q, target, temperature=tau, symmetric=True, valid=valid)
        total = total + w_con * l_con
        metrics.update({"loss_contrastive": l_con, "batch_recall@1": m["batch_recall@1"]})
    if w_fea:
        if model.feature_projection is None or FEATURE_KEY not in batch:
            raise UserError(f"config.loss.feature_weight={w_fea} but the batch has no {FEATURE_KEY} (set "
                            f"config.data.features.{FEATURE_KEY})")
        teacher = l2_normalize(model.feature_projection(batch[FEATURE_KEY].astype(q.dtype)))
        if config.loss.get("feature_loss", "info_nce") == "cosine":
            cos = jnp.sum(q * teacher, axis=-1)
            w = valid.astype(cos.dtype) if valid is not None else jnp.ones_like(cos)
            l_fea = jnp.sum((1.0 - cos) * w) / jnp.maximum(jnp.sum(w), 1.0)
        else:
            l_fea, _ = losses.info_nce(q, teacher, temperature=tau, symmetric=True, valid=valid)
        total = total + w_fea * l_fea
        metrics["loss_feature"] = l_fea
    return total, metrics


def templates(config):
    return {"text": (config.model.pic2word.prompt, False)}


def explain(model: Student, config, benchmark, out_path: str, num_queries: int = 4) -> str:
    """App. C for the first queries of ``benchmark``: the reference, then the student's attention over it."""
    from zscir_jax.data import images, sources
    from zscir_jax.evaluation import pictures

    queries = benchmark.queries[:num_queries]
    mean, std = images.normalization_for(config.model.get("clip_path", ""))
    size = int(config.data.image_size)
    raw = np.stack([images.to_uint8_square(images.load_image(benchmark.image_path(q.reference)), size)
                    for q in queries])
    pixels = images.normalize(raw, mean, std)
    ids, mask = sources.query_tokenizer(config, METHOD)([q.text for q in queries])
    query = model.query(jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask))
    maps = pic2word.patch_attention(model, jnp.asarray(pixels), query)
    rows = [pictures.AttentionPicture(benchmark.image_path(q.reference), q.text, a, q.query_id)
            for q, a in zip(queries, maps)]
    return pictures.save_attention_grid(out_path, rows)


METHOD = Method("distillcir", build=build, loss=loss, encode_query=pic2word.encode_query,
                encode_image=pic2word.encode_image, encode_text=pic2word.encode_text, check=check,
                templates=templates, explain=explain, batch=TRIPLETS,
                text_fields={"text": "clip", "target_text": "clip"})
