"""Stream checkpoint tensors into an NNX model, one family-specific name map at a time.

A family module (``weights/clip.py``, ``weights/llama.py``, ...) supplies a list of :class:`Rule` s that say where each
checkpoint tensor goes in our module tree and how to reshape it. :func:`load_state` then

1. builds the model abstractly (``nnx.eval_shape``, so nothing is allocated; under an active mesh every leaf already
   carries its target sharding),
2. reads each tensor lazily from the safetensors files (sharded checkpoints too),
3. checks every shape, and collects *all* missing / unexpected / mismatched weights into one :class:`WeightLoadError`,
4. places each array directly with its target sharding (``jax.make_array_from_callback``; works multi-host).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = np.ndarray
Transform = Callable[[Array], Array]


class WeightLoadError(ValueError):
    """Raised with every problem found while loading a checkpoint, one per line."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n  ".join(self.problems)
        super().__init__(f"{len(self.problems)} problem(s) loading weights from {source}:\n  {lines}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Maps checkpoint names matching ``pattern`` (``re.fullmatch``) to ``target``.

    ``target`` is a dotted path in our module tree and may use the pattern's groups (``r"layers.\\1.attn.q.kernel"``);
    ``transform`` turns the checkpoint array into ours (a transpose, a reshape into heads, ...).
    """

    pattern: str
    target: str
    transform: Transform | None = None


def identity(x: Array) -> Array:
    return x


def transpose(x: Array) -> Array:
    """torch ``Linear.weight`` [out, in] -> flax ``kernel`` [in, out]."""
    return np.ascontiguousarray(x.T)


def conv_oihw_to_hwio(x: Array) -> Array:
    """torch ``Conv2d.weight`` [out, in, h, w] -> flax ``kernel`` [h, w, in, out]."""
    return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))


# --------------------------------------------------------------------------------------------------------------------
# Reading checkpoints lazily


class LazyTensors(Mapping):
    """A name -> numpy array mapping over one or more safetensors files; tensors are read on access."""

    def __init__(self, files: Sequence[str]):
        from safetensors import safe_open

        self._handles = {}
        self._where: dict[str, str] = {}
        for f in files:
            handle = safe_open(f, framework="np")
            self._handles[f] = handle
            for name in handle.keys():
                self._where[name] = f
        self.files = list(files)

    def __getitem__(self, name: str) -> Array:
        try:
            handle = self._handles[self._where[name]]
        except KeyError:
            raise KeyError(name) from None
        return handle.get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def safetensors_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint: a file, a dir with one file, or a dir with a sharded index."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not found:
        raise FileNotFoundError(
            f"no *.safetensors weights in {path!r}. Save the checkpoint with transformers' save_pretrained "
            "(safe_serialization is the default) or convert a .bin state dict with safetensors.torch.save_file."
        )
    return [os.path.join(path, f) for f in found]


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found: a checkpoint directory needs its config.json beside the weights")
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------------------------
# Putting tensors into a model


def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def divisible_sharding(sharding: jax.sharding.NamedSharding, shape) -> jax.sharding.NamedSharding:
    """``sharding`` with every dimension the mesh does not divide evenly replicated instead (e.g. a 50257 vocab)."""
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    sizes = dict(sharding.mesh.shape)
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        parts = int(np.prod([sizes[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
        if shape[dim] % parts:
            spec[dim] = None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))


def _place(array: Array, target: jax.ShapeDtypeStruct) -> jax.Array:
    array = np.asarray(array, dtype=target.dtype)
    sharding = getattr(target, "sharding", None)
    if sharding is None or isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return jnp.asarray(array)
    if isinstance(sharding.mesh, jax.sharding.AbstractMesh):
        # eval_shape records the abstract mesh; the arrays go on the concrete mesh that is active now.
        mesh = jax.sharding.get_mesh()
        if mesh.empty:
            raise RuntimeError(
                "the model was built abstractly under a mesh; load its weights inside the same "
                "`zscir_jax.sharding.activate(mesh)` block"
            )
        sharding = jax.sharding.NamedSharding(mesh, sharding.spec)
    sharding = divisible_sharding(sharding, array.shape)
    # Each process builds only the shards it owns: correct on one host and on many.
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def abstract_model(build):
    """``build()`` evaluated abstractly; inside an active mesh every leaf carries its target ``NamedSharding``.

    ``nnx.get_abstract_model`` keeps the shardings in both NNX graph and tree mode (``nnx.eval_shape`` drops them in
    tree mode), so it is used whenever a mesh is active.
    """
    mesh = jax.sharding.get_mesh()
    if mesh.empty:
        return nnx.eval_shape(build)
    graphdef, state = nnx.get_abstract_model(build, mesh)
    return nnx.merge(graphdef, state)


def load_state(
    abstract_model: nnx.Module,
    tensors: Mapping[str, Array],
    rules: Iterable[Rule],
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> nnx.Module:
    """Fill ``abstract_model`` (from ``nnx.eval_shape``) with ``tensors`` mapped by ``rules``; returns the model.

    Names matching a regex in ``ignore`` are skipped silently (buffers such as ``position_ids``). Every problem is
    collected and raised together as :class:`WeightLoadError`.
    """
    rules = [(re.compile(r.pattern), r) for r in rules]
    ignore = [re.compile(p) for p in ignore]
    graphdef, abstract_state = nnx.split(abstract_model)
    flat_targets = {_path_str(path): leaf for path, leaf in nnx.to_flat_state(abstract_state)}
    filled: dict[str, jax.Array] = {}
    mismatched: set[str] = set()
    problems: list[str] = []
    for name in tensors:
        if any(p.fullmatch(name) for p in ignore):
            continue
        for regex, rule in rules:
            match = regex.fullmatch(name)
            if match:
                break
        else:
            problems.append(f"unexpected: checkpoint tensor {name!r} has no place in the model")
            continue
        target = match.expand(rule.target)
        if target not in flat_targets:
            problems.append(f"unexpected: checkpoint tensor {name!r} maps to {target!r}, which the model does not have")
            continue
        if target in filled:
            problems.append(f"duplicate: {target!r} is written by more than one checkpoint tensor (last: {name!r})")
            continue
        array = (rule.transform or identity)(tensors[name])
        abstract = flat_targets[target].get_value() if hasattr(flat_targets[target], "get_value") else flat_targets[target].value
        if tuple(array.shape) != tuple(abstract.shape):
            problems.append(
                f"shape mismatch: {name!r} -> {target!r}: checkpoint gives {tuple(array.shape)}, "
                f"model expects {tuple(abstract.shape)}"
            )
            mismatched.add(target)
            continue
        filled[target] = _place(array, abstract)
    for target in flat_targets:
        if target not in filled and target not in mismatched:
            problems.append(f"missing: model parameter {target!r} has no tensor in the checkpoint")
    if problems:
        raise WeightLoadError(source, problems)

    def fill(path, leaf):
        return leaf.replace(filled[_path_str(path)])

    new_state = nnx.from_flat_state([(path, fill(path, leaf)) for path, leaf in nnx.to_flat_state(abstract_state)])
    return nnx.merge(graphdef, new_state)
