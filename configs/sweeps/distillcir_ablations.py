r"""DistillCIR's acceptance comparisons on the demo, over training seeds:

    python -m zscir_jax.sweep --config configs/distillcir_demo.py --sweep configs/sweeps/distillcir_ablations.py \
        --workdir W
    python -m zscir_jax.sweep --config configs/distillcir_demo.py:smoke \
        --sweep configs/sweeps/distillcir_ablations.py:smoke --workdir W
    ... :all   adds the cosine L_fea variant

Every run trains its own stages (Pic2Word's f_phi, the teacher) with its seed, so within a seed the variants share
them exactly (the same seed, the same data: the same stage outputs) and differ only in the student's loss. The
``pic2word``, ``distillcir_untrained`` and ``image_plus_text`` rows are those of the ``distillcir`` runs.
"""


def get_sweep(arg=None):
    if arg not in (None, "all", "smoke"):
        raise ValueError(f"unknown sweep argument {arg!r}; allowed: all, smoke")
    variants = {
        "distillcir": {},
        # Its undistilled self. The teacher stage is cut to one step (nothing reads it at weight 0); the student's
        # initialisation and data order are those of the distillcir run of the same seed.
        "no_fea": {"loss.feature_weight": 0.0, "stages.distillcir_teacher.train.steps": 1},
    }
    if arg == "all":
        variants["cosine_fea"] = {"loss.feature_loss": "cosine"}
    also_rows = {name: ("distillcir", name) for name in ("distillcir_untrained", "pic2word", "image_plus_text")}
    sweep = dict(variants=variants, reference="distillcir", seeds=(0, 1, 2), eval="cirr",
                 metrics=("recall@1", "recall@5", "recall_subset@1"), also_rows=also_rows,
                 common={"eval.compare": ("image_plus_text",), "eval.untrained": True})
    if arg == "smoke":
        sweep.update(seeds=(0, 1))
    return sweep
