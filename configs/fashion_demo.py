r"""The fashion method on the CPU demo's garment benchmark (zscir_jax.data.garments, FashionIQ layout: dress, shirt,
toptee): attribute-aware triplets from the fashion recipe, stage 1 (CLIP aligned to attribute phrases), stage 2
(prompted composed retrieval with a static negative bank), its ablations and PVLF on the same triplets.

    python -m zscir_jax.main --config configs/fashion_demo.py --workdir /tmp/zscir_fashion
    python -m zscir_jax.main --config configs/fashion_demo.py:smoke --workdir /tmp/zscir_fashion_smoke

Stages: build the garments -> a word tokenizer -> warm up a tiny CLIP on the train images' captions -> the fashion
recipe writes triplets (the rule_based backend reads each image's attributes off the benchmark exactly: what the
MLLM is asked for, without its mistakes; with ``mllm_data`` the demo MLLM answers instead) -> fashion_align (stage 1)
-> fashion_no_bank, fashion_stage2_only, pvlf -> fashion (stage 2 from stage 1, with the bank).

Rows of WORKDIR/results.json, each with the FashionIQ keys (dress/recall@10, ..., average/recall@50):
    fashion              two stages, with the static bank
    fashion_no_bank      two stages, no bank (only in-batch negatives)
    fashion_stage2_only  stage 2 alone from the warmed-up CLIP, with a bank made by that CLIP
    fashion_untrained    stage 2's model before stage 2 (stage 1's towers with the prompt)
    pvlf                 PVLF (the demo's settings) trained on the same triplets
    image_only, text_only, image_plus_text   the warmed-up CLIP, training-free

Arguments (comma-separated, e.g. ``:smoke,mllm_data``):
    smoke      about two minutes: fewer garments and steps everywhere
    mllm_data  the triplets come from the demo MLLM (``zscir_jax.demo.mllm``, ``backend.kind=demo_mllm``) built in
               WORKDIR/demo_mllm on the garments' train split, taught only the fashion recipe's two prompts
               (attributes, relative: ``zscir_jax.demo.mllm_garments``): its reading of the images, mistakes
               included, instead of the exact lists. Its held-out quality is in WORKDIR/demo_mllm/quality.json.
               Ours: 600 steps (full: about 5 minutes more on 2 CPU cores, build and generation), 150 in the
               smoke setting (about a minute more). Give it its own workdir (the triplets differ).
"""
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import demo  # noqa: E402
import ml_collections  # noqa: E402

FLAGS = ("smoke", "mllm_data")
FASHION_TASKS = ("attributes", "relative")  # the demo MLLM tasks of the fashion recipe (zscir_jax.demo.mllm_garments)


def synthesis(smoke: bool, mllm_data: bool = False):
    """configs/synth/fashion.py on the garments with the rule_based backend (exact attribute lists), or with
    ``mllm_data`` the demo MLLM trained on the garments, taught only the fashion prompts (ours: the step counts)."""
    s = runpy.run_path(os.path.join(HERE, "synth", "fashion.py"))["get_config"]("smoke" if smoke else "demo")
    s.data.kind = "garments"
    s.limit = 0
    s.fashion.targets_per_image = 2  # ours: two targets per reference (the demo's train set is small)
    s.output.num_shards = 1
    if mllm_data:
        common.teach_demo_mllm(s, FASHION_TASKS)
        s.demo_mllm.train.steps = 150 if smoke else 600
        return s
    s.backend.kind = "rule_based"
    if "demo_mllm" in s:
        del s["demo_mllm"]  # nothing here runs the demo MLLM
    return s


def get_config(arg=None):
    flags = common.flags(arg, FLAGS)
    smoke = "smoke" in flags
    c = common.fashion()
    d = demo.get_config("smoke" if smoke else None)  # the demo's CLIP size and warm-up
    c.prepare = d.prepare
    c.prepare.update(world="garments", num_train=600 if smoke else 3000, num_val_queries=60 if smoke else 300,
                     num_test_queries=30)
    c.prepare.synthesis = synthesis(smoke, "mllm_data" in flags)
    c.warmup = d.warmup
    c.warmup.train.steps = 60 if smoke else 600
    c.model.clip_tiny = d.model.clip_tiny
    c.data.update(image_size=32, max_length=40, pairs_root="")  # the prompt (about 18 tokens) + two captions
    c.model.fashion.bank_size = 256 if smoke else 2048
    c.loss.temperature = 0.05  # the demo's (a tiny model's features are less peaked than CLIP's)
    steps = 30 if smoke else 400
    train = dict(steps=steps, batch_size=64, log_every=10 if smoke else 100, checkpoint_every=10_000)
    c.train.update(train)
    c.optim.update(warmup_steps=20)
    c.optim.lr = ml_collections.ConfigDict(dict(text_tower=2e-4, image_tower=2e-4))

    c.stages.fashion_align.train = dict(train, steps=30 if smoke else 300)
    c.stages.fashion_align.optim.lr = dict(text_tower=2e-4, image_tower=2e-4)
    c.stages.fashion_align.optim.warmup_steps = 20
    c.stages.fashion_no_bank = ml_collections.ConfigDict(dict(
        method="fashion", evaluate=True, model=dict(fashion=dict(bank_size=0))))
    c.stages.fashion_stage2_only = ml_collections.ConfigDict(dict(
        method="fashion", evaluate=True, model=dict(fashion=dict(init_from=""))))
    pvlf = d  # the demo's PVLF settings, on these triplets
    c.stages.pvlf = ml_collections.ConfigDict(dict(
        method="pvlf", evaluate=True, model=dict(fusion=pvlf.model.fusion.to_dict()), loss=pvlf.loss.to_dict(),
        optim=dict(groups=common.FUSION_GROUPS, finetune=pvlf.optim.finetune, lr=pvlf.optim.lr.to_dict()),
        train=dict(train, steps=30 if smoke else 600)))

    c.evals = ml_collections.ConfigDict()
    c.evals.fashioniq = common.eval_entry("fashioniq", categories=("dress", "shirt", "toptee"), caption_join="and")
    c.eval.update(batch_size=64)
    return c
