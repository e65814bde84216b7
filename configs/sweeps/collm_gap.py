r"""Why CoLLM stays below Image-only on the demo: what its query embedding is allowed to learn, and for how long.

    python -m zscir_jax.sweep --config configs/collm_demo.py --sweep configs/sweeps/collm_gap.py --workdir W
    python -m zscir_jax.sweep --config configs/collm_demo.py:smoke --sweep configs/sweeps/collm_gap.py:smoke \
        --workdir W
    python -m zscir_jax.sweep --config configs/collm_demo.py --sweep configs/sweeps/collm_gap.py:closing --workdir W
    python -m zscir_jax.sweep --config configs/collm_demo.py:mllm --sweep configs/sweeps/collm_gap.py:mllm --workdir W

The demo's CoLLM (``lora``) embeds the reference image through a random, frozen projector and a random 2-layer LLM
that only rank-8 LoRA adapters adapt; the gallery side is the warmed-up CLIP's image embedding. The variants change
one thing each: the projector trained as well (``lora_projector``), the LLM frozen with the projector trained
(``frozen``, the method's other mode), four times the steps, the loss temperature, the modification rule, and two
options of ours: batches of caption neighbours (``data.pair_neighbours``) and a residual to the reference image
(``model.collm.reference_residual``). ``image_only`` is the reference run's baseline row (the same CLIP, the same
queries). ``:closing`` runs five of them (``CLOSING``) over three seeds; ``:mllm`` the same five with the demo MLLM
as the joint embedder (base config ``configs/collm_demo.py:mllm``), plus LoRA on every linear layer, alone and with
the residual.
"""
from zscir_jax.models.lora import ALL_LINEAR  # LoRA on every linear layer of the LLM

LORA_AND_PROJECTOR = ("llm", "image_tower", "text_tower")  # frozen labels: everything but lora, projector, projection
CLOSING = ("lora", "lora_projector", "neighbours_1", "residual", "residual_projector_neighbours_1")


def get_sweep(arg=None):
    if arg not in (None, "smoke", "closing", "mllm"):
        raise ValueError(f"unknown sweep argument {arg!r}; allowed: smoke, closing, mllm")
    variants = {
        "lora": {},
        "lora_projector": {"optim.frozen": LORA_AND_PROJECTOR},
        "frozen": {"model.collm.mode": "frozen", "optim.frozen": ("llm", "image_tower", "text_tower")},
        "lora_projector_4x_steps": {"optim.frozen": LORA_AND_PROJECTOR, "train.steps": 1600},
        "temperature_0.02": {"loss.temperature": 0.02},  # the demo's is 0.05
        "temperature_0.1": {"loss.temperature": 0.1},
        "rule_caption": {"model.collm.rule": "caption"},  # the modification is all of the target's caption
        # Ours (see zscir_jax.methods.collm): related pairs in one batch, and the query kept near the reference.
        "neighbours_1": {"data.pair_neighbours": 1},
        "residual": {"model.collm.reference_residual": True},
        "residual_neighbours_1": {"model.collm.reference_residual": True, "data.pair_neighbours": 1},
        "residual_projector_neighbours_1": {"model.collm.reference_residual": True, "data.pair_neighbours": 1,
                                            "optim.frozen": LORA_AND_PROJECTOR},
    }
    sweep = dict(variants=variants, reference="lora", seeds=(0,), eval="cirr",
                 metrics=("recall@1", "recall@5", "recall_subset@1"),
                 also_rows={"image_only": ("lora", "image_only")},
                 common={"eval.compare": ("image_only",), "eval.untrained": False})
    if arg == "smoke":
        sweep.update(variants={k: variants[k] for k in ("lora", "lora_projector")})
    if arg in ("closing", "mllm"):  # what closes the gap, over three seeds; "mllm" with configs/collm_demo.py:mllm
        chosen = {k: variants[k] for k in CLOSING}
        if arg == "mllm":  # adapters on every linear layer: what the demo MLLM needed as DistillCIR's teacher
            chosen["all_linear"] = {"model.collm.lora.targets": ALL_LINEAR}
            chosen["residual_projector_neighbours_1_all_linear"] = dict(
                variants["residual_projector_neighbours_1"], **chosen["all_linear"])
        # The reference is the candidate, so the image_only row's interval answers "is the gap closed?".
        sweep.update(seeds=(0, 1, 2), variants=chosen,
                     reference="residual_projector_neighbours_1",
                     also_rows={"image_only": ("residual_projector_neighbours_1", "image_only")})
    return sweep
