"""MVFT-JI: its two-task loss (weights, masks, which parts get gradient), the caption fields of the triplet pipeline,
joint inference (the scoring rule, the MLLM's target texts cached so a second evaluation generates nothing), the
one-line config mistakes, and ``configs/mvftji_demo.py:smoke`` from the command line with its result rows."""
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

from zscir_jax import methods
from zscir_jax.data import cirr, fake_data, pipeline, scenes
from zscir_jax.errors import UserError
from zscir_jax.evaluation import gallery as gallery_lib
from zscir_jax.evaluation import compare, joint
from zscir_jax.methods import mvftji
from zscir_jax.synthesis import target_text
from zscir_jax.train import preflight, trainer

import tiny_llava
from test_evaluator import TrivialEncoder, make_cirr_like

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
common = runpy.run_path(os.path.join(ROOT, "configs", "common.py"))


def tiny_config(**loss):
    c = common["tiny"]("mvftji")
    c.loss.update(loss)
    return c


def random_batch(config, batch=8, seed=0):
    t = config.model.clip_tiny
    it = fake_data.RandomTriplets(batch_size=batch, image_size=t.image_size, max_length=t.max_length,
                                  vocab_size=t.vocab_size, seed=seed)
    return {k: jnp.asarray(v) for k, v in next(it).items()}


@pytest.fixture(scope="module")
def model():
    return mvftji.build(tiny_config(), nnx.Rngs(0))


def loss_of(model, batch, **weights):
    value, metrics = mvftji.loss(model, batch, tiny_config(**weights))
    return float(value), metrics


# ------------------------------------------------------------------------------------------------------ the loss

def test_loss_is_the_weighted_sum_of_the_two_tasks(model):
    batch = random_batch(tiny_config())
    both, metrics = loss_of(model, batch)
    task1, _ = loss_of(model, batch, caption_weight=0.0)
    task2, _ = loss_of(model, batch, target_text_weight=0.0)
    assert both == pytest.approx(task1 + task2, rel=1e-6)
    assert float(metrics["loss_target_text"]) == pytest.approx(task1, rel=1e-6)
    assert float(metrics["loss_caption"]) == pytest.approx(task2, rel=1e-6)
    weighted, _ = loss_of(model, batch, caption_weight=0.25, target_text_weight=2.0)
    assert weighted == pytest.approx(2.0 * task1 + 0.25 * task2, rel=1e-6)
    with_image, m = loss_of(model, batch, target_image_weight=1.0)
    assert with_image > both and "loss_target_image" in m


@pytest.mark.parametrize("task,flag", [("target_text", "has_target_text"), ("caption", "has_caption")])
def test_rows_without_the_task_text_take_no_part(model, task, flag):
    """A row without a target text (or caption) changes nothing in that task: the loss equals the loss of the batch
    without the row, whatever the row's tokens hold; dropping the mask changes it (so the test can fail)."""
    only = {"target_text": dict(caption_weight=0.0), "caption": dict(target_text_weight=0.0)}[task]
    batch = random_batch(tiny_config(), batch=8, seed=3)
    keep = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    masked = dict(batch, **{flag: jnp.asarray(keep)})
    subset = {k: v[keep] for k, v in batch.items()}
    full, _ = loss_of(model, masked, **only)
    reference, _ = loss_of(model, subset, **only)
    assert full == pytest.approx(reference, rel=1e-5)
    scrambled = dict(masked, **{f"{task}_ids": masked[f"{task}_ids"].at[1].set(7).at[4].set(9)})
    assert loss_of(model, scrambled, **only)[0] == pytest.approx(reference, rel=1e-5)
    assert loss_of(model, batch, **only)[0] != pytest.approx(reference, rel=1e-3)


def _grad_norms(model, batch, config):
    def f(m):
        return mvftji.loss(m, batch, config)[0]

    grads = nnx.grad(f)(model)
    fusion = sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(nnx.state(grads.fusion)))
    text = sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(nnx.state(grads.clip.text_model)))
    return fusion, text


def test_task2_alone_trains_the_towers_not_the_fusion(model):
    batch = random_batch(tiny_config())
    fusion, text = _grad_norms(model, batch, tiny_config(target_text_weight=0.0))
    assert fusion == 0.0 and text > 0.0
    fusion, text = _grad_norms(model, batch, tiny_config())
    assert fusion > 0.0 and text > 0.0


def test_trains_on_the_mesh_and_logs_each_task(tmp_path):
    c = tiny_config()
    c.train.steps = 6
    model = trainer.train(c, str(tmp_path / "run"), trainer.sharding.make_mesh((-1, 1, 1)))
    rows = trainer.read_metrics(str(tmp_path / "run"))
    assert {"loss", "loss_target_text", "loss_caption", "target_text_recall@1"} <= set(rows[6])
    assert all(np.isfinite(r["loss"]) for r in rows.values())
    assert isinstance(model, mvftji.base.fusion.FusionRetriever)


# --------------------------------------------------------------------------------------------------- the pipeline

def test_triplet_batches_carry_the_caption_when_the_method_asks(tmp_path):
    root = scenes.build(str(tmp_path / "scenes"), num_train=8, num_val_queries=2, num_test_queries=2, image_size=16)
    pairs = scenes.train_pairs(root)
    records = [{"reference_image": p, "modification_text": "make it red", "target_text": c,
                "caption": c if k % 2 == 0 else None} for k, (p, c) in enumerate(pairs[:4])]

    def tok(texts):
        ids = np.array([[1] + [2 + len(w) for w in t.split()][:6] + [0] * (6 - len(t.split()[:6])) + [9]
                        for t in texts], np.int32)
        return ids, (ids > 0).astype(np.int32)

    fields = dict.fromkeys(("text", "target_text", "caption"), tok)
    batch = next(pipeline.triplet_loader(records, global_batch_size=4, image_size=16, tokenizer=fields, shuffle=False,
                                         process_index=0, process_count=1))
    assert batch["has_caption"].tolist() == [True, False, True, False]
    assert batch["has_target_text"].all() and batch["caption_ids"].shape == batch["text_ids"].shape
    np.testing.assert_array_equal(batch["caption_ids"][0], tok([pairs[0][1]])[0][0])
    plain = next(pipeline.triplet_loader(records, global_batch_size=4, image_size=16, tokenizer=tok, shuffle=False,
                                         process_index=0, process_count=1))
    assert "caption_ids" not in plain and "has_target_text" in plain


# ------------------------------------------------------------------------------------------------ joint inference

class ColourText(TrivialEncoder):
    """Queries are uninformative (a hashed word only); texts name a colour, so texts alone retrieve well."""

    def encode_queries(self, images, texts):
        return super().encode_queries(images, ["x" + t.replace(" ", "_") for t in texts])

    def encode_texts(self, texts):
        return super().encode_queries(None, texts)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_joint_scores_add_lambda_times_the_text_similarity(tmp_path):
    bench = cirr.load(make_cirr_like(str(tmp_path / "cirr"), n_sets=3), "val")
    texts_for = lambda b: [q.text for q in b.queries]  # noqa: E731  (a perfect "MLLM": the asked colour)
    enc = ColourText()
    kw = dict(image_size=8, log=None, exclude_reference=False)
    query = joint.evaluate(bench, enc, joint.Scoring("query"), texts_for, **kw)
    text = joint.evaluate(bench, enc, joint.Scoring("text"), texts_for, **kw)
    zero = joint.evaluate(bench, enc, joint.Scoring("joint", 0.0), texts_for, **kw)
    assert text["recall_subset@1"] == 100.0 > query["recall_subset@1"]
    assert {k: v for k, v in zero.items() if "@" in k} == {k: v for k, v in query.items() if "@" in k}
    # The ranks of a joint run are those of the explicit score sim(q, g) + lambda * sim(t, g).
    lam = 0.3
    work = str(tmp_path / "w")
    joint.evaluate(bench, enc, joint.Scoring("joint", lam), texts_for, workdir=work, num_pictures=0, **kw)
    gallery = _unit(enc.encode_images(gallery_lib.load_images([bench.image_path(n) for n in bench.gallery], 8)))
    q = _unit(enc.encode_queries(None, [x.text for x in bench.queries]))
    t = _unit(enc.encode_texts([x.text for x in bench.queries]))
    scores = q @ gallery.T + lam * t @ gallery.T
    target = np.array([bench.gallery.index(x.targets[0]) for x in bench.queries])
    expected_r1 = 100.0 * np.mean(np.argmax(scores, 1) == target)
    saved = json.load(open(os.path.join(work, "eval", "cirr_val.json")))
    assert saved["recall@1"] == pytest.approx(expected_r1)


@pytest.fixture(scope="module")
def llava_checkpoint(tmp_path_factory):
    tok_dir = str(tmp_path_factory.mktemp("tok"))
    model, _ = tiny_llava.build(tok_dir)
    return tiny_llava.export(model, tok_dir, str(tmp_path_factory.mktemp("export") / "tiny_llava"))


def synth_config(checkpoint):
    c = runpy.run_path(os.path.join(ROOT, "configs", "synth", "mvftji.py"))["get_config"]()
    c.backend.update(checkpoint=checkpoint, dtype="float32", param_dtype="float32")
    c.sampling.max_new_tokens = 6
    c.batch_size = 4
    return c


def test_target_texts_are_cached_so_a_second_evaluation_generates_nothing(tmp_path, llava_checkpoint):
    root = scenes.build(str(tmp_path / "scenes"), num_train=8, num_val_queries=6, num_test_queries=2, image_size=16)
    bench = cirr.load(root, "val")
    pairs = [(bench.image_path(q.reference), q.text) for q in bench.queries]
    work = str(tmp_path / "work")
    first = target_text.TargetTextWriter(synth_config(llava_checkpoint), work, progress=False)
    texts = first(pairs, name="cirr_val")
    assert len(texts) == len(pairs) and all(isinstance(t, str) and t for t in texts)
    assert first.counts["generated"] == len(set(pairs)) and first.counts["cached"] == 0
    again = target_text.TargetTextWriter(synth_config(llava_checkpoint), work, progress=False)
    assert again(pairs, name="cirr_val") == texts
    assert again.counts["generated"] == 0 and again.counts["cached"] == len(set(pairs))
    rows = [json.loads(line) for line in open(os.path.join(work, "joint_inference", "cirr_val.jsonl"))]
    assert [r["target_text"] for r in rows] == texts
    # A different P_tt is a different generation.
    changed = synth_config(llava_checkpoint)
    changed.templates.target = "After this change: {modification}\nDescribe the new image."
    other = target_text.TargetTextWriter(changed, work, progress=False)
    other(pairs[:2], name="cirr_val_changed")
    assert other.counts["generated"] == 2


# ---------------------------------------------------------------------------------------------- config mistakes

def demo_config(arg="smoke"):
    return runpy.run_path(os.path.join(ROOT, "configs", "mvftji_demo.py"))["get_config"](arg)


@pytest.mark.parametrize("key,value,message", [
    ("model.composer", "qformer", "config.model.composer='qformer': allowed values are fusion"),
    ("loss.target_text_weight", -1.0, "config.loss.target_text_weight=-1.0: must be >= 0"),
    ("joint.mode", "both", "config.joint.mode='both': allowed values are query, text, joint"),
    ("joint.also", ("query_only", "lambda"), "config.joint.also: unknown entry 'lambda'"),
    ("joint.also", ("joint:x",), "needs a number after 'joint:'"),
    ("joint.weight", float("nan"), "config.joint.weight=nan: must be a finite number"),
])
def test_mistakes_are_user_errors_before_any_stage(key, value, message):
    c = demo_config()
    node = c
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    with c.unlocked():
        node[last] = value
    with pytest.raises(UserError, match=None) as e:
        preflight.check(c, methods.get(c.method), mode="train")
    assert message in str(e.value)


def test_all_weights_zero_and_a_missing_target_writer_are_refused():
    c = demo_config()
    c.loss.update(target_text_weight=0.0, caption_weight=0.0)
    with pytest.raises(UserError, match="all 0: nothing to train"):
        preflight.check(c, methods.get("mvftji"), mode="train")
    c = demo_config()
    with c.unlocked():
        del c.joint["synthesis"]
    with pytest.raises(UserError, match="config.joint.synthesis is missing"):
        preflight.check(c, methods.get("mvftji"), mode="train")
    c = demo_config()
    c.method = "pvlf"
    with pytest.raises(UserError, match="method pvlf has no text embedding"):
        preflight.check(c, methods.get("pvlf"), mode="train")


def test_unknown_config_argument():
    with pytest.raises(ValueError, match="unknown config argument"):
        demo_config("smoke,task3_only")


# ------------------------------------------------------------------------------------------------ the command line

SMALL = ["--config.prepare.num_train=120", "--config.prepare.num_val_queries=20", "--config.train.steps=6",
         "--config.warmup.train.steps=6", "--config.train.log_every=3", "--config.prepare.synthesis.limit=12",
         "--config.prepare.synthesis.demo_mllm.train.steps=10"]


def _main(workdir, *extra):
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "mvftji_demo.py:smoke"),
           "--workdir", str(workdir), *SMALL, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


def _cache_lines(workdir):
    d = os.path.join(workdir, "joint_inference", "cache")
    return sum(len(open(os.path.join(d, f)).read().splitlines()) for f in os.listdir(d))


def test_demo_smoke_from_the_command_line_writes_the_rows_and_reevaluates_from_the_cache(tmp_path):
    workdir = tmp_path / "mvftji"
    run = _main(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(workdir / "results.json"))
    assert {"mvftji", "mvftji_query_only", "mvftji_untrained", "image_plus_text", "mvftji_text_only",
            "mvftji_joint_0.5", "mvftji_joint_2"} <= set(results)
    for row in results.values():
        assert set(row) == {"cirr", "fashioniq", "circo"}
    assert os.path.isfile(workdir / "joint_inference" / "cirr_val.jsonl")
    # Every row's per-query ranks are written, and give back the row's recalls (what compare resamples).
    paired = compare.compare(str(workdir), "image_plus_text", "cirr", ["recall@5", "recall_subset@1"])
    for row, vals in paired.items():
        assert vals["recall@5"][0] == pytest.approx(results[row]["cirr"]["recall@5"])
        assert vals["recall_subset@1"][0] == pytest.approx(results[row]["cirr"]["recall_subset@1"])
    generated = _cache_lines(workdir)
    assert generated > 0
    again = _main(workdir, "--config.mode=eval")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _cache_lines(workdir) == generated  # nothing generated the second time
    scores = lambda r: {m: {e: {k: v for k, v in x.items() if "@" in k} for e, x in ev.items()}  # noqa: E731
                        for m, ev in r.items()}
    assert scores(json.load(open(workdir / "results.json"))) == scores(results)


def _tiny_hf_clip(path):
    """A transformers CLIP directory (weights, config, a word-level tokenizer over the scenes' words)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted(set(" ".join([*scenes.SHAPES, *scenes.COLOURS, *scenes.SIZES, *scenes.POSITIONS,
                                 "a the and at on in make change remove add"]).split()))
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                         bos_token="<|startoftext|>", eos_token="<|endoftext|>").save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16), projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(path)
    return path


def test_real_config_runs_locally_on_a_folder_of_images_with_local_checkpoints(tmp_path, llava_checkpoint):
    """configs/mvftji_clip_b32.py:runlocal as its docstring says, on a transformers CLIP and a LLaVA export: the
    synthesis stage over a folder of images, training, and joint inference with the LLaVA's target texts."""
    clip_dir = _tiny_hf_clip(str(tmp_path / "clip"))
    root = scenes.build(str(tmp_path / "scenes"), num_train=10, num_val_queries=4, num_test_queries=2, image_size=32)
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "mvftji_clip_b32.py:runlocal"),
           "--workdir", str(workdir), f"--config.model.clip_path={clip_dir}",
           f"--config.synthesis.backend.checkpoint={llava_checkpoint}",
           f"--config.synthesis.data.folder={os.path.join(root, 'train')}", f"--config.evals.cirr.root={root}",
           "--config.synthesis.limit=6", "--config.synthesis.sampling.max_new_tokens=6",
           "--config.synthesis.backend.dtype=float32", "--config.synthesis.backend.param_dtype=float32",
           "--config.data.image_size=32", "--config.data.max_length=24", "--config.train.steps=3",
           "--config.train.batch_size=8", "--config.eval.batch_size=8", "--config.model.fusion.heads=2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.load(open(workdir / "synthesis" / "mvftji" / "manifest.json"))
    assert manifest["items"] == 6 and manifest["records"] >= 1
    results = json.load(open(workdir / "results.json"))
    assert {"mvftji", "mvftji_query_only", "mvftji_text_only", "image_plus_text"} <= set(results)
    assert set(results["mvftji"]) == {"cirr"}  # FashionIQ / CIRCO roots left empty: skipped with a warning
    assert "config.evals.circo.root is empty" in run.stderr
    rows = [json.loads(x) for x in open(workdir / "joint_inference" / "cirr_val.jsonl")]
    assert len(rows) == 4 and all(r["reference"].startswith(root) for r in rows)


def test_real_config_without_its_checkpoint_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "mvftji_clip_b32.py"),
           "--workdir", str(tmp_path / "w")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert "config.synthesis.backend.checkpoint is empty" in lines[0]
    assert not os.path.exists(tmp_path / "w" / "synthesis")
