"""CoLLM on a pretrained-layout LLaVA (written by transformers) with its own tokenizer: the query side is tokenized by
the LLaVA's tokenizer, the pairing captions by the CLIP one; training runs, touches only what the mode trains, and
the evaluator encodes queries with the LLaVA tokenizer."""
import os
import sys

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import collm_demo  # noqa: E402

from zscir_jax import methods, sharding  # noqa: E402
from zscir_jax.data import scenes, sources, tokenizer as tok_lib  # noqa: E402
from zscir_jax.train import trainer  # noqa: E402


def scenes_image(root):
    from zscir_jax.data import images

    path = next(iter(scenes.image_paths(root, "val").values()))
    return images.to_uint8_square(images.load_image(path), 32)


def _llava_dir(path, corpus):
    """A tiny random LlavaForConditionalGeneration + its own BPE tokenizer (with <image>), saved by transformers."""
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=8)
    text = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=fast.pad_token_id,
                                    bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text,
                                   image_token_id=fast.convert_tokens_to_ids("<image>"))
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    hf.save_pretrained(path)
    return hf, fast


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scenes"))
    scenes.build(root, num_train=60, num_val_queries=8, num_test_queries=2, image_size=32, seed=0)
    captions = [c for _, c in scenes.train_pairs(root)]
    clip_tok = tok_lib.build_word_tokenizer(captions + ["change it to"], str(tmp_path_factory.mktemp("cliptok")),
                                            max_length=24)
    llava = str(tmp_path_factory.mktemp("llava"))
    hf, hf_tok = _llava_dir(llava, captions + ["change it to"])
    c = collm_demo.tiny("lora")
    tok = tok_lib.Tokenizer.from_dir(clip_tok, 24)
    c.model.clip_tiny.update(vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id, image_size=32, max_length=24)
    c.model.mllm_path = llava
    c.model.collm.prefix_ids = ()  # the prefix comes from the LLaVA tokenizer
    c.data.update(source="pairs", pairs_root=root, tokenizer=clip_tok, image_size=32, max_length=24,
                  llm_max_length=24)
    c.train.update(steps=4, batch_size=8, log_every=1, checkpoint_every=100, async_checkpoints=False)
    return c, hf, hf_tok, root


def test_query_side_uses_the_llava_tokenizer(setup):
    c, hf, hf_tok, _ = setup
    method = methods.get("collm")
    toks = sources.tokenizers_for(c, method)
    assert toks["llm_text"].hf.get_vocab() == hf_tok.get_vocab()
    assert toks["text"].vocab_size != len(hf_tok)
    model = method.build(c, nnx.Rngs(0))
    # The LLaVA's own weights, not a random LLM: embeddings equal transformers'.
    np.testing.assert_array_equal(np.asarray(model.mllm.llm.embed_tokens.embedding[...]),
                                  hf.model.language_model.embed_tokens.weight.detach().numpy())
    expected = hf_tok("change it to", add_special_tokens=False)["input_ids"]
    assert model.prefix_ids == tuple(expected) and model.has_bos


def test_trains_lora_only_and_evaluates(setup, tmp_path):
    c, hf, hf_tok, root = setup
    mesh = sharding.make_mesh((1, 1, 1), devices=__import__("jax").devices()[:1])
    model = trainer.train(c, str(tmp_path / "collm"), mesh)
    rows = trainer.read_metrics(str(tmp_path / "collm"))
    assert sorted(rows) == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows.values())
    # LoRA mode: the pretrained LLM weights are untouched.
    np.testing.assert_array_equal(np.asarray(model.mllm.llm.embed_tokens.embedding[...]),
                                  hf.model.language_model.embed_tokens.weight.detach().numpy())
    c2 = c.copy_and_resolve_references()
    c2.evals = {"cirr": dict(reader="cirr", root=root, split="val", options={}, every=0)}
    c2.eval.update(compare=(), untrained=False, batch_size=8)
    from zscir_jax.evaluation import suite

    results = trainer.evaluate_all(c2, str(tmp_path), mesh, model, suite.specs(c2))
    assert 0 <= results["collm"]["cirr"]["recall@50"] <= 100
    assert results["collm"]["cirr"]["num_queries"] == 8
    # The evaluator's queries go through the LLaVA tokenizer, and the text changes the query.
    enc = trainer.method_encoder(c2, mesh, methods.get("collm"), model)
    assert enc.tokenizer.hf.get_vocab() == hf_tok.get_vocab()
    image = np.asarray(scenes_image(root), np.uint8)[None].repeat(2, 0)
    a = enc.encode_queries(image, ["change it to red", "change it to red"])
    b = enc.encode_queries(image, ["a large blue square", "a large blue square"])
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)
    assert np.abs(a - b).max() > 1e-4
