"""The mllm family: ``modeling.py`` (Flax NNX modules, no training logic) and ``params.py`` (the checkpoint name map)."""
from zscir_jax.models.mllm.modeling import *  # noqa: F401,F403
