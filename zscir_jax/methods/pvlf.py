"""PVLF: [text ; p learnable context prompts ; image] fusion, adaptive (softmax) aggregation, focal contrastive loss.

Prompt depth (shallow/deep), p, J and the weighting rule come from ``config.model.fusion``; see configs/common.py
for the paper's defaults (p=25, J=2, deep, softmax, tau=0.01, alpha=1, gamma=2).
"""
from zscir_jax.methods import base

BATCH = "triplets"


def build(config, rngs):
    return base.build_fusion_retriever(config, rngs)


def loss(model, batch, config, rngs=None):
    return base.fusion_loss(model, batch, config, rngs)


def encode_query(model, ref_pixels, text_ids, text_mask):
    return model.query(ref_pixels, text_ids, text_mask)


def encode_image(model, pixels):
    return model.image(pixels)
