"""Target texts for evaluation queries: t-hat = MLLM(I_ref, m; P_tt), through the synthesis engine's backend, batching
and generation cache, so a second evaluation of the same queries generates nothing (MVFT-JI's joint inference).

    writer = TargetTextWriter(synth_config, workdir)      # config: a configs/synth/mvftji.py config (P_tt, backend)
    texts = writer(pairs, name="cirr_val")                # pairs: [(reference image path, modification)]

Generations are cached in ``workdir/joint_inference/cache`` (keyed like every synthesis generation: model
fingerprint, template, inputs, sampling, seed) and each call's texts are written to
``workdir/joint_inference/<name>.jsonl`` for reading. An output that does not parse as one line falls back to the
modification text itself (counted in ``.fallbacks`` and marked in the JSONL): ours, so every query keeps a text.
"""
from __future__ import annotations

import collections
import os
from typing import Sequence

from zscir_jax import files
from zscir_jax.errors import UserError, renamed_keys
from zscir_jax.synthesis import prompts

TEMPLATE = "target"  # the recipe template that is P_tt


def check(synth_config, key: str = "config.joint.synthesis") -> None:
    """The synthesis config can write target texts: it names a backend and a ``target`` template (P_tt)."""
    from zscir_jax.synthesis import backends, engine

    if synth_config is None or not hasattr(synth_config, "get"):
        raise UserError(f"{key} is missing: give a synthesis config (configs/synth/mvftji.py) whose backend writes "
                        "the target texts")
    templates = dict(synth_config.get("templates") or {})
    if TEMPLATE not in templates:
        raise UserError(f"{key}.templates.target is missing (P_tt: the prompt that writes a target text from an "
                        "image and a modification)")
    with renamed_keys(key):
        engine.check_template(TEMPLATE, templates[TEMPLATE], ("modification",))
    kind = synth_config.backend.get("kind", "")
    if kind not in ("mllm", "demo_mllm"):
        raise UserError(f"{key}.backend.kind={kind!r}: joint inference needs an MLLM backend (mllm | demo_mllm)")
    if kind == "mllm":
        with renamed_keys(key):
            backends.check_checkpoint(os.path.expanduser(synth_config.backend.get("checkpoint", "") or ""))


class TargetTextWriter:
    """Writes (and caches) t-hat for (reference image, modification) pairs; the backend loads on first use."""

    def __init__(self, synth_config, workdir: str, *, progress: bool = True):
        self.config = synth_config.copy_and_resolve_references()
        self.workdir = workdir
        self.directory = os.path.join(workdir, "joint_inference")
        self.progress = progress
        self._backend = None
        self._memo: dict[tuple, list[str]] = {}
        self.counts = collections.Counter()  # generated / cached / fallbacks over this writer's calls

    def _get_backend(self):
        if self._backend is None:
            from zscir_jax.synthesis import backends

            self._backend = backends.from_config(self.config, self.workdir)
        return self._backend

    def __call__(self, pairs: Sequence[tuple[str, str]], name: str) -> list[str]:
        pairs = [(str(image), str(text)) for image, text in pairs]
        memo_key = tuple(pairs)
        if memo_key in self._memo:
            return self._memo[memo_key]
        import jax

        from zscir_jax.synthesis import cache as cache_lib, engine
        from zscir_jax.synthesis.recipes import Item

        pi, pc = jax.process_index(), jax.process_count()
        with cache_lib.Cache(os.path.join(self.directory, "cache"), pi) as cache:
            ctx = engine.Context(self.config, self._get_backend(), cache, process_index=pi, process_count=pc,
                                 progress=self.progress, workdir=self.workdir)
            ctx.templates = {TEMPLATE: self.config.templates[TEMPLATE]}
            requests = [ctx.request(TEMPLATE, Item(key=image, image=image), {"modification": text}, image=True)
                        for image, text in pairs]
            generations = ctx.generate(requests, f"target texts for {name}")
        texts, rows = [], []
        for (image, text), request, generation in zip(pairs, requests, generations):
            parsed = ctx.parse(request, generation, lambda t: prompts.one_line(t, "target"))
            texts.append(parsed["target"] if parsed else text)
            rows.append({"reference": image, "modification": text, "target_text": texts[-1],
                         "parsed": parsed is not None, "raw": generation.text})
        self.counts["generated"] += ctx.stats["generated"]
        self.counts["cached"] += ctx.stats["cached"]
        self.counts["fallbacks"] += sum(not r["parsed"] for r in rows)
        if pi == 0:  # the cache made the directory
            files.write_json_atomic(os.path.join(self.directory, f"{name}.jsonl"), rows, lines=True)
        self._memo[memo_key] = texts
        return texts

