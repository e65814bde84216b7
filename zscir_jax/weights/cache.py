"""Convert a Hugging Face checkpoint once, restore it fast afterwards: an Orbax cache of converted parameters.

Loading a 7B safetensors checkpoint through the name map (:mod:`zscir_jax.weights.loader`) reads, transposes and
casts every tensor on the host. :func:`cached_load` does that once and saves the converted parameters with Orbax
into ``cache_dir``; later calls restore them straight into a model whose parameters carry the shardings of the active
mesh (each device reads only its shards), in the parameter dtype asked for (bf16 included).

A cache entry is ``cache_dir/<key>/`` holding ``params/`` (an Orbax ``StandardCheckpointer`` checkpoint of
``nnx.state(model, nnx.Param)``) and ``entry.json`` (what it was made from). The key is a digest of

* the checkpoint's weight and config files: names, sizes and modification times (a re-downloaded or edited checkpoint
  gets a new entry),
* every parameter's path, shape and dtype in the model to restore into (another dtype, config or code version of
  the model gets a new entry),
* ``tag`` (any extra string a caller wants in the key).

An entry is written into a temporary directory and renamed into place when complete, so an interrupted conversion
never leaves an entry that a later call would accept. Old entries are never deleted automatically.
"""
from __future__ import annotations

from collections.abc import Callable
import hashlib
import json
import os
import shutil
import time

import jax
from flax import nnx

from zscir_jax import sharding
from zscir_jax.weights import loader

ENTRY_FILE = "entry.json"
PARAMS_DIR = "params"
_CHECKPOINT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")
_CHECKPOINT_NAMES = ("config.json", "open_clip_config.json", "open_clip_model_config.json")


def checkpoint_files(path: str) -> list[str]:
    """The files whose change invalidates a cache entry: weights and model configs of ``path`` (a dir or a file)."""
    if os.path.isfile(path):
        return [os.path.abspath(path)]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    names = sorted(n for n in os.listdir(path)
                   if os.path.isfile(os.path.join(path, n))
                   and (n.endswith(_CHECKPOINT_SUFFIXES) or n in _CHECKPOINT_NAMES))
    return [os.path.join(os.path.abspath(path), n) for n in names]


def _param_signature(abstract: nnx.Module) -> list[list]:
    state = nnx.state(abstract, nnx.Param)
    out = []
    for p, leaf in nnx.to_flat_state(state):
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf.value
        out.append([".".join(map(str, p)), list(value.shape), str(value.dtype)])
    return out


def fingerprint(path: str, abstract: nnx.Module, tag: str = "") -> str:
    """The cache key of converting checkpoint ``path`` into ``abstract``'s parameters (hex digest)."""
    files = []
    for f in checkpoint_files(path):
        st = os.stat(f)  # follows symlinks (Hugging Face cache snapshots link to blobs)
        files.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": files, "params": _param_signature(abstract), "tag": tag}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _restore_target(abstract: nnx.Module):
    """(graphdef, abstract params with target shardings, rest) for an Orbax restore under the active mesh."""
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    mesh = jax.sharding.get_mesh()
    if mesh is not None and not mesh.empty:
        shardings = nnx.get_named_sharding(params, mesh)
        params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=loader.divisible_sharding(s, a.shape)),
            params, shardings)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), params)
    return graphdef, params, rest


def restore_params(abstract: nnx.Module, params_dir: str) -> nnx.Module:
    """Restore an Orbax checkpoint of ``nnx.state(model, nnx.Param)`` into ``abstract`` (from
    :func:`zscir_jax.weights.loader.abstract_model`); the arrays take the active mesh's shardings (replicated where a
    dimension does not divide), not the ones saved, and the abstract model's dtypes."""
    import orbax.checkpoint as ocp

    graphdef, params, rest = _restore_target(abstract)
    if jax.tree.leaves(rest):
        raise ValueError("the model holds state other than nnx.Param, which a parameters-only checkpoint cannot fill")
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(params_dir), params)
    return nnx.merge(graphdef, restored, rest)


def save_params(model: nnx.Module, params_dir: str) -> None:
    """Save ``nnx.state(model, nnx.Param)`` with Orbax (all processes take part; blocks until written)."""
    import orbax.checkpoint as ocp

    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.abspath(params_dir), nnx.state(model, nnx.Param), force=True)
    ckpt.wait_until_finished()


def temp_dir_for(final: str) -> str:
    """A sibling of ``final`` to write into before renaming (one name for every process of a multi-host job)."""
    parent, base = os.path.split(os.path.abspath(final))
    suffix = "partial" if jax.process_count() > 1 else f"partial-{os.getpid()}"
    return os.path.join(parent, f".{base}.{suffix}")


def publish(tmp: str, final: str) -> None:
    """Move the finished directory ``tmp`` to ``final`` (process 0; replaces an existing ``final``)."""
    if jax.process_index() == 0:
        if os.path.exists(final):
            old = temp_dir_for(final) + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    sharding.sync(f"publish:{final}")


def cached_load(path: str, cache_dir: str | None, build: Callable[[], nnx.Module],
                convert: Callable[[], nnx.Module], *, tag: str = "") -> nnx.Module:
    """A model from checkpoint ``path``, converted once by ``convert`` and restored from Orbax afterwards.

    Args:
      path: the source checkpoint (a directory or file); its weight/config files' names, sizes and mtimes key the
        cache.
      cache_dir: where entries live (created if missing). ``None`` or ``""`` disables the cache: ``convert()``.
      build: constructs the model, e.g. ``lambda: LLM(cfg, rngs=nnx.Rngs(0), dtype=..., param_dtype=jnp.bfloat16)``;
        it is only ever evaluated abstractly (:func:`zscir_jax.weights.loader.abstract_model`), inside the active
        mesh, so its parameters' dtypes and logical shardings define what is restored.
      convert: the slow path, e.g. ``lambda: llm.from_pretrained(path, param_dtype=...)``; called only when no entry
        exists, and must return a model with the same parameters as ``build``.
      tag: extra text for the key.

    Returns the model; under ``zscir_jax.sharding.activate(mesh)`` every parameter carries its mesh sharding, on the
    first call (from ``convert``) and on later ones (restored) alike.
    """
    if not cache_dir:
        return convert()
    abstract = loader.abstract_model(build)
    key = fingerprint(path, abstract, tag)
    entry = os.path.join(os.path.abspath(cache_dir), key)
    if os.path.isfile(os.path.join(entry, ENTRY_FILE)):
        return restore_params(abstract, os.path.join(entry, PARAMS_DIR))
    model = convert()
    got, want = _param_signature(model), _param_signature(abstract)
    if got != want:
        diff = sorted({json.dumps(r) for r in got} ^ {json.dumps(r) for r in want})
        raise ValueError(f"convert() returned a model whose parameters differ from build()'s: {diff[:5]}")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = temp_dir_for(entry)
    if jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    sharding.sync(f"cache-start:{key}")
    try:
        save_params(model, os.path.join(tmp, PARAMS_DIR))
        if jax.process_index() == 0:
            with open(os.path.join(tmp, ENTRY_FILE), "w") as f:
                json.dump({"source": os.path.abspath(path), "files": [os.path.basename(f) for f in checkpoint_files(path)],
                           "tag": tag, "created": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
        sharding.sync(f"cache-written:{key}")
        if jax.process_index() == 0:
            if os.path.isfile(os.path.join(entry, ENTRY_FILE)):  # another job finished the same entry meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                if os.path.isdir(entry):  # not an entry (no entry.json): debris from outside this module
                    shutil.rmtree(entry, ignore_errors=True)
                try:
                    os.replace(tmp, entry)
                except OSError:  # lost a race to a concurrent writer: theirs is as good as ours
                    shutil.rmtree(tmp, ignore_errors=True)
        sharding.sync(f"cache-published:{key}")
    except BaseException:
        if jax.process_index() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model
