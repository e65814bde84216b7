r"""PVLF's ablations on the demo (its Tables 3-5 and the design choices), and TransAgg, over training seeds:

    python -m zscir_jax.sweep --config configs/demo.py --sweep configs/sweeps/pvlf_ablations.py --workdir W
    python -m zscir_jax.sweep --config configs/demo.py:smoke --sweep configs/sweeps/pvlf_ablations.py:smoke --workdir W
    python -m zscir_jax.sweep --config configs/demo.py --sweep configs/sweeps/pvlf_ablations.py:pvlf_vs_transagg \
        --workdir W                                                # PVLF vs TransAgg only, 3 seeds

Every variant trains on the same prepared benchmark, triplets and warmed-up CLIP; only ``config.seed`` (the training
seed) differs between the seeds. The baselines are left out of the runs (``common``): evaluate them once with the
main job.
"""

TRANSAGG = {"method": "transagg", "model.fusion.num_prompts": 1, "model.fusion.prompt_mode": "shallow",
            "model.fusion.weighting": "linear", "loss.name": "info_nce", "loss.gamma": 0.0}


def get_sweep(arg=None):
    if arg not in (None, "smoke", "pvlf_vs_transagg"):
        raise ValueError(f"unknown sweep argument {arg!r}; allowed: smoke, pvlf_vs_transagg")
    # Ordered so that a partial run answers the first question first: which of TransAgg's four differences from
    # PVLF (one prompt, shallow prompts, linear weights, InfoNCE) moves R@1; then PVLF's Tables 3-5.
    variants = {
        "pvlf": {},
        "transagg": TRANSAGG,
        "prompts_1": {"model.fusion.num_prompts": 1},  # Table 4 (the demo's p is 8)
        "shallow_prompts": {"model.fusion.prompt_mode": "shallow"},
        "linear_weights": {"model.fusion.weighting": "linear"},
        "info_nce": {"loss.name": "info_nce", "loss.gamma": 0.0},
        "finetune_none": {"optim.finetune": "none"},  # Table 3
        "finetune_both": {"optim.finetune": "both"},
        "depth_1": {"model.fusion.depth": 1},  # Table 5 (J = 2)
        "depth_3": {"model.fusion.depth": 3},
        "prompts_16": {"model.fusion.num_prompts": 16},
    }
    sweep = dict(variants=variants, reference="pvlf", seeds=(0, 1, 2), eval="cirr",
                 metrics=("recall@1", "recall@5", "recall_subset@1"),
                 common={"eval.compare": (), "eval.untrained": False})
    if arg == "pvlf_vs_transagg":  # the headline comparison alone: 6 runs
        sweep.update(variants={k: variants[k] for k in ("pvlf", "transagg")})
    if arg == "smoke":
        sweep.update(variants={k: variants[k] for k in ("pvlf", "finetune_none", "transagg")}, seeds=(0, 1))
    return sweep
