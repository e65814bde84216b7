r"""PVLF on BLIP (a transformers ``BlipForImageTextRetrieval`` checkpoint, e.g. Salesforce/blip-itm-base-coco), trained
zero-shot on Laion-CIR triplets with BOTH towers fine-tuned, as in PVLF's headline BLIP rows (Table 3 "both"; CIRR
test R@1 40.33, FashionIQ R@10 / R@50 35.68 / 56.85 with Laion-CIR-Combined: the paper's numbers, not measured here).

    python -m zscir_jax.main --config configs/pvlf_blip.py --workdir runs/pvlf_blip \
        --config.model.clip_path=~/ckpt/blip-itm-base-coco --config.data.triplets=~/data/laion_cir_combined.jsonl \
        --config.data.image_dir=~/data/laion_cir_images --config.evals.cirr.root=~/data/CIRR \
        --config.evals.fashioniq.root=~/data/fashionIQ --config.evals.circo.root=~/data/CIRCO
    ... :runlocal   a few steps, small batch

``model.clip_path`` takes any tower family (``zscir_jax.models.towers``): the checkpoint's config.json says which.
The paper's settings (Sec. 4): AdamW, fusion lr 1e-4 with cosine decay, towers 1e-6, batch 64, p = 25 prompts,
J = 2, focal loss; BLIP reads its text at [CLS] (eq. 6), at BLIP's 384 px and its 35-token texts (ours: BLIP's own
retrieval settings).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def blip(c, arg=None):
    """BLIP's input sizes and both towers trained, over ``common.real_backbone``."""
    c = common.real_backbone(c, arg)
    c.data.update(image_size=384, max_length=35)
    c.optim.finetune = "both"
    return c


def get_config(arg=None):
    return blip(common.pvlf(), arg)
