"""The siglip family (SigLIP; SigLIP 2 at its native grid): ``modeling.py`` (Flax NNX modules, no training logic) and
``params.py`` (the checkpoint name map)."""
from zscir_jax.models.siglip.modeling import *  # noqa: F401,F403
