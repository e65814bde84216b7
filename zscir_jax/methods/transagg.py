"""TransAgg (Liu et al., BMVC 2023): [text ; one learnable separator ; image] through a 2-layer pre-norm transformer,
text read at EOT and the image at CLS, three raw (un-softmaxed) weights from Linear(d, 3), InfoNCE at logit scale 100.

Architecturally PVLF with one shallow prompt; the differences live in the config (configs/common.py ``transagg``).
"""
import dataclasses

from zscir_jax.methods import pvlf

# Same model, loss and encoders as PVLF: only the config differs.
METHOD = dataclasses.replace(pvlf.METHOD, name="transagg")
