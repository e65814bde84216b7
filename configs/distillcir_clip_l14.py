r"""DistillCIR on CLIP ViT-L/14 with a local LLaVA as the teacher (its supplement's Table 7 for the ViT-L version):
an (M)LLM turns image captions into (instruction, modified caption) with the Figure 7 template, Pic2Word's f_phi is
trained on the images, the LLaVA teacher is LoRA-tuned on L_com and embeds every modified caption, and the student
(CLIP + LoRA r=64 / alpha=16 on the attention projections + f_phi) is distilled for 2 epochs at batch 768, lr 2e-5,
cosine schedule, bf16 compute.

    python -m zscir_jax.main --config configs/distillcir_clip_l14.py --workdir runs/distillcir_l14 \
        --config.model.clip_path=~/ckpt/clip-vit-large-patch14 \
        --config.model.mllm_path=~/ckpt/llava-1.5-7b-hf \
        --config.synthesis.data.pairs=~/data/cc3m_captions.jsonl --config.synthesis.data.image_root=~/data/cc3m \
        --config.evals.cirr.root=~/data/CIRR --config.evals.fashioniq.root=~/data/fashionIQ \
        --config.evals.circo.root=~/data/CIRCO
    ... :runlocal   a few steps on 16 captions, small batches (checks the whole path on a workstation)

``config.model.mllm_path`` is also the synthesis's generator (``config.synthesis.backend.checkpoint`` follows it unless
set on its own); the Pic2Word stage trains on the images of ``config.synthesis.data.pairs`` (``config.data.pairs``
follows it). Values Table 7 does not give are ours and marked so (zscir_jax.methods.distillcir, README).
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402


def get_config(arg=None):
    c = common.real_backbone(common.distillcir(), arg)
    c.model.mllm_path = ""  # the teacher LLaVA (and, unless overridden, the synthesis's generator)
    c.model.dtype = "bfloat16"  # Table 7: FP16; bf16 on TPUs and recent GPUs (float32 parameters)
    c.data.llm_max_length = 64  # the teacher's prompts around an instruction / a modified caption
    c.optim.update(warmup_steps=100, min_lr_ratio=0.0)  # ours: Table 7 gives the cosine, not a warm-up
    c.optim.lr = dict(lora=2e-5, mapping=2e-5, projection=2e-5)  # Table 7 (ours: f_phi and P at the same rate)
    c.train.update(steps=0, epochs=2, batch_size=768, log_every=50, checkpoint_every=1000)  # Table 7

    s = runpy.run_path(os.path.join(HERE, "synth", "distillcir.py"))["get_config"]()
    s.backend.checkpoint = c.model.get_ref("mllm_path")
    s.progress_bar = True
    c.synthesis = s
    c.data.pairs = s.data.get_ref("pairs")  # Pic2Word's images: the captioned images the triplets come from
    c.data.image_dir = s.data.get_ref("image_root")

    # Ours (Pic2Word's own recipe trains 10 epochs of CC3M at batch 1024, lr 1e-4): one epoch of these images.
    c.stages.pic2word.train = dict(steps=0, epochs=1, batch_size=256, log_every=50, checkpoint_every=1000)
    # Ours: the teacher's LoRA for one epoch of the triplets at batch 128, lr 1e-4, features stored in float16.
    c.model.teacher.feature_dtype = "float16"
    c.stages.distillcir_teacher.optim.lr = dict(lora=1e-4)
    c.stages.distillcir_teacher.train = dict(steps=0, epochs=1, batch_size=128, log_every=50, checkpoint_every=1000)

    if arg == "runlocal":
        s.limit = 16
        s.batch_size = 8
        c.train.update(epochs=0, steps=4, batch_size=8, log_every=1, checkpoint_every=4)
        for stage in c.stages.values():
            stage.train = dict(steps=3, epochs=0, batch_size=8, log_every=1, checkpoint_every=3)
        c.eval.batch_size = 16
    return c
