r"""PVLF on CLIP (openai/clip-vit-base-patch32), trained zero-shot on Laion-CIR triplets, evaluated on CIRR val.

    python -m zscir_jax.main --config configs/pvlf_clip_b32.py --workdir /tmp/pvlf_clip_b32 \
        --config.model.clip_path=/ckpt/clip-vit-base-patch32 --config.data.triplets=/data/laion_cir_combined.jsonl \
        --config.data.image_dir=/data/laion_cir_images --config.evals.cirr.root=/data/cirr
    python -m zscir_jax.main --config configs/pvlf_clip_b32.py:runlocal ...   # a few steps, small batch

The checkpoint is a local transformers CLIP directory (`huggingface-cli download openai/clip-vit-base-patch32`); the triplets a JSONL of
TripletRecords (`zscir_jax.data.triplets`), or TransAgg's files with --config.data.laion_format=template|llm.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg=None):
    return common.real_backbone(common.pvlf(), arg)
