"""mllm.MLLM loaded from a tiny LlavaForConditionalGeneration checkpoint matches transformers (fp32)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from zscir_jax.models import llm, mllm

IMAGE_TOKEN = 95
PATCHES = (16 // 4) ** 2


def make_llava(strategy, layer, seed=0):
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=4)
    text = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                                   vision_feature_select_strategy=strategy, vision_feature_layer=layer)
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger projector output and sharper logits, so image tokens matter and greedy is stable
        model.model.multi_modal_projector.linear_2.weight.mul_(20.0)
        model.lm_head.weight.mul_(10.0)
    return model


def prompts(n_image_tokens, seed=0):
    """Two prompts [text, image placeholders, text], the second shorter and left-padded."""
    rng = np.random.default_rng(seed)
    rows = []
    for pre, post in ((3, 4), (1, 2)):
        rows.append([1] + list(rng.integers(3, 90, pre)) + [IMAGE_TOKEN] * n_image_tokens + list(rng.integers(3, 90, post)))
    L = max(map(len, rows))
    ids = np.zeros((2, L), np.int64)
    mask = np.zeros((2, L), np.int64)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    return ids, mask


def rename_checkpoint(path, rename):
    tensors = load_file(str(path / "model.safetensors"))
    renamed = {rename(k): v for k, v in tensors.items()}
    save_file(renamed, str(path / "model.safetensors"), metadata={"format": "pt"})
    return sorted(renamed)


def to_v5_layout(k):
    """transformers v5's module names (model.language_model..., lm_head) for a name in the saved layout."""
    k = k.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head", "lm_head")
    return "model." + k if k.startswith(("vision_tower.", "multi_modal_projector.")) else k


def to_hub_layout(k):
    """The llava-hf Hub checkpoints nest the CLIP tower one level deeper (vision_tower.vision_model...)."""
    return k.replace("vision_tower.", "vision_tower.vision_model.", 1)


@pytest.mark.parametrize("strategy,layer", [("default", -2), ("full", [-3, -1])])
def test_logits_and_generation_match_transformers(strategy, layer, tmp_path):
    hf = make_llava(strategy, layer)
    hf.save_pretrained(tmp_path)
    model = mllm.from_pretrained(str(tmp_path))
    n_tokens = model.config.image_seq_length
    assert n_tokens == PATCHES + (strategy == "full")
    ids, mask = prompts(n_tokens)
    pixels = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0)), output_hidden_states=True)
    nhwc = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    logits = np.asarray(model(jnp.asarray(ids), nhwc, jnp.asarray(mask)))
    h = np.asarray(model.hidden_states(jnp.asarray(ids), nhwc, jnp.asarray(mask)))
    valid = mask.astype(bool)
    dl = np.abs(logits - out.logits.numpy())[valid].max()
    dh = np.abs(h - out.hidden_states[-1].numpy())[valid].max()
    print(f"llava {strategy} layer={layer}: max|dh|={dh:.2e} max|dlogits|={dl:.2e}")
    assert dl < 1e-4 and dh < 1e-4
    # the image matters: other pixels, other logits
    other = np.asarray(model(jnp.asarray(ids), nhwc[::-1], jnp.asarray(mask)))
    assert np.abs(other - logits)[valid].max() > 1e-3
    emb = llm.last_token_pool(jnp.asarray(h), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(emb), h[:, -1])

    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                          attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=6, pad_token_id=0,
                          eos_token_id=2)[:, ids.shape[1]:].numpy()
    ours = np.asarray(mllm.generate(model, jnp.asarray(ids), nhwc, jnp.asarray(mask), max_new_tokens=6))
    print("ours", ours.tolist(), "hf", ref.tolist())
    np.testing.assert_array_equal(ours[:, : ref.shape[1]], ref)


def test_v5_layout_loads_the_same_and_bad_prompts_fail_clearly(tmp_path):
    hf = make_llava("default", -2)
    hf.save_pretrained(tmp_path)
    legacy = mllm.from_pretrained(str(tmp_path))
    ids, mask = prompts(PATCHES)
    nhwc = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16, 16, 3)), jnp.float32)
    ref = np.asarray(legacy(jnp.asarray(ids), nhwc, jnp.asarray(mask)))
    names = rename_checkpoint(tmp_path, to_hub_layout)
    assert "vision_tower.vision_model.post_layernorm.weight" in names
    hub = mllm.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(np.asarray(hub(jnp.asarray(ids), nhwc, jnp.asarray(mask))), ref)
    names = rename_checkpoint(tmp_path, lambda k: to_v5_layout(k.replace("vision_model.", "")))
    assert "lm_head.weight" in names and "model.vision_tower.post_layernorm.weight" in names
    v5 = mllm.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(np.asarray(v5(jnp.asarray(ids), nhwc, jnp.asarray(mask))), ref)
    bad, _ = prompts(PATCHES - 1)
    with pytest.raises(ValueError, match="placeholder"):
        v5(jnp.asarray(bad), nhwc)
    with pytest.raises(ValueError, match="placeholder"):
        mllm.generate(v5, jnp.asarray(bad), nhwc, max_new_tokens=2)
