"""The fusion family: ``modeling.py`` (PVLF / TransAgg fusion, Flax NNX) and ``retriever.py`` (towers + fusion)."""
from zscir_jax.models.fusion.modeling import *  # noqa: F401,F403
from zscir_jax.models.fusion.retriever import FusionRetriever  # noqa: F401
