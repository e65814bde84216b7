"""Contrastive CLIP training on image-caption pairs: the demo's stand-in for a pretrained VLM (none exist offline).

Trains a CLIP from ``config.model.clip_tiny`` (or continues one from ``config.model.clip_path``) with CLIP's
symmetric InfoNCE and learned temperature. As a retriever it scores like image_plus_text.
"""
from zscir_jax.methods import base, baselines, losses
from zscir_jax.models.fusion import l2_normalize

BATCH = "pairs"


def build(config, rngs):
    return base.build_towers(config, rngs)


def loss(model, batch, config, rngs=None):
    image = model.encode_image(batch["pixels"])
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    return losses.clip_contrastive(image, text, model.logit_scale[...])


def encode_query(model, ref_pixels, text_ids, text_mask):
    return baselines.image_plus_text.encode_query(model, ref_pixels, text_ids, text_mask)


def encode_image(model, pixels):
    return l2_normalize(model.encode_image(pixels))


def towers(model):
    """The CLIP inside this method's model (exported after the warm-up)."""
    return model
