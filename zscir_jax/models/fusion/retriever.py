"""``FusionRetriever``: CLIP towers + the token-level fusion module as one retrieval model.

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
        eot = self.clip.text_model.eos_positions(text_ids)
        return self.fusion(text_tokens, text_mask, eot, image_tokens, deterministic=deterministic, rngs=rngs)

    def image(self, pixels):
        return l2_normalize(self.clip.encode_image(pixels))

    def text(self, text_ids, text_mask):
        """The text tower's normalised embedding (CLIP: the projection of the EOT token)."""
        return l2_normalize(self.clip.encode_text(text_ids, text_mask))
