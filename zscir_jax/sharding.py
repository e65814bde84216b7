"""Logical axis names, the mesh, and the rules that map one onto the other.

Model code names *logical* axes only (``nnx.with_partitioning(init, ("embed", "mlp"))``); which mesh axis a logical
axis is split over is decided here from the config, so the same model shards over 1 CPU, 8 forced host devices, a GPU
or a TPU pod without changes.

Logical axes used by the models:
  batch      the example axis of activations
  length     the sequence / token axis of activations (never split by default)
  embed      the model width (d_model)
  mlp        the hidden width of feed-forward blocks
  heads      attention heads (query heads)
  kv_heads   key/value heads (grouped-query attention)
  head_dim   the per-head width
  vocab      the vocabulary
  proj       the joint image-text embedding width
  channels   image channels / patch pixels (conv kernels)
  norm       LayerNorm / RMSNorm scales and biases
  lora_rank  the rank axis of LoRA factors
"""
from __future__ import annotations

from collections.abc import Sequence
import contextlib

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from flax import nnx
from flax.core import spmd as flax_spmd
import numpy as np

MESH_AXES = ("data", "fsdp", "model")

# Data parallel over `data` and `fsdp`; parameters split over `fsdp` on their width axis and over `model` for tensor
# parallelism. Entries are tried in order by flax; a logical axis absent here is replicated.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("vocab", "model"),
    ("proj", None),
    ("channels", None),
    ("norm", None),
    ("lora_rank", None),
)


def sync(name: str) -> None:
    """Every process waits here until all have arrived (a no-op for one process): after process 0 writes a file the
    others are about to read. ``name`` must be the same string on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def make_mesh(shape: Sequence[int] | None = None, axes: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """A mesh over all devices; ``shape`` may hold one -1 that absorbs the remaining devices.

    ``shape=None`` puts every device on the first axis (pure data parallelism).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape is None:
        shape = (-1,) + (1,) * (len(axes) - 1)
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {tuple(shape)} has {len(shape)} entries but the mesh has axes {tuple(axes)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1")
    if any(s != -1 and s < 1 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)}: every entry must be >= 1, or -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide the {n} available devices")
        shape[shape.index(-1)] = n // known
    if int(np.prod(shape)) != n:
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices but {n} are available")
    device_grid = np.asarray(devices).reshape(shape)
    # Auto axes: shardings are given explicitly at jit boundaries and as constraints, the GSPMD style.
    return Mesh(device_grid, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


@contextlib.contextmanager
def activate(mesh: Mesh, rules=DEFAULT_RULES):
    """Make ``mesh`` and the logical rules current: models built inside are born sharded."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules), nnx.use_eager_sharding(True):
        yield


def logical_to_spec(logical_axes: Sequence[str | None], rules=DEFAULT_RULES) -> PartitionSpec:
    """Resolve logical axis names to a PartitionSpec with ``rules`` (unknown names are replicated)."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        target = table.get(name) if name is not None else None
        # A mesh axis may appear only once in a spec: a later logical axis that maps to a used one is replicated.
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        if any(t in used for t in targets):
            target = None
        else:
            used.update(targets)
        spec.append(target)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op when no mesh is active (plain CPU use)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    rules = flax_spmd.get_logical_axis_rules() or DEFAULT_RULES
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, rules))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a host batch array: split on its leading axis over the data axes, replicated otherwise."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(mesh: Mesh, local_batch):
    """Turn each process's slice of the batch (a pytree of numpy arrays) into global arrays split over the data axes.

    Every process passes its own ``global_batch_size // process_count`` rows; the result is one logical batch that a
    jitted step sees whole (so contrastive negatives span all devices and hosts).
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), np.asarray(x)), local_batch
    )
