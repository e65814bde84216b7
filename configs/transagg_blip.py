r"""TransAgg on BLIP (a transformers ``BlipForImageTextRetrieval`` checkpoint), trained zero-shot on Laion-CIR triplets
with both towers fine-tuned (TransAgg's BLIP rows: CIRR test R@1 37.87 with Laion-CIR-Combined, as reported in PVLF's
Table 2: the paper's number, not measured here).

    python -m zscir_jax.main --config configs/transagg_blip.py --workdir runs/transagg_blip \
        --config.model.clip_path=~/ckpt/blip-itm-base-coco --config.data.triplets=~/data/laion_cir_combined.jsonl \
        --config.data.image_dir=~/data/laion_cir_images --config.evals.cirr.root=~/data/CIRR
    ... :runlocal   a few steps, small batch
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import pvlf_blip  # noqa: E402


def get_config(arg=None):
    return pvlf_blip.blip(common.transagg(), arg)
