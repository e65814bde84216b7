"""The method surface: the one seam that varies between CIR methods.

The trainer and the evaluator see a method only through this record, never through its name:

    build(config, rngs) -> model                              an NNX module (towers, heads, adapters)
    loss(model, batch, config, rngs=None) -> (loss, metrics)  inside the jitted step, on the GLOBAL batch
    encode_query(model, ref_pixels, text_ids, text_mask) -> [B, D] L2-normalised composed query
    encode_image(model, pixels) -> [B, D]                      L2-normalised gallery embedding
    batch: "triplets" | "pairs" | None                         the records it trains on (None: training-free)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

TRIPLETS, PAIRS = "triplets", "pairs"


def _not_trainable(name: str):
    def loss(model, batch, config, rngs=None):
        raise NotImplementedError(f"{name} is a training-free baseline; it has no loss")

    return loss


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[Any, Any], Any]
    encode_query: Callable[..., Any]
    encode_image: Callable[..., Any]
    batch: Optional[str] = None
    loss: Optional[Callable[..., Any]] = None

    def __post_init__(self):
        if self.batch not in (TRIPLETS, PAIRS, None):
            raise ValueError(f"method {self.name}: batch must be 'triplets', 'pairs' or None, got {self.batch!r}")
        if (self.batch is None) != (self.loss is None):
            raise ValueError(f"method {self.name}: a loss goes with a batch kind, and only with one")
        if self.loss is None:
            object.__setattr__(self, "loss", _not_trainable(self.name))

    @property
    def trainable(self) -> bool:
        return self.batch is not None

    def __repr__(self) -> str:
        return f"<method {self.name}>"
