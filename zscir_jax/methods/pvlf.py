"""PVLF: [text ; p learnable context prompts ; image] fusion, adaptive (softmax) aggregation, focal contrastive loss.

Prompt depth (shallow/deep), p, J and the weighting rule come from ``config.model.fusion``; see configs/common.py
for the paper's defaults (p=25, J=2, deep, softmax, tau=0.01, alpha=1, gamma=2).
"""
from zscir_jax.methods import base
from zscir_jax.methods.surface import TRIPLETS, Method


def encode_query(model, ref_pixels, text_ids, text_mask):
    return model.query(ref_pixels, text_ids, text_mask)


def encode_image(model, pixels):
    return model.image(pixels)


METHOD = Method("pvlf", build=base.build_fusion_retriever, loss=base.fusion_loss, encode_query=encode_query,
                encode_image=encode_image, batch=TRIPLETS)
