"""The mllm family: ``modeling.py`` (Flax NNX modules, no training logic), ``params.py`` (the checkpoint name map),
``processor.py`` (LLaVA prompts and pixels, as transformers' LlavaProcessor) and ``export.py`` (our directory format;
``load`` reads it or a transformers LLaVA directory, optionally through the Orbax conversion cache)."""
from zscir_jax.models.mllm.modeling import *  # noqa: F401,F403
from zscir_jax.models.mllm.export import EXPORT_MARKER, export, load  # noqa: F401
from zscir_jax.models.mllm.processor import Processor, load_processor  # noqa: F401
