r"""CoLLM-style triplets from image-caption pairs: each image is paired with the train image whose caption shares the
most words with its own (another caption, never its own), or with the pairs of ``config.collm.pairs`` (a JSONL of
{"reference": IMAGE, "target": IMAGE}); an (M)LLM writes the modification from the two captions (text only);
records (reference image, modification, target image, target caption).

    python -m zscir_jax.synthesize --config configs/synth/collm.py:demo --workdir /tmp/zscir_synth
    python -m zscir_jax.synthesize --config configs/synth/collm.py --workdir runs/synth \
        --config.backend.checkpoint=~/ckpt/llava-1.5-7b-hf --config.data.pairs=~/data/pairs.jsonl
"""
import os
import runpy

import ml_collections

common = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
    c = common["base"]("collm", arg)
    c.collm = ml_collections.ConfigDict(dict(pairs=""))
    return c
