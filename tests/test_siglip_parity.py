"""Our Flax SigLIP equals transformers' PyTorch SiglipModel (and Siglip2Model at its native grid) on the same (tiny,
random) weights."""
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

from zscir_jax import sharding
from zscir_jax.models import siglip
from zscir_jax.models.siglip import params as siglip_weights
from zscir_jax.weights import loader

from parity_helpers import max_diff, nchw, pixels

TOL = 1e-4
PAD = 1  # SigLIP's pad id (= its EOS, "</s>")

CONFIGS = {
    # name: (text overrides, vision overrides)
    "tanh-gelu-p8": (dict(hidden_act="gelu_pytorch_tanh"), dict(patch_size=8, hidden_act="gelu_pytorch_tanh")),
    # A text tower narrower than the vision one: its head projects 24 -> 48, the joint width.
    "gelu-p16-wide-vision": (dict(hidden_act="gelu", hidden_size=24, num_attention_heads=2, projection_size=48),
                             dict(patch_size=16, image_size=64, hidden_size=48, num_attention_heads=4,
                                  intermediate_size=64, hidden_act="gelu")),
}


def text_config(**overrides):
    d = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=12, pad_token_id=PAD, bos_token_id=None, eos_token_id=PAD)
    d.update(overrides)
    return d


def vision_config(**overrides):
    d = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
             patch_size=8)
    d.update(overrides)
    return d


def save_torch_siglip(config, path, seed=0, **save_kwargs):
    torch.manual_seed(seed)
    model = (transformers.Siglip2Model if isinstance(config, transformers.Siglip2Config)
             else transformers.SiglipModel)(config).eval()
    with torch.no_grad():  # transformers inits both to zero; non-zero values check they load
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-7.5)
    model.save_pretrained(path, **save_kwargs)
    return model


def hf_siglip(text=None, vision=None):
    return transformers.SiglipConfig(text_config=text_config(**(text or {})),
                                     vision_config=vision_config(**(vision or {})))


def text_batch(length=9):
    """Texts of different lengths, each ending in EOS and padded with the pad id to ``length`` (as SigLIP's
    tokenizer does with padding="max_length"); the last row fills the whole length."""
    rng = np.random.default_rng(0)
    ids = np.full((3, length), PAD, np.int64)
    lengths = [4, 7, length]
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = rng.integers(3, 99, n - 1)
    mask = (np.arange(length)[None] < np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


def i32(*arrays):
    return tuple(a.astype(np.int32) for a in arrays)


@nnx.jit
def outputs(model, px, ids, mask):
    """Everything the tests compare, in one compiled program (eager op-by-op dispatch is slow on CPU)."""
    return dict(
        encode_image=model.encode_image(px), encode_text=model.encode_text(ids, mask),
        image_tokens=model.image_tokens(px), text_tokens=model.text_tokens(ids, mask),
        positions=model.text_global_positions(ids, mask),
        vision=model.vision_model(px, output_hidden_states=True),
        text=model.text_model(ids, mask if model.config.text_attention_mask else None, output_hidden_states=True),
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The default tiny SigLIP, saved once: (torch model, checkpoint dir)."""
    path = tmp_path_factory.mktemp("base")
    return save_torch_siglip(hf_siglip(), path), path


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(name, torch model, ours, ours with text_attention_mask=True) for each config."""
    text, vision = CONFIGS[request.param]
    path = str(tmp_path_factory.mktemp(request.param))
    torch_model = save_torch_siglip(hf_siglip(text, vision), path)
    return (request.param, torch_model, siglip.from_pretrained(path),
            siglip.from_pretrained(path, text_attention_mask=True))


def test_features_tokens_and_hidden_states_match_transformers(pair):
    name, torch_model, ours, _ = pair
    px = pixels(torch_model.config.vision_config.image_size)
    ids, mask = text_batch()
    with torch.no_grad():
        t_img = torch_model.get_image_features(pixel_values=nchw(px), output_hidden_states=True)
        # SigLIP is used without a mask (trained on max_length-padded texts): ours ignores it by default.
        t_txt = torch_model.get_text_features(input_ids=torch.from_numpy(ids), output_hidden_states=True)
        t_tokens = torch_model.text_model.head(t_txt.last_hidden_state)
    out = outputs(ours, px, *i32(ids, mask))
    (img_tokens, img_pooled), (txt_tokens, txt_pooled) = out["image_tokens"], out["text_tokens"]
    diffs = {
        "encode_image": max_diff(out["encode_image"], t_img.pooler_output),
        "encode_text": max_diff(out["encode_text"], t_txt.pooler_output),
        "image_tokens": max_diff(img_tokens, t_img.last_hidden_state),
        "image_tokens_pooled": max_diff(img_pooled, t_img.pooler_output),
        "text_tokens": max_diff(txt_tokens, t_tokens),
        "text_tokens_pooled": max_diff(txt_pooled, t_txt.pooler_output),
        "text_last_hidden": max_diff(out["text"].last_hidden_state, t_txt.last_hidden_state),
    }
    assert len(out["vision"].hidden_states) == len(t_img.hidden_states)
    assert len(out["text"].hidden_states) == len(t_txt.hidden_states)
    diffs["vision_hidden_states"] = max(max_diff(a, b) for a, b in zip(out["vision"].hidden_states,
                                                                         t_img.hidden_states))
    diffs["text_hidden_states"] = max(max_diff(a, b) for a, b in zip(out["text"].hidden_states, t_txt.hidden_states))
    print(f"\n[{name}] max abs diff vs transformers: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs

    # The token outputs pool to the features: the text's exactly at the global (last) position.
    cfg = ours.config
    grid = cfg.vision.image_size // cfg.vision.patch_size
    assert img_tokens.shape == (2, grid * grid, cfg.projection_dim)  # patches only: SigLIP has no CLS
    assert txt_tokens.shape == (3, ids.shape[1], cfg.projection_dim)
    assert cfg.projection_dim == torch_model.config.vision_config.hidden_size
    np.testing.assert_array_equal(out["positions"], [ids.shape[1] - 1] * 3)
    np.testing.assert_array_equal(txt_tokens[np.arange(3), out["positions"]], txt_pooled)
    np.testing.assert_allclose(img_pooled, out["encode_image"], atol=1e-6)
    np.testing.assert_allclose(txt_pooled, out["encode_text"], atol=1e-6)


def test_text_attention_mask_option_matches_transformers_with_the_mask(pair):
    name, torch_model, _, masked_model = pair
    ids, mask = text_batch()
    with torch.no_grad():
        masked = torch_model.get_text_features(input_ids=torch.from_numpy(ids),
                                               attention_mask=torch.from_numpy(mask)).pooler_output
        unmasked = torch_model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
    encode = nnx.jit(lambda m, ids, mask: (m.encode_text(ids, mask), m.text_tokens(ids, mask),
                                           m.text_global_positions(ids, mask)))
    features, (tokens, pooled), positions = encode(masked_model, *i32(ids, mask))
    diff = max_diff(features, masked)
    print(f"\n[{name}, text_attention_mask=True] encode_text max abs diff: {diff:.2e}")
    assert diff < TOL
    assert max_diff(masked[:2], unmasked[:2]) > 1e-3  # the option matters for the padded rows
    np.testing.assert_array_equal(tokens[np.arange(3), positions], pooled)


def test_logits_match_transformers(pair):
    _, torch_model, ours, _ = pair
    px = pixels(torch_model.config.vision_config.image_size)
    ids, _ = text_batch()
    with torch.no_grad():
        expected = torch_model(input_ids=torch.from_numpy(ids), pixel_values=nchw(px)).logits_per_image
    assert float(ours.logit_scale[...]) == pytest.approx(2.3) and float(ours.logit_bias[...]) == pytest.approx(-7.5)
    out = outputs(ours, px, *i32(ids, np.ones_like(ids)))
    assert max_diff(ours.logits(out["encode_image"], out["encode_text"]), expected) < TOL


def test_other_image_size_interpolates_positions_like_transformers(base):
    torch_model, path = base
    ours = siglip.from_pretrained(str(path))
    px = pixels(32, width=48)  # a 4x6 patch grid from a 4x4 position table
    with torch.no_grad():
        expected = torch_model.get_image_features(pixel_values=nchw(px), interpolate_pos_encoding=True)
    img_tokens, pooled = nnx.jit(lambda m, x: m.image_tokens(x))(ours, px)
    diff = max(max_diff(img_tokens, expected.last_hidden_state), max_diff(pooled, expected.pooler_output))
    print(f"\n[interpolated 32x48 on a 32px model] max abs diff: {diff:.2e}")
    assert img_tokens.shape == (2, 4 * 6, 32) and diff < TOL


def patchify(px, p):
    """NHWC images -> Siglip2's [B, patches, p*p*C] rows (row-major patches, each flattened as (row, col, channel))."""
    b, h, w, c = px.shape
    return px.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)


def test_siglip2_at_its_native_grid_matches_transformers(tmp_path):
    config = transformers.Siglip2Config(text_config=text_config(hidden_act="gelu"),
                                        vision_config=vision_config(num_patches=16, patch_size=8, hidden_act="gelu"))
    torch_model = save_torch_siglip(config, tmp_path)
    ours = siglip.from_pretrained(str(tmp_path))
    assert ours.config.vision.naflex and ours.config.vision.image_size == 32  # sqrt(16) patches of 8 px
    px = pixels(32)
    ids, mask = text_batch()
    with torch.no_grad():
        t_img = torch_model.get_image_features(
            pixel_values=torch.from_numpy(patchify(px, 8)), pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
            spatial_shapes=torch.tensor([[4, 4], [4, 4]]))
        t_txt = torch_model.get_text_features(input_ids=torch.from_numpy(ids))
    out = outputs(ours, px, *i32(ids, mask))
    diffs = {
        "encode_image": max_diff(out["encode_image"], t_img.pooler_output),
        "image_tokens": max_diff(out["image_tokens"][0], t_img.last_hidden_state),
        "encode_text": max_diff(out["encode_text"], t_txt.pooler_output),
    }
    print("\n[siglip2, native 4x4 grid] max abs diff: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs
    with pytest.raises(ValueError, match="native 4x4 patch grid"):
        jax.eval_shape(lambda x: ours.encode_image(x), pixels(48))


def test_sharded_checkpoint_with_index(tmp_path):
    torch_model = save_torch_siglip(hf_siglip(), tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(loader.safetensors_files(str(tmp_path))) > 1
    ours = siglip.from_pretrained(str(tmp_path))
    px = pixels(32)
    ids, mask = text_batch()
    with torch.no_grad():
        image = torch_model.get_image_features(pixel_values=nchw(px)).pooler_output
        text = torch_model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
    out = outputs(ours, px, *i32(ids, mask))
    assert max_diff(out["encode_image"], image) < TOL
    assert max_diff(out["encode_text"], text) < TOL


def test_missing_tensor_is_named(base, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(base[1] / "model.safetensors")
    del tensors["vision_model.head.attention.in_proj_weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((base[1] / "config.json").read_text())
    with pytest.raises(loader.WeightLoadError) as info:
        siglip.from_pretrained(str(tmp_path))
    assert info.value.problems == [
        "missing: model parameter 'vision_model.head.attention.in_proj.kernel' has no tensor in the checkpoint"]


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download google/siglip"):
        siglip.from_pretrained(str(tmp_path / "nowhere"))


def test_config_checks_the_joint_space():
    with pytest.raises(ValueError, match="joint space"):
        siglip.SiglipConfig(siglip.SiglipVisionConfig(hidden_size=32), siglip.SiglipTextConfig(hidden_size=24))
    with pytest.raises(ValueError, match="vision_use_head"):
        siglip.SiglipConfig(siglip.SiglipVisionConfig(vision_use_head=False))


def test_config_round_trips_through_its_hf_dict(tmp_path):
    for cfg in (siglip.SiglipConfig.tiny(), siglip.SiglipConfig.tiny(width=48, patch_size=4),
                siglip.SiglipConfig(siglip.SiglipVisionConfig(naflex=True, image_size=64), text_attention_mask=True)):
        assert siglip.SiglipConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg
    # transformers reads it too
    hf = transformers.SiglipConfig(**siglip.SiglipConfig.tiny().to_hf_dict())
    assert hf.vision_config.patch_size == 8 and hf.text_config.max_position_embeddings == 16


def abstract_tiny(**kwargs):
    return nnx.eval_shape(lambda: siglip.SiglipModel(siglip.SiglipConfig.tiny(**kwargs), rngs=nnx.Rngs(0)))


def test_tiny_config_gives_the_demo_shapes():
    graphdef, state = nnx.split(abstract_tiny(vocab_size=50, width=64, layers=2, max_length=8))
    shapes = jax.eval_shape(lambda s, px, ids: (nnx.merge(graphdef, s).image_tokens(px),
                                                nnx.merge(graphdef, s).text_tokens(ids)),
                            state, pixels(32), np.ones((2, 8), np.int32))
    (img_tokens, img_pooled), (txt_tokens, txt_pooled) = shapes
    assert img_tokens.shape == (2, 16, 64) and img_pooled.shape == (2, 64)
    assert txt_tokens.shape == (2, 8, 64) and txt_pooled.shape == (2, 64)


def test_bf16_compute_keeps_fp32_params(base):
    path = str(base[1])
    fp32 = siglip.from_pretrained(path)
    bf16 = siglip.from_pretrained(path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    px = pixels(32)
    ids, mask = i32(*text_batch())
    low, high = outputs(bf16, px, ids, mask), outputs(fp32, px, ids, mask)
    for key in ("encode_image", "encode_text", "image_tokens", "text_tokens"):
        for ours, reference in zip(jax.tree.leaves(low[key]), jax.tree.leaves(high[key])):
            assert ours.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(ours))), key
            reference = np.asarray(reference)
            assert max_diff(ours, reference) < 0.05 * np.abs(reference).max(), key


def test_weights_load_sharded_on_a_mesh_and_give_the_same_outputs(base):
    path = str(base[1])
    plain = siglip.from_pretrained(path)
    mesh = sharding.make_mesh((2, 2, 2))
    encode = nnx.jit(lambda m, x: m.encode_image(x))
    with sharding.activate(mesh):
        sharded = siglip.from_pretrained(path)
        in_proj = sharded.vision_model.head.attention.in_proj.kernel[...]
        assert in_proj.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
        px = jax.device_put(pixels(32, n=4), sharding.batch_sharding(mesh, 4))
        out = encode(sharded, px)
    np.testing.assert_allclose(out, encode(plain, pixels(32, n=4)), atol=1e-5)


def test_tower_param_paths_split_by_regex():
    import re

    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(abstract_tiny(), nnx.Param))]
    text = [p for p in paths if re.match(siglip_weights.TEXT_TOWER, p)]
    image = [p for p in paths if re.match(siglip_weights.IMAGE_TOWER, p)]
    assert sorted(set(paths) - set(text) - set(image)) == ["logit_bias", "logit_scale"]
    assert "text_model.head.kernel" in text and "vision_model.head.probe" in image


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_pads_to_max_length_like_siglip(tmp_path):
    spm = pytest.importorskip(
        "sentencepiece", reason="SiglipTokenizer needs the sentencepiece package, which is not installed")
    import io

    corpus = ["a red circle on a blue square", "the dog runs in the park", "a photo of a cat",
              "two small green triangles", "a person rides a bike"] * 20
    model = io.BytesIO()
    # SigLIP's layout: <pad>=0, </s>=1 (EOS, and the tokenizer's pad token), <unk>=2, no BOS.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=100,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    hf = transformers.SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"))
    hf.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 8}}))

    tokenizer = siglip.load_tokenizer(str(tmp_path))
    texts = ["a cat", "a photo of a cat and the dog runs in the park"]
    ids, mask = tokenizer(texts)
    expected = hf(texts, padding="max_length", max_length=8, truncation=True)
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == PAD
    n = int(mask[0].sum())
    assert n < 8 and ids[0, n - 1] == PAD and (ids[0, n:] == PAD).all() and not mask[0, n:].any()  # EOS, then pad ids
    assert mask[1].all() and ids[1, -1] == PAD  # truncated, EOS kept last
    assert siglip.load_tokenizer(str(tmp_path), max_length=5)(texts)[0].shape == (2, 5)


def test_sentencepiece_tokenizer_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "spiece.model").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        siglip.load_tokenizer(str(tmp_path))
