r"""CoLLM on the CPU demo: a tiny random LLM as the joint embedder over a warmed-up tiny CLIP, trained on the scenes
benchmark's image-caption pairs with on-the-fly triplets, evaluated on its val split.

    python -m zscir_jax.main --config configs/collm_demo.py --workdir /tmp/zscir_collm            # LoRA mode
    python -m zscir_jax.main --config configs/collm_demo.py:frozen --workdir /tmp/zscir_collm     # LLM frozen
    python -m zscir_jax.main --config configs/collm_demo.py:smoke --workdir /tmp/zscir_collm_smoke
    python -m zscir_jax.main --config configs/collm_demo.py:mllm --workdir /tmp/zscir_collm_mllm  # demo MLLM

Arguments (comma-separated): ``smoke`` (seconds), ``frozen`` (the LLM frozen), ``mllm`` (the joint embedder is the
demo MLLM built in the workdir, ``zscir_jax.demo.mllm``, instead of a random LLM).

The prepare / warm-up stages are configs/demo.py's (same sizes), so a workdir where the demo already ran reuses its
scenes, tokenizer and CLIP. Needs ``"collm": collm`` in ``zscir_jax.methods.REGISTRY``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import demo  # noqa: E402
import ml_collections  # noqa: E402

from zscir_jax.methods import collm as collm_lib  # noqa: E402


def base(mode: str = "lora") -> ml_collections.ConfigDict:
    """CoLLM's knobs on top of the shared defaults; ``mode`` "lora" or "frozen" sets the frozen optimizer groups."""
    c = common.base("collm")
    del c.model.fusion
    c.model.collm = ml_collections.ConfigDict(dict(
        mode=mode,
        llm=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),
        lora=dict(rank=8, alpha=16.0, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj")),
        prefix_text="change it to",  # the rule-based modification is prefix_text + (part of) the target's caption
        rule="difference",  # "difference": target-caption words the reference caption lacks; "caption": all of it
        prefix_ids=(),  # explicit ids instead of tokenising prefix_text (tests)
        has_bos=True,  # captions start with a BOS token; the prefix goes after it
        reference_residual=False,  # ours: query = normalize(projection(h) + CLIP(reference)), projection from 0
    ))
    c.loss = ml_collections.ConfigDict(dict(name="info_nce", temperature=0.05))
    c.optim.update(groups=collm_lib.GROUPS, finetune="both", frozen=collm_lib.frozen_labels(mode), clip_norm=1.0)
    # Frozen labels are never updated whatever their rate; 0.0 keeps the table complete.
    c.optim.lr = ml_collections.ConfigDict(dict(lora=1e-3, llm=0.0, projector=1e-3, projection=1e-3,
                                                image_tower=0.0, text_tower=0.0))
    c.data.source = "pairs"
    return c


def tiny(mode: str = "lora") -> ml_collections.ConfigDict:
    """Seconds-long, synthetic arrays (tests): tiny CLIP, 2-layer width-32 LLM."""
    c = base(mode)
    c.model.clip_tiny = ml_collections.ConfigDict(dict(vocab_size=64, image_size=16, patch_size=8, width=32,
                                                       layers=1, max_length=8, eos_token_id=2))
    c.model.collm.llm = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    c.model.collm.prefix_ids = (5, 6, 7)
    c.optim.lr = {k: (3e-3 if v else 0.0) for k, v in c.optim.lr.items()}
    c.data.source = "random"
    c.train.update(steps=8, batch_size=8, log_every=1, checkpoint_every=100, progress_bar=False)
    return c


FLAGS = ("smoke", "frozen", "mllm")


def get_config(arg=None):
    flags = common.flags(arg, FLAGS)
    smoke = "smoke" in flags
    mode = "frozen" if "frozen" in flags else "lora"
    c = base(mode)
    d = demo.get_config("smoke" if smoke else None)  # the demo's data preparation and CLIP warm-up
    c.prepare, c.warmup = d.prepare, d.warmup
    if "mllm" in flags:
        # The joint embedder is the demo MLLM, built in the workdir and taught DistillCIR's teacher tasks (caption
        # an image; the target text of an image and a modification): the same build as configs/distillcir_demo.py.
        import distillcir_demo

        c.prepare.synthesis = distillcir_demo.synthesis(smoke, mllm_data=False)
        c.prepare.mllm_as_model = True
        c.data.llm_max_length = 40
    c.model.clip_tiny = d.model.clip_tiny
    c.data.update(image_size=32, max_length=24, pairs_root="")
    c.optim.update(warmup_steps=20)
    c.train.update(steps=30 if smoke else 400, batch_size=64, log_every=10 if smoke else 50, checkpoint_every=10_000)
    c.evals, c.eval = d.evals, d.eval
    return c
