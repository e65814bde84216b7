"""The fashion method (seed 002): the in-step prompt assembly (token packing, the zero-shot choice, the text it
reads), the static bank (own targets masked, sharded over the mesh, frozen through training, kept by a restore), the
stage-1 loss, the config checks, and the demo from the command line."""
import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zscir_jax import sharding
from zscir_jax.data import pipeline, tokenizer
from zscir_jax.errors import UserError
from zscir_jax.methods import fashion
from zscir_jax.models import clip

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
common = runpy.run_path(os.path.join(ROOT, "configs", "common.py"))
ATTRS = (("category", ("dress", "shirt")), ("colour", ("red", "blue", "green")), ("sleeves", ("short", "long")))
WORDS = "category dress shirt colour red blue green sleeves short long , that is has and with a"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tokenizer.build_word_tokenizer([WORDS], str(tmp_path_factory.mktemp("tok")), max_length=16)


def tiny_config(tok_dir, **fashion_settings):
    c = common["fashion"]()
    tok = tokenizer.Tokenizer.from_dir(tok_dir, 16)
    c.model.clip_tiny = dict(vocab_size=tok.vocab_size, image_size=16, patch_size=8, width=32, layers=1,
                             max_length=16, eos_token_id=tok.eos_token_id)
    c.model.fashion.update({"attributes": ATTRS, "bank_size": 0, **fashion_settings})
    c.data.update(tokenizer=tok_dir, max_length=16, image_size=16)
    c.loss.temperature = 0.1
    del c["stages"]
    return c


def _decode(tok_dir, ids, mask):
    tok = tokenizer.Tokenizer.from_dir(tok_dir, 16)
    return [tok.hf.decode([int(t) for t, m in zip(r, k) if m], skip_special_tokens=True) for r, k in zip(ids, mask)]


class FixedChoice(fashion.FashionRetriever):
    """The retriever with its zero-shot choice replaced by given rows (to read the text it assembles)."""
    picks = None

    def choose(self, image_emb):
        return jnp.asarray(self.picks)


def test_concat_tokens_packs_the_valid_tokens_and_ends_an_overflow_in_eos():
    a = (jnp.asarray([[1, 7, 0], [1, 8, 9]]), jnp.asarray([[1, 1, 0], [1, 1, 1]]))
    b = (jnp.asarray([[5, 6], [5, 0]]), jnp.asarray([[1, 1], [1, 0]]))
    eos = (jnp.asarray([[2], [2]]), jnp.asarray([[1], [1]]))
    ids, mask = fashion.concat_tokens([a, b, eos], 5, eos=2, pad=0)
    np.testing.assert_array_equal(ids, [[1, 7, 5, 6, 2], [1, 8, 9, 5, 2]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids, mask = fashion.concat_tokens([a, b, eos], 4, eos=2, pad=0)  # row 0 has 5 tokens: cut, EOS kept last
    np.testing.assert_array_equal(ids, [[1, 7, 5, 2], [1, 8, 9, 2]])
    ids, mask = fashion.concat_tokens([a, eos], 5, eos=2, pad=0)
    np.testing.assert_array_equal(ids, [[1, 7, 2, 0, 0], [1, 8, 9, 2, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])


def test_the_prompt_reads_key_value_phrases_then_the_joiner_then_the_caption(tok_dir):
    c = tiny_config(tok_dir)
    tok = tokenizer.Tokenizer.from_dir(tok_dir, 16)
    tables = fashion.prompt_tables(c, tok)
    assert tables.key_rows == ((0, 1), (2, 3, 4), (5, 6))
    towers = clip.CLIPModel(fashion.base.clip_config(c), rngs=nnx.Rngs(0))
    model = FixedChoice(towers, tables, 1.0, 1.0, None, None)
    model.picks = [[1, 3, 5], [0, 4, 6]]
    ids, mask = tok(["is red", "has long sleeves and is blue"])
    out_ids, out_mask = model.prompted(None, jnp.asarray(ids), jnp.asarray(mask))
    assert _decode(tok_dir, out_ids, out_mask) == [
        "category shirt , colour blue , sleeves short that is red",
        "category dress , colour green , sleeves long that has long sleeves and is"]  # 17 tokens: cut to 16
    eos = tok.eos_token_id
    for r, m in zip(np.asarray(out_ids), np.asarray(out_mask)):  # one EOS, last of the row's tokens
        assert r[int(m.sum()) - 1] == eos and list(r).count(eos) == 1 or tok.pad_token_id == eos


def test_the_zero_shot_choice_takes_the_nearest_value_of_each_key(tok_dir):
    c = tiny_config(tok_dir)
    tok = tokenizer.Tokenizer.from_dir(tok_dir, 16)
    tables = fashion.prompt_tables(c, tok)
    towers = clip.CLIPModel(fashion.base.clip_config(c), rngs=nnx.Rngs(1))
    model = fashion.FashionRetriever(towers, tables, 1.0, 1.0, None, None)
    phrases = np.asarray(fashion.l2_normalize(towers.encode_text(jnp.asarray(tables.class_ids),
                                                                 jnp.asarray(tables.class_mask))))
    # An "image" embedding equal to the phrase of value row 3 (colour blue) picks row 3 for its key.
    picks = np.asarray(model.choose(jnp.asarray(phrases[[3, 6]])))
    assert picks[0, 1] == 3 and picks[1, 2] == 6
    for k, rows in enumerate(tables.key_rows):
        assert set(picks[:, k]) <= set(rows)


def _batch(B=4, S=16, L=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 12, (B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    return {"reference_pixels": jnp.asarray(rng.normal(size=(B, S, S, 3)), jnp.float32),
            "target_pixels": jnp.asarray(rng.normal(size=(B, S, S, 3)), jnp.float32),
            "text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(mask),
            "has_target_image": jnp.ones((B,), bool),
            "target_key": jnp.asarray([pipeline.image_key(f"t{i}.png") for i in range(B)], jnp.int32)}


def test_the_bank_adds_negatives_except_each_rows_own_target(tok_dir):
    c = tiny_config(tok_dir)
    towers = clip.CLIPModel(fashion.base.clip_config(c), rngs=nnx.Rngs(0))
    tables = fashion.prompt_tables(c, tokenizer.Tokenizer.from_dir(tok_dir, 16))
    batch = _batch()
    plain = fashion.FashionRetriever(towers, tables, 1.0, 1.0, None, None)
    targets = np.asarray(plain.image(batch["target_pixels"]))
    base_loss, _ = fashion.loss(plain, batch, c)
    own = fashion.FashionRetriever(towers, tables, 1.0, 1.0, targets, np.asarray(batch["target_key"]))
    own_loss, _ = fashion.loss(own, batch, c)
    # Entry j is row j's own target (masked for row j) and a second copy of a negative for every other row.
    q = np.asarray(plain.query(batch["reference_pixels"], batch["text_ids"], batch["text_mask"]), np.float64)
    s = q @ targets.T / c.loss.temperature
    e = np.exp(s)
    expect = np.mean(-np.log(np.diag(e) / (e.sum(1) + e.sum(1) - np.diag(e))))
    np.testing.assert_allclose(own_loss, expect, rtol=1e-4)
    # Under other keys nothing is masked: each row also meets its own target image as a "negative".
    other = fashion.FashionRetriever(towers, tables, 1.0, 1.0, targets, np.asarray(batch["target_key"]) + 1)
    np.testing.assert_allclose(fashion.loss(other, batch, c)[0], np.mean(-np.log(np.diag(e) / (2 * e.sum(1)))),
                               rtol=1e-4)
    padding = fashion.FashionRetriever(towers, tables, 1.0, 1.0, targets, np.full((4,), -1, np.int32))
    np.testing.assert_allclose(fashion.loss(padding, batch, c)[0], base_loss, rtol=1e-6)  # key -1: padding


def test_without_a_prompt_the_query_is_image_plus_caption(tok_dir):
    c = tiny_config(tok_dir, prompt="none")
    towers = clip.CLIPModel(fashion.base.clip_config(c), rngs=nnx.Rngs(0))
    model = fashion.build(c, nnx.Rngs(0)) if False else fashion.FashionRetriever(towers, None, 1.0, 1.0, None, None)
    b = _batch()
    q = model.query(b["reference_pixels"], b["text_ids"], b["text_mask"])
    expect = fashion.l2_normalize(fashion.l2_normalize(towers.encode_image(b["reference_pixels"]))
                                  + fashion.l2_normalize(towers.encode_text(b["text_ids"], b["text_mask"])))
    np.testing.assert_allclose(q, expect, atol=1e-6)


@pytest.mark.parametrize("override, needle", [
    (dict(bank_size=-1), "config.model.fashion.bank_size=-1"),
    (dict(prompt="mllm"), "config.model.fashion.prompt='mllm'"),
    (dict(attributes=()), "config.model.fashion.attributes"),
    (dict(bank_dtype="int8"), "config.model.fashion.bank_dtype"),
])
def test_config_mistakes_are_one_line(tok_dir, override, needle):
    c = tiny_config(tok_dir, **override)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        fashion.check(c)


def test_the_stage_1_loss_aligns_images_with_their_attribute_phrases(tok_dir):
    c = tiny_config(tok_dir)
    towers = clip.CLIPModel(fashion.base.clip_config(c), rngs=nnx.Rngs(0))
    b = _batch()
    b.update(caption_ids=b["text_ids"], caption_mask=b["text_mask"], has_caption=jnp.ones((4,), bool),
             target_text_ids=b["text_ids"][::-1], target_text_mask=b["text_mask"], has_target_text=jnp.ones((4,), bool))
    l, m = fashion.align_loss(towers, b, c)
    scale = float(jnp.exp(towers.logit_scale[...]))
    from zscir_jax.methods import losses
    r, _ = losses.info_nce(towers.encode_image(b["reference_pixels"]), towers.encode_text(b["text_ids"], b["text_mask"]),
                           temperature=1 / scale, symmetric=True)
    t, _ = losses.info_nce(towers.encode_image(b["target_pixels"]),
                           towers.encode_text(b["text_ids"][::-1], b["text_mask"]), temperature=1 / scale,
                           symmetric=True)
    np.testing.assert_allclose(l, 0.5 * (r + t), rtol=1e-5)
    b["has_caption"] = jnp.asarray([True, True, False, False])
    l2, _ = fashion.align_loss(towers, b, c)
    assert abs(float(l2) - float(l)) > 1e-4  # the masked rows are out of the reference term


# ------------------------------------------------------------------------------------- the bank through training

@pytest.fixture(scope="module")
def garment_triplets(tmp_path_factory):
    """A tiny garment benchmark, its fashion triplets (rule answers) and a word tokenizer of its words."""
    from zscir_jax.data import garments
    from zscir_jax.synthesis import engine

    work = str(tmp_path_factory.mktemp("fashion_work"))
    s = runpy.run_path(os.path.join(ROOT, "configs", "synth", "fashion.py"))["get_config"]()
    s.backend.kind, s.data.kind, s.progress_bar, s.output.num_shards = "rule_based", "garments", False, 1
    s.data.garments.update(num_train=90, num_val_queries=6, num_test_queries=3, image_size=16, seed=0)
    path = engine.run_for_training(s, work)
    root = os.path.join(work, "garments")
    tok = tokenizer.build_word_tokenizer([c for _, c in garments.train_pairs(root)] + garments.phrase_texts(),
                                         os.path.join(work, "tok"), max_length=40)
    return work, path, tok


def test_the_bank_is_sharded_over_the_mesh_frozen_in_training_and_restored(garment_triplets, tmp_path):
    from zscir_jax.data import garments
    from zscir_jax.train import trainer

    work, path, tok_dir = garment_triplets
    c = common["fashion"]()
    tok = tokenizer.Tokenizer.from_dir(tok_dir, 40)
    c.model.clip_tiny = dict(vocab_size=tok.vocab_size, image_size=16, patch_size=8, width=32, layers=1,
                             max_length=40, eos_token_id=tok.eos_token_id)
    c.model.fashion.update(attributes=garments.ATTRIBUTES, bank_size=20)  # 20 -> 24: a multiple of 8 devices
    c.data.update(tokenizer=tok_dir, max_length=40, image_size=16, triplets=path)
    c.optim.lr = dict(text_tower=1e-2, image_tower=1e-2)
    c.train.update(steps=2, batch_size=8, log_every=1, checkpoint_every=2, progress_bar=False)
    del c["stages"]
    mesh = sharding.make_mesh((8, 1, 1))
    model = trainer.train(c, str(tmp_path / "run"), mesh)
    bank = model.bank[...]
    assert bank.shape == (24, 32) and bank.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    keys = np.asarray(model.bank_keys[...])
    assert (keys[:20] >= 0).all() and (keys[20:] == -1).all() and not np.asarray(bank[20:]).any()
    # Frozen: the bank after two steps is the starting towers' embedding of its images.
    with sharding.activate(mesh):
        fresh = fashion.build(c, nnx.Rngs(c.seed))
    np.testing.assert_allclose(np.asarray(bank), np.asarray(fresh.bank[...]), atol=1e-6)
    assert not np.allclose(np.asarray(model.image(jnp.zeros((8, 16, 16, 3)))),
                           np.asarray(fresh.image(jnp.zeros((8, 16, 16, 3)))), atol=1e-4)  # the towers did train
    names = fashion.bank_images(c)
    assert {pipeline.image_key(p) for p in names} == set(keys[:20].tolist())
    restored = trainer.restore_model(c, str(tmp_path / "run" / "checkpoints"), mesh, fashion.METHOD)
    np.testing.assert_array_equal(np.asarray(restored.bank[...]), np.asarray(bank))
    np.testing.assert_array_equal(np.asarray(restored.bank_keys[...]), keys)


def test_the_demo_smoke_writes_every_row_with_fashioniq_keys(tmp_path):
    work = str(tmp_path / "w")
    fast = ["--config.prepare.num_train=150", "--config.prepare.num_val_queries=15", "--config.prepare.num_test_queries=3",
            "--config.warmup.train.steps=5", "--config.train.steps=3", "--config.stages.fashion_align.train.steps=3",
            "--config.stages.pvlf.train.steps=3", "--config.model.fashion.bank_size=64", "--config.train.batch_size=16",
            "--config.stages.fashion_align.train.batch_size=16", "--config.stages.pvlf.train.batch_size=16",
            "--config.warmup.train.batch_size=16"]
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", "configs/fashion_demo.py:smoke", "--workdir", work] + fast
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(os.path.join(work, "results.json")) as f:
        results = json.load(f)
    for row in ("fashion", "fashion_stage2_only", "fashion_no_bank", "pvlf", "image_plus_text"):
        fiq = results[row]["fashioniq"]
        for cat in ("dress", "shirt", "toptee", "average"):
            for k in (10, 50):
                assert 0.0 <= fiq[f"{cat}/recall@{k}"] <= 100.0
    assert "fashion_stage2_only" in run.stdout and "average/recall@10" in run.stdout


def test_real_config_runs_locally_with_a_local_clip(tmp_path):
    """configs/fashion_clip_b32.py:runlocal on a transformers CLIP: the fashion synthesis (exact answers on garment
    images: the rule_based backend), stage 1 and stage 2 with a bank, evaluated in the FashionIQ layout."""
    from zscir_jax.data import garments
    from test_mvftji import _tiny_hf_clip

    clip_dir = _tiny_hf_clip(str(tmp_path / "clip"))
    root = str(tmp_path / "garments")
    garments.build(root, num_train=40, num_val_queries=6, num_test_queries=3, image_size=32)
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "fashion_clip_b32.py:runlocal"),
           "--workdir", str(workdir), f"--config.model.clip_path={clip_dir}",
           "--config.synthesis.data.kind=garments", f"--config.synthesis.data.root={root}",
           "--config.synthesis.backend.kind=rule_based", f"--config.evals.fashioniq.root={root}",
           "--config.data.image_size=32", "--config.data.max_length=24"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.load(open(workdir / "results.json"))
    assert {"fashion", "fashion_untrained", "image_only", "text_only", "image_plus_text"} <= set(results)
    assert "average/recall@10" in results["fashion"]["fashioniq"]
    assert (workdir / "fashion_align" / "export").is_dir()
    assert max(int(n) for n in os.listdir(workdir / "fashion" / "checkpoints")) == 10  # runlocal: a few steps
