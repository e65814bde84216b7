"""TransAgg (Liu et al., BMVC 2023): [text ; one learnable separator ; image] through a 2-layer pre-norm transformer,
text read at EOT and the image at CLS, three raw (un-softmaxed) weights from Linear(d, 3), InfoNCE at logit scale 100.

Architecturally PVLF with one shallow prompt; the differences live in the config (configs/common.py ``transagg``).
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
