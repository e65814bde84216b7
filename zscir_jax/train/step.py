"""Train state (model + optimizer as one NNX state), born sharded on the mesh, and the ONE jitted train step.

The step is a pure function of (state, batch) with explicit in/out shardings; NNX objects are rebuilt from the
graphdef inside it (``nnx.merge``), so nothing about the mesh leaks into the model code. Dropout keys are derived
from the seed and the optimizer step, which makes a resumed run bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx

from zscir_jax import sharding
from zscir_jax.train import optimizer as optim_lib


@dataclasses.dataclass
class TrainState:
    graphdef: Any  # of the pair (model, nnx.Optimizer)
    state: Any  # nnx.State of (model, optimizer): concrete arrays, or ShapeDtypeStructs for a restore target
    shardings: Any  # the same tree of NamedShardings
    wrt: Any  # the trainable-parameter filter

    def model(self, state=None):
        model, _ = nnx.merge(self.graphdef, self.state if state is None else state)
        return model


def build(method, config, mesh, tx, *, abstract: bool = False) -> TrainState:
    """Model + optimizer under the mesh and logical rules, every array created with its target sharding.

    Random initialisation runs inside one jit whose out_shardings come from the logical rules (born sharded);
    towers read from ``config.model.clip_path`` are loaded eagerly (the loader places each weight sharded).
    ``abstract=True`` returns only shapes/dtypes/shardings of the weight-free skeleton: the target a checkpoint is
    restored into, so saved sharding metadata is never relied on.
    """
    from zscir_jax.methods import base

    wrt = optim_lib.trainable_filter(config.optim)
    graphdefs = []

    def init(cfg):
        model = method.build(cfg, nnx.Rngs(config.seed))
        pair = (model, nnx.Optimizer(model, tx, wrt=wrt))
        graphdef, state = nnx.split(pair)
        graphdefs.append(graphdef)
        return state

    with sharding.activate(mesh, _rules(config)):
        skeleton = base.skeleton(config)
        abstract_state = jax.eval_shape(lambda: init(skeleton))
        shardings = state_shardings(abstract_state, mesh)
        if abstract:
            state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract_state, shardings)
        elif config.model.get("clip_path") or config.model.get("mllm_path") or method.reads_data_at_build:
            # weights (or data) read eagerly
            state = jax.device_put(init(config), shardings)
        else:
            state = jax.jit(lambda: init(config), out_shardings=shardings)()
    return TrainState(graphdefs[-1], state, shardings, wrt)


def state_shardings(abstract_state, mesh):
    """NamedShardings from the variables' logical axes; optax's empty placeholders (MaskedNode) stay as they are."""
    def one(v):
        if isinstance(v, nnx.Variable) and not hasattr(v.get_value(), "shape"):
            return v
        return nnx.get_named_sharding(v, mesh)

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _rules(config):
    rules = config.get("mesh", {}).get("rules")
    return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in rules) if rules else sharding.DEFAULT_RULES


def batch_shardings(mesh, batch_spec: dict) -> dict:
    return {k: sharding.batch_sharding(mesh, len(shape)) for k, (shape, _) in batch_spec.items()}


def make_train_step(method, config, ts: TrainState, mesh, batch_spec: dict) -> Callable:
    """jit(step)(state, batch) -> (state, metrics); ``batch_spec`` maps each batch key to (shape, dtype)."""
    graphdef, wrt = ts.graphdef, ts.wrt
    base_key = jax.random.key(config.seed)

    def step(state, batch):
        model, opt = nnx.merge(graphdef, state)
        key = jax.random.fold_in(base_key, opt.step[...])

        def loss_fn(model):
            rngs = nnx.Rngs(dropout=key) if config.model.get("train_dropout", True) else None
            return method.loss(model, batch, config, rngs)

        (loss, metrics), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)(model)
        opt.update(model, grads)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        return nnx.state((model, opt)), metrics

    rep = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(ts.shardings, batch_shardings(mesh, batch_spec)),
                   out_shardings=(ts.shardings, rep), donate_argnums=(0,))


def batch_spec_of(batch: dict) -> dict:
    return {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in batch.items()}
