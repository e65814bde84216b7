"""Registry of retrieval methods. Every entry is a ``methods.surface.Method``, so the trainer and the evaluator look
a method up by name once and never branch on it."""
from __future__ import annotations

from zscir_jax.errors import UserError
from zscir_jax.methods import (baselines, clip_pretrain, collm, distillcir, fashion, mvftji, pic2word, pvlf,
                               transagg)
from zscir_jax.methods.surface import Method

REGISTRY: dict[str, Method] = {m.name: m for m in (
    pvlf.METHOD,
    transagg.METHOD,
    baselines.image_only,
    baselines.text_only,
    baselines.image_plus_text,
    clip_pretrain.METHOD,
    collm.METHOD,
    mvftji.METHOD,
    pic2word.METHOD,
    distillcir.TEACHER,
    distillcir.METHOD,
    fashion.ALIGN,
    fashion.METHOD,
)}


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
