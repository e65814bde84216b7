"""The llm family: ``modeling.py`` (Flax NNX modules, no training logic) and ``params.py`` (the checkpoint name map)."""
from zscir_jax.models.llm.modeling import *  # noqa: F401,F403
from zscir_jax.models.llm.modeling import _generate_jit  # noqa: F401  (tests count its compiles)
