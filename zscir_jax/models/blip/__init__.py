"""The blip family: ``modeling.py`` (Flax NNX modules of BLIP's ITC towers, no training logic) and ``params.py`` (the
checkpoint name map)."""
from zscir_jax.models.blip.modeling import *  # noqa: F401,F403
