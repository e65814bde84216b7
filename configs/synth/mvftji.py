r"""MVFT-JI's synthesis: per unlabeled image an MLLM writes a caption (P_c), a modification (P_m) and the target text
(P_tt) from (image, modification); records (reference image, modification, target text, caption).

    python -m zscir_jax.synthesize --config configs/synth/mvftji.py:demo --workdir /tmp/zscir_synth
    python -m zscir_jax.synthesize --config configs/synth/mvftji.py --workdir runs/synth \
        --config.backend.checkpoint=~/ckpt/llava-1.5-7b-hf --config.data.pairs=~/data/unlabeled.jsonl

``config.mvftji.modification_prompt="modification_alt"`` uses the ablation's P'_m instead of P_m.
"""
import os
import runpy

import ml_collections

common = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
    c = common["base"]("mvftji", arg)
    c.mvftji = ml_collections.ConfigDict(dict(modification_prompt="modification"))
    return c
