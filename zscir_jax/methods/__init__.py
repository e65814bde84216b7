"""Registry of retrieval methods. Every entry has the same surface (see ``methods.base``), so the trainer and the
evaluator look a method up by name once and never branch on it."""
from __future__ import annotations

from zscir_jax.methods import baselines, clip_pretrain, collm, pvlf, transagg

REGISTRY = {
    "pvlf": pvlf,
    "transagg": transagg,
    "image_only": baselines.image_only,
    "text_only": baselines.text_only,
    "image_plus_text": baselines.image_plus_text,
    "clip_pretrain": clip_pretrain,
    "collm": collm,
}


def get(name: str):
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
