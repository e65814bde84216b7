r"""The fashion method's acceptance comparisons on the garment benchmark, over training seeds:

    python -m zscir_jax.sweep --config configs/fashion_demo.py --sweep configs/sweeps/fashion_ablations.py --workdir W
    python -m zscir_jax.sweep --config configs/fashion_demo.py:smoke \
        --sweep configs/sweeps/fashion_ablations.py:smoke --workdir W

One variant, the whole job: every row compared (no bank, stage 2 alone, PVLF, Image+Text) is a row of the same run,
trained with the same seed on the same triplets, so each difference is paired query by query. FashionIQ's average
over the three categories (R@10, R@50).
"""


def get_sweep(arg=None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown sweep argument {arg!r}; allowed: smoke")
    also_rows = {name: ("fashion", name) for name in ("fashion_no_bank", "fashion_stage2_only", "fashion_untrained",
                                                       "pvlf", "image_plus_text")}
    sweep = dict(variants={"fashion": {}}, reference="fashion", seeds=(0, 1, 2), eval="fashioniq",
                 metrics=("recall@10", "recall@50"), also_rows=also_rows)
    if arg == "smoke":
        sweep.update(seeds=(0, 1))
    return sweep
