"""An OpenCLIP-layout checkpoint loads into the same model as the transformers checkpoint it was made from."""
import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from zscir_jax.models import clip
from zscir_jax.weights import loader
from zscir_jax.models.clip import openclip

WIDTH, LAYERS, EMBED = 32, 2, 24


def make_torch_clip(act):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                         num_attention_heads=2, max_position_embeddings=12, hidden_act=act, eos_token_id=2,
                         pad_token_id=0, bos_token_id=97),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                           num_attention_heads=2, image_size=32, patch_size=16, hidden_act=act),
        projection_dim=EMBED,
    )
    torch.manual_seed(0)
    return transformers.CLIPModel(config).eval()


def openclip_state_from(model):
    """Write the HF model's weights under OpenCLIP's names (the layout open_clip's state_dict() has)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {}
    for tower, prefix in (("text_model", ""), ("vision_model", "visual.")):
        for i in range(LAYERS):
            src, dst = f"{tower}.encoder.layers.{i}", f"{prefix}transformer.resblocks.{i}"
            for kind in ("weight", "bias"):
                out[f"{dst}.attn.in_proj_{kind}"] = np.concatenate(
                    [sd[f"{src}.self_attn.{p}_proj.{kind}"] for p in "qkv"], axis=0)
                out[f"{dst}.attn.out_proj.{kind}"] = sd[f"{src}.self_attn.out_proj.{kind}"]
                out[f"{dst}.ln_1.{kind}"] = sd[f"{src}.layer_norm1.{kind}"]
                out[f"{dst}.ln_2.{kind}"] = sd[f"{src}.layer_norm2.{kind}"]
                out[f"{dst}.mlp.c_fc.{kind}"] = sd[f"{src}.mlp.fc1.{kind}"]
                out[f"{dst}.mlp.c_proj.{kind}"] = sd[f"{src}.mlp.fc2.{kind}"]
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out["ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T.copy()
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"visual.{ours}.weight"] = sd[f"vision_model.{theirs}.weight"]
        out[f"visual.{ours}.bias"] = sd[f"vision_model.{theirs}.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].T.copy()
    out["logit_scale"] = sd["logit_scale"]
    out["attn_mask"] = np.triu(np.full((12, 12), -np.inf, np.float32), 1)  # a buffer old checkpoints carried
    return out


def openclip_config(quick_gelu):
    return {"model_cfg": {
        "embed_dim": EMBED, "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 32, "layers": LAYERS, "width": WIDTH, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 12, "vocab_size": 99, "width": WIDTH, "heads": 2, "layers": LAYERS},
    }}


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_openclip_checkpoint_matches_transformers(tmp_path, act):
    torch_model = make_torch_clip(act)
    save_file(openclip_state_from(torch_model), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps(openclip_config(act == "quick_gelu")))
    ours = clip.from_pretrained(str(tmp_path))

    px = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ids = np.array([[5, 6, 98, 0, 0], [7, 8, 9, 10, 98]], np.int64)  # OpenCLIP pools at argmax(ids)
    with torch.no_grad():
        t_img = torch_model.get_image_features(pixel_values=torch.from_numpy(px).permute(0, 3, 1, 2)).pooler_output
        t_txt = torch_model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
    d_img = np.abs(np.asarray(ours.encode_image(px)) - t_img.numpy()).max()
    d_txt = np.abs(np.asarray(ours.encode_text(ids.astype(np.int32))) - t_txt.numpy()).max()
    print(f"\n[openclip {act}] max abs diff: image={d_img:.2e} text={d_txt:.2e}")
    assert d_img < 1e-4 and d_txt < 1e-4


def test_openclip_torch_pickle_and_unknown_tensors(tmp_path):
    torch_model = make_torch_clip("quick_gelu")
    state = openclip_state_from(torch_model)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
               tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(openclip_config(True)))
    model = clip.from_pretrained(str(tmp_path / "open_clip_pytorch_model.bin"))
    assert model.config.projection_dim == EMBED

    state["visual.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(loader.WeightLoadError, match="visual.extra.weight"):
        openclip.to_hf_names(state)


def test_openclip_safetensors_are_streamed_not_loaded_whole(tmp_path):
    state = openclip_state_from(make_torch_clip("gelu"))
    save_file(state, str(tmp_path / "w.safetensors"))
    view = openclip.HFView(loader.LazyTensors([str(tmp_path / "w.safetensors")]))
    assert "vision_model.encoder.layers.1.self_attn.k_proj.weight" in view
    k = view["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(k, state["visual.transformer.resblocks.1.attn.in_proj_weight"][WIDTH:2 * WIDTH])
    assert view["logit_scale"].shape == ()


@pytest.mark.parametrize("change, message", [
    (lambda c: c["vision_cfg"].update(layers=[3, 4, 6, 3]), "ModifiedResNet"),
    (lambda c: c["vision_cfg"].update(ls_init_value=1e-5), "vision_cfg.ls_init_value"),
    (lambda c: c["text_cfg"].update(hf_model_name="roberta-base"), "text_cfg.hf_model_name"),
    (lambda c: c.pop("vision_cfg"), "not an OpenCLIP model config"),
])
def test_openclip_configs_we_cannot_run_are_refused(change, message):
    cfg = openclip_config(True)["model_cfg"]
    change(cfg)
    with pytest.raises(ValueError, match=message):
        openclip.config_from_openclip(cfg)


def test_openclip_config_maps_to_ours():
    cfg = openclip.config_from_openclip(openclip_config(False))
    assert cfg.projection_dim == EMBED and cfg.vision.hidden_act == "gelu" and cfg.text.hidden_act == "gelu"
    assert (cfg.vision.num_attention_heads, cfg.vision.patch_size, cfg.vision.image_size) == (2, 16, 32)
    assert (cfg.text.max_position_embeddings, cfg.text.vocab_size, cfg.text.eos_token_id) == (12, 99, 2)
    assert cfg.vision.intermediate_size == 4 * WIDTH
