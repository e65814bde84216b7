"""mllm.export / mllm.load round trips, atomic exports, and the Orbax conversion cache (weights.cache.cached_load)."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from zscir_jax import sharding
from zscir_jax.models import clip, llm, mllm
from zscir_jax.weights import cache

export_module = sys.modules["zscir_jax.models.mllm.export"]  # `mllm.export` is the function of the same name

WORDS = "the a red blue green circle square describe picture what changed USER: ASSISTANT:".split()
PREPROCESSOR = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}, "resample": 3,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_center_crop": True}


def make_tokenizer_dir(path):
    """A word-level tokenizer with <image> as its last id, no chat template (the fallback format applies)."""
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS, "<image>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>",
                                                additional_special_tokens=["<image>"])
    fast.save_pretrained(path)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": 2, "pad_token_id": 3}, f)
    return len(vocab), vocab["<image>"]


def tiny_config(vocab_size, image_token_id, layer=(-2, -1)):
    vision = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=16, patch_size=4)
    text = llm.LLMConfig.tiny(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, eos_token_ids=(2,),
                              pad_token_id=3)
    return mllm.MLLMConfig(vision=vision, text=text, image_token_id=image_token_id, vision_feature_layer=layer,
                           vision_feature_select_strategy="full")


@nnx.jit
def _forward(model, ids, pixels, mask):
    return model(ids, pixels, mask)


def logits_of(model, seed=0):
    seq = model.config.image_seq_length
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[1, 5, 6], [model.config.image_token_id] * seq, [7, 8]])[None].repeat(2, 0)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    pixels = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))


def new_model(cfg, seed, param_dtype=jnp.float32):
    """A randomly initialised MLLM, built in one compiled call (eager construction is slow on CPU)."""
    return nnx.jit(lambda: mllm.MLLM(cfg, rngs=nnx.Rngs(seed), param_dtype=param_dtype))()


def test_export_load_round_trip_and_processor(tmp_path):
    tok_dir = tmp_path / "tok"
    vocab, image_id = make_tokenizer_dir(tok_dir)
    cfg = tiny_config(vocab, image_id)
    model = new_model(cfg, 3)
    out = str(tmp_path / "export")
    assert mllm.export(model, out, tokenizer_dir=str(tok_dir), preprocessor=PREPROCESSOR) == out
    assert sorted(os.listdir(tmp_path)) == ["export", "tok"]  # no temporary directory left behind
    with open(os.path.join(out, mllm.EXPORT_MARKER)) as f:
        saved = json.load(f)
    assert saved["vision_feature_layer"] == [-2, -1] and saved["text"]["eos_token_ids"] == [2]
    assert export_module.read_config(out) == cfg  # tuples come back as tuples, nested configs as dataclasses

    loaded = mllm.load(out)
    assert loaded.config == cfg
    np.testing.assert_array_equal(logits_of(loaded), logits_of(model))

    proc = mllm.load_processor(out)
    assert (proc.image_token_id, proc.image_seq_length, proc.image_size) == (image_id, 17, 16)
    assert proc.mean == (0.5,) * 3 and proc.tokenizer.eos_token_ids == (2,) and proc.tokenizer.pad_token_id == 3
    ids = proc.prompt_ids([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}])
    assert ids[0] == 1 and ids.count(image_id) == 17  # fallback format "USER: <image>\n...\nASSISTANT:" with bos
    assert proc.tokenizer.decode(ids[1:2] + ids[-1:]) == "USER: ASSISTANT:"
    # LLaVA's raw prompt style, the placeholder written in the text, expands the same way.
    assert proc.prompt_ids([{"role": "user", "content": "<image>\ndescribe"}]) == ids

    # A second export replaces the first; bf16 params load back into float32 exactly.
    half = new_model(cfg, 4, jnp.bfloat16)
    mllm.export(half, out)
    assert not os.path.exists(os.path.join(out, "tokenizer.json"))
    back = mllm.load(out, param_dtype=jnp.bfloat16)
    for a, b in zip(jax.tree.leaves(nnx.state(half, nnx.Param)), jax.tree.leaves(nnx.state(back, nnx.Param))):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_killed_export_leaves_nothing_loadable(tmp_path, monkeypatch):
    vocab, image_id = make_tokenizer_dir(tmp_path / "tok")
    model = new_model(tiny_config(vocab, image_id), 0)
    out = str(tmp_path / "export")

    real_save = cache.save_params

    def save_then_die(m, params_dir):
        real_save(m, params_dir)  # the parameters are on disk, the config is not: the export is half done
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "save_params", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mllm.export(model, out, tokenizer_dir=str(tmp_path / "tok"))
    assert not os.path.exists(out)
    assert sorted(os.listdir(tmp_path)) == ["tok"]
    with pytest.raises(FileNotFoundError):
        mllm.load(out)
    # A process killed outright leaves only a hidden `.export.partial-*` sibling, which load never looks at.
    monkeypatch.setattr(cache, "save_params", real_save)
    os.makedirs(tmp_path / ".export.partial-1234" / "params")
    with pytest.raises(FileNotFoundError):
        mllm.load(out)


# ----------------------------------------------------------------------------------------------------------------------
# The conversion cache


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=4)
    text = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=95)
    path = tmp_path_factory.mktemp("llava")
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(path)
    return str(path)


def counting(monkeypatch, module, name="from_pretrained"):
    calls = []
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def params_of(model):
    return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_cache_converts_once_then_restores_bit_identical(llava_dir, tmp_path, monkeypatch):
    calls = counting(monkeypatch, export_module)
    cache_dir = str(tmp_path / "cache")
    first = mllm.load(llava_dir, cache_dir=cache_dir)
    assert len(calls) == 1 and len(os.listdir(cache_dir)) == 1
    second = mllm.load(llava_dir, cache_dir=cache_dir)
    assert len(calls) == 1  # restored, not converted
    a, b = params_of(first), params_of(second)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    np.testing.assert_array_equal(logits_of(second), logits_of(first))

    # bf16 parameters: another entry, converted once, restored bit-identically in bf16.
    half = mllm.load(llava_dir, param_dtype=jnp.bfloat16, cache_dir=cache_dir)
    again = mllm.load(llava_dir, param_dtype=jnp.bfloat16, cache_dir=cache_dir)
    assert len(calls) == 2 and len(os.listdir(cache_dir)) == 2
    for k, v in params_of(again).items():
        assert v.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(v, np.float32), np.asarray(params_of(half)[k], np.float32))

    # A changed checkpoint (new mtime) is converted again; no temporary directories are left behind.
    weights = os.path.join(llava_dir, "model.safetensors")
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    mllm.load(llava_dir, cache_dir=cache_dir)
    assert len(calls) == 3 and len(os.listdir(cache_dir)) == 3
    assert all(not n.startswith(".") for n in os.listdir(cache_dir))


def test_cache_restores_with_mesh_shardings(llava_dir, tmp_path, monkeypatch):
    calls = counting(monkeypatch, export_module)
    cache_dir = str(tmp_path / "cache")
    mesh = sharding.make_mesh((1, 2, 4))
    with sharding.activate(mesh):
        converted = mllm.load(llava_dir, cache_dir=cache_dir)
        restored = mllm.load(llava_dir, cache_dir=cache_dir)
    assert len(calls) == 1
    a, b = params_of(converted), params_of(restored)
    n_split = 0
    for k in a:
        assert isinstance(b[k].sharding, jax.sharding.NamedSharding) and b[k].sharding.mesh == mesh, k
        assert b[k].sharding.is_equivalent_to(a[k].sharding, b[k].ndim), k
        n_split += not b[k].sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert n_split > 10  # the mesh really splits the parameters
    q = b["llm.layers.0.self_attn.q_proj.kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert len({s.device for s in q.addressable_shards}) == 8


def test_llm_from_pretrained_cache_dir(tmp_path, monkeypatch):
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "qwen")
    calls = counting(monkeypatch, sys.modules["zscir_jax.models.llm.modeling"])
    path, cache_dir = str(tmp_path / "qwen"), str(tmp_path / "cache")
    plain = llm.from_pretrained(path)
    first = llm.from_pretrained(path, param_dtype=jnp.bfloat16, cache_dir=cache_dir)
    second = llm.from_pretrained(path, param_dtype=jnp.bfloat16, cache_dir=cache_dir)
    assert len(calls) == 2  # the plain load and the first cached one
    ids = jnp.asarray([[5, 6, 7, 8]])
    np.testing.assert_array_equal(np.asarray(first(ids)), np.asarray(second(ids)))
    assert second.embed_tokens.embedding.get_value().dtype == jnp.bfloat16
    assert np.abs(np.asarray(second(ids)) - np.asarray(plain(ids))).max() < 0.1  # bf16 storage, same model


def test_cached_load_rejects_a_mismatched_convert(tmp_path, llava_dir):
    cfg = export_module.read_config(llava_dir)
    with pytest.raises(ValueError, match="differ"):
        cache.cached_load(llava_dir, str(tmp_path), lambda: mllm.MLLM(cfg, rngs=nnx.Rngs(0)),
                          lambda: new_model(cfg, 0, jnp.bfloat16))
    assert os.listdir(tmp_path) == []
