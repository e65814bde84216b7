r"""The demo MLLM (``zscir_jax.demo.mllm``): a tiny LLaVA trained in the workdir on the scenes' train split to answer
the synthesis recipes' prompts, standing in for a pretrained LLaVA offline.

Other configs take its settings with ``settings(smoke)`` (configs/synth/*.py put them in ``config.demo_mllm``); on
its own it builds the model, as the synthesis engine does before its first generation:

    python -m zscir_jax.demo.mllm --workdir /tmp/zscir_synth            # about 4 minutes on 2 CPU cores (+ the
                                                                       # scenes and CLIP warm-up, when not there yet)
    python -m zscir_jax.demo.mllm --workdir /tmp/zscir_smoke --smoke    # about 30 s
    python -m zscir_jax.demo.mllm --workdir DIR --set train.steps=300 --set llm.num_layers=2

Settings (see ``zscir_jax.demo.mllm.settings`` for the values):
    llm            the tiny Llama: hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, ...
    vision_feature_layer   which CLIP layer's patch features feed the projector (-1: the demo CLIP's last)
    train          steps, tokens_per_batch, group_weights (image / text / long batches), task_weights, collm_far,
                   log_every, checkpoint_every, prefetch
    optim          AdamW: lr per group (llm, projector, vision), warmup_steps, weight_decay, b1, b2, eps, clip_norm,
                   min_lr_ratio (cosine decay)
    eval           held-out VAL evaluation into WORKDIR/demo_mllm/quality.json: num_images, num_text, batch_size,
                   max_new_tokens per task (0 images and 0 text prompts: skipped)
    prepare        config (the demo config whose preparation builds the scenes and warms up the CLIP: this
                   directory's demo.py), garments_config (the same for the garments world, a synthesis config with
                   data.kind=garments: this directory's fashion_demo.py), arg (its argument), overrides (((dotted key,
                   value), ...) applied to it)

On a synthesis config with ``data.kind="garments"`` it is taught on the garments' train split instead, only the
fashion recipe's attributes and relative tasks (``zscir_jax.demo.mllm_garments``).
"""
import os

import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))


def settings(smoke: bool = False) -> ml_collections.ConfigDict:
    from zscir_jax.demo import mllm

    s = mllm.settings(smoke)
    s.prepare.config = os.path.join(HERE, "demo.py")
    s.prepare.garments_config = os.path.join(HERE, "fashion_demo.py")
    return s


def get_config(arg=None):
    """``configs/demo_mllm.py[:smoke]``: a config holding only ``demo_mllm`` (what ``build_or_reuse`` reads)."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use :smoke or nothing")
    c = ml_collections.ConfigDict()
    c.demo_mllm = settings(arg == "smoke")
    return c
