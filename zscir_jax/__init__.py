"""zscir_jax: zero-shot composed image retrieval in JAX / Flax NNX."""

__version__ = "0.1.0"
