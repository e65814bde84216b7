"""Our Flax BLIP-2 retrieval towers equal transformers' PyTorch Blip2ForImageTextRetrieval (ITC path) on the same
(tiny, random) weights."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import blip2
from zscir_jax.models.blip2 import params as blip2_params
from zscir_jax.weights import loader

from parity_helpers import max_diff, nchw, pixels

TOL = 1e-4

CONFIGS = {
    # name: (vision overrides, Q-Former overrides, num_query_tokens)
    "xattn-every-layer-q5": (dict(patch_size=8), dict(cross_attention_frequency=1, num_hidden_layers=2), 5),
    # A wider ViT than the Q-Former (the cross-attention keys come from 48 wide states), no qkv bias.
    "xattn-every-2nd-q3-wide-vit": (dict(patch_size=16, hidden_size=48, qkv_bias=False),
                                    dict(cross_attention_frequency=2, num_hidden_layers=3), 3),
}


def hf_config(vision=None, qformer=None, num_query_tokens=4):
    vision_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8)
    qformer_config = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, cross_attention_frequency=2,
                          use_qformer_text_input=True)
    vision_config.update(vision or {})
    qformer_config.update(qformer or {})
    return transformers.Blip2Config(vision_config=vision_config, qformer_config=qformer_config,
                                    num_query_tokens=num_query_tokens, image_text_hidden_size=24)


def save_torch_blip2(config, path, seed=0, **save_kwargs):
    torch.manual_seed(seed)
    model = transformers.Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():  # HF's init leaves the ViT near zero (std 1e-10) and the queries at zero: perturb all
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, **save_kwargs)
    return model


def text_batch():
    """[CLS]-led, right-padded ids of different lengths."""
    lengths = [4, 9, 2]
    ids = np.zeros((3, 9), np.int64)
    rng = np.random.default_rng(0)
    for row, n in enumerate(lengths):
        ids[row, 0] = 1
        ids[row, 1:n] = rng.integers(3, 99, n - 1)
    mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


@jax.jit
def outputs(model, px, ids, mask):
    """Every output the tests read, compiled once per model: on CPU op-by-op dispatch is several times slower."""
    image_tokens, image_pooled = model.image_tokens(px)
    text_tokens, text_pooled = model.text_tokens(ids, mask)
    return dict(vision=model.vision_model(px, output_hidden_states=True), encode_image=model.encode_image(px),
                image_tokens=image_tokens, image_pooled=image_pooled, encode_text=model.encode_text(ids, mask),
                text_tokens=text_tokens, text_pooled=text_pooled)


def ours_on_batch(model, px=None):
    ids, mask = text_batch()
    return outputs(model, pixels(32) if px is None else px, ids.astype(np.int32), mask.astype(np.int32))


def torch_itc(model, px, ids, mask):
    """The ITC forward's intermediate tensors, before normalisation (the same calls as its forward), and its
    outputs."""
    with torch.no_grad():
        image = model.vision_model(pixel_values=nchw(px)).last_hidden_state
        queries = model.query_tokens.expand(image.shape[0], -1, -1)
        q = model.qformer(query_embeds=queries, encoder_hidden_states=image,
                          encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long)).last_hidden_state
        t = model.qformer(query_embeds=model.embeddings(input_ids=torch.from_numpy(ids)), query_length=0,
                          attention_mask=torch.from_numpy(mask)).last_hidden_state
        out = model(pixel_values=nchw(px), input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    use_image_text_matching_head=False)
    return model.vision_projection(q).detach(), model.text_projection(t).detach(), out


@pytest.fixture(scope="module")
def default_checkpoint(tmp_path_factory):
    """One saved default-config checkpoint, its torch model and our float32 load, shared by the smaller tests."""
    path = tmp_path_factory.mktemp("default")
    torch_model = save_torch_blip2(hf_config(), path)
    return path, torch_model, blip2.from_pretrained(str(path))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    vision, qformer, queries = CONFIGS[request.param]
    path = str(tmp_path_factory.mktemp(request.param))
    torch_model = save_torch_blip2(hf_config(vision, qformer, queries), path)
    ours = blip2.from_pretrained(path)
    return request.param, torch_model, ours, ours_on_batch(ours)


def test_itc_embeddings_match_transformers(pair):
    name, torch_model, _, out = pair
    t_img, t_txt_tokens, t_out = torch_itc(torch_model, pixels(32), *text_batch())
    img, txt, txt_tokens = out["encode_image"], out["encode_text"], out["text_tokens"]
    assert img.shape == (2, torch_model.config.num_query_tokens, 24)
    diffs = {
        "encode_image": max_diff(img, t_img),
        "encode_text": max_diff(txt, t_txt_tokens[:, 0]),
        "text_tokens": max_diff(txt_tokens, t_txt_tokens),
        # The forward itself: its normalised embeddings and the max-over-queries logits.
        "forward_image_embeds": max_diff(blip2.l2_normalize(img), t_out.image_embeds),
        "forward_text_embeds": max_diff(blip2.l2_normalize(txt), t_out.text_embeds),
        "logits_per_image": max_diff(blip2.image_text_similarity(img, txt), t_out.logits_per_image),
    }
    print(f"\n[{name}] max abs diff vs transformers: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs


def test_vision_hidden_states_match_transformers(pair):
    _, torch_model, _, ours = pair
    with torch.no_grad():
        expected = torch_model.vision_model(pixel_values=nchw(pixels(32)), output_hidden_states=True)
    out = ours["vision"]
    assert len(out.hidden_states) == len(expected.hidden_states)
    diff = max(max_diff(a, b) for a, b in zip(out.hidden_states, expected.hidden_states))
    diff = max(diff, max_diff(out.last_hidden_state, expected.last_hidden_state),
               max_diff(out.pooler_output, expected.pooler_output))
    assert diff < TOL


def test_token_outputs_and_pooling(pair):
    _, torch_model, ours, out = pair
    ids, mask = text_batch()
    img_tokens, txt_tokens = out["image_tokens"], out["text_tokens"]
    assert img_tokens.shape == (2, torch_model.config.num_query_tokens, ours.config.projection_dim)
    assert out["image_pooled"].shape == (2, 24) and txt_tokens.shape == (3, ids.shape[1], 24)
    np.testing.assert_allclose(img_tokens, out["encode_image"], atol=1e-6)
    np.testing.assert_allclose(out["image_pooled"], blip2.l2_normalize(img_tokens).mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(out["text_pooled"], out["encode_text"], atol=1e-6)
    np.testing.assert_array_equal(ours.text_global_positions(ids, mask), np.zeros(3, np.int32))


def test_similarity_is_the_max_over_queries():
    rng = np.random.default_rng(0)
    image, text = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    expected = np.einsum("bqd,nd->bqn", unit(image), unit(text)).max(axis=1)
    np.testing.assert_allclose(blip2.image_text_similarity(jnp.asarray(image), jnp.asarray(text)), expected,
                               atol=1e-6)


def test_other_image_size_interpolates_positions_like_transformers(default_checkpoint):
    _, torch_model, ours = default_checkpoint
    px = pixels(48)  # a 6x6 patch grid from a 4x4 position table
    with torch.no_grad():
        expected = torch_model.vision_model(pixel_values=nchw(px), interpolate_pos_encoding=True).last_hidden_state
    out = jax.jit(lambda model, x: model.vision_model(x).last_hidden_state)(ours, px)
    assert max_diff(out, expected) < TOL


def test_sharded_checkpoint_with_index(tmp_path):
    torch_model = save_torch_blip2(hf_config(), tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(loader.safetensors_files(str(tmp_path))) > 1
    ours = blip2.from_pretrained(str(tmp_path))
    t_img, t_txt, _ = torch_itc(torch_model, pixels(32), *text_batch())
    out = ours_on_batch(ours)
    assert max_diff(out["encode_image"], t_img) < TOL and max_diff(out["encode_text"], t_txt[:, 0]) < TOL


def test_missing_tensor_is_named(default_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    source, _, _ = default_checkpoint
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    weights = load_file(str(source / "model.safetensors"))
    del weights["qformer.encoder.layer.0.crossattention.attention.key.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(loader.WeightLoadError) as info:
        blip2.from_pretrained(str(tmp_path))
    assert info.value.problems == [
        "missing: model parameter 'qformer.encoder.layer.0.crossattention.attention.key.kernel' has no tensor in the "
        "checkpoint"]


def test_checkpoint_without_text_path_is_refused(tmp_path):
    config = hf_config().to_dict()
    config["qformer_config"]["use_qformer_text_input"] = False  # e.g. a Blip2ForConditionalGeneration checkpoint
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_qformer_text_input is false"):
        blip2.from_pretrained(str(tmp_path))


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        blip2.from_pretrained(str(tmp_path / "nowhere"))


def test_param_regexes_split_the_towers():
    model = nnx.eval_shape(lambda: blip2.Blip2Model(blip2.Blip2Config.tiny(layers=3), rngs=nnx.Rngs(0)))
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    groups = {name: re.compile(rx) for name, rx in
              (("text", blip2_params.TEXT_PARAMS), ("image", blip2_params.IMAGE_PARAMS),
               ("shared", blip2_params.SHARED_PARAMS))}
    for path in paths:
        hits = [name for name, rx in groups.items() if rx.match(path)]
        assert len(hits) == (0 if path == "logit_scale" else 1), (path, hits)  # the temperature is neither
    assert groups["text"].match("qformer.encoder.layer.1.output.LayerNorm.scale")
    assert groups["image"].match("qformer.encoder.layer.1.output_query.dense.kernel")
    assert groups["shared"].match("qformer.encoder.layer.0.attention.output.dense.kernel")


def test_weights_load_sharded_on_a_mesh(default_checkpoint):
    path, _, _ = default_checkpoint
    with sharding.activate(sharding.make_mesh((2, 2, 2))):
        sharded = blip2.from_pretrained(str(path))
    spec = lambda param: tuple(param[...].sharding.spec)
    layer = sharded.qformer.encoder.layer[0]
    assert spec(sharded.vision_model.encoder.layers[0].self_attn.qkv.kernel) == ("fsdp", "model")
    assert spec(layer.crossattention.attention.key.kernel) == ("fsdp", "model")
    assert spec(layer.output_query.dense.kernel) == (None, "fsdp")  # 37 hidden units do not split over 2 devices
    assert spec(sharded.query_tokens) == (None, None, "fsdp")


def test_bf16_compute_keeps_fp32_params_and_stays_close(default_checkpoint):
    path, _, fp32 = default_checkpoint
    bf16 = blip2.from_pretrained(str(path), dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    low, high = ours_on_batch(bf16), ours_on_batch(fp32)
    for name in ("encode_image", "encode_text"):
        out, reference = low[name], np.asarray(high[name])
        assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out).all()), name
        assert max_diff(out, reference) < 0.05 * np.abs(reference).max(), name


def test_config_round_trips_through_its_hf_dict():
    cfg = blip2.Blip2Config.tiny(cross_attention_frequency=1, num_query_tokens=3)
    assert blip2.Blip2Config.from_hf_dict(cfg.to_hf_dict()) == cfg
    ours = blip2.Blip2Config.from_hf_dict(hf_config(dict(hidden_size=48)).to_dict())
    assert ours.qformer.encoder_hidden_size == 48 and ours.text is ours.qformer and ours.projection_dim == 24


def test_tiny_config_builds_and_runs():
    def run():  # traced only (shapes), not compiled
        model = blip2.Blip2Model(blip2.Blip2Config.tiny(width=64, layers=2), rngs=nnx.Rngs(0))
        img = model.encode_image(jnp.zeros((2, 32, 32, 3)))
        txt = model.encode_text(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32))
        return img, txt, model.image_text_similarity(img, txt)

    img, txt, sim = jax.eval_shape(run)
    assert img.shape == (2, 4, 64) and txt.shape == (2, 64) and sim.shape == (2, 2)


def test_tokenizer_ids_equal_transformers(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "is", "now", "blue", "##s", ","]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config().to_dict()))  # 16 Q-Former positions
    texts = ["A red circle", "a red circle, now blues", "a red circle is now blue " * 4]
    ours = blip2.load_tokenizer(str(tmp_path))
    ids, mask = ours(texts)
    assert ids.shape == (3, 16) and ids.dtype == np.int32
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(
        texts, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(ids, reference["input_ids"])
    np.testing.assert_array_equal(mask, reference["attention_mask"])
    assert ids[0, 0] == 2 and list(ids[0, :5]) == [2, 5, 6, 7, 3]  # [CLS] a red circle [SEP]
    # The processor BLIP-2 ships tokenizes text alone the same way.
    processor = transformers.Blip2Processor(transformers.BlipImageProcessor(),
                                            transformers.AutoTokenizer.from_pretrained(str(tmp_path)))
    for row, text in enumerate(texts[:2]):
        expected = processor(text=text)["input_ids"][0]
        np.testing.assert_array_equal(ids[row, : len(expected)], expected)
    assert blip2.load_tokenizer(str(tmp_path), max_length=8)(texts)[0].shape == (3, 8)
