"""``config.model.remat="layer"`` (nnx.remat around each transformer layer) changes memory, never numbers: a tiny
PVLF's loss and gradients, and a tiny LLM's, equal those without it; a bad value is refused by name."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from zscir_jax.methods import base  # noqa: E402
from zscir_jax.models import llm  # noqa: E402


def _config(remat):
    c = common.tiny("pvlf")
    c.model.clip_tiny.layers = 2  # a loop of more than one layer
    c.model.remat = remat
    return c


def _batch(c, b=4):
    rng = np.random.default_rng(0)
    size, length, vocab = c.model.clip_tiny.image_size, c.model.clip_tiny.max_length, c.model.clip_tiny.vocab_size
    ids = rng.integers(3, vocab, (b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[1, 5:] = 0
    pix = lambda: jnp.asarray(rng.standard_normal((b, size, size, 3)), jnp.float32)
    return dict(reference_pixels=pix(), text_ids=jnp.asarray(ids), text_mask=jnp.asarray(mask), target_pixels=pix(),
                has_target_image=jnp.ones(b, bool))


def _loss_and_grads(model, loss):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(params):
        return loss(nnx.merge(graphdef, params, rest))

    fn = jax.jit(jax.value_and_grad(f))
    return fn(params), jax.make_jaxpr(jax.grad(f))(params)


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(flat_a) == len(flat_b) and flat_a
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_pvlf_loss_and_grads_unchanged():
    results = {}
    for remat in ("none", "layer"):
        c = _config(remat)
        model = base.build_fusion_retriever(c, nnx.Rngs(0))
        batch = _batch(c)
        results[remat] = _loss_and_grads(model, lambda m: base.fusion_loss(m, batch, c)[0])
    _assert_same(results["none"][0], results["layer"][0])
    # the option is really on: the backward pass of "layer" holds checkpointed (rematerialised) calls, "none" none
    assert "remat" not in str(results["none"][1])
    assert "remat" in str(results["layer"][1])


def test_llm_loss_and_grads_unchanged():
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 128, (2, 12)), jnp.int32)
    mask = jnp.ones_like(ids).at[0, :3].set(0)  # left padding
    results = {}
    for remat in ("none", "layer"):
        model = base.set_remat(llm.LLM(llm.LLMConfig.tiny(num_layers=3), rngs=nnx.Rngs(0)), _config(remat))
        results[remat] = _loss_and_grads(model, lambda m: jnp.mean(jax.nn.log_softmax(m(ids, mask)) ** 2))
    _assert_same(results["none"][0], results["layer"][0])
    assert "remat" in str(results["layer"][1])


def test_bad_value_is_refused():
    with pytest.raises(ValueError, match=r"config.model.remat must be one of 'none', 'layer', got 'layers'"):
        base.build_fusion_retriever(_config("layers"), nnx.Rngs(0))
    c = _config("layer")
    c.model.backbone = "blip"  # its towers have no remat option: refused, not silently ignored
    with pytest.raises(ValueError, match=r"no layer loop that supports it"):
        base.build_fusion_retriever(c, nnx.Rngs(0))
