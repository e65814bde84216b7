r"""The CPU demo: zero-shot CIR end to end on a synthetic benchmark, no downloads.

    python -m zscir_jax.main --config configs/demo.py --workdir /tmp/zscir_demo
    python -m zscir_jax.main --config configs/demo.py:smoke --workdir /tmp/zscir_smoke   # about a minute
    python -m zscir_jax.main --config configs/demo.py:mllm --workdir /tmp/zscir_demo_mllm  # MLLM-written triplets
    python -m zscir_jax.main --config configs/demo.py:mllm_smoke --workdir /tmp/zscir_mllm_smoke

Stages: build the scenes benchmark (CIRR layout) -> warm up a tiny CLIP on its train image-caption pairs (standing in
for a pretrained VLM) -> synthesise triplets with the rule-based generator -> train PVLF on them (towers at a low
learning rate) -> evaluate PVLF, PVLF untrained, image_only, text_only and image_plus_text on the scenes' val split in
the CIRR, FashionIQ and CIRCO layouts; one table per layout.
"""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402


def get_config(arg=None):
    if arg not in (None, "smoke", "mllm", "mllm_smoke"):
        raise ValueError(f"unknown config argument {arg!r}; allowed: smoke, mllm, mllm_smoke")
    smoke = arg in ("smoke", "mllm_smoke")
    c = common.pvlf()
    # prepare.seed fixes the benchmark, its rule-based triplets and the CLIP warm-up; config.seed only the trained
    # method (initialisation, data order, dropout), so --config.seed=1 is another training run on the same data.
    c.prepare = ml_collections.ConfigDict(dict(
        seed=0, num_train=300 if smoke else 3000, num_val_queries=50 if smoke else 300, num_test_queries=10,
        render_size=32, triplets_per_image=2))
    c.model.clip_tiny = ml_collections.ConfigDict(dict(vocab_size=0, image_size=32, patch_size=8, width=64,
                                                       layers=2, max_length=24, eos_token_id=3))
    c.data.update(image_size=32, max_length=24, pairs_root="")
    c.model.fusion.update(heads=4, num_prompts=8, mlp_ratio=2, combiner_ratio=1, dropout=0.1)
    c.loss.temperature = 0.05  # a tiny model's features are less peaked than CLIP's
    c.optim.update(lr=dict(fusion=1e-3, text_tower=1e-4, image_tower=1e-4), finetune="text", warmup_steps=20)
    c.train.update(steps=30 if smoke else 1500, batch_size=64, log_every=10 if smoke else 50,
                   checkpoint_every=10_000)

    c.warmup = ml_collections.ConfigDict()
    c.warmup.optim = common.base("clip_pretrain").optim
    c.warmup.optim.update(groups=common.CLIP_GROUPS, lr=dict(text_tower=2e-3, image_tower=2e-3), finetune="both",
                          warmup_steps=20, weight_decay=0.1, clip_norm=0.0)
    c.warmup.train = common.base().train
    c.warmup.train.update(steps=30 if smoke else 800, batch_size=64, log_every=10 if smoke else 100,
                          checkpoint_every=10_000)

    if arg in ("mllm", "mllm_smoke"):
        # PVLF trains on triplets the demo MLLM writes (configs/synth/collm.py: each train image paired with its
        # nearest-caption neighbour, the modification written by the MLLM from the two captions) instead of the
        # rule-based ones; the MLLM is built in the workdir first (zscir_jax.demo.mllm).
        synth = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synth", "collm.py"))
        c.prepare.synthesis = synth["get_config"]("smoke" if smoke else "demo")
    common.all_benchmarks(c)  # roots filled in by the preparation stage
    c.eval.update(compare=("image_only", "text_only", "image_plus_text"), untrained=True, batch_size=64,
                  table_metrics=("recall@1", "recall@5", "recall@10", "recall_subset@1", "recall_avg",
                                 "recall@50", "map@5", "map@10", "map@25", "map@50"))
    return c
