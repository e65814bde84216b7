"""Training-free baselines on the CLIP towers (PVLF Table 2): image only, text only, and image + text.

Each is an object with the method surface; ``BATCH = None`` tells the trainer there is nothing to train.
"""
from __future__ import annotations

from zscir_jax.methods import base
from zscir_jax.models.fusion import l2_normalize


class _Baseline:
    BATCH = None

    def __init__(self, name, image_weight: float, text_weight: float):
        self.name, self.image_weight, self.text_weight = name, image_weight, text_weight

    def build(self, config, rngs):
        return base.build_towers(config, rngs)

    def loss(self, model, batch, config, rngs=None):
        raise NotImplementedError(f"{self.name} is a training-free baseline; set config.train.steps=0")

    def encode_query(self, model, ref_pixels, text_ids, text_mask):
        q = 0.0
        if self.image_weight:
            q = q + self.image_weight * l2_normalize(model.encode_image(ref_pixels))
        if self.text_weight:
            q = q + self.text_weight * l2_normalize(model.encode_text(text_ids, text_mask))
        return l2_normalize(q)

    def encode_image(self, model, pixels):
        return l2_normalize(model.encode_image(pixels))

    def __repr__(self):
        return f"<baseline {self.name}>"


image_only = _Baseline("image_only", 1.0, 0.0)
text_only = _Baseline("text_only", 0.0, 1.0)
image_plus_text = _Baseline("image_plus_text", 1.0, 1.0)
