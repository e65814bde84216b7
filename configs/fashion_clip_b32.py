r"""The fashion method (seed 002) on FashionIQ with a local CLIP ViT-B/32 and a local LLaVA: the LLaVA lists the
attributes of every unlabeled FashionIQ train image, image pairs whose lists differ in one or two values become
triplets with a relative caption the LLaVA writes from the two lists, then stage 1 (CLIP aligned to the attribute
phrases) and stage 2 (prompted composed retrieval with a static bank of 32768 negatives) in one command.

    python -m zscir_jax.main --config configs/fashion_clip_b32.py --workdir runs/fashion_b32 \
        --config.model.clip_path=~/ckpt/clip-vit-base-patch32 \
        --config.synthesis.backend.checkpoint=~/ckpt/llava-1.5-7b-hf \
        --config.synthesis.data.folder=~/data/fashionIQ/images \
        --config.evals.fashioniq.root=~/data/fashionIQ
    ... :runlocal   a few steps on 16 images, small batches (checks the whole path on a workstation)

``synthesis.data.folder`` is the directory of unlabeled images (use FashionIQ's train images only: put them, or links
to them, in their own folder). The attribute vocabulary of stage 2's prompt (``model.fashion.attributes``) must use
the keys and values the LLaVA writes: after the synthesis, count them in ``WORKDIR/synthesis/fashion`` and edit it.
The values below are ours, a FashionIQ-like starting point. Settings the seed does not give are ours (README).
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import ml_collections  # noqa: E402

# Ours: a FashionIQ-like vocabulary in the "key value" form the fashion recipe asks the MLLM for.
FASHIONIQ_ATTRIBUTES = (
    ("category", ("dress", "shirt", "top", "t-shirt", "blouse")),
    ("colour", ("black", "white", "grey", "red", "pink", "orange", "yellow", "green", "blue", "navy", "purple",
                "brown", "beige")),
    ("pattern", ("plain", "striped", "floral", "checked", "dotted", "printed", "graphic")),
    ("sleeves", ("sleeveless", "short", "long", "three-quarter")),
    ("neckline", ("round", "v-neck", "collared", "strapless", "off-shoulder")),
    ("length", ("short", "knee-length", "long")),
)


def get_config(arg=None):
    c = common.real_backbone(common.fashion(), arg)
    c.model.fashion.update(attributes=FASHIONIQ_ATTRIBUTES, bank_size=32768)
    c.loss.temperature = 0.01
    c.train.update(steps=6000, batch_size=128, log_every=50, checkpoint_every=1000)
    c.optim.update(warmup_steps=300)
    c.optim.lr = ml_collections.ConfigDict(dict(text_tower=1e-5, image_tower=1e-5))
    c.stages.fashion_align.train = dict(steps=3000, batch_size=256, log_every=50, checkpoint_every=1000)

    s = runpy.run_path(os.path.join(HERE, "synth", "fashion.py"))["get_config"]()
    s.data.kind = "folder"
    s.progress_bar = True
    c.synthesis = s

    c.evals = ml_collections.ConfigDict()
    c.evals.fashioniq = common.eval_entry("fashioniq", categories=("dress", "shirt", "toptee"), caption_join="and")
    if arg == "runlocal":
        s.limit = 16
        s.batch_size = 8
        c.train.update(steps=10, batch_size=8, log_every=1, checkpoint_every=5)
        c.model.fashion.bank_size = 16
        c.stages.fashion_align.train = dict(steps=3, batch_size=8, log_every=1, checkpoint_every=3)
    return c
