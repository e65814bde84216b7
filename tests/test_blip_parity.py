"""Our Flax BLIP ITC towers equal transformers' PyTorch BlipForImageTextRetrieval on the same (tiny, random) weights."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import blip
from zscir_jax.models.blip import params as blip_weights
from zscir_jax.weights import loader

from parity_helpers import max_diff, nchw, pixels

TOL = 1e-4

CONFIGS = {
    # name: (text overrides, vision overrides)
    "gelu-p8": (dict(hidden_act="gelu"), dict(patch_size=8, hidden_act="gelu")),
    # Towers of different widths (as BLIP-large: a wider ViT than the BERT), tanh-GELU in the ViT, 5 text heads.
    "gelu_new-p16-wide-vit": (dict(hidden_act="gelu", hidden_size=40, num_attention_heads=5),
                              dict(patch_size=16, image_size=48, hidden_size=48, hidden_act="gelu_new")),
}


def hf_config(text=None, vision=None, image_text_hidden_size=24):
    text_config = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=12, pad_token_id=0, bos_token_id=97, sep_token_id=3)
    vision_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=16)
    text_config.update(text or {})
    vision_config.update(vision or {})
    return transformers.BlipConfig(text_config=text_config, vision_config=vision_config,
                                   image_text_hidden_size=image_text_hidden_size)


def save_torch_blip(config, path, seed=0, **save_kwargs):
    """A retrieval model with every weight random (HF's own init leaves the ViT near zero: initializer_range 1e-10)."""
    torch.manual_seed(seed)
    model = transformers.BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = re.search(r"(LayerNorm|layer_norm\d|post_layernorm)\.weight$", name)
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm_scale else 0.1 * torch.randn_like(p))
    model.save_pretrained(path, **save_kwargs)
    return model


def text_batch():
    """Right-padded ids of different lengths, [CLS]=1 first and [SEP]=3 last, as BERT's tokenizer gives them."""
    lengths = [4, 7, 2]
    ids = np.zeros((3, 9), np.int64)
    rng = np.random.default_rng(0)
    for row, n in enumerate(lengths):
        ids[row, :n] = [1, *rng.integers(5, 90, n - 2), 3]
    mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


@nnx.jit
def ours_itc(model, px, ids, mask):
    """Every output the tests compare, in one compiled call (eager dispatch of each op is slow on a busy CPU)."""
    image_tokens, image_pooled = model.image_tokens(px)
    text_tokens, text_pooled = model.text_tokens(ids, mask)
    return dict(encode_image=model.encode_image(px), encode_text=model.encode_text(ids, mask),
                image_tokens=image_tokens, image_pooled=image_pooled, text_tokens=text_tokens, text_pooled=text_pooled,
                vision_last_hidden=model.vision_model(px).last_hidden_state,
                text_last_hidden=model.text_encoder(ids, mask).last_hidden_state,
                text_global_positions=model.text_global_positions(ids, mask))


def torch_itc(model, px, ids, mask, **kwargs):
    """HF's ITC forward, and its projections computed from the same submodules the forward uses (before normalize)."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    pixel_values=nchw(px), use_itm_head=False, **kwargs)
        image_tokens = model.vision_proj(out.last_hidden_state)
        text_tokens = model.text_proj(out.question_embeds)
    return out, image_tokens.numpy(), text_tokens.numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    text, vision = CONFIGS[request.param]
    path = str(tmp_path_factory.mktemp(request.param))
    torch_model = save_torch_blip(hf_config(text, vision), path)
    return request.param, torch_model, blip.from_pretrained(path)


def test_features_and_tokens_match_transformers(pair):
    name, torch_model, ours = pair
    px = pixels(torch_model.config.vision_config.image_size)
    ids, mask = text_batch()
    out, t_image_tokens, t_text_tokens = torch_itc(torch_model, px, ids, mask)
    o = ours_itc(ours, px, ids.astype(np.int32), mask.astype(np.int32))
    normalise = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    diffs = {
        "encode_image": max_diff(o["encode_image"], t_image_tokens[:, 0]),
        "encode_text": max_diff(o["encode_text"], t_text_tokens[:, 0]),
        "image_tokens": max_diff(o["image_tokens"], t_image_tokens),
        # Padding positions are computed by HF too (they attend to the real tokens); compare them all.
        "text_tokens": max_diff(o["text_tokens"], t_text_tokens),
        "vision_last_hidden": max_diff(o["vision_last_hidden"], out.last_hidden_state),
        "text_last_hidden": max_diff(o["text_last_hidden"], out.question_embeds),
        "itc_score": max_diff(normalise(np.asarray(o["encode_image"])) @ normalise(np.asarray(o["encode_text"])).T,
                              out.itm_score),
    }
    print(f"\n[{name}] max abs diff vs transformers: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs
    assert np.abs(t_image_tokens).max() > 0.1 and np.abs(t_text_tokens).max() > 0.1  # not a degenerate model


def test_token_outputs_pool_to_the_features(pair):
    _, _, ours = pair
    px = pixels(ours.config.vision.image_size)
    ids, mask = (x.astype(np.int32) for x in text_batch())
    o = ours_itc(ours, px, ids, mask)
    grid = ours.config.vision.image_size // ours.config.vision.patch_size
    assert o["image_tokens"].shape == (2, 1 + grid * grid, ours.config.projection_dim)
    assert o["text_tokens"].shape == (3, ids.shape[1], ours.config.projection_dim)
    np.testing.assert_array_equal(o["image_pooled"], o["image_tokens"][:, 0])
    np.testing.assert_array_equal(o["text_pooled"], o["text_tokens"][:, 0])
    np.testing.assert_allclose(o["image_pooled"], o["encode_image"], atol=1e-6)
    np.testing.assert_allclose(o["text_pooled"], o["encode_text"], atol=1e-6)
    positions = o["text_global_positions"]
    assert positions.shape == (3,) and positions.dtype == jnp.int32 and not np.any(positions)


def test_config_reads_the_retrieval_sizes():
    cfg = blip.BlipConfig.from_hf_dict(hf_config(dict(hidden_act="gelu_new"), dict(patch_size=8)).to_dict())
    assert cfg.projection_dim == 24 and cfg.vision.patch_size == 8 and cfg.text.hidden_act == "gelu_new"
    assert cfg.text.layer_norm_eps == 1e-12 and cfg.vision.layer_norm_eps == 1e-5
    tiny = blip.BlipConfig.tiny(vocab_size=50, width=64, layers=2, image_size=32, patch_size=8, max_length=16)
    shapes = nnx.eval_shape(lambda: blip.BlipModel(tiny, rngs=nnx.Rngs(0)))
    assert shapes.vision_proj.kernel.shape == (64, 64)
    assert shapes.text_encoder.embeddings.word_embeddings.num_embeddings == 50
    o = jax.eval_shape(lambda: ours_itc(blip.BlipModel(tiny, rngs=nnx.Rngs(0)), pixels(32),
                                        *(x.astype(np.int32) for x in text_batch())))
    assert o["encode_image"].shape == (2, 64) and o["encode_text"].shape == (3, 64)


def test_tower_regexes_split_every_parameter(pair):
    _, _, ours = pair
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(ours, nnx.Param))]
    image = [p for p in paths if re.match(blip_weights.IMAGE_TOWER, p)]
    text = [p for p in paths if re.match(blip_weights.TEXT_TOWER, p)]
    assert not set(image) & set(text)
    assert set(paths) - set(image) - set(text) == {"logit_scale"}
    assert "vision_proj.kernel" in image and "text_proj.kernel" in text


def test_other_image_size_interpolates_positions_like_transformers(tmp_path):
    torch_model = save_torch_blip(hf_config(vision=dict(patch_size=8, image_size=32)), tmp_path)
    ours = blip.from_pretrained(str(tmp_path))
    px = pixels(48)  # a 6x6 patch grid from a 4x4 position table
    ids, mask = text_batch()
    _, t_image_tokens, _ = torch_itc(torch_model, px, ids, mask, interpolate_pos_encoding=True)
    diff = max_diff(ours_itc(ours, px, ids.astype(np.int32), mask.astype(np.int32))["image_tokens"], t_image_tokens)
    print(f"\n[interpolated 48px on a 32px model] image_tokens max abs diff: {diff:.2e}")
    assert diff < TOL


def test_sharded_checkpoint_with_index(tmp_path):
    torch_model = save_torch_blip(hf_config(), tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(loader.safetensors_files(str(tmp_path))) > 1
    ours = blip.from_pretrained(str(tmp_path))
    px, (ids, mask) = pixels(32), text_batch()
    _, t_image_tokens, t_text_tokens = torch_itc(torch_model, px, ids, mask)
    o = ours_itc(ours, px, ids.astype(np.int32), mask.astype(np.int32))
    assert max_diff(o["encode_image"], t_image_tokens[:, 0]) < TOL
    assert max_diff(o["encode_text"], t_text_tokens[:, 0]) < TOL


def _rewrite_weights(path, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named_in_one_line(tmp_path):
    save_torch_blip(hf_config(), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.pop("text_proj.weight"))
    with pytest.raises(loader.WeightLoadError) as info:
        blip.from_pretrained(str(tmp_path))
    # The ITM head and the cross-attention layers are in the file but skipped by rule, so this is the only problem.
    assert info.value.problems == ["missing: model parameter 'text_proj.kernel' has no tensor in the checkpoint"]


def test_unknown_tensor_is_reported(tmp_path):
    save_torch_blip(hf_config(), tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update({"text_encoder.pooler_extra.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(loader.WeightLoadError, match="text_encoder.pooler_extra.weight"):
        blip.from_pretrained(str(tmp_path))


def test_logit_scale_is_log_inverse_temperature(tmp_path):
    save_torch_blip(hf_config(), tmp_path)
    ours = blip.from_pretrained(str(tmp_path))  # HF's retrieval checkpoints carry no temperature
    assert float(ours.logit_scale[...]) == pytest.approx(hf_config().logit_scale_init_value)
    assert float(ours.temp) == pytest.approx(0.07, rel=1e-3)
    _rewrite_weights(tmp_path, lambda t: t.update({"temp": np.asarray(0.05, np.float32)}))  # original BLIP's name
    ours = blip.from_pretrained(str(tmp_path))
    assert float(ours.logit_scale[...]) == pytest.approx(np.log(20.0)) and float(ours.temp) == pytest.approx(0.05)


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Salesforce/blip-itm"):
        blip.from_pretrained(str(tmp_path / "nowhere"))


def test_bf16_compute_runs_finite_and_close(tmp_path):
    save_torch_blip(hf_config(), tmp_path)
    fp32 = blip.from_pretrained(str(tmp_path))
    bf16 = blip.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    inputs = pixels(32), *(x.astype(np.int32) for x in text_batch())
    low, high = ours_itc(bf16, *inputs), ours_itc(fp32, *inputs)
    for name in ("encode_image", "encode_text"):
        ours_bf16, reference = low[name], high[name]
        assert ours_bf16.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(ours_bf16, np.float32)))
        relative = max_diff(ours_bf16, reference) / np.abs(np.asarray(reference)).max()
        print(f"\n[bf16 compute] {name}: max abs diff / max |fp32| = {relative:.2e}")
        assert relative < 0.05


def test_weights_load_sharded_on_a_mesh_and_give_the_same_outputs(tmp_path):
    save_torch_blip(hf_config(), tmp_path)
    plain = blip.from_pretrained(str(tmp_path))
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        sharded = blip.from_pretrained(str(tmp_path))
        qkv = sharded.vision_model.encoder.layers[0].self_attn.qkv.kernel[...]
        assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
        query = sharded.text_encoder.encoder.layer[1].attention.self.query.kernel[...]
        assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
        px = jax.device_put(pixels(32, n=4), sharding.batch_sharding(mesh, 4))
        out = jax.jit(lambda m, x: m.encode_image(x))(sharded, px)
    np.testing.assert_allclose(out, ours_itc(plain, pixels(32, n=4), *(x.astype(np.int32) for x in text_batch()))
                               ["encode_image"], atol=1e-5)


def _save_bert_tokenizer(path):
    """A tiny WordPiece vocabulary saved as a BertTokenizerFast (BLIP's tokenizer class) with BLIP's extra tokens."""
    words = ["a", "red", "dress", "with", "long", "sleeve", "##s", "shirt", "blue", "is", "the", ",", "."]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    hf = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    hf.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})  # as BLIP's checkpoints
    hf.save_pretrained(path)
    return hf


def test_tokenizer_gives_what_blip_processor_gives(tmp_path):
    _save_bert_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 10}}))
    texts = ["A red dress with long sleeves.", "is blue", "the shirt is blue, the dress is red, a long dress"]
    ours = blip.load_tokenizer(str(tmp_path))
    ids, mask = ours(texts)
    processor = transformers.BlipProcessor(transformers.BlipImageProcessor(),
                                           transformers.AutoTokenizer.from_pretrained(str(tmp_path)))
    expected = processor(text=texts, padding="max_length", truncation=True, max_length=10, return_tensors="np")
    assert ids.dtype == np.int32 and ids.shape == (3, 10)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    cls, sep = ours.hf.cls_token_id, ours.hf.sep_token_id
    assert (ids[:, 0] == cls).all() and ids[2, -1] == sep  # [CLS] first (no [ENC]); truncation keeps [SEP] last
    np.testing.assert_array_equal(ids[1, :4], [cls, ours.hf.convert_tokens_to_ids("is"),
                                               ours.hf.convert_tokens_to_ids("blue"), sep])
    assert blip.load_tokenizer(str(tmp_path), max_length=6)(texts)[0].shape == (3, 6)
