"""Fusion models: output shapes and normalisation, prompt modes, weighting rule, padding invariance, baselines."""
import os
import sys

import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from zscir_jax import methods  # noqa: E402
from zscir_jax.models import fusion  # noqa: E402

B, S, L = 3, 16, 8


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    px = rng.standard_normal((B, S, S, 3)).astype(np.float32)
    ids = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), np.int32)
    for i, n in enumerate((3, 5, 8)):
        ids[i, :n] = rng.integers(3, 60, n)
        ids[i, n - 1] = 63  # EOT = the largest id
        mask[i, :n] = 1
    return px, ids, mask


@pytest.fixture(scope="module")
def pvlf_model():
    c = common.tiny("pvlf")
    return methods.get("pvlf"), nnx.jit(lambda: methods.get("pvlf").build(c, nnx.Rngs(0)))()


# One jitted forward shared by the tests below (each eager op would compile on its own).
_query = nnx.jit(lambda m, model, px, ids, mask: m.encode_query(model, px, ids, mask), static_argnums=0)


@pytest.mark.parametrize("method,mode,shape", [("pvlf", "deep", (2, 3, 32)), ("pvlf", "shallow", (1, 3, 32)),
                                               ("transagg", None, (1, 1, 32))])
def test_prompt_slots(method, mode, shape):
    c = common.tiny(method)
    if mode:
        c.model.fusion.prompt_mode = mode
    abstract = nnx.eval_shape(lambda: methods.get(method).build(c, nnx.Rngs(0)))
    assert abstract.fusion.prompts.shape == shape


def test_query_shapes_and_norms(pvlf_model):
    m, model = pvlf_model
    px, ids, mask = _inputs()
    q = np.asarray(_query(m, model, px, ids, mask))
    assert q.shape == (B, 32)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=1e-5)
    g = np.asarray(nnx.jit(m.encode_image)(model, px))
    assert g.shape == (B, 32)
    np.testing.assert_allclose(np.linalg.norm(g, axis=-1), 1.0, rtol=1e-5)


def test_padding_tokens_are_ignored(pvlf_model):
    m, model = pvlf_model
    px, ids, mask = _inputs()
    q1 = np.asarray(_query(m, model, px, ids, mask))
    ids2 = np.where(mask > 0, ids, 7)  # different ids in the padded slots
    q2 = np.asarray(_query(m, model, px, ids2, mask))
    np.testing.assert_allclose(q1, q2, atol=1e-6)


def test_weighting_rule_and_config_checks():
    cfg = fusion.FusionConfig(dim=16, heads=2, num_prompts=2, weighting="linear", dropout=0.0)
    f = fusion.Fusion(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    txt, img = rng.standard_normal((2, 4, 16)).astype(np.float32), rng.standard_normal((2, 5, 16)).astype(np.float32)
    call = nnx.jit(lambda f, *a: f(*a))
    q_lin = np.asarray(call(f, txt, np.ones((2, 4), np.int32), np.array([3, 2]), img))
    f.config = dataclasses_replace(cfg, weighting="softmax")
    q_soft = np.asarray(call(f, txt, np.ones((2, 4), np.int32), np.array([3, 2]), img))
    assert not np.allclose(q_lin, q_soft)
    with pytest.raises(ValueError, match="prompt_mode"):
        fusion.FusionConfig(dim=16, prompt_mode="middle")


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_baselines():
    c = common.tiny("image_only")
    px, ids, mask = _inputs()
    towers = nnx.jit(lambda: methods.get("image_only").build(c, nnx.Rngs(0)))()

    @nnx.jit
    def encode(towers, px, ids, mask):
        return [methods.get(n).encode_query(towers, px, ids, mask) for n in ("image_only", "text_only",
                                                                              "image_plus_text")]

    img, txt, both = map(np.asarray, encode(towers, px, ids, mask))
    expected = (img + txt) / np.linalg.norm(img + txt, axis=-1, keepdims=True)
    np.testing.assert_allclose(both, expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("nope")
