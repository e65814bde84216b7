r"""MVFT-JI on CLIP ViT-L/14 with a local LLaVA (configs/mvftji_clip_b32.py with the large towers):

    python -m zscir_jax.main --config configs/mvftji_clip_l14.py --workdir /tmp/mvftji_l14 \
        --config.model.clip_path=~/ckpt/clip-vit-large-patch14 \
        --config.synthesis.backend.checkpoint=~/ckpt/llava-1.5-7b-hf \
        --config.synthesis.data.folder=~/data/unlabeled_images --config.evals.cirr.root=~/data/CIRR

Ours: bf16 compute with float32 parameters for the larger towers.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mvftji_clip_b32  # noqa: E402


def get_config(arg=None):
    c = mvftji_clip_b32.mvftji_real(arg)
    c.model.dtype = "bfloat16"
    return c
