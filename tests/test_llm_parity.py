"""llm.LLM loaded from transformers checkpoints matches LlamaForCausalLM / Qwen2ForCausalLM (fp32, tiny configs)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from zscir_jax.models import llm

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)

CASES = {
    "llama_gqa": (transformers.LlamaConfig, dict(num_key_value_heads=2)),
    "llama_tied_llama3_rope": (transformers.LlamaConfig, dict(
        num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16), rope_theta=500000.0)),
    "llama_linear_rope": (transformers.LlamaConfig, dict(
        num_key_value_heads=1, rope_scaling=dict(rope_type="linear", factor=2.0))),
    # positions run past max_position_embeddings=6, so the dynamic NTK base actually grows
    "llama_dynamic_rope": (transformers.LlamaConfig, dict(
        num_key_value_heads=2, max_position_embeddings=6, rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "qwen2_gqa_tied": (transformers.Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
}
HF_MODEL = {transformers.LlamaConfig: transformers.LlamaForCausalLM, transformers.Qwen2Config: transformers.Qwen2ForCausalLM}


def make_hf(config_cls, extra, seed=0):
    torch.manual_seed(seed)
    cfg = config_cls(**{**TINY, **extra})
    model = HF_MODEL[config_cls](cfg).eval()
    with torch.no_grad():  # random non-trivial norms and biases, so a misplaced one would show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(seed=0, B=3, L=9, left=False):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], (B, L))
    mask = np.ones((B, L), np.int64)
    lengths = [L, L - 3, L - 5][:B]
    for b, n in enumerate(lengths):
        if left:
            mask[b, : L - n] = 0
        else:
            mask[b, n:] = 0
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_hidden_states_match_transformers(case, tmp_path):
    hf = make_hf(*CASES[case])
    hf.save_pretrained(tmp_path)
    model = llm.from_pretrained(str(tmp_path))
    for left in (False, True):
        ids, mask = batch(left=left)
        position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
        with torch.no_grad():
            out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(position_ids), output_hidden_states=True)
        h = np.asarray(model.hidden_states(jnp.asarray(ids), jnp.asarray(mask)))
        logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
        valid = mask.astype(bool)
        dh = np.abs(h - out.hidden_states[-1].numpy())[valid].max()
        dl = np.abs(logits - out.logits.numpy())[valid].max()
        print(f"{case} left_pad={left}: max|dh|={dh:.2e} max|dlogits|={dl:.2e}")
        assert dh < 1e-4 and dl < 1e-4
        pooled = np.asarray(llm.last_token_pool(jnp.asarray(h), jnp.asarray(mask)))
        last = [np.flatnonzero(m).max() for m in mask]
        np.testing.assert_allclose(pooled, h[np.arange(len(last)), last])


def test_config_reads_v4_style_rope_and_qwen_bias():
    cfg = llm.LLMConfig.from_hf_dict({**TINY, "model_type": "llama", "rope_theta": 5e5, "num_hidden_layers": 1,
                                      "rope_scaling": {"type": "linear", "factor": 4.0}, "eos_token_id": [2, 7]})
    assert (cfg.rope_theta, cfg.rope_type, cfg.rope_factor, cfg.eos_token_ids) == (5e5, "linear", 4.0, (2, 7))
    q = llm.LLMConfig.from_hf_dict({**TINY, "model_type": "qwen2"})
    assert q.qkv_bias and not q.o_bias and q.head_dim == 8
    with pytest.raises(ValueError, match="not supported"):
        llm.LLMConfig.from_hf_dict({**TINY, "model_type": "gpt2"})


def test_bare_base_model_checkpoint_gives_hidden_states(tmp_path):
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(**{**TINY, "num_key_value_heads": 2})
    base = transformers.LlamaModel(cfg).eval()
    base.save_pretrained(tmp_path)
    names = json.dumps(list(__import__("safetensors").safe_open(str(tmp_path / "model.safetensors"), "np").keys()))
    assert "model." not in names and "lm_head" not in names
    model = llm.from_pretrained(str(tmp_path))
    ids, mask = batch(1)
    with torch.no_grad():
        ref = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    h = np.asarray(model.hidden_states(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(h - ref)[mask.astype(bool)].max() < 1e-4
    with pytest.raises(ValueError, match="without an lm_head"):
        model(jnp.asarray(ids))


def test_bf16_compute_keeps_fp32_params_and_stays_close(tmp_path):
    make_hf(*CASES["llama_gqa"]).save_pretrained(tmp_path)
    f32 = llm.from_pretrained(str(tmp_path))
    bf16 = llm.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert bf16.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.float32
    ids, mask = batch(2)
    a = np.asarray(f32(jnp.asarray(ids), jnp.asarray(mask)))
    b = bf16(jnp.asarray(ids), jnp.asarray(mask))
    assert b.dtype == jnp.bfloat16
    assert np.abs(np.asarray(b, np.float32) - a)[mask.astype(bool)].max() < 0.1
