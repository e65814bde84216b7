r"""MVFT-JI on the CPU demo: the demo MLLM writes captions, modifications and target texts for the scenes' unlabeled
train images, the warmed-up tiny CLIP is fine-tuned on the two tasks, and the val split is scored with joint inference
(the demo MLLM writes a target text for every benchmark query; cached, so a rerun generates nothing).

    python -m zscir_jax.main --config configs/mvftji_demo.py --workdir /tmp/zscir_mvftji
    python -m zscir_jax.main --config configs/mvftji_demo.py:smoke --workdir /tmp/zscir_mvftji_smoke

Rows of WORKDIR/results.json: mvftji (joint inference), mvftji_query_only, mvftji_text_only, mvftji_joint_<lambda>
(the lambda ablation), mvftji_untrained (joint inference too) and the baselines image_only, text_only,
image_plus_text.

Arguments (comma-separated, e.g. ``:smoke,task1_only``), the README's ablations:
    smoke        about 2 minutes: smaller scenes, demo MLLM, synthesis and training
    task1_only   caption_weight = 0 (no text-to-image task)
    task2_only   target_text_weight = 0 (no target-text task: the fusion module gets no gradient)
    alt_prompt   the modifications come from P'_m (``modification_alt``) instead of P_m
    oracle_texts the training texts are exact (the ``rule_based`` backend reads them off the scenes' structure);
                 the demo MLLM still writes the benchmark queries' target texts (a diagnostic: the data or the method?)
Each changes what is trained, so give each its own workdir (a copy of a finished demo's workdir without its mvftji/
directory reuses the scenes, the CLIP warm-up, the demo MLLM and every cached generation).
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import demo  # noqa: E402

FLAGS = ("smoke", "task1_only", "task2_only", "alt_prompt", "oracle_texts")
MVFTJI_TASKS = ("caption", "modification", "modification_alt", "target")


def synthesis(smoke: bool):
    """configs/synth/mvftji.py on the scenes with the demo MLLM, taught only the MVFT-JI prompts (ours: the other
    recipes' tasks would share its small capacity and training time for nothing here)."""
    s = runpy.run_path(os.path.join(HERE, "synth", "mvftji.py"))["get_config"]("smoke" if smoke else "demo")
    common.teach_demo_mllm(s, MVFTJI_TASKS)
    s.demo_mllm.eval.num_text = 0  # quality.json: only the image prompts are measured
    if not smoke:
        s.demo_mllm.eval.num_images = 100
    return s


def get_config(arg=None):
    flags = common.flags(arg, FLAGS)
    smoke = "smoke" in flags
    c = common.mvftji()
    d = demo.get_config("smoke" if smoke else None)  # the demo's scenes, tokenizer, CLIP warm-up, sizes and evals
    c.prepare, c.warmup = d.prepare, d.warmup
    c.model.clip_tiny, c.model.fusion = d.model.clip_tiny, d.model.fusion
    c.data.update(image_size=32, max_length=24, pairs_root="")
    c.loss.temperature = 0.05  # the demo's (a tiny model's features are less peaked than CLIP's)
    c.optim.update(lr=dict(fusion=1e-3, text_tower=1e-4, image_tower=1e-4), finetune="both", warmup_steps=20)
    c.train.update(steps=30 if smoke else 800, batch_size=64, log_every=10 if smoke else 50, checkpoint_every=10_000)

    c.prepare.synthesis = synthesis(smoke)
    if "alt_prompt" in flags:
        c.prepare.synthesis.mvftji.modification_prompt = "modification_alt"
    if "oracle_texts" in flags:  # a copy: the joint inference keeps the demo MLLM
        c.prepare.synthesis = c.prepare.synthesis.copy_and_resolve_references()
        c.prepare.synthesis.backend.kind = "rule_based"
    if "task1_only" in flags:
        c.loss.caption_weight = 0.0
    if "task2_only" in flags:
        c.loss.target_text_weight = 0.0
    c.joint.update(mode="joint", weight=1.0, also=("query_only", "text_only", "joint:0.5", "joint:2"))
    # The same MLLM and P_tt write the benchmark queries' target texts: one object, so an override of
    # config.prepare.synthesis (e.g. the demo MLLM's steps) is the joint inference's too.
    c.joint.synthesis = synthesis(smoke) if "oracle_texts" in flags else c.prepare.synthesis

    c.evals, c.eval = d.evals, d.eval
    return c
