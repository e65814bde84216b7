"""zscir_jax: zero-shot composed image retrieval in JAX / Flax NNX."""

__version__ = "0.1.0"

import flax as _flax

# Parameters carry logical-axis annotations, but are placed on a mesh only inside `zscir_jax.sharding.activate(mesh)`;
# outside it (a notebook, a unit test) models build as plain single-device arrays.
_flax.config.update("flax_always_shard_variable", False)
