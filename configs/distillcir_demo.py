r"""DistillCIR on the CPU demo: the demo MLLM turns the scenes' train captions into (instruction, modified caption)
with DistillCIR's template, Pic2Word's f_phi is trained on the train images, the demo MLLM (as the teacher) gets
LoRA-tuned on L_com and embeds every modified caption, and the warmed-up tiny CLIP + f_phi student is distilled.

    python -m zscir_jax.main --config configs/distillcir_demo.py --workdir /tmp/zscir_distillcir
    python -m zscir_jax.main --config configs/distillcir_demo.py:smoke --workdir /tmp/zscir_distillcir_smoke

Rows of WORKDIR/results.json: distillcir (the student), distillcir_untrained (the student at its start: Pic2Word's
f_phi with DistillCIR's prompt), pic2word (the first stage, with Pic2Word's prompt), and the baselines image_only,
text_only, image_plus_text. The student's attention over a few queries (App. C):
WORKDIR/distillcir/eval/<eval>_attention.png.

Arguments (comma-separated, e.g. ``:smoke,no_fea``), the README's ablations:
    smoke           about 2 minutes: smaller scenes, a smaller demo MLLM (the teacher), exact triplets from the
                    scenes' structure (``rule_based``: a minute of MLLM training cannot write DistillCIR's answers)
    no_fea          loss.feature_weight = 0: the student without distillation (its undistilled self)
    cosine          loss.feature_loss = "cosine" instead of the batch InfoNCE
    scratch_mapping the student's f_phi starts from random instead of the Pic2Word stage
Each changes what the student trains on, so give each its own workdir (a copy of a finished workdir without its
distillcir/ directory reuses everything else).
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import demo  # noqa: E402

FLAGS = ("smoke", "no_fea", "cosine", "scratch_mapping")


def synthesis(smoke: bool):
    """configs/synth/distillcir.py on the scenes with the demo MLLM, taught only DistillCIR's prompt (ours: the other
    recipes' tasks would share its small capacity and training time for nothing here)."""
    s = runpy.run_path(os.path.join(HERE, "synth", "distillcir.py"))["get_config"]("smoke" if smoke else "demo")
    t = s.demo_mllm.train
    t.task_weights = {k: (v if k == "distillcir" else 0.0) for k, v in t.task_weights.items()}
    t.group_weights = {k: (v if k == "long" else 0.0) for k, v in t.group_weights.items()}
    t.steps = 60 if smoke else 500
    s.demo_mllm.eval.num_images = 0
    s.demo_mllm.eval.num_text = 0 if smoke else 50
    if smoke:
        # A minute of demo MLLM training cannot write DistillCIR's three-part answers: the smoke run takes exact ones
        # from the scenes' structure (the rule_based backend) and still builds the demo MLLM, its teacher.
        s.backend.kind = "rule_based"
        s.limit = 0
    else:
        s.limit = 1500  # ours: half the train images get a triplet (generation is the demo's longest stage)
    return s


def get_config(arg=None):
    flags = tuple(f for f in (arg or "").split(",") if f)
    bad = [f for f in flags if f not in FLAGS]
    if bad:
        raise ValueError(f"unknown config argument(s) {', '.join(bad)}; allowed (comma-separated): {', '.join(FLAGS)}")
    smoke = "smoke" in flags
    c = common.distillcir()
    d = demo.get_config("smoke" if smoke else None)  # the demo's scenes, tokenizer, CLIP warm-up, sizes and evals
    c.prepare, c.warmup = d.prepare, d.warmup
    c.prepare.synthesis = synthesis(smoke)
    c.prepare.mllm_as_model = True  # the teacher is the demo MLLM
    c.model.clip_tiny = d.model.clip_tiny
    c.data.update(image_size=32, max_length=24, pairs_root="", llm_max_length=48)
    c.model.pic2word.update(hidden=256, layers=3, dropout=0.1)
    c.model.distillcir.lora.update(rank=8, alpha=16.0)  # the demo towers are 64 wide
    c.model.teacher.lora.update(rank=8, alpha=16.0, dropout=0.0)
    c.loss.temperature = 0.05  # the demo's (a tiny model's features are less peaked than CLIP's)
    c.optim.update(lr=dict(lora=1e-3, mapping=3e-4, projection=1e-3), warmup_steps=20)
    c.train.update(steps=30 if smoke else 600, batch_size=64, log_every=10 if smoke else 50, checkpoint_every=10_000)

    p2w = c.stages.pic2word
    p2w.loss.temperature = 0.05
    p2w.optim.update(lr=dict(mapping=1e-3), warmup_steps=20)
    p2w.train = dict(steps=30 if smoke else 600, batch_size=64, log_every=10 if smoke else 100,
                     checkpoint_every=10_000)
    teacher = c.stages.distillcir_teacher
    teacher.optim.update(lr=dict(lora=1e-3), warmup_steps=20)
    teacher.train = dict(steps=30 if smoke else 400, batch_size=64, log_every=10 if smoke else 100,
                         checkpoint_every=10_000)

    if "no_fea" in flags:
        c.loss.feature_weight = 0.0
        del c.stages["distillcir_teacher"]  # nothing reads its features
    if "cosine" in flags:
        c.loss.feature_loss = "cosine"
    if "scratch_mapping" in flags:
        p2w.output = ""
    c.evals, c.eval = d.evals, d.eval
    return c
