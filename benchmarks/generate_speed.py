"""Greedy decoding speed: zscir_jax's jitted llm.generate vs transformers' PyTorch generate on the same weights.

A small random Llama (4 layers, width 256 by default) is built in transformers, saved, and loaded into ours; both
decode the same left-padded batch greedily for a fixed number of tokens (no early stop). Ours is timed after one
warm-up call (which compiles); each side reports the best of a few runs, in one process, side by side.

    python benchmarks/generate_speed.py [--layers 4] [--width 256] [--batch 4] [--prompt 32] [--new 64]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from zscir_jax.models import llm  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.width, intermediate_size=4 * args.width,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.width // 64),
        num_key_value_heads=max(1, args.width // 128), max_position_embeddings=args.prompt + args.new + 8,
        pad_token_id=0, bos_token_id=1, eos_token_id=None,
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, args.vocab, (args.batch, args.prompt))
    mask = np.ones_like(ids)
    for b in range(args.batch):  # left padding, different lengths
        mask[b, : b * args.prompt // (2 * args.batch)] = 0
    ids = np.where(mask == 1, ids, 0)

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = llm.from_pretrained(tmp)

    j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)

    def ours():
        return np.asarray(llm.generate(model, j_ids, j_mask, max_new_tokens=args.new, eos_token_ids=()))

    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)

    def theirs():
        with torch.no_grad():
            return hf.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=False, max_new_tokens=args.new,
                               min_new_tokens=args.new, pad_token_id=0)[:, ids.shape[1]:].numpy()

    start = time.perf_counter()
    a = ours()
    compile_s = time.perf_counter() - start
    b = theirs()
    agree = float((a == b).mean())
    t_ours = best_of(ours, args.repeats)
    t_hf = best_of(theirs, args.repeats)
    n = args.batch * args.new
    print(f"model: {args.layers} layers, width {args.width}, vocab {args.vocab}; batch {args.batch}, "
          f"prompt {args.prompt}, {args.new} new tokens; jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"first call (compile + run) of ours: {compile_s:.2f} s; token agreement with transformers: {agree:.3f}")
    print(f"zscir_jax llm.generate (jit):  {n / t_ours:9.1f} tokens/s  ({t_ours * 1e3:.1f} ms)")
    print(f"transformers generate (torch): {n / t_hf:9.1f} tokens/s  ({t_hf * 1e3:.1f} ms)")
    print(f"ratio ours / transformers: {t_hf / t_ours:.2f}x")


if __name__ == "__main__":
    main()
