"""llm.generate: greedy decoding equals transformers' generate token for token; one compilation per shape."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from zscir_jax import sharding
from zscir_jax.models import llm

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
N_NEW = 8


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY)).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy choices are not near-ties
        hf.model.norm.weight.mul_(20.0)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, str(path)


def left_padded_prompts(seed=0, lengths=(7, 4, 2)):
    rng = np.random.default_rng(seed)
    P = max(lengths)
    ids = np.zeros((len(lengths), P), np.int64)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, P - n:] = rng.integers(3, TINY["vocab_size"], n)
        mask[b, P - n:] = 1
    return ids, mask


def hf_generate(hf, ids, mask, eos):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=N_NEW, pad_token_id=0, eos_token_id=eos)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("stop_early", [False, True])
def test_greedy_matches_transformers_with_left_padding(checkpoint, stop_early):
    hf, path = checkpoint
    model = llm.from_pretrained(path)
    ids, mask = left_padded_prompts()
    if stop_early:
        # Make a token that greedy decoding actually produces the stop token, so rows finish at different steps.
        free = hf_generate(hf, ids, mask, eos=None)
        eos = int(free[0, 2])
    else:
        eos = 2
    ref = hf_generate(hf, ids, mask, eos=eos)
    ours = np.asarray(llm.generate(model, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=N_NEW,
                                   eos_token_ids=[eos], pad_token_id=0))
    assert ours.shape == (3, N_NEW) and ours.dtype == np.int32
    print("ours", ours.tolist(), "\nhf  ", ref.tolist())
    # transformers stops once every row is done; afterwards our rows hold the pad id.
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)
    assert (ours[:, ref.shape[1]:] == 0).all()
    if stop_early:
        assert (ours == eos).any()


def test_generate_compiles_once_per_shape(checkpoint):
    _, path = checkpoint
    model = llm.from_pretrained(path)
    ids, mask = left_padded_prompts()
    before = llm._generate_jit._cache_size()
    a = llm.generate(model, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=5)  # a length no other test uses
    assert llm._generate_jit._cache_size() - before == 1
    # Other prompts, other padding, a reloaded model: same shapes, so no new compilation.
    ids2, mask2 = left_padded_prompts(seed=1, lengths=(3, 7, 5))
    b = llm.generate(llm.from_pretrained(path), jnp.asarray(ids2), jnp.asarray(mask2), max_new_tokens=5)
    assert llm._generate_jit._cache_size() - before == 1
    assert a.shape == b.shape == (3, 5)


def test_sampling_is_reproducible_and_top_p_zero_is_greedy(checkpoint):
    _, path = checkpoint
    model = llm.from_pretrained(path)
    ids, mask = (jnp.asarray(x) for x in left_padded_prompts())
    greedy = llm.generate(model, ids, mask, max_new_tokens=N_NEW)
    key = jax.random.key(3)
    s1 = llm.generate(model, ids, mask, max_new_tokens=N_NEW, temperature=1.5, rng=key)
    s2 = llm.generate(model, ids, mask, max_new_tokens=N_NEW, temperature=1.5, rng=key)
    np.testing.assert_array_equal(s1, s2)
    nucleus = llm.generate(model, ids, mask, max_new_tokens=N_NEW, temperature=1.0, top_p=1e-6, rng=key)
    np.testing.assert_array_equal(nucleus, greedy)
    with pytest.raises(ValueError, match="rng"):
        llm.generate(model, ids, mask, max_new_tokens=2, temperature=1.0)


def test_generate_on_a_sharded_model_gives_the_same_tokens(checkpoint):
    _, path = checkpoint
    ids, mask = (jnp.asarray(x) for x in left_padded_prompts(lengths=(7, 4, 2, 5)))
    ref = llm.generate(llm.from_pretrained(path), ids, mask, max_new_tokens=4)
    with sharding.activate(sharding.make_mesh((2, 2, 2))):
        model = llm.from_pretrained(path)
        assert len(model.layers[0].mlp.up_proj.kernel[...].sharding.device_set) == 8
        out = llm.generate(model, ids, mask, max_new_tokens=4)
    np.testing.assert_array_equal(out, ref)
