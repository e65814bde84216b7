"""HF Llama / Mistral / Qwen2 tensor names -> paths in ``zscir_jax.models.llm.LLM``.

Our module tree mirrors transformers' names (``layers.N.self_attn.q_proj``...), so each rule is a rename plus, for
linear weights, the torch [out, in] -> flax [in, out] transpose.
"""
from __future__ import annotations

import re

from zscir_jax.weights.loader import Rule, transpose

# `model.` for *ForCausalLM checkpoints, nothing for a bare LlamaModel / Qwen2Model.
CAUSAL_LM_PREFIX = r"(?:model\.)?"
LM_HEAD = r"lm_head\.weight"


def rules(src_prefix: str = CAUSAL_LM_PREFIX, dst_prefix: str = "", lm_head: str = LM_HEAD) -> list[Rule]:
    """Rules for a decoder whose tensors sit under the regex ``src_prefix`` and whose head is named ``lm_head``.

    ``dst_prefix`` is where the LLM lives in our tree ("" for ``llm.LLM`` itself, "llm." inside the MLLM).
    """
    p, d = src_prefix, dst_prefix
    layer = p + r"layers\.(\d+)\."
    return [
        Rule(p + r"embed_tokens\.weight", d + "embed_tokens.embedding"),
        Rule(layer + r"self_attn\.([qkvo])_proj\.weight", d + r"layers.\1.self_attn.\2_proj.kernel", transpose),
        Rule(layer + r"self_attn\.([qkvo])_proj\.bias", d + r"layers.\1.self_attn.\2_proj.bias"),
        Rule(layer + r"mlp\.(gate|up|down)_proj\.weight", d + r"layers.\1.mlp.\2_proj.kernel", transpose),
        Rule(layer + r"mlp\.(gate|up|down)_proj\.bias", d + r"layers.\1.mlp.\2_proj.bias"),
        Rule(layer + r"(input_layernorm|post_attention_layernorm)\.weight", d + r"layers.\1.\2.scale"),
        Rule(p + r"norm\.weight", d + "norm.scale"),
        Rule(lm_head, d + "lm_head.kernel", transpose),
    ]


def ignore(tied: bool, lm_head: str = LM_HEAD) -> list[str]:
    """Buffers that old checkpoints carry, and a redundant head copy when embeddings are tied."""
    return [r".*rotary_emb\.inv_freq"] + ([lm_head] if tied else [])


def is_lm_head(name: str, lm_head: str = LM_HEAD) -> bool:
    return re.fullmatch(lm_head, name) is not None
