r"""Today's rule-based generator (``zscir_jax.synthesis.rule_based``, the Laion-CIR-Template recipe on the scenes'
structured captions) behind the synthesis interface: same output folder, shards, quarantine (captions that are not
canonical scene captions) and manifest as the (M)LLM recipes. No model, no cache.

    python -m zscir_jax.synthesize --config configs/synth/rule_based.py:demo --workdir /tmp/zscir_synth
    python -m zscir_jax.synthesize --config configs/synth/rule_based.py --workdir runs/synth \
        --config.data.pairs=~/data/scene_pairs.jsonl
"""
import os
import runpy

import ml_collections

common = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
    from zscir_jax.synthesis import templates

    c = common["base"]("rule_based", arg)
    c.templates = ml_collections.ConfigDict({op: tuple(ts) for op, ts in templates.TEMPLATES.items()})
    c.backend.kind = "rule_based"
    c.rule_based = ml_collections.ConfigDict(dict(max_per_image=2, prefer_existing=True))
    return c
