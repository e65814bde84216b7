"""LoRA adapters for the linear layers of any NNX model (the LLM, the MLLM, a CLIP tower).

``apply`` swaps chosen ``nnx.Linear`` layers for :class:`LoRALinear`, which keeps the frozen ``kernel``/``bias``
at the same paths (so base checkpoints still load) and adds ``lora_a`` [in, r] and ``lora_b`` [r, out] as
:class:`LoRAParam` — a ``nnx.Param`` subclass, so ``nnx.Optimizer(model, tx, wrt=lora.LoRAParam)`` trains only
the adapters. ``B`` starts at zero: a fresh adapter leaves the model unchanged. ``merge`` folds the update into the
kernels and gives back a plain model.

    model = llm.from_pretrained(path)
    lora.apply(model, rank=64, alpha=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(2e-5), wrt=lora.LoRAParam)
    ...
    plain = lora.merge(model)
"""
from __future__ import annotations

from collections.abc import Sequence
import re

import jax
import jax.numpy as jnp
from flax import nnx

# Re-exported so `nnx.LoRA` layers and ours share one filter.
LoRAParam = nnx.LoRAParam

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama / Qwen2 names
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP's attention calls its output layer out_proj
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = ATTENTION + MLP

# Filters for optimizers / nnx.DiffState: the adapters, and everything else that is a parameter.
trainable = LoRAParam
frozen = nnx.All(nnx.Param, nnx.Not(LoRAParam))


def _axes(variable) -> tuple:
    sharding = variable.get_metadata().get("out_sharding") if hasattr(variable, "get_metadata") else None
    return tuple(sharding) if sharding else (None, None)


class LoRALinear(nnx.Module):
    """``y = x W + b + (alpha / r) * dropout(x) A B``, with ``W`` and ``b`` taken over from an ``nnx.Linear``."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, dropout: float = 0.0, *, rngs: nnx.Rngs):
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.kernel = base.kernel
        self.bias = base.bias
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dtype, self.param_dtype, self.precision = base.dtype, base.param_dtype, base.precision
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        in_axis, out_axis = _axes(base.kernel)
        # PEFT's choice: A like a torch Linear init (uniform, bound 1/sqrt(in)), B zero.
        a_init = nnx.with_partitioning(nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                                       (in_axis, "lora_rank"))
        b_init = nnx.with_partitioning(nnx.initializers.zeros, ("lora_rank", out_axis))
        self.lora_a = LoRAParam(a_init(rngs.params(), (self.in_features, rank), self.param_dtype))
        self.lora_b = LoRAParam(b_init(rngs.params(), (rank, self.out_features), self.param_dtype))
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        y = jnp.dot(x, self.kernel[...].astype(dtype), precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        h = self.dropout(x) if self.dropout is not None else x
        update = jnp.dot(jnp.dot(h, self.lora_a[...].astype(dtype)), self.lora_b[...].astype(dtype))
        return y + (self.scaling * update).astype(dtype)

    def merged_kernel(self) -> jax.Array:
        delta = self.scaling * (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))
        return (self.kernel[...].astype(jnp.float32) + delta).astype(self.kernel[...].dtype)


def _matches(path: tuple, targets: Sequence[str]) -> bool:
    name, dotted = str(path[-1]), ".".join(str(p) for p in path)
    return any(name == t or re.fullmatch(t, dotted) for t in targets)


def _replace(model: nnx.Module, kind, make) -> int:
    """Replace every submodule of type ``kind`` chosen by ``make(path, module) -> new | None``; returns the count."""
    found = [(path, m) for path, m in nnx.iter_modules(model) if path and isinstance(m, kind)]
    count = 0
    for path, module in found:
        new = make(path, module)
        if new is None:
            continue
        parent = model
        for part in path[:-1]:
            parent = parent[part] if isinstance(part, int) else getattr(parent, part)
        if isinstance(path[-1], int):
            parent[path[-1]] = new
        else:
            setattr(parent, path[-1], new)
        count += 1
    return count


def apply(model: nnx.Module, *, rank: int, alpha: float, dropout: float = 0.0,
          targets: Sequence[str] = ATTENTION, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Add LoRA adapters IN PLACE to the ``nnx.Linear`` layers named in ``targets`` and return ``model``.

    A target matches a layer's attribute name (``"q_proj"``) or, as a regex, its full dotted path
    (``r"layers\\.(0|1)\\.self_attn\\.q_proj"``).
    """
    rngs = rngs or nnx.Rngs(0)

    def make(path, linear):
        if not _matches(path, targets):
            return None
        return LoRALinear(linear, rank, alpha, dropout, rngs=rngs)

    if _replace(model, nnx.Linear, make) == 0:
        raise ValueError(f"no nnx.Linear layer matches the LoRA targets {tuple(targets)}")
    return model


def merge(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every :class:`LoRALinear` folded into a plain ``nnx.Linear`` (``W + s A B``)."""
    model = nnx.clone(model)

    def make(path, lora_linear: LoRALinear):
        base = nnx.eval_shape(lambda: nnx.Linear(
            lora_linear.in_features, lora_linear.out_features, use_bias=lora_linear.bias is not None,
            dtype=lora_linear.dtype, param_dtype=lora_linear.param_dtype, precision=lora_linear.precision,
            rngs=nnx.Rngs(0)))
        base.kernel = nnx.Param(lora_linear.merged_kernel(), **lora_linear.kernel.get_metadata())
        if lora_linear.bias is not None:
            base.bias = lora_linear.bias
        return base

    _replace(model, LoRALinear, make)
    return model


def count_params(model: nnx.Module, filter_=nnx.Param) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, filter_)))
