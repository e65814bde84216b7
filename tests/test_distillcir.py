"""Pic2Word and DistillCIR: the pseudo token's splice and slot, the templated tokenizer, per-record features in the
triplet pipeline (aligned through a shuffled loader, refused for other triplets), the teacher (LoRA only) and the
student (the two terms, masked rows), ``config.stages`` (merge, checks, eval mode), the demo smoke from the command
line, and the real config on local checkpoints."""
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

from zscir_jax.data import features, fake_data, pipeline, scenes, tokenizer
from zscir_jax.errors import UserError
from zscir_jax.methods import distillcir, pic2word
from zscir_jax.models import clip
from zscir_jax.train import stages, trainer

import tiny_llava
from test_mvftji import _tiny_hf_clip

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
common = runpy.run_path(os.path.join(ROOT, "configs", "common.py"))
WORDS = "a photo of that make it red blue the square circle in one word describe"


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    return tokenizer.build_word_tokenizer([WORDS], str(tmp_path_factory.mktemp("tok")), max_length=12)


def tiny_distillcir(tok_dir, **loss):
    """common.distillcir() at test size on random arrays (no stages: the tests add what they need)."""
    c = common["distillcir"]()
    tok = tokenizer.Tokenizer.from_dir(tok_dir, 12)
    c.model.clip_tiny = dict(vocab_size=tok.vocab_size, image_size=16, patch_size=8, width=32, layers=1,
                             max_length=12, eos_token_id=tok.eos_token_id)
    c.data.update(tokenizer=tok_dir, max_length=12, source="random")
    c.model.pic2word.update(hidden=16, layers=2, dropout=0.0)
    c.model.distillcir.lora.update(rank=2)
    c.model.teacher.lora.update(rank=2, dropout=0.0)
    c.loss.update(temperature=0.1, **loss)
    c.optim.lr = dict(lora=1e-2, mapping=1e-2, projection=1e-2)
    c.train.update(steps=3, batch_size=8, log_every=1, checkpoint_every=3, progress_bar=False)
    del c["stages"]
    return c


# ------------------------------------------------------------------------------------------------ the pseudo token

def test_the_text_tower_on_its_own_token_embeddings_is_encode_text():
    model = clip.CLIPModel(clip.CLIPConfig.tiny(vocab_size=50, max_length=10), rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 49, (4, 10)), jnp.int32)
    mask = jnp.ones_like(ids)
    tokens = model.text_model.embeddings.token_embedding(ids)
    np.testing.assert_allclose(model.encode_text_embeds(ids, mask, tokens), model.encode_text(ids, mask), atol=1e-6)


def test_the_pseudo_token_takes_the_placeholders_position_and_only_it(word_tokenizer):
    c = tiny_distillcir(word_tokenizer)
    slot, (ids, mask) = pic2word.slot_and_prompt(c)
    assert slot == 4  # BOS a photo of *
    model = pic2word.build(c, nnx.Rngs(0))
    prompt_ids, prompt_mask = model.prompt_batch(2)
    v = jax.random.normal(jax.random.key(0), (2, model.clip.config.projection_dim))
    # The output moves with the image embedding, and equals the tower on hand-spliced embeddings.
    out = model.compose(v, prompt_ids, prompt_mask)
    tokens = model.clip.text_model.embeddings.token_embedding(prompt_ids).at[:, slot].set(model.mapping(v))
    np.testing.assert_allclose(out, model.clip.encode_text_embeds(prompt_ids, prompt_mask, tokens), atol=1e-6)
    assert not np.allclose(out[0], model.compose(v[::-1], prompt_ids, prompt_mask)[0])


def test_prompts_with_the_placeholder_elsewhere_are_one_user_error(word_tokenizer):
    c = tiny_distillcir(word_tokenizer)
    c.model.pic2word.prompt = "a photo of red * that {text}"
    with pytest.raises(UserError, match="give both the same words before it"):
        pic2word.slot_and_prompt(c)
    c.model.pic2word.prompt = "a photo of that {text}"
    with pytest.raises(UserError, match="lacks the placeholder"):
        pic2word.check(c)
    c.model.pic2word.prompt = "a photo of * that {instruction}"
    with pytest.raises(UserError, match=r"config.model.pic2word.prompt=.*\{text\}"):
        pic2word.check(c)


def test_templated_tokenizer_writes_the_template_and_ends_on_eos(tmp_path):
    tiny_llava.make_tokenizer_dir(str(tmp_path))  # "<s> $A": no EOS of its own, like Llama's
    base = tokenizer.Tokenizer.from_dir(str(tmp_path), 8)
    eos = base.eos_token_id
    tok = tokenizer.Templated(base, "make {text} red", append_eos=True)
    ids, mask = tok(["the square", "the square and the circle and the square"])
    n = mask.sum(1)
    assert ids[0, n[0] - 1] == eos and n[0] == 6  # <s> make the square red </s>
    np.testing.assert_array_equal(ids[0, :5], base(["make the square red"])[0][0, :5])
    assert n[1] == 8 and ids[1, -1] == eos  # cut at max_length: EOS over the last kept token
    assert tokenizer.Templated(base, "{text}")(["the square"])[0][0].tolist().count(eos) == 0


# --------------------------------------------------------------------------------------------- per-record features

def test_features_follow_their_records_through_a_shuffled_loader(tmp_path):
    root = scenes.build(str(tmp_path / "scenes"), num_train=12, num_val_queries=2, num_test_queries=2, image_size=16)
    records = [{"reference_image": p, "modification_text": f"record {i}", "target_text": f"caption {i}"}
               for i, (p, _) in enumerate(scenes.train_pairs(root)[:12])]
    table = np.arange(12, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    features.write(str(tmp_path / "f"), table, [r["target_text"] for r in records])

    def tok(texts):  # the record's number as its one token
        ids = np.array([[int(t.split()[-1])] for t in texts], np.int32)
        return ids, np.ones_like(ids)

    loaded = features.RecordFeatures(str(tmp_path / "f"), [r["target_text"] for r in records])
    it = pipeline.triplet_loader(records, global_batch_size=4, image_size=16, tokenizer=tok, seed=3,
                                 process_index=0, process_count=1, features={"teacher_target": loaded})
    seen = []
    for _ in range(3):
        batch = next(it)
        np.testing.assert_array_equal(batch["teacher_target"][:, 0], batch["text_ids"][:, 0])
        seen += batch["text_ids"][:, 0].tolist()
    assert sorted(seen) == list(range(12)) and seen != list(range(12))  # one shuffled epoch


def test_features_written_for_other_triplets_are_refused(tmp_path):
    features.write(str(tmp_path), np.zeros((2, 4), np.float32), ["a", "b"])
    assert features.RecordFeatures(str(tmp_path), ["a", "b"]).dim == 4
    with pytest.raises(UserError, match="written for other triplets"):
        features.RecordFeatures(str(tmp_path), ["a", "c"], "config.data.features.teacher_target")
    with pytest.raises(UserError, match="not a features directory"):
        features.RecordFeatures(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------- the two models

def test_the_teacher_trains_only_its_lora_adapters(word_tokenizer, tmp_path):
    c = tiny_distillcir(word_tokenizer)
    c.method = "distillcir_teacher"
    c.optim.update(groups=distillcir.TEACHER_GROUPS, frozen=distillcir.TEACHER_FROZEN, finetune="both")
    c.optim.lr = dict(lora=1e-2)
    c.model.teacher.llm = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    before = distillcir.teacher_build(c, nnx.Rngs(c.seed))
    after = trainer.train(c, str(tmp_path / "teacher"), trainer.sharding.make_mesh((-1, 1, 1)))
    rows = trainer.read_metrics(str(tmp_path / "teacher"))
    assert all(np.isfinite(r["loss"]) for r in rows.values())
    adapters = lambda m: nnx.state(m, nnx.LoRAParam)  # noqa: E731
    frozen = lambda m: nnx.state(m, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))  # noqa: E731
    for a, b in zip(jax.tree.leaves(frozen(before)), jax.tree.leaves(frozen(after))):
        np.testing.assert_allclose(a, b, atol=1e-7)  # eager vs jitted initialisation: float rounding only
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(adapters(before)),
                                                          jax.tree.leaves(adapters(after)))]
    assert max(moved) > 1e-3


@pytest.fixture(scope="module")
def student(word_tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher_features"))
    features.write(path, np.zeros((3, 8), np.float32), ["x", "y", "z"])  # only its dim is read at build
    c = tiny_distillcir(word_tokenizer)
    c.data.features.teacher_target = path
    return c, distillcir.build(c, nnx.Rngs(0))


def student_batch(config, n=8, seed=0):
    t = config.model.clip_tiny
    b = next(fake_data.RandomTriplets(batch_size=n, image_size=t.image_size, max_length=t.max_length,
                                      vocab_size=t.vocab_size, seed=seed))
    b["teacher_target"] = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    return {k: jnp.asarray(v) for k, v in b.items()}


def test_student_loss_is_the_weighted_sum_and_rows_without_a_caption_take_no_part(student):
    c, model = student
    batch = student_batch(c)
    total, m = distillcir.loss(model, batch, c)
    assert float(total) == pytest.approx(float(m["loss_contrastive"] + m["loss_feature"]), rel=1e-6)
    c2 = c.copy_and_resolve_references()
    c2.loss.feature_weight = 0.0
    alone, m2 = distillcir.loss(model, batch, c2)
    assert float(alone) == pytest.approx(float(m["loss_contrastive"])) and "loss_feature" not in m2
    keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
    masked = dict(batch, has_target_text=jnp.asarray(keep))
    subset = {k: v[keep] for k, v in batch.items()}
    np.testing.assert_allclose(distillcir.loss(model, masked, c)[0], distillcir.loss(model, subset, c)[0], rtol=1e-5)


def test_student_mistakes_are_user_errors(word_tokenizer):
    c = tiny_distillcir(word_tokenizer, feature_loss="l2")
    with pytest.raises(UserError, match="config.loss.feature_loss='l2'"):
        distillcir.check(c)
    c = tiny_distillcir(word_tokenizer)
    with pytest.raises(UserError, match="needs the teacher's features"):
        distillcir.check(c)  # feature_weight 1, no features and no teacher stage
    c.loss.update(feature_weight=0.0, contrastive_weight=0.0)
    with pytest.raises(UserError, match="nothing to train"):
        distillcir.check(c)


# ------------------------------------------------------------------------------------------------------ the stages

def test_a_stage_config_is_the_main_config_with_its_overrides():
    c = common["distillcir"]()
    sc = stages.stage_config(c, "pic2word")
    assert sc.method == "pic2word" and sc.model.pic2word.prompt == "a photo of * , {text}"
    assert sc.model.pic2word.hidden == c.model.pic2word.hidden  # merged key by key, not replaced
    assert sc.optim.lr.mapping == 1e-4 and sc.data.source == "pairs"
    assert "stages" not in sc and "prepare" not in sc and not sc.evals
    assert stages.names(c) == sorted(stages.names(c))  # the order they run in
    c.stages.pic2word.bogus = dict(x=1)
    with pytest.raises(UserError, match="config.stages.pic2word.bogus"):
        stages.stage_config(c, "pic2word")


def test_stage_mistakes_are_found_before_anything_runs():
    c = common["distillcir"]()
    c.stages.pic2word.output = "model.nothing_here.init_from"
    with pytest.raises(UserError, match="config.stages.pic2word.output"):
        stages.check(c, "train")
    c = common["distillcir"]()
    c.stages.pic2word.method = "image_only"
    with pytest.raises(UserError, match="training-free"):
        stages.check(c, "train")
    c = common["distillcir"]()
    c.stages.pic2word.train = dict(batch_size=0)
    with pytest.raises(UserError, match="config.train.batch_size=0"):
        stages.check(c, "train")


def test_eval_mode_without_a_stages_export_is_one_line(tmp_path):
    c = common["distillcir"]()
    with pytest.raises(UserError, match="stage distillcir_teacher has no export"):
        stages.run(c, str(tmp_path), None, "eval")


# ------------------------------------------------------------------------------------------------ the command line

SMALL = ["--config.prepare.num_train=120", "--config.prepare.num_val_queries=20", "--config.train.steps=6",
         "--config.warmup.train.steps=6", "--config.train.log_every=3",
         "--config.prepare.synthesis.demo_mllm.train.steps=4",
         "--config.stages.pic2word.train.steps=4", "--config.stages.distillcir_teacher.train.steps=4"]


def _main(workdir, *extra):
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "distillcir_demo.py:smoke"),
           "--workdir", str(workdir), *SMALL, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_demo_smoke_writes_its_rows_and_pictures_and_reevaluates_without_training(tmp_path):
    workdir = tmp_path / "distillcir"
    run = _main(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(workdir / "results.json"))
    assert {"distillcir", "distillcir_untrained", "pic2word", "image_plus_text"} <= set(results)
    for row in results.values():
        assert set(row) == {"cirr", "fashioniq", "circo"}
    assert os.path.isfile(workdir / "distillcir" / "eval" / "cirr_attention.png")
    meta = features.read_meta(str(workdir / "distillcir_teacher" / "export"))
    assert meta["count"] > 0 and meta["dim"] == 96  # the smoke demo MLLM's width
    metrics = trainer.read_metrics(str(workdir / "distillcir"))
    assert {"loss_contrastive", "loss_feature"} <= set(metrics[6])
    again = _main(workdir, "--config.mode=eval")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage pic2word: training" not in again.stdout and "distillcir:  " not in again.stderr
    scores = lambda r: {m: {e: {k: v for k, v in x.items() if "@" in k} for e, x in ev.items()}  # noqa: E731
                        for m, ev in r.items()}
    assert scores(json.load(open(workdir / "results.json"))) == scores(results)


def test_real_config_runs_locally_with_local_checkpoints(tmp_path):
    """configs/distillcir_clip_l14.py:runlocal on a transformers CLIP and a LLaVA export (the teacher): synthesis from
    a JSONL of captioned images (exact answers: the rule_based backend), both stages and the student."""
    clip_dir = _tiny_hf_clip(str(tmp_path / "clip"))
    tok_dir = str(tmp_path / "llava_tok")
    model, _ = tiny_llava.build(tok_dir)
    llava = tiny_llava.export(model, tok_dir, str(tmp_path / "llava"))
    root = scenes.build(str(tmp_path / "scenes"), num_train=24, num_val_queries=4, num_test_queries=2, image_size=32)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": p, "caption": c}) + "\n" for p, c in scenes.train_pairs(root)))
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config",
           os.path.join(ROOT, "configs", "distillcir_clip_l14.py:runlocal"), "--workdir", str(workdir),
           f"--config.model.clip_path={clip_dir}", f"--config.model.mllm_path={llava}",
           f"--config.synthesis.data.pairs={pairs}", "--config.synthesis.backend.kind=rule_based",
           f"--config.evals.cirr.root={root}", "--config.model.dtype=float32",
           "--config.data.image_size=32", "--config.data.max_length=24", "--config.model.pic2word.hidden=16"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(workdir / "results.json"))
    assert {"distillcir", "distillcir_untrained", "pic2word", "image_plus_text"} <= set(results)
    assert set(results["distillcir"]) == {"cirr"}
    assert features.read_meta(str(workdir / "distillcir_teacher" / "export"))["dtype"] == "float16"
