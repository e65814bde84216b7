"""CoLLM: surface shapes, the in-batch pairing and modification rule, training lowers the loss, and each mode
trains only its parameters (LoRA: adapters + projection; frozen: projector + projection)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import collm_demo  # noqa: E402

from zscir_jax import sharding  # noqa: E402
from zscir_jax.methods import collm  # noqa: E402
from zscir_jax.data import fake_data
from zscir_jax.train import optimizer, step as step_lib, trainer  # noqa: E402


def _mesh():
    return sharding.make_mesh((-1, 1, 1), devices=jax.devices()[:1])  # one device: compiles fastest on CPU


def _batch(c, seed=0):
    t = c.model.clip_tiny
    d = fake_data.RandomTriplets(batch_size=c.train.batch_size, image_size=t.image_size, max_length=t.max_length,
                                 vocab_size=t.vocab_size, seed=seed, kind="pairs")
    return next(d)


def test_surface_shapes():
    c = collm_demo.tiny("lora")
    model = nnx.jit(lambda: collm.build(c, nnx.Rngs(0)))()
    b = _batch(c)
    q = nnx.jit(collm.encode_query)(model, b["pixels"], b["text_ids"], b["text_mask"])
    g = nnx.jit(collm.encode_image)(model, b["pixels"])
    dim = model.clip.config.projection_dim
    assert q.shape == (8, dim) and g.shape == (8, dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(g, axis=-1), 1.0, rtol=1e-5)
    assert collm.METHOD.batch == "pairs"


def test_reference_residual_starts_at_the_image_only_query_and_then_moves():
    c = collm_demo.tiny("lora")
    c.model.collm.reference_residual = True
    model = nnx.jit(lambda: collm.build(c, nnx.Rngs(0)))()
    b = _batch(c)
    q = nnx.jit(collm.encode_query)(model, b["pixels"], b["text_ids"], b["text_mask"])
    np.testing.assert_allclose(q, nnx.jit(collm.encode_image)(model, b["pixels"]), atol=1e-6)  # untrained
    _, grads = nnx.value_and_grad(lambda m: collm.loss(m, b, c)[0])(model)
    assert float(jnp.abs(grads["projection"]["kernel"].value).max()) > 0  # the LLM's share is learned


def test_neighbour_batches_must_hold_whole_groups():
    from zscir_jax.errors import UserError
    from zscir_jax.train import preflight

    c = collm_demo.tiny("lora")
    c.data.pair_neighbours = 2  # groups of 3 in a batch of 8
    with pytest.raises(UserError, match=r"pair_neighbours=2: each process's batch \(8\) must be a multiple of 3"):
        preflight.check(c, collm.METHOD, mode="train")
    c.data.pair_neighbours = 3
    preflight.check(c, collm.METHOD, mode="train")


def test_pairing_picks_most_similar_other_caption():
    # Bag-of-words caption vectors: 0 and 2 share "red cube", 1 and 3 share "blue sphere"; 4 shares nothing.
    vocab = ["red", "cube", "blue", "sphere", "small", "large", "green", "cone"]
    captions = ["red cube small", "blue sphere large", "red cube large", "blue sphere small", "green cone"]
    emb = np.array([[w in c.split() for w in vocab] for c in captions], np.float32)
    j = np.asarray(jax.jit(collm.pair_by_caption)(jnp.asarray(emb)))
    assert j.tolist()[:4] == [2, 3, 0, 1]
    assert all(j[i] != i for i in range(len(j)))


def test_modification_is_bos_prefix_target_caption():
    ids = jnp.array([[1, 10, 11, 2, 0], [1, 20, 2, 0, 0]], jnp.int32)  # BOS caption EOS pad
    mask = (ids > 0).astype(jnp.int32)
    out, m = collm.modification(ids, mask, jnp.array([1, 0]), (7, 8))
    assert out.tolist() == [[1, 7, 8, 20, 2, 0, 0], [1, 7, 8, 10, 11, 2, 0]]
    assert m.tolist() == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]]
    out, m = collm.modification(ids, mask, jnp.array([1, 0]), (7,), has_bos=False)
    assert out.tolist()[0] == [7, 1, 20, 2, 0, 0]


def test_difference_rule_keeps_only_new_target_words():
    ids = jnp.array([[1, 10, 11, 12, 2, 0], [1, 10, 13, 12, 2, 0], [1, 10, 11, 12, 2, 0]], jnp.int32)
    mask = (ids > 0).astype(jnp.int32)
    out, m = collm.modification(ids, mask, jnp.array([1, 0, 0]), (7, 8), rule="difference")
    assert out.tolist()[0] == [1, 7, 8, 13, 2, 0, 0, 0]  # "13" is new in the target; 10 and 12 are shared
    assert out.tolist()[1] == [1, 7, 8, 11, 2, 0, 0, 0]
    assert out.tolist()[2] == [1, 7, 8, 2, 0, 0, 0, 0]  # identical captions: only the prefix remains
    assert m.tolist()[2] == [1, 1, 1, 1, 0, 0, 0, 0]


def _state_and_step(mode, steps=10):
    c = collm_demo.tiny(mode)
    mesh = _mesh()
    tx, _ = optimizer.make(c.optim, steps)
    ts = step_lib.build(collm.METHOD, c, mesh, tx)
    batch = _batch(c)
    step = step_lib.make_train_step(collm.METHOD, c, ts, mesh, step_lib.batch_spec_of(batch))
    return c, mesh, ts, step, sharding.global_batch(mesh, batch)


def _params(ts, state):
    return {optimizer.path_str(p): np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(ts.model(state), nnx.Param))}


@pytest.mark.parametrize("mode,trained", [("lora", r"(/lora_b$)|(^projection/)"),
                                          ("frozen", r"(^mllm/multi_modal_projector/)|(^projection/)")])
def test_training_lowers_loss_and_trains_only_its_params(mode, trained):
    import re

    _, mesh, ts, step, batch = _state_and_step(mode)
    before = _params(ts, ts.state)
    state, losses = ts.state, []
    with jax.set_mesh(mesh):
        for _ in range(10):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    after = _params(ts, state)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    unexpected = {k for k in changed if not re.search(trained, k) and "lora_a" not in k}
    assert not unexpected, sorted(unexpected)
    assert {k for k in before if re.search(trained, k)} <= changed
    if mode == "frozen":
        assert not any("lora" in k for k in before)


def test_trainer_runs_collm_from_config(tmp_path):
    c = collm_demo.tiny("lora")
    c.train.update(steps=2, async_checkpoints=False)
    run_dir = str(tmp_path / "collm")
    model = trainer.train(c, run_dir, _mesh())
    metrics = trainer.read_metrics(run_dir)
    assert sorted(metrics) == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics.values())
    assert isinstance(model, collm.CoLLM)
