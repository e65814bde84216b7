"""Rule-based answers on the garment benchmark (``data.garments``): the ``fashion`` recipe's prompts answered
exactly from the garments' canonical captions, the garment twin of ``backends.ScenesRuleBackend`` (an oracle for
the tests and an upper bound for an MLLM).

    fashion.attributes   (an image prompt) the image's garment as one attribute list, ``prompts.format_attributes``
    fashion.relative     ``garments.relative_caption`` of the change between the two attribute lists

Anything else (another recipe's prompts, an image or a list that is not a garment, two equal lists) gets an empty
answer, which the recipe's parser quarantines.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from zscir_jax.data import garments
from zscir_jax.synthesis import prompts
from zscir_jax.synthesis.backends import Generation, Request, Sampling


class GarmentRuleBackend:
    """``captions`` maps an image path to its garment caption (the items' captions)."""

    name = "rule_based"
    VERSION = 1  # bump whenever an answer changes: it is part of the cache keys

    def __init__(self, captions: dict[str, str] | None = None):
        self.captions = dict(captions or {})

    def fingerprint(self) -> str:
        from zscir_jax.synthesis import cache

        return cache.key({"backend": "garment_rule", "version": self.VERSION,
                          "phrasings": {k: {v: list(t) for v, t in d.items()} for k, d in garments.PHRASINGS.items()}})

    def describe(self) -> dict[str, Any]:
        return {"kind": "rule_based", "name": self.name, "fingerprint": self.fingerprint()}

    def generate(self, requests: Sequence[Request], seeds: Sequence[int], sampling: Sampling) -> list[Generation]:
        out = []
        for r, seed in zip(requests, seeds):
            text = self.answer(r, np.random.default_rng(seed))
            out.append(Generation(text, len(text.split())))
        return out

    # -- answers ----------------------------------------------------------------------------------------------------
    def answer(self, r: Request, rng: np.random.Generator) -> str:
        if r.prompt == "fashion.attributes":
            garment = self._from_caption(self.captions.get(r.image or ""))
            return prompts.format_attributes([garment.to_dict()]) if garment is not None else ""
        if r.prompt == "fashion.relative":
            ref = self._from_attributes(r.fields.get("reference_attributes", ""))
            tgt = self._from_attributes(r.fields.get("target_attributes", ""))
            if ref is None or tgt is None or ref == tgt:
                return ""
            return garments.relative_caption(ref, tgt, rng)
        return ""

    @staticmethod
    def _from_caption(caption: str | None) -> garments.Garment | None:
        try:
            return garments.parse_caption(caption or "")
        except ValueError:
            return None

    @staticmethod
    def _from_attributes(text: str) -> garments.Garment | None:
        """The one garment an attribute list describes (None for anything else: several items, unknown keys)."""
        try:
            items = prompts.attributes(text)["items"]
            return garments.Garment.from_dict(items[0]) if len(items) == 1 else None
        except (prompts.ParseError, ValueError):
            return None
