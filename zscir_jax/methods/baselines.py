"""Training-free baselines on the CLIP towers (PVLF Table 2): image only, text only, and image + text."""
from __future__ import annotations

import functools

from zscir_jax.methods import base
from zscir_jax.methods.surface import Method
from zscir_jax.numerics import l2_normalize


def weighted_query(model, ref_pixels, text_ids, text_mask, *, image_weight: float, text_weight: float):
    """``normalize(w_i * normalize(image) + w_t * normalize(text))`` from the CLIP towers."""
    q = 0.0
    if image_weight:
        q = q + image_weight * l2_normalize(model.encode_image(ref_pixels))
    if text_weight:
        q = q + text_weight * l2_normalize(model.encode_text(text_ids, text_mask))
    return l2_normalize(q)


def clip_image(model, pixels):
    return l2_normalize(model.encode_image(pixels))


def _baseline(name: str, image_weight: float, text_weight: float) -> Method:
    query = functools.partial(weighted_query, image_weight=image_weight, text_weight=text_weight)
    return Method(name, build=base.build_towers, encode_query=query, encode_image=clip_image)


image_only = _baseline("image_only", 1.0, 0.0)
text_only = _baseline("text_only", 0.0, 1.0)
image_plus_text = _baseline("image_plus_text", 1.0, 1.0)
