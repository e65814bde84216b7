"""The method surface: the one seam that varies between CIR methods.

The trainer and the evaluator see a method only through this record, never through its name:

    build(config, rngs) -> model                              an NNX module (towers, heads, adapters)
    loss(model, batch, config, rngs=None) -> (loss, metrics)  inside the jitted step, on the GLOBAL batch
    encode_query(model, ref_pixels, text_ids, text_mask) -> [B, D] L2-normalised composed query
    encode_image(model, pixels) -> [B, D]                      L2-normalised gallery embedding
    encode_text(model, text_ids, text_mask) -> [B, D]          optional: a text in the gallery's space (joint
                                                               inference, ``evaluation.joint``); None: not offered
    batch: "triplets" | "pairs" | None                         the records it trains on (None: training-free)
    text_fields: {batch prefix: tokenizer role}                which tokenizer writes each text field
    query_field: the prefix whose tokenizer writes the query's text at evaluation
    check(config)                                             optional: the method's own config checks, before any
                                                              stage runs (a ``UserError`` naming the key)
    templates(config) -> {prefix: (template, append_eos)}    optional: texts of those batch prefixes (and the query
                                                              at evaluation) are written into ``template`` (with a
                                                              ``{text}`` field) before tokenizing (``data.tokenizer
                                                              .Templated``), e.g. Pic2Word's "a photo of * , {text}"
    export(model, config, out_dir) -> path                    optional: what a later stage reads from this method
                                                              when it runs as one of ``config.stages``
                                                              (``train.stages``): weights, features...
    reads_data_at_build: bool                                 True: ``build`` reads the training data itself (the
                                                              fashion method's static bank), so the trainer builds it
                                                              eagerly, never inside a jit
    explain(model, config, benchmark, path) -> path           optional: a picture of how the trained model reads a
                                                              few of the benchmark's queries (DistillCIR's attention),
                                                              written next to its evaluation output

A triplet batch also carries ``has_target_text`` (bool [B]); a method that names the prefix ``caption`` in its
``text_fields`` gets the record's caption as ``caption_ids`` / ``caption_mask`` with ``has_caption``.

Tokenizer roles (``data.sources.tokenizer_for``): "clip", the towers' (or the demo's word) tokenizer; "llm", the
tokenizer in ``config.model.mllm_path`` (a pretrained (M)LLM's own), falling back to "clip" when no such path is set
(a random LLM reading the towers' ids). A triplet batch has ``text_*`` (the modification) and ``target_text_*``;
a pair batch ``text_*`` (the caption); any other prefix holds the same text tokenized with its role's tokenizer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

TRIPLETS, PAIRS = "triplets", "pairs"
ROLES = ("clip", "llm")


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
    text_fields: Mapping[str, str] | tuple = (("text", "clip"),)  # stored as sorted pairs: hashable
    query_field: str = "text"
    encode_text: Optional[Callable[..., Any]] = None
    check: Optional[Callable[[Any], None]] = None  # the method's own config checks (UserError), run by preflight
    templates: Optional[Callable[[Any], Mapping[str, tuple]]] = None  # {prefix: (template, append_eos)}
    export: Optional[Callable[..., str]] = None  # (model, config, out_dir) -> path, for config.stages
    explain: Optional[Callable[..., str]] = None  # (model, config, benchmark, path) -> path of a picture
    reads_data_at_build: bool = False  # build reads files beyond weights: the trainer never traces it in a jit

    def __post_init__(self):
        pairs = self.text_fields.items() if isinstance(self.text_fields, Mapping) else self.text_fields
        object.__setattr__(self, "text_fields", tuple(sorted((str(k), str(v)) for k, v in pairs)))
        if "text" not in self.roles or self.query_field not in self.roles:
            raise ValueError(f"method {self.name}: text_fields needs 'text' and the query field {self.query_field!r}")
        bad = set(self.roles.values()) - set(ROLES)
        if bad:
            raise ValueError(f"method {self.name}: unknown tokenizer roles {sorted(bad)}; known: {ROLES}")
        if self.batch not in (TRIPLETS, PAIRS, None):
            raise ValueError(f"method {self.name}: batch must be 'triplets', 'pairs' or None, got {self.batch!r}")
        if (self.batch is None) != (self.loss is None):
            raise ValueError(f"method {self.name}: a loss goes with a batch kind, and only with one")
        if self.loss is None:
            object.__setattr__(self, "loss", _not_trainable(self.name))

    @property
    def roles(self) -> dict[str, str]:
        """{batch prefix: tokenizer role}."""
        return dict(self.text_fields)

    @property
    def trainable(self) -> bool:
        return self.batch is not None

    def __repr__(self) -> str:
        return f"<method {self.name}>"
