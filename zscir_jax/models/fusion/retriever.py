"""``FusionRetriever``: image-text towers (any family of ``models.towers``; CLIP's in the names) + the token-level
fusion module as one retrieval model.

The query is the fusion of the reference image's and the modification text's tokens; the gallery side is the
normalised CLIP image embedding.
"""
from __future__ import annotations

from flax import nnx

from zscir_jax.models import clip
from zscir_jax.models.fusion import modeling as fusion
from zscir_jax.numerics import l2_normalize


class FusionRetriever(nnx.Module):
    """CLIP towers + a token-level fusion module; the gallery side is the normalised CLIP image embedding."""

    def __init__(self, towers: clip.CLIPModel, fusion_cfg: fusion.FusionConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        self.clip = towers
        self.fusion = fusion.Fusion(fusion_cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def query(self, ref_pixels, text_ids, text_mask, *, deterministic=True, rngs=None):
        image_tokens, _ = self.clip.image_tokens(ref_pixels)
        text_tokens, _ = self.clip.text_tokens(text_ids, text_mask)
        where = self.clip.text_global_positions(text_ids, text_mask)  # CLIP: EOT; BLIP: [CLS] (PVLF eq. 6)
        return self.fusion(text_tokens, text_mask, where, image_tokens, deterministic=deterministic, rngs=rngs)

    def image(self, pixels):
        return l2_normalize(self.clip.encode_image(pixels))

    def text(self, text_ids, text_mask):
        """The text tower's normalised embedding (CLIP: the projection of the EOT token)."""
        return l2_normalize(self.clip.encode_text(text_ids, text_mask))
