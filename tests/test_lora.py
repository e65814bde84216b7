"""LoRA: a fresh adapter changes nothing, merged equals unmerged, only adapters train."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from zscir_jax.models import llm, lora

CFG = llm.LLMConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, qkv_bias=True)


def tokens(seed=0):
    ids = jax.random.randint(jax.random.key(seed), (2, 7), 3, CFG.vocab_size)
    mask = jnp.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    return ids, mask


@nnx.jit
def logits(model, ids, mask):
    return model(ids, mask)


def perturb_b(model, scale=0.05):
    state = nnx.state(model, lora.LoRAParam)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))


def test_zero_b_equals_base_and_merge_equals_unmerged():
    base = llm.LLM(CFG, rngs=nnx.Rngs(0))
    ids, mask = tokens()
    ref = logits(base, ids, mask)
    model = lora.apply(nnx.clone(base), rank=4, alpha=8, targets=lora.ALL_LINEAR, rngs=nnx.Rngs(1))
    assert isinstance(model.layers[1].mlp.down_proj, lora.LoRALinear)
    assert float(jnp.abs(logits(model, ids, mask) - ref).max()) == 0.0
    perturb_b(model)
    unmerged = logits(model, ids, mask)
    assert float(jnp.abs(unmerged - ref).max()) > 1e-3  # the adapters do something now
    merged = lora.merge(model)
    assert not any(isinstance(m, lora.LoRALinear) for _, m in nnx.iter_modules(merged))
    assert lora.count_params(merged, lora.LoRAParam) == 0 and lora.count_params(merged) == lora.count_params(base)
    diff = float(jnp.abs(logits(merged, ids, mask) - unmerged).max())
    print(f"LoRA merged vs unmerged max|dlogits|={diff:.2e}")
    assert diff < 1e-5
    # merge leaves the adapted model alone, and the paths of the base weights never moved
    assert isinstance(model.layers[0].self_attn.q_proj, lora.LoRALinear)
    assert set(dict(nnx.to_flat_state(nnx.state(merged))).keys()) == set(dict(nnx.to_flat_state(nnx.state(base))).keys())


def test_targets_by_name_and_regex():
    model = lora.apply(llm.LLM(CFG, rngs=nnx.Rngs(0)), rank=2, alpha=2,
                       targets=("v_proj", r"layers\.1\.self_attn\.q_proj"))
    kinds = {p: type(m).__name__ for p, m in nnx.iter_modules(model) if p and p[-1] in ("q_proj", "v_proj", "k_proj")}
    assert kinds[("layers", 0, "self_attn", "v_proj")] == "LoRALinear"
    assert kinds[("layers", 1, "self_attn", "q_proj")] == "LoRALinear"
    assert kinds[("layers", 0, "self_attn", "q_proj")] == "Linear"
    assert kinds[("layers", 0, "self_attn", "k_proj")] == "Linear"
    with pytest.raises(ValueError, match="no nnx.Linear"):
        lora.apply(llm.LLM(CFG, rngs=nnx.Rngs(0)), rank=2, alpha=2, targets=("nonexistent",))


def test_only_adapters_train_and_generate_runs_with_dropout():
    model = lora.apply(llm.LLM(CFG, rngs=nnx.Rngs(0)), rank=4, alpha=16, dropout=0.1, rngs=nnx.Rngs(2))
    frozen_before = jax.tree.map(np.asarray, nnx.state(model, lora.frozen))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=lora.trainable)
    ids, mask = tokens()

    graphdef, _, rest = nnx.split(model, lora.trainable, ...)

    @jax.jit
    def loss_and_grads(adapters, rest):
        # Differentiate only the adapters (works in graph and tree mode alike).
        def loss_fn(adapters):
            h = nnx.merge(graphdef, adapters, rest, copy=True).hidden_states(ids, mask)
            return jnp.mean(llm.last_token_pool(h, mask) ** 2)

        return jax.value_and_grad(loss_fn)(adapters)

    def step(model, optimizer):
        loss, grads = loss_and_grads(nnx.state(model, lora.trainable), rest)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(3)]
    assert losses[-1] < losses[0]
    jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray, nnx.state(model, lora.frozen)))
    assert float(jnp.abs(model.layers[0].self_attn.q_proj.lora_b[...]).max()) > 0
    n_lora = lora.count_params(model, lora.LoRAParam)
    # rank 4 on q/o (32 -> 32) and k/v (32 -> 16) in each of 2 layers
    assert n_lora == CFG.num_layers * 4 * ((32 + 32) * 2 + (32 + 16) * 2)
    out = llm.generate(model, ids, mask, max_new_tokens=3)  # dropout is off inside generate
    np.testing.assert_array_equal(out, llm.generate(model, ids, mask, max_new_tokens=3))
