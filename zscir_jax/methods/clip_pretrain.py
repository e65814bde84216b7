"""Contrastive CLIP training on image-caption pairs: the demo's stand-in for a pretrained VLM (none exist offline).

Trains a CLIP from ``config.model.clip_tiny`` (or continues one from ``config.model.clip_path``) with CLIP's
symmetric InfoNCE and learned temperature. As a retriever it scores like image_plus_text.
"""
import dataclasses

from zscir_jax.methods import baselines, losses
from zscir_jax.methods.surface import PAIRS


def loss(model, batch, config, rngs=None):
    image = model.encode_image(batch["pixels"])
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    return losses.clip_contrastive(image, text, model.logit_scale[...])


METHOD = dataclasses.replace(baselines.image_plus_text, name="clip_pretrain", batch=PAIRS, loss=loss)
