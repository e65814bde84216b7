r"""The fashion method's attribute-aware triplets: an MLLM lists the attributes of every item of each image; image
pairs whose lists differ in ``min_diff..max_diff`` values (same items and keys) get a relative caption written from
the two lists (text only); records (reference image, relative caption, target image).

    python -m zscir_jax.synthesize --config configs/synth/fashion.py:demo --workdir /tmp/zscir_synth
    python -m zscir_jax.synthesize --config configs/synth/fashion.py --workdir runs/synth \
        --config.backend.checkpoint=~/ckpt/llava-1.5-7b-hf --config.data.pairs=~/data/garments.csv
"""
import os
import runpy

import ml_collections

common = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))


def get_config(arg=None):
    c = common["base"]("fashion", arg)
    c.fashion = ml_collections.ConfigDict(dict(min_diff=1, max_diff=2, targets_per_image=1))
    c.sampling.max_new_tokens = 96  # an attribute list runs over several lines
    return c
