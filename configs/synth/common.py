"""Shared shape of the synthesis configs (``python -m zscir_jax.synthesize --config configs/synth/<recipe>.py``).

    recipe        mvftji | distillcir | collm | fashion | rule_based
    templates     the recipe's prompt templates (copied from zscir_jax.synthesis.prompts.DEFAULTS: edit freely, the
                  fields each may use are checked); rule_based: its phrasing templates per edit op
    backend       kind: mllm (a local LLaVA checkpoint: ``checkpoint``) | demo_mllm (built in the workdir) |
                  rule_based (exact answers from the structure of the scenes, or of the garments when data.kind is
                  garments); dtype, param_dtype; pad_to_multiple (prompt lengths are padded to it, so compiles stay
                  few); cache_dir (convert a LLaVA's safetensors once, restore them with Orbax afterwards)
    sampling      temperature (0 = greedy), top_p, max_new_tokens, seed (each generation's own seed comes from it
                  and the request)
    batch_size    prompts per generate call (per process)
    data          kind: pairs (``pairs``: JSONL {"image", "caption"} or CSV image,caption; ``image_root`` for
                  relative paths) | folder (every image file under ``folder``; image-only recipes) | scenes (the
                  scenes benchmark's train split at ``root``, default WORKDIR/scenes, built from ``scenes`` when
                  absent) | garments (the same for the garment benchmark, ``zscir_jax.data.garments``: default
                  WORKDIR/garments, built from ``garments``); ``source``: the records' source label ("" = derived)
    limit         the first N items only (0 = all)
    output        num_shards, format (jsonl | array_record)
    <recipe>      the recipe's own knobs

``:demo`` runs on the scenes benchmark with the demo MLLM built in the workdir; ``:smoke`` is the same, small enough
for about a minute on 2 CPU cores.
"""
from __future__ import annotations

import os
import runpy

import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))
ARGS = (None, "", "demo", "smoke")


def base(recipe: str, arg=None) -> ml_collections.ConfigDict:
    from zscir_jax.synthesis import prompts

    if arg not in ARGS:
        raise ValueError(f"unknown config argument {arg!r}; use :demo or :smoke, or none for a real checkpoint")
    c = ml_collections.ConfigDict()
    c.recipe = recipe
    c.templates = ml_collections.ConfigDict(dict(prompts.DEFAULTS.get(recipe, {})))
    c.backend = ml_collections.ConfigDict(dict(kind="mllm", checkpoint="", dtype="bfloat16", param_dtype="bfloat16",
                                               pad_to_multiple=32, cache_dir=""))
    c.sampling = ml_collections.ConfigDict(dict(temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0))
    c.batch_size = 32
    c.data = ml_collections.ConfigDict(dict(kind="pairs", pairs="", image_root="", folder="", root="", source="",
                                            scenes=dict(num_train=3000, num_val_queries=300, num_test_queries=10,
                                                        image_size=32, seed=0),
                                            garments=dict(num_train=3000, num_val_queries=300, num_test_queries=30,
                                                          image_size=32, seed=0)))
    c.limit = 0
    c.output = ml_collections.ConfigDict(dict(num_shards=4, format="jsonl"))
    c.progress_bar = True
    if arg in ("demo", "smoke"):
        demo(c, smoke=arg == "smoke")
    return c


def demo(c: ml_collections.ConfigDict, smoke: bool) -> None:
    """The scenes benchmark and the demo MLLM (``zscir_jax.demo.mllm``), both built in the workdir."""
    c.backend.update(kind="demo_mllm", dtype="float32", param_dtype="float32")
    c.data.kind = "scenes"
    # The demo MLLM's own settings (zscir_jax.demo.mllm.settings; override e.g. --config.demo_mllm.train.steps=300).
    c.demo_mllm = runpy.run_path(os.path.join(HERE, "..", "demo_mllm.py"))["settings"](smoke)
    c.batch_size = 16 if smoke else 64
    c.limit = 24 if smoke else 0
    c.output.num_shards = 1 if smoke else 2
    if smoke:
        c.data.scenes.update(num_train=300, num_val_queries=50)
