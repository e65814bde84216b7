"""Our Flax CLIP equals transformers' PyTorch CLIPModel on the same (tiny, random) weights."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from zscir_jax import sharding
from zscir_jax.models import clip
from zscir_jax.weights import loader

from parity_helpers import max_diff, nchw, pixels

TOL = 1e-4

CONFIGS = {
    # name: (text overrides, vision overrides)
    "quickgelu-p16-legacy-eos": (dict(hidden_act="quick_gelu", eos_token_id=2), dict(patch_size=16, hidden_act="quick_gelu")),
    "gelu-p32-explicit-eos": (dict(hidden_act="gelu", eos_token_id=98), dict(patch_size=32, image_size=64, hidden_act="gelu")),
    "gelu-p8-wide-mlp": (dict(hidden_act="gelu", eos_token_id=98, intermediate_size=64), dict(patch_size=8, hidden_act="gelu")),
}


def hf_config(text, vision, projection_dim=24):
    text_config = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=12, pad_token_id=0, bos_token_id=97)
    vision_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32)
    text_config.update(text)
    vision_config.update(vision)
    return transformers.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def save_torch_clip(config, path, seed=0, **save_kwargs):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(path, **save_kwargs)
    return model


def text_batch(eos):
    """Right-padded ids of different lengths; with the legacy rule EOS must be the largest id of each row."""
    lengths = [4, 7, 2]
    ids = np.zeros((3, 9), np.int64)
    rng = np.random.default_rng(0)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = rng.integers(3, 90, n - 1)
        ids[row, n - 1] = 98 if eos == 2 else eos
    mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int64)
    return ids, mask


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    text, vision = CONFIGS[request.param]
    path = str(tmp_path_factory.mktemp(request.param))
    torch_model = save_torch_clip(hf_config(text, vision), path)
    return request.param, torch_model, clip.from_pretrained(path)


def test_features_and_hidden_states_match_transformers(pair):
    name, torch_model, ours = pair
    size = torch_model.config.vision_config.image_size
    px = pixels(size)
    ids, mask = text_batch(torch_model.config.text_config.eos_token_id)
    with torch.no_grad():
        t_img = torch_model.get_image_features(pixel_values=nchw(px), output_hidden_states=True)
        t_txt = torch_model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                              output_hidden_states=True)
    o_vis = ours.vision_model(px, output_hidden_states=True)
    o_txt = ours.text_model(ids.astype(np.int32), mask.astype(np.int32), output_hidden_states=True)
    diffs = {
        "image_features": max_diff(ours.encode_image(px), t_img.pooler_output),
        "text_features": max_diff(ours.encode_text(ids.astype(np.int32), mask.astype(np.int32)), t_txt.pooler_output),
        "text_last_hidden": max_diff(o_txt.last_hidden_state, t_txt.last_hidden_state),
        "vision_last_hidden": max_diff(o_vis.last_hidden_state, t_img.last_hidden_state),
    }
    assert len(o_vis.hidden_states) == len(t_img.hidden_states)
    assert len(o_txt.hidden_states) == len(t_txt.hidden_states)
    diffs["vision_hidden_states"] = max(max_diff(a, b) for a, b in zip(o_vis.hidden_states, t_img.hidden_states))
    diffs["text_hidden_states"] = max(max_diff(a, b) for a, b in zip(o_txt.hidden_states, t_txt.hidden_states))
    print(f"\n[{name}] max abs diff vs transformers: " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL, diffs


def test_token_outputs_pool_to_the_features(pair):
    _, _, ours = pair
    px = pixels(ours.config.vision.image_size)
    ids, mask = text_batch(ours.config.text.eos_token_id)
    ids, mask = ids.astype(np.int32), mask.astype(np.int32)
    img_tokens, img_pooled = ours.image_tokens(px)
    txt_tokens, txt_pooled = ours.text_tokens(ids, mask)
    grid = ours.config.vision.image_size // ours.config.vision.patch_size
    assert img_tokens.shape == (2, 1 + grid * grid, ours.config.projection_dim)
    assert txt_tokens.shape == (3, ids.shape[1], ours.config.projection_dim)
    np.testing.assert_allclose(img_pooled, ours.encode_image(px), atol=1e-6)
    np.testing.assert_allclose(txt_pooled, ours.encode_text(ids, mask), atol=1e-6)


def test_other_image_size_interpolates_positions_like_transformers(tmp_path):
    torch_model = save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=8, image_size=32)), tmp_path)
    ours = clip.from_pretrained(str(tmp_path))
    px = pixels(48)  # a 6x6 patch grid from a 4x4 position table
    with torch.no_grad():
        expected = torch_model.get_image_features(pixel_values=nchw(px), interpolate_pos_encoding=True).pooler_output
    diff = max_diff(ours.encode_image(px), expected)
    print(f"\n[interpolated 48px on a 32px model] max abs diff: {diff:.2e}")
    assert diff < TOL


def test_non_square_image_interpolates_like_transformers(tmp_path):
    torch_model = save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=8, image_size=32)), tmp_path)
    ours = clip.from_pretrained(str(tmp_path))
    px = np.random.default_rng(2).standard_normal((2, 32, 48, 3)).astype(np.float32)  # a 4x6 grid (H x W)
    with torch.no_grad():
        expected = torch_model.vision_model(pixel_values=nchw(px),
                                            interpolate_pos_encoding=True, output_hidden_states=True)
    out = ours.vision_model(px, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 1 + 4 * 6, 32)
    diff = max(max_diff(a, b) for a, b in zip(out.hidden_states, expected.hidden_states))
    diff = max(diff, max_diff(out.pooler_output, expected.pooler_output))
    print(f"\n[non-square 32x48 on a 32px model] max abs diff (all hidden states, pooled): {diff:.2e}")
    assert diff < TOL


def test_config_without_eos_id_gets_transformers_default():
    assert clip.CLIPTextConfig.from_hf_dict({}).eos_token_id == transformers.CLIPTextConfig().eos_token_id
    assert clip.CLIPTextConfig.from_hf_dict({"eos_token_id": 2}).eos_token_id == 2


def test_vision_tower_alone_loads_from_a_clip_checkpoint(tmp_path):
    from zscir_jax.models.clip import params as clip_weights

    torch_model = save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=16)), tmp_path)
    tower = clip_weights.load_vision(str(tmp_path))
    assert isinstance(tower, clip.CLIPVisionModel)
    px = pixels(32)
    with torch.no_grad():
        expected = torch_model.vision_model(pixel_values=nchw(px))
    assert max_diff(tower(px).pooler_output, expected.pooler_output) < TOL


def test_sharded_checkpoint_with_index(tmp_path):
    torch_model = save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=16)), tmp_path,
                                  max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(loader.safetensors_files(str(tmp_path))) > 1
    ours = clip.from_pretrained(str(tmp_path))
    px = pixels(32)
    with torch.no_grad():
        expected = torch_model.get_image_features(pixel_values=nchw(px)).pooler_output
    assert max_diff(ours.encode_image(px), expected) < TOL


def test_wrong_checkpoint_lists_every_problem(tmp_path):
    save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=16)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["projection_dim"] = 16  # both projections now mismatch
    config["text_config"]["num_hidden_layers"] = 3  # a whole layer is missing
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(loader.WeightLoadError) as info:
        clip.from_pretrained(str(tmp_path))
    text = str(info.value)
    assert "'visual_projection.weight' -> 'visual_projection.kernel': checkpoint gives (32, 24), model expects (32, 16)" in text
    assert "'text_projection.weight'" in text
    assert "missing: model parameter 'text_model.encoder.layers.2.self_attn.q_proj.kernel'" in text
    assert len(info.value.problems) == 2 + 16  # two projections + 16 tensors of the missing layer


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        clip.from_pretrained(str(tmp_path / "nowhere"))


def test_weights_load_sharded_on_a_mesh_and_give_the_same_outputs(tmp_path):
    save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=16)), tmp_path)
    plain = clip.from_pretrained(str(tmp_path))
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        sharded = clip.from_pretrained(str(tmp_path))
        q = sharded.vision_model.encoder.layers[0].self_attn.q_proj.kernel[...]
        assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
        # 37 hidden units do not split over 2 devices: that dimension is replicated instead of failing.
        fc1 = sharded.vision_model.encoder.layers[0].mlp.fc1.kernel[...]
        assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
        px = jax.device_put(pixels(32, n=4), sharding.batch_sharding(mesh, 4))
        out = jax.jit(lambda m, x: m.encode_image(x))(sharded, px)
    np.testing.assert_allclose(out, plain.encode_image(pixels(32, n=4)), atol=1e-5)


def test_weights_load_sharded_in_nnx_tree_mode(tmp_path):
    """Tree mode (flax's coming default) must keep the target shardings too."""
    import flax

    save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=16)), tmp_path)
    mesh = sharding.make_mesh((2, 2, 2))
    previous = flax.config.nnx_graph_mode
    flax.config.update("nnx_graph_mode", False)
    try:
        with sharding.activate(mesh):
            model = clip.from_pretrained(str(tmp_path))
            kernel = model.text_model.encoder.layers[1].self_attn.out_proj.kernel[...]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("model", "fsdp")
    finally:
        flax.config.update("nnx_graph_mode", previous)


def test_bf16_compute_keeps_fp32_params(tmp_path):
    save_torch_clip(hf_config(dict(eos_token_id=98), dict(patch_size=16)), tmp_path)
    fp32 = clip.from_pretrained(str(tmp_path))
    bf16 = clip.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    params = nnx.state(bf16, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    px = pixels(32)
    out = bf16.encode_image(px)
    assert out.dtype == jnp.bfloat16
    reference = np.asarray(fp32.encode_image(px))
    assert max_diff(out, reference) < 0.05 * np.abs(reference).max()


def test_tokenizer_pads_and_truncates_to_context_length(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<unk>": 1, "<|startoftext|>": 2, "<|endoftext|>": 3, "a": 4, "red": 5, "circle": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 6}}))
    tokenizer = clip.load_tokenizer(str(tmp_path))
    ids, mask = tokenizer(["a red circle", "a red circle a red circle"])
    assert ids.dtype == np.int32 and ids.shape == (2, 6)
    np.testing.assert_array_equal(ids[0], [2, 4, 5, 6, 3, 0])
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 1, 0])
    assert mask[1].all() and tokenizer.eos_token_id == 3 and tokenizer.pad_token_id == 0

    # An OpenCLIP directory states its context length in open_clip_config.json instead.
    (tmp_path / "config.json").unlink()
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": {"context_length": 5}}}))
    ids, _ = clip.load_tokenizer(str(tmp_path))(["a red circle a red circle"])
    assert ids.shape == (1, 5)
