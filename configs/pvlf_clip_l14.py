r"""PVLF on CLIP (openai/clip-vit-large-patch14), trained zero-shot on Laion-CIR triplets, evaluated on CIRR val.

    python -m zscir_jax.main --config configs/pvlf_clip_l14.py --workdir /tmp/pvlf_clip_l14 \
        --config.model.clip_path=/ckpt/clip-vit-large-patch14 --config.data.triplets=/data/laion_cir_combined.jsonl \
        --config.data.image_dir=/data/laion_cir_images --config.eval.benchmark=/data/cirr
    python -m zscir_jax.main --config configs/pvlf_clip_l14.py:runlocal ...   # a few steps, small batch

The checkpoint is a local transformers CLIP directory (`huggingface-cli download openai/clip-vit-large-patch14`); the triplets a JSONL of
TripletRecords (`zscir_jax.data.triplets`), or TransAgg's files with --config.data.laion_format=template|llm.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def get_config(arg=None):
    c = common.pvlf()
    c.model.clip_path = ""
    c.data.update(image_size=224, max_length=77, tokenizer="")
    c.train.update(steps=8000, batch_size=64, log_every=50, checkpoint_every=1000)  # PVLF: batch 64
    c.optim.warmup_steps = 500
    c.eval.compare = ("image_only", "text_only", "image_plus_text")
    if arg == "runlocal":
        c.train.update(steps=10, batch_size=8, log_every=1, checkpoint_every=5)
        c.eval.batch_size = 16
    return c
