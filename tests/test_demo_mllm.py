"""The demo MLLM (zscir_jax.demo.mllm): its supervision is exact and parses with the recipes' parsers; its tokenizer
round-trips every text and loads through the same processor as a real LLaVA; the smoke build trains, exports,
reloads and captions train images better than an untrained model; a second build_or_reuse trains nothing."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from zscir_jax.data import scenes
from zscir_jax.demo import mllm_data as md
from zscir_jax.synthesis import prompts

Obj, Scene, Edit = scenes.Obj, scenes.Scene, scenes.Edit
# a large red circle at the top left and a small blue square in the centre
TWO = Scene.of([Obj(0, "circle", "red", "large"), Obj(4, "square", "blue", "small")])
ONE = Scene.of([Obj(8, "triangle", "green", "small")])


# ------------------------------------------------------------------------------------------------ supervision

def _relative_lists(prompt):
    """The two attribute lists of a FASHION_RELATIVE prompt, parsed."""
    body = prompt.split("Attributes of the reference image:\n", 1)[1]
    ref, rest = body.split("\nAttributes of the target image:\n")
    return prompts.attributes(ref)["items"], prompts.attributes(rest.split("\nWrite a short")[0])["items"]


def test_answers_of_a_known_scene_are_exact():
    caption = "a large red circle at the top left and a small blue square in the centre"
    assert md.caption_example(TWO, 5) == md.Example("caption", prompts.MVFTJI_CAPTION, caption, 5)
    att = md.attributes_example(TWO)
    assert att.prompt == prompts.FASHION_ATTRIBUTES
    assert att.answer == ("item 1: shape circle, colour red, size large, position top left\n"
                          "item 2: shape square, colour blue, size small, position centre")
    assert prompts.attributes(att.answer)["items"] == [
        {"shape": "circle", "colour": "red", "size": "large", "position": "top left"},
        {"shape": "square", "colour": "blue", "size": "small", "position": "centre"}]
    rng = np.random.default_rng(0)
    t = md.target_example(TWO, rng, edit=Edit("colour", 0, "green"), modification="make the circle green")
    assert t.prompt == prompts.MVFTJI_TARGET.format(modification="make the circle green")
    assert t.answer == "a large green circle at the top left and a small blue square in the centre"
    t = md.target_example(TWO, rng, edit=Edit("move", 1, 8))
    assert t.answer == "a large red circle at the top left and a small blue square at the bottom right"
    assert t.prompt.split(": ", 1)[1].split("\n")[0] in md.edit_phrasings(TWO, Edit("move", 1, 8))


def test_edit_phrasings_are_the_training_templates():
    got = md.edit_phrasings(TWO, Edit("colour", 0, "green"))
    assert "make the circle green" in got and "make the red circle green" in got  # both referring expressions
    assert "change the colour of the circle to green" in got
    assert not got & {"paint the circle green", "turn the circle green"}  # benchmark phrasings: never trained
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = scenes.random_scene(rng)
        e = scenes.random_edit(s, rng)
        assert md.edit_text(s, e, rng) in md.edit_phrasings(s, e)


def test_distillcir_answer_parses_and_applies_the_edit():
    block = md.distillcir_example_block(ONE, np.random.default_rng(0))  # the few-shot block about ONE
    ex = md.distillcir_example(TWO, np.random.default_rng(0), others=[ONE], edit=Edit("remove", 1))
    assert ex.prompt == prompts.DISTILLCIR.format(examples=block, caption=TWO.caption)
    assert ex.prompt.endswith("Example:\nInput: " + ONE.caption + block.split(ONE.caption, 1)[1] + "Input: " +
                              TWO.caption)
    p = prompts.distillcir(ex.answer)
    assert p["modified_caption"] == "a large red circle at the top left"
    assert p["instruction"] in md.edit_phrasings(TWO, Edit("remove", 1))
    assert p["brainstorming"] == "the scene holds 2 object(s); change one by a single remove edit."
    parsed = prompts.distillcir(block)
    edit = scenes.diff(ONE, scenes.parse_caption(parsed["modified_caption"]))
    assert edit is not None and parsed["instruction"] in md.edit_phrasings(ONE, edit)


def test_collm_and_relative_answers():
    rng = np.random.default_rng(0)
    b = scenes.apply_edit(TWO, Edit("shape", 0, "ring"))
    ex = md.collm_example(TWO, b, rng)
    assert ex.prompt == prompts.COLLM.format(reference_caption=TWO.caption, target_caption=b.caption)
    assert ex.answer in md.edit_phrasings(TWO, Edit("shape", 0, "ring"))
    far = scenes.apply_edit(b, Edit("size", 1, "large"))
    assert md.collm_example(TWO, far, rng).answer == f"show {far.caption} instead"

    ex = md.relative_example(TWO, [(0, "colour", "white")], rng)
    ref, tgt = _relative_lists(ex.prompt)
    assert ref == md.attribute_items(TWO) and tgt[0]["colour"] == "white" and tgt[1] == ref[1]
    assert ex.answer in md.edit_phrasings(TWO, Edit("colour", 0, "white"))
    # two changes: phrased one after the other, each on the scene the previous one made
    ex = md.relative_example(TWO, [(0, "size", "small"), (1, "position", "bottom right")], rng)
    first, second = ex.answer.split(" and ")
    assert first in md.edit_phrasings(TWO, Edit("size", 0, "small"))
    mid = scenes.apply_edit(TWO, Edit("size", 0, "small"))
    assert second in md.edit_phrasings(mid, Edit("move", 1, 8))
    # a change that reorders the items has no index-aligned target list
    assert md.relative_example(TWO, [(0, "position", "bottom right")], rng) is None


def test_relative_phrasings_hold_every_answer():
    rng = np.random.default_rng(5)
    for _ in range(100):
        s = scenes.random_scene(rng)
        changes = md.random_changes(s, rng, 1 + int(rng.integers(2)))
        ex = md.relative_example(s, changes, rng) if changes else None
        if ex is not None:
            assert ex.answer in md.relative_phrasings(s, changes)


@pytest.mark.parametrize("task", md.TASKS)
def test_every_task_parses_and_is_deterministic(task):
    rng = np.random.default_rng(3)
    pool = [scenes.random_scene(rng) for _ in range(40)]
    sup = md.Supervisor(pool)
    a = [sup.example(task, np.random.default_rng([7, k])) for k in range(60)]
    assert a == [sup.example(task, np.random.default_rng([7, k])) for k in range(60)]
    for ex in a:
        assert (ex.image is not None) == (task in md.IMAGE_TASKS) and ex.task == task
        if ex.image is not None:
            scene = pool[ex.image]
        if task == "caption":
            assert scenes.parse_caption(ex.answer) == scene
        elif task in ("modification", "modification_alt"):
            assert any(ex.answer in md.edit_phrasings(scene, e) for e in scenes.all_edits(scene))
        elif task == "target":
            text = ex.prompt.split(": ", 1)[1].split("\n")[0]
            target = scenes.parse_caption(ex.answer)
            edit = scenes.diff(scene, target)
            assert edit is not None and text in md.edit_phrasings(scene, edit)
        elif task == "attributes":
            assert prompts.attributes(ex.answer)["items"] == md.attribute_items(scene)
        elif task == "distillcir":
            p = prompts.distillcir(ex.answer)
            source = scenes.parse_caption(ex.prompt.rsplit("Input: ", 1)[1])
            edit = scenes.diff(source, scenes.parse_caption(p["modified_caption"]))
            assert edit is not None and p["instruction"] in md.edit_phrasings(source, edit)
        elif task == "collm":
            ref_cap = ex.prompt.split("reference image: ", 1)[1].split("\n")[0]
            tgt_cap = ex.prompt.split("target image: ", 1)[1].split("\n")[0]
            ref, tgt = scenes.parse_caption(ref_cap), scenes.parse_caption(tgt_cap)
            edit = scenes.diff(ref, tgt)
            assert ex.answer in md.edit_phrasings(ref, edit) if edit else ex.answer == f"show {tgt_cap} instead"
        elif task == "relative":
            assert prompts.one_line(ex.answer)["text"] == ex.answer
            ref, tgt = _relative_lists(ex.prompt)
            assert len(ref) == len(tgt) and 1 <= sum(a[k] != b[k] for a, b in zip(ref, tgt) for k in a) <= 2
        if task not in ("distillcir", "attributes"):
            assert prompts.one_line(ex.answer)["text"] == ex.answer  # what the recipes' line parser keeps


# ------------------------------------------------------------------------------------------------ tokenizer

def test_tokenizer_round_trips_and_serves_the_processor(tmp_path):
    from zscir_jax.demo import mllm as dm
    from zscir_jax.models import mllm
    from zscir_jax.models.llm.tokenizer import load_tokenizer

    rng = np.random.default_rng(0)
    pool = [scenes.random_scene(rng) for _ in range(60)]
    tok_dir = dm.build_tokenizer(md.corpus(pool, rng, per_task=40), str(tmp_path / "tok"))
    tok = load_tokenizer(tok_dir)
    assert (tok.hf.convert_tokens_to_ids(dm.IMAGE), tok.bos_token_id, tok.eos_token_ids, tok.pad_token_id) == (
        dm.IMAGE_ID, dm.BOS_ID, (dm.EOS_ID,), dm.PAD_ID)
    sup = md.Supervisor(pool)
    for task in md.TASKS:
        ex = sup.example(task, rng)
        for text in (ex.prompt, ex.answer):
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.decode(ids) == text
            if text is ex.answer:  # every word of the answers is one token
                assert len(ids) <= len(text.split()) * 2 + text.count("\n")
    assert tok.decode(tok.encode("Zebra café ☃", add_special_tokens=False)) == "Zebra café ☃"  # bytes, never unk
    proc = mllm.Processor(tok, image_token_id=dm.IMAGE_ID, image_seq_length=4,
                          preprocessor_config=dm.preprocessor_config(32), vision_image_size=32)
    msgs = md.messages("Describe this image in one sentence.", True)
    assert proc.prompt_text(msgs) == "USER: <image>\nDescribe this image in one sentence.\nASSISTANT: "
    ids = proc.prompt_ids(msgs)
    assert ids[0] == dm.BOS_ID and ids.count(dm.IMAGE_ID) == 4
    assert proc.prompt_text(md.messages("a\nb", False)) == "USER: a\nb\nASSISTANT: "


# ------------------------------------------------------------------------------------------------ the smoke build

def test_vision_tower_starts_from_the_exported_clip(tmp_path):
    from flax import nnx

    from zscir_jax.demo import mllm as dm
    from zscir_jax.methods import base
    from zscir_jax.models import clip

    towers = clip.CLIPModel(clip.CLIPConfig.tiny(width=32, image_size=32, patch_size=8), rngs=nnx.Rngs(3))
    base.export_towers(towers, str(tmp_path / "clip"))
    cfg = dm.model_config(dm.settings(True), towers.config.vision, vocab_size=50)
    model = dm.new_model(cfg, 0, str(tmp_path / "clip"))
    got, want = nnx.state(model.vision_tower.vision_model, nnx.Param), nnx.state(towers.vision_model, nnx.Param)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert cfg.image_token_id == dm.IMAGE_ID and cfg.image_seq_length == 16


def _config(**demo_mllm):
    """A synthesis-style config: small scenes (``data.scenes``) and the smoke demo MLLM."""
    return ml_collections.ConfigDict({
        "data": {"scenes": {"num_train": 200, "num_val_queries": 10, "num_test_queries": 4, "image_size": 32,
                            "seed": 0}},
        # No CLIP warm-up (its copy into the vision tower is tested on its own): a random vision tower.
        "demo_mllm": {"smoke": True, "prepare": {"overrides": (("warmup.train.steps", 0),)}, **demo_mllm}})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from zscir_jax import sharding
    from zscir_jax.demo import mllm as dm

    workdir = str(tmp_path_factory.mktemp("demo_mllm"))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])  # one device: faster on 2 cores than the 8 forced ones
    path = dm.build_or_reuse(_config(), workdir, mesh=mesh, progress=False)
    return workdir, path, mesh


def test_smoke_build_exports_and_beats_an_untrained_model(smoke):
    from flax import nnx

    from zscir_jax.demo import mllm as dm
    from zscir_jax.models import mllm

    workdir, path, _ = smoke
    assert path == os.path.join(workdir, "demo_mllm", "export")
    assert os.path.isfile(os.path.join(path, mllm.EXPORT_MARKER))
    model, proc = mllm.load(path), mllm.load_processor(path)
    assert proc.image_token_id == model.config.image_token_id == dm.IMAGE_ID
    assert proc.image_seq_length == 16 and proc.image_size == 32  # 32 px, patch 8
    root = os.path.join(workdir, "scenes")
    train = scenes.load_scenes(root, "train")
    paths = scenes.image_paths(root, "train")
    names = sorted(train)[:8]
    items = [(prompts.MVFTJI_CAPTION, paths[n]) for n in names]
    gold = [train[n].caption for n in names]
    trained = dm.generate(model, proc, items, max_new_tokens=40, batch_size=8)
    untrained = dm.generate(mllm.MLLM(model.config, rngs=nnx.Rngs(1)), proc, items, max_new_tokens=40, batch_size=8)
    f1 = np.mean([dm.token_f1(c, g) for c, g in zip(trained, gold)])
    f1_untrained = np.mean([dm.token_f1(c, g) for c, g in zip(untrained, gold)])
    assert f1 > f1_untrained + 0.3, (f1, f1_untrained, trained[:2])
    built = json.load(open(os.path.join(workdir, "demo_mllm", "settings.json")))
    assert built["scenes"]["num_train"] == 200 and built["settings"]["smoke"] is True
    quality = json.load(open(os.path.join(workdir, "demo_mllm", "quality.json")))
    assert quality["steps"] == dm.settings(True).train.steps and quality["train_s"] > 0


def test_build_or_reuse_reuses_and_rebuilds_on_other_settings(smoke, monkeypatch, tmp_path):
    import shutil

    from zscir_jax.demo import mllm as dm

    workdir, path, mesh = smoke

    class Called(Exception):
        pass

    def boom(*a, **k):
        raise Called

    monkeypatch.setattr(dm, "prepare", boom)
    monkeypatch.setattr(dm, "train", boom)
    assert dm.build_or_reuse(_config(), workdir, mesh=mesh, progress=False) == path  # nothing prepared or trained
    for other in (_config(seed=1), _config(llm={"num_layers": 1})):  # other settings: built again
        copy = tmp_path / "w"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(os.path.join(workdir, "demo_mllm"), copy / "demo_mllm")
        with pytest.raises(Called):
            dm.build_or_reuse(other, str(copy), mesh=mesh, progress=False)
        assert not os.path.exists(copy / "demo_mllm" / "export")  # the stale export is gone
    more_scenes = _config()
    more_scenes.data.scenes.num_train = 201
    with pytest.raises(Called):  # other scenes: built again
        dm.build_or_reuse(more_scenes, str(copy), mesh=mesh, progress=False)


def test_training_resumes_where_it_stopped(smoke, tmp_path, monkeypatch):
    from flax import nnx

    from zscir_jax.demo import mllm as dm

    workdir, _, mesh = smoke
    root = os.path.join(workdir, "scenes")
    s = dm.settings(True)
    dm._update(s, {"llm": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1}, "tokenizer": {"per_task": 20},
                   "train": {"steps": 4, "checkpoint_every": 2, "tokens_per_batch": 320,
                             "group_weights": {"image": 0.0, "long": 0.0}}}, "test")  # one shape: text prompts
    uninterrupted, _, _ = dm.train(s, root, None, str(tmp_path / "a"), mesh, progress=False)
    real = dm.Batches.batch

    def stop_at_3(self, step):
        if step == 3:
            raise KeyboardInterrupt  # the job is killed while step 4 waits for its batch
        return real(self, step)

    monkeypatch.setattr(dm.Batches, "batch", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        dm.train(s, root, None, str(tmp_path / "b"), mesh, progress=False)
    monkeypatch.setattr(dm.Batches, "batch", real)
    resumed, _, stats = dm.train(s, root, None, str(tmp_path / "b"), mesh, progress=False)
    assert stats["resumed_from"] == 2 and stats["steps_per_group"] == {"text": 2}
    a, b = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (uninterrupted, resumed))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
