"""The tower families behind one surface (``models.towers``): which family a checkpoint is, our export round trip
for each family, random towers by ``config.model.backbone``, and PVLF's fusion step on BLIP and SigLIP towers."""
import json
import os
import runpy

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zscir_jax.errors import UserError
from zscir_jax.methods import base
from zscir_jax.models import blip, clip, siglip, towers
from zscir_jax.train import preflight

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
common = runpy.run_path(os.path.join(ROOT, "configs", "common.py"))
SIZES = dict(vocab_size=40, image_size=16, patch_size=8, width=32, layers=1, max_length=8, eos_token_id=39)
MODELS = {"clip": clip.CLIPModel, "blip": blip.BlipModel, "siglip": siglip.SiglipModel}


def _inputs():
    rng = np.random.default_rng(0)
    pixels = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    ids = jnp.asarray([[1, 5, 9, 39, 0, 0, 0, 0], [1, 7, 8, 11, 3, 39, 0, 0]], jnp.int32)
    return pixels, ids, (ids > 0).astype(jnp.int32)


@pytest.mark.parametrize("family", towers.FAMILIES)
def test_every_family_exports_and_loads_back_as_itself(family, tmp_path):
    cfg = towers.tiny(family, **SIZES)
    model = towers.new(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
    assert isinstance(model, MODELS[family]) and towers.family_of_config(cfg) == family
    base.export_towers(model, str(tmp_path))
    assert towers.family_of(str(tmp_path), base.EXPORT_MARKER) == family
    assert base.towers_config_from_path(str(tmp_path)) == cfg
    loaded = base.load_exported(str(tmp_path))
    pixels, ids, mask = _inputs()
    np.testing.assert_allclose(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(ids, mask), model.encode_text(ids, mask), atol=1e-6)
    tokens, pooled = loaded.text_tokens(ids, mask)
    where = loaded.text_global_positions(ids, mask)
    np.testing.assert_allclose(tokens[jnp.arange(2), where], pooled, atol=1e-6)
    assert tokens.shape[-1] == pooled.shape[-1] == cfg.projection_dim
    assert loaded.image_tokens(pixels)[1].shape == (2, cfg.projection_dim)


def test_the_global_text_position_is_each_familys_own():
    _, ids, mask = _inputs()
    where = {f: np.asarray(towers.new(towers.tiny(f, **SIZES), rngs=nnx.Rngs(0), dtype=jnp.float32,
                                      param_dtype=jnp.float32).text_global_positions(ids, mask))
             for f in towers.FAMILIES}
    assert where["clip"].tolist() == [3, 5]  # EOT (id 39)
    assert where["blip"].tolist() == [0, 0]  # [CLS]
    assert where["siglip"].tolist() == [7, 7]  # the last position (SigLIP pads to the full length)


def test_a_transformers_directory_names_its_family_and_an_unknown_one_is_refused(tmp_path):
    for model_type, family in (("clip", "clip"), ("blip", "blip"), ("siglip", "siglip"), ("siglip2", "siglip")):
        d = tmp_path / model_type
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert towers.family_of(str(d), base.EXPORT_MARKER) == family
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "align"}))
    with pytest.raises(UserError, match="model_type 'align'"):
        towers.family_of(str(tmp_path / "x"), base.EXPORT_MARKER)


def test_an_unknown_backbone_is_one_line_before_anything_runs():
    c = common["tiny"]("pvlf")
    c.model.backbone = "vit"
    from zscir_jax import methods

    with pytest.raises(UserError, match="config.model.backbone='vit': allowed values are clip, blip, siglip"):
        preflight.check(c, methods.get("pvlf"), mode="train")


@pytest.mark.parametrize("family", ("blip", "siglip"))
def test_pvlf_trains_on_random_towers_of_each_family(family, tmp_path):
    from zscir_jax import sharding
    from zscir_jax.train import trainer

    c = common["tiny"]("pvlf")
    c.model.backbone = family
    c.optim.finetune = "both"
    model = trainer.train(c, str(tmp_path), sharding.make_mesh((-1, 1, 1)))
    assert isinstance(model.clip, MODELS[family])
    metrics = trainer.read_metrics(str(tmp_path))
    assert np.isfinite(metrics[8]["loss"]) and metrics[8]["loss"] < metrics[1]["loss"] + 1.0
    # The shared group regexes put each family's text tower in text_tower and the rest of its towers in image_tower.
    from zscir_jax.train import optimizer

    label = optimizer.label_fn(c.optim)
    labels = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        labels.setdefault(label(path), set()).add(optimizer.path_str(path).split("/")[1])
    text = {"blip": {"text_encoder", "text_proj"}, "siglip": {"text_model"}}[family]
    assert labels["text_tower"] == text and not labels["image_tower"] & text


def test_transagg_blip_is_transagg_with_blips_sizes_and_both_towers():
    t = runpy.run_path(os.path.join(ROOT, "configs", "transagg_blip.py"))["get_config"]()
    assert (t.method, t.model.fusion.weighting, t.model.fusion.num_prompts, t.loss.name) == ("transagg", "linear", 1,
                                                                                             "info_nce")
    assert (t.optim.finetune, t.data.image_size, t.data.max_length) == ("both", 384, 35)


@pytest.mark.parametrize("config_name", ("pvlf_blip.py",))
def test_the_blip_config_runs_locally_on_a_transformers_blip(config_name, tmp_path):
    """configs/pvlf_blip.py:runlocal on a tiny BlipForImageTextRetrieval directory (its BERT tokenizer too),
    rule-based scene triplets, evaluated in the CIRR layout."""
    import subprocess
    import sys

    import transformers

    from zscir_jax.data import scenes, triplets
    from zscir_jax.synthesis import rule_based
    from test_blip_parity import _save_bert_tokenizer, hf_config, save_torch_blip

    ckpt = tmp_path / "blip"
    ckpt.mkdir()
    save_torch_blip(hf_config(), str(ckpt))
    _save_bert_tokenizer(ckpt)
    root = scenes.build(str(tmp_path / "scenes"), num_train=24, num_val_queries=4, num_test_queries=2, image_size=32)
    path = str(tmp_path / "t.jsonl")
    triplets.write_jsonl(rule_based.generate(root, seed=0, max_per_image=1), path)
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", f"{config_name}:runlocal"),
           "--workdir", str(work), f"--config.model.clip_path={ckpt}", f"--config.data.triplets={path}",
           f"--config.evals.cirr.root={root}", "--config.data.image_size=32", "--config.data.max_length=12",
           "--config.model.fusion.num_prompts=3", "--config.model.fusion.heads=2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.load(open(work / "results.json"))
    method = config_name.split("_")[0]
    assert {method, "image_only", "text_only", "image_plus_text"} <= set(results)
    assert "recall@1" in results[method]["cirr"]
    assert transformers.AutoConfig.from_pretrained(str(ckpt)).model_type == "blip"
