"""Joint inference (MVFT-JI): score a gallery image g by the composed query AND by an MLLM-written target text,

    s(g) = sim(q(I_ref, m), g) + lambda * sim(text(t-hat), g),   t-hat = MLLM(I_ref, m; P_tt)

``config.joint`` (any method whose ``Method.encode_text`` is set can use it):
    mode        "query" (sim(q, g) only: plain retrieval, every method's default) | "text" (sim(text(t-hat), g) only)
                | "joint" (both, t-hat weighted by ``weight``)
    weight      lambda
    also        more result rows of the same model: "query_only", "text_only", "joint:<lambda>" -> rows
                ``<method>_query_only``, ``<method>_text_only``, ``<method>_joint_<lambda>``
    synthesis   the synthesis config whose backend and ``target`` template (P_tt) write t-hat
                (``synthesis.target_text``; generations cached in ``WORKDIR/joint_inference``)

The method's own row uses ``mode``; its ``_untrained`` row too (so the two differ only by training); baselines in
``config.eval.compare`` are scored by their queries alone.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from zscir_jax.errors import UserError

MODES = ("query", "text", "joint")
ROWS = {"query_only": "query", "text_only": "text"}


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How one result row scores the gallery."""
    mode: str = "query"
    weight: float = 1.0

    @property
    def needs_texts(self) -> bool:
        return self.mode != "query" and not (self.mode == "joint" and self.weight == 0.0)


def _scoring_of(entry: str, weight: float, key: str) -> tuple[str, Scoring]:
    """("_query_only", Scoring("query")) etc. from one ``config.joint.also`` entry."""
    if entry in ROWS:
        return f"_{entry}", Scoring(ROWS[entry], weight)
    if entry.startswith("joint:"):
        try:
            w = float(entry.split(":", 1)[1])
        except ValueError:
            w = float("nan")
        if not np.isfinite(w):
            raise UserError(f"{key}: {entry!r} needs a number after 'joint:', e.g. 'joint:0.5'")
        return f"_joint_{entry.split(':', 1)[1]}", Scoring("joint", w)
    raise UserError(f"{key}: unknown entry {entry!r}; allowed: {', '.join(ROWS)}, 'joint:<lambda>'")


def rows(config, name: str) -> list[tuple[str, Scoring]]:
    """[(row name, Scoring)] of the method's own model: its main row first, then ``config.joint.also``."""
    j = config.get("joint") or {}
    weight = j.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
        raise UserError(f"config.joint.weight={weight!r}: must be a finite number (lambda)")
    mode = j.get("mode", "query")
    if mode not in MODES:
        raise UserError(f"config.joint.mode={mode!r}: allowed values are {', '.join(MODES)}")
    out = [(name, Scoring(mode, float(weight)))]
    for entry in j.get("also", ()) or ():
        suffix, scoring = _scoring_of(str(entry), float(weight), "config.joint.also")
        out.append((name + suffix, scoring))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"config.joint.also: rows repeat ({', '.join(names)})")
    return out


def check(config, method) -> None:
    """Before any stage runs: the rows are well formed, and rows that need t-hat have a method that embeds text and
    a synthesis config that writes it."""
    scorings = [s for _, s in rows(config, method.name)]
    if not any(s.needs_texts for s in scorings):
        return
    if method.encode_text is None:
        raise UserError(f"config.joint.mode / also ask for target texts, but method {method.name} has no text "
                        "embedding for them (use mode='query')")
    from zscir_jax.synthesis import target_text

    target_text.check((config.get("joint") or {}).get("synthesis"))


def with_texts(benchmark, texts):
    """The benchmark with each query's text replaced by ``texts[i]`` (one text: FashionIQ's alternatives dropped)."""
    if len(texts) != len(benchmark.queries):
        raise ValueError(f"{len(texts)} texts for {len(benchmark.queries)} queries")
    queries = tuple(dataclasses.replace(q, text=t, extra={k: v for k, v in q.extra.items() if k != "texts"})
                    for q, t in zip(benchmark.queries, texts))
    return dataclasses.replace(benchmark, queries=queries)


class TextQueries:
    """An evaluator ``Encoder`` whose queries are texts alone, embedded in the gallery's space."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode_images(self, images):
        return self.encoder.encode_images(images)

    def encode_queries(self, images, texts):
        return self.encoder.encode_texts(list(texts))


def evaluate(benchmark, encoder, scoring: Scoring | None, texts_for: Callable | None, **kwargs) -> dict:
    """``evaluator.evaluate`` of one benchmark under ``scoring``; ``texts_for(benchmark)`` gives t-hat per query."""
    from zscir_jax.evaluation import evaluator

    if scoring is None or not scoring.needs_texts:
        return evaluator.evaluate(benchmark, encoder, **kwargs)
    text_benchmark = with_texts(benchmark, texts_for(benchmark))
    if scoring.mode == "text":
        return evaluator.evaluate(text_benchmark, TextQueries(encoder), **kwargs)
    return evaluator.evaluate(benchmark, encoder, joint_encoder=TextQueries(encoder), joint_weight=scoring.weight,
                              joint_benchmark=text_benchmark, **kwargs)


def texts_function(writer) -> Callable:
    """``benchmark -> [t-hat per query]`` from a ``synthesis.target_text.TargetTextWriter``."""
    def texts_for(benchmark):
        pairs = [(benchmark.image_path(q.reference), q.text) for q in benchmark.queries]
        return writer(pairs, name=f"{benchmark.name}_{benchmark.split}")

    return texts_for
