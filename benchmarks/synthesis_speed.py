"""Synthesis throughput: our MLLM backend (prompt ids, pixels, jitted KV-cache generate, decode) vs transformers'
``generate`` on the same tiny random LLaVA, the same prompts, images and batches, greedy, side by side in one process.

A LLaVA (CLIP vision tower + Llama) is built with transformers and saved with a word-level tokenizer; ours loads it
with ``mllm.from_pretrained`` (through ``MLLMBackend(checkpoint=DIR)``). Both sides get the mvftji caption prompt on
scenes images; the prompt ids and pixels come from our processor on both sides (the same numpy work), so what
differs is generation and decoding. The stop token is made unlikely in the shared weights, so both sides decode every
step. Each side reports the best of a few full passes over all batches, after one warm-up pass (which compiles ours).
The end-to-end engine (``engine.synthesize``: cache, parse, shards) is timed once more for reference.

    python benchmarks/synthesis_speed.py [--items 64] [--batch 16] [--new 32] [--layers 4] [--width 256]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

from zscir_jax.data import scenes  # noqa: E402
from zscir_jax.synthesis import backends, engine, prompts  # noqa: E402

IMAGE_SIZE, PATCH = 32, 8


def build_llava(path: str, args):
    """Saves a random LLaVA + tokenizer + preprocessor config in ``path``; returns the transformers model."""
    words = sorted(set(" ".join([*scenes.SHAPES, *scenes.COLOURS, *scenes.SIZES, *scenes.POSITIONS,
                                 prompts.MVFTJI_CAPTION, "a the and at on in USER: ASSISTANT:"]).split()))
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    filler = [f"w{i}" for i in range(args.vocab - len(specials) - len(words) - 1)]
    vocab = {t: i for i, t in enumerate([*specials, *words, *filler, "<image>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>", additional_special_tokens=["<image>"]).save_pretrained(path)
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    text = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=args.width, intermediate_size=4 * args.width,
                                    num_hidden_layers=args.layers, num_attention_heads=max(1, args.width // 64),
                                    num_key_value_heads=max(1, args.width // 128), max_position_embeddings=512,
                                    pad_token_id=3, bos_token_id=1, eos_token_id=2)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab["<image>"])
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # sharper logits (stable greedy parity); the specials (eos included) never win
        hf.lm_head.weight.mul_(10.0)
        hf.lm_head.weight[:4] = 0.0  # logit 0, below the best of ~1000 random logits
    hf.save_pretrained(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        f.write('{"size": {"shortest_edge": %d}, "crop_size": {"height": %d, "width": %d}}'
                % (IMAGE_SIZE, IMAGE_SIZE, IMAGE_SIZE))
    return hf


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "llava")
        hf = build_llava(ckpt, args)
        root = scenes.build(os.path.join(tmp, "scenes"), num_train=max(args.items, 20), num_val_queries=2,
                            num_test_queries=2, image_size=IMAGE_SIZE, seed=0)
        pairs = scenes.train_pairs(root)[: args.items]
        backend = backends.MLLMBackend(checkpoint=ckpt, batch_size=args.batch, pad_to_multiple=16)
        backend.load()
        sampling = backends.Sampling(0.0, 1.0, args.new)
        reqs = [backends.Request("mvftji.caption", prompts.MVFTJI_CAPTION, {}, p, p) for p, _ in pairs]
        batches = [reqs[i: i + args.batch] for i in range(0, len(reqs), args.batch)]

        def ours():
            return [g for b in batches for g in backend.generate(b, [0] * len(b), sampling)]

        proc, tok = backend.processor, backend.processor.tokenizer

        def theirs():
            out = []
            from zscir_jax.data import images

            for b in batches:
                ids, mask = tok.batch([proc.prompt_ids(backends._messages(r.text, True)) for r in b],
                                      pad_to_multiple=16)
                pixels = proc.pixels([images.load_image(r.image) for r in b]).transpose(0, 3, 1, 2)
                with torch.no_grad():
                    gen = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                      pixel_values=torch.tensor(pixels), do_sample=False, max_new_tokens=args.new,
                                      pad_token_id=tok.pad_token_id, eos_token_id=2)[:, ids.shape[1]:].numpy()
                out += [tok.decode(row) for row in gen]
            return out

        start = time.perf_counter()
        warm = ours()
        first_s = time.perf_counter() - start
        ref = theirs()
        agree = float(np.mean([a.text == b for a, b in zip(warm, ref)]))
        t_ours, gens = best_of(ours, args.repeats)
        t_hf, _ = best_of(theirs, args.repeats)
        n_tok = sum(g.tokens for g in gens)

        config = engine_config(root, ckpt, args)
        start = time.perf_counter()
        manifest = engine.synthesize(config, os.path.join(tmp, "work"), backend=backend, progress=False)
        t_engine = time.perf_counter() - start

    n = len(reqs)
    print(f"model: LLaVA, CLIP 2x64 ({(IMAGE_SIZE // PATCH) ** 2} image tokens) + Llama {args.layers} layers width "
          f"{args.width}, vocab {args.vocab}; {n} image prompts in batches of {args.batch}, {args.new} new tokens; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"first pass of ours (compile + run): {first_s:.2f} s; identical texts with transformers: {agree:.3f}")
    print(f"engine.synthesize mvftji end to end ({manifest['generations']} generations; compiles for new prompt "
          f"lengths, cache, parse, shards): {manifest['generations'] / t_engine:.1f} items/s")
    print(f"zscir_jax MLLMBackend (jit):    {n / t_ours:8.1f} items/s {n_tok / t_ours:9.1f} tokens/s "
          f"({t_ours * 1e3:.0f} ms)")
    print(f"transformers generate (torch): {n / t_hf:8.1f} items/s {n_tok / t_hf:9.1f} tokens/s ({t_hf * 1e3:.0f} ms)")
    print(f"ratio ours / transformers: {t_hf / t_ours:.2f}x")


def engine_config(root, ckpt, args):
    import runpy

    here = os.path.dirname(os.path.abspath(__file__))
    c = runpy.run_path(os.path.join(here, "..", "configs", "synth", "mvftji.py"))["get_config"]("demo")
    c.backend.update(kind="mllm", checkpoint=ckpt, dtype="float32", param_dtype="float32", pad_to_multiple=16)
    c.data.root = root
    c.limit = args.items
    c.batch_size = args.batch
    c.sampling.max_new_tokens = args.new
    c.progress_bar = False
    return c


if __name__ == "__main__":
    main()
