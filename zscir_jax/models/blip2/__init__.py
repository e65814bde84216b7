"""The blip2 family: ``modeling.py`` (Flax NNX modules, no training logic), ``params.py`` (the checkpoint name map)."""
from zscir_jax.models.blip2.modeling import *  # noqa: F401,F403
