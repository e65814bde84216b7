"""MVFT-JI (seed 000): MLLM-guided multi-view fine-tuning of the VLM, with joint inference.

Training data come from unlabeled images only (``synthesize --recipe mvftji``): per image I an MLLM writes a
caption c (P_c), a modification m (P_m) and the target text t* from (I, m) (P_tt). Two tasks train the VLM jointly:

    task 1, target-text retrieval   the composed query q(I, m) retrieves t*, embedded by the VLM's text side
    task 2, text-to-image retrieval the caption c retrieves its image I (keeps the towers aligned as they move)

    L = w_1 * L_1 + mu * L_2        (+ w_3 * L_3 on records that also have a target image; off by default)

At evaluation the MLLM writes t-hat = MLLM(I_ref, m; P_tt) for every query and a gallery image g scores
s(g) = sim(q, g) + lambda * sim(text(t-hat), g) (``evaluation.joint``; ``config.joint``).

The seed gives the shape only; these choices are OURS (each a config value):
    composer     ``config.model.composer="fusion"``: q(I, m) is the prompt-fusion module over the CLIP towers' token
                 features (PVLF's, ``config.model.fusion``), the query PVLF's CIR fine-tuning uses. Another composer
                 (BLIP-2's Q-Former) is refused until that backbone exists.
    text side    t* and c are embedded by the text tower (CLIP: projection of the EOT token), L2-normalised.
    losses       each L_k is a symmetric InfoNCE over the GLOBAL batch at ``config.loss.temperature`` (both
                 directions: the query picks its text among the batch's texts, and the text its query); rows without
                 a target text / caption / target image are masked out of that task (``losses.info_nce``'s valid).
    weights      ``config.loss.target_text_weight`` (w_1, 1.0), ``config.loss.caption_weight`` (mu, 1.0),
                 ``config.loss.target_image_weight`` (w_3, 0.0); task-1-only / task-2-only are weights of 0.
    towers       which parts train is PVLF's fine-tuning mode (``config.optim.finetune``: none / text / both).
"""
from __future__ import annotations

from zscir_jax.errors import UserError
from zscir_jax.methods import base, losses
from zscir_jax.methods.surface import TRIPLETS, Method

COMPOSERS = ("fusion",)  # "qformer" joins when the BLIP-2 towers do


def check(config) -> None:
    composer = config.model.get("composer", "fusion")
    if composer not in COMPOSERS:
        raise UserError(f"config.model.composer={composer!r}: allowed values are {', '.join(COMPOSERS)} (BLIP-2's "
                        "Q-Former composer needs the BLIP-2 backbone, not available yet)")
    weights = loss_weights(config)
    for name, w in weights.items():
        if not w >= 0:
            raise UserError(f"config.loss.{name}_weight={w!r}: must be >= 0")
    if not any(weights.values()):
        raise UserError("config.loss: target_text_weight, caption_weight and target_image_weight are all 0: "
                        "nothing to train")


def build(config, rngs):
    check(config)
    return base.build_fusion_retriever(config, rngs)


def loss_weights(config) -> dict[str, float]:
    l = config.loss
    return {"target_text": float(l.get("target_text_weight", 1.0)), "caption": float(l.get("caption_weight", 1.0)),
            "target_image": float(l.get("target_image_weight", 0.0))}


def loss(model, batch, config, rngs=None):
    """w_1 * L_1(q, text(t*)) + mu * L_2(text(c), image(I)) [+ w_3 * L_3(q, image(target))], on the global batch."""
    weights = loss_weights(config)
    tau = config.loss.temperature
    total, metrics = 0.0, {}
    query = None
    if weights["target_text"] or weights["target_image"]:
        query = model.query(batch["reference_pixels"], batch["text_ids"], batch["text_mask"],
                            deterministic=rngs is None, rngs=rngs)
    if weights["target_text"]:
        target_text = model.text(batch["target_text_ids"], batch["target_text_mask"])
        l1, m1 = losses.info_nce(query, target_text, temperature=tau, symmetric=True,
                                 valid=batch.get("has_target_text"))
        total = total + weights["target_text"] * l1
        metrics.update({"loss_target_text": l1, "target_text_recall@1": m1["batch_recall@1"]})
    if weights["caption"]:
        caption = model.text(batch["caption_ids"], batch["caption_mask"])
        image = model.image(batch["reference_pixels"])
        l2, m2 = losses.info_nce(caption, image, temperature=tau, symmetric=True, valid=batch.get("has_caption"))
        total = total + weights["caption"] * l2
        metrics.update({"loss_caption": l2, "caption_recall@1": m2["batch_recall@1"]})
    if weights["target_image"]:
        target = model.image(batch["target_pixels"])
        l3, m3 = losses.info_nce(query, target, temperature=tau, symmetric=True, valid=batch.get("has_target_image"))
        total = total + weights["target_image"] * l3
        metrics.update({"loss_target_image": l3, "target_image_recall@1": m3["batch_recall@1"]})
    return total, metrics


def encode_query(model, ref_pixels, text_ids, text_mask):
    return model.query(ref_pixels, text_ids, text_mask)


def encode_image(model, pixels):
    return model.image(pixels)


def encode_text(model, text_ids, text_mask):
    return model.text(text_ids, text_mask)


METHOD = Method("mvftji", build=build, loss=loss, encode_query=encode_query, encode_image=encode_image,
                encode_text=encode_text, check=check, batch=TRIPLETS,
                text_fields={"text": "clip", "target_text": "clip", "caption": "clip"})
