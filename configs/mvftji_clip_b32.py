r"""MVFT-JI on CLIP ViT-B/32 with a local LLaVA: the LLaVA writes captions, modifications and target texts for a
folder of unlabeled images, CLIP (both towers) and the fusion composer are fine-tuned on the two tasks, and the
benchmarks are scored with joint inference (the LLaVA writes a target text for every query; cached in the workdir).

    python -m zscir_jax.main --config configs/mvftji_clip_b32.py --workdir /tmp/mvftji_b32 \
        --config.model.clip_path=~/ckpt/clip-vit-base-patch32 \
        --config.synthesis.backend.checkpoint=~/ckpt/llava-1.5-7b-hf \
        --config.synthesis.data.folder=~/data/unlabeled_images \
        --config.evals.cirr.root=~/data/CIRR --config.evals.fashioniq.root=~/data/fashionIQ \
        --config.evals.circo.root=~/data/CIRCO
    ... :runlocal   a few steps on 64 images, small batches (checks the whole path on a workstation)

``config.synthesis`` is configs/synth/mvftji.py (its knobs: templates, sampling, batch_size, limit, data.kind=folder
or pairs); ``config.joint.synthesis`` is the same object, so the LLaVA and P_tt that wrote the training target texts
also write the queries'. Values the seed paper does not give are ours (zscir_jax.methods.mvftji, README).
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402


def mvftji_real(arg=None):
    c = common.real_backbone(common.mvftji(), arg)
    c.optim.lr = dict(fusion=1e-4, text_tower=1e-6, image_tower=1e-6)  # PVLF's rates for its fusion and towers
    s = runpy.run_path(os.path.join(HERE, "synth", "mvftji.py"))["get_config"]()
    s.data.kind = "folder"
    s.progress_bar = True
    c.synthesis = s  # --config.synthesis.backend.checkpoint=... --config.synthesis.data.folder=...
    c.joint.synthesis = c.synthesis
    if arg == "runlocal":
        s.limit = 64
        s.batch_size = 8
        c.eval.batch_size = 16
    return c


def get_config(arg=None):
    return mvftji_real(arg)
