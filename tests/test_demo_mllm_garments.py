"""The demo MLLM on the garments (zscir_jax.demo.mllm_garments, the garments world of zscir_jax.demo.mllm): its
supervision is exactly what the rule-based garment backend answers; a tiny build on the garments trains only the
fashion tasks, exports, measures the garment metrics and is never mistaken for a scenes build."""
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from zscir_jax.data import garments
from zscir_jax.demo import mllm_garments as mg
from zscir_jax.synthesis import prompts

RED_DRESS = garments.Garment("dress", "red", "striped", "short", "round", "long")


def _lists(prompt):
    """The two garments of a FASHION_RELATIVE prompt, parsed back."""
    body = prompt.split("Attributes of the reference image:\n", 1)[1]
    ref, rest = body.split("\nAttributes of the target image:\n")
    return mg.parse_attributes(ref), mg.parse_attributes(rest.split("\nWrite a short")[0])


# ------------------------------------------------------------------------------------------------ supervision

def test_attributes_answer_is_the_list_and_parses_back():
    ex = mg.attributes_example(RED_DRESS, 4)
    assert (ex.task, ex.prompt, ex.image) == ("attributes", prompts.FASHION_ATTRIBUTES, 4)
    assert ex.answer == ("item 1: category dress, colour red, pattern striped, sleeves short, neckline round, "
                         "length long")
    assert ex.answer == prompts.format_attributes([RED_DRESS.to_dict()])  # what the rule-based backend writes
    for g in garments.all_garments()[::37]:
        assert mg.parse_attributes(mg.attributes_answer(g)) == g
        assert prompts.attribute_phrase(prompts.attributes(mg.attributes_answer(g))["items"]) == g.phrase()
    with pytest.raises(prompts.ParseError):
        mg.parse_attributes(prompts.format_attributes([RED_DRESS.to_dict()] * 2))  # two items: not one garment


def test_relative_answer_is_relative_caption():
    from zscir_jax.synthesis import garment_rules
    from zscir_jax.synthesis.backends import Request

    rng = np.random.default_rng(0)
    pool = [garments.random_garment(rng) for _ in range(30)]
    changed = set()
    for k in range(200):
        ref, tgt = mg.random_pair(pool, np.random.default_rng([1, k]))
        keys = garments.differences(ref, tgt)
        assert 1 <= len(keys) <= mg.MAX_CHANGES
        changed.update(keys)
        ex = mg.relative_example(ref, tgt, np.random.default_rng([2, k]))
        assert ex.image is None and _lists(ex.prompt) == (ref, tgt)
        assert ex.answer == garments.relative_caption(ref, tgt, np.random.default_rng([2, k]))
        assert ex.answer in mg.relative_phrasings(ref, tgt) and mg.named_changes(ref, tgt, ex.answer)
        # the rule-based backend answers the same prompt fields with the same caption
        fields = {"reference_attributes": mg.attributes_answer(ref), "target_attributes": mg.attributes_answer(tgt)}
        req = Request("fashion.relative", prompts.FASHION_RELATIVE, fields, None, "item")
        assert req.text == ex.prompt
        assert garment_rules.GarmentRuleBackend().answer(req, np.random.default_rng([2, k])) == ex.answer
    assert changed == set(garments.KEYS)  # the category too, as the recipe pairs any two lists


def test_relative_phrasings_are_every_caption_relative_caption_gives():
    tgt = RED_DRESS.replace(colour="blue", length="short")
    drawn = {garments.relative_caption(RED_DRESS, tgt, np.random.default_rng(k)) for k in range(200)}
    assert drawn == mg.relative_phrasings(RED_DRESS, tgt)
    assert "is blue and is shorter" in drawn and len(drawn) == 3 * 2
    assert mg.named_changes(RED_DRESS, tgt, "is shorter and is a blue one")  # any order
    assert not mg.named_changes(RED_DRESS, tgt, "is blue")  # the length is missing
    assert not mg.named_changes(RED_DRESS, tgt, "is blue and is short sleeved")  # "short" of the sleeves


@pytest.mark.parametrize("task", mg.TASKS)
def test_supervisor_is_deterministic(task):
    rng = np.random.default_rng(3)
    pool = [garments.random_garment(rng) for _ in range(20)]
    sup = mg.Supervisor(pool)
    a = [sup.example(task, np.random.default_rng([7, k])) for k in range(40)]
    assert a == [sup.example(task, np.random.default_rng([7, k])) for k in range(40)]
    for ex in a:
        assert (ex.image is not None) == (task in mg.IMAGE_TASKS) and ex.task == task
        if task == "attributes":
            assert mg.parse_attributes(ex.answer) == pool[ex.image]
        else:
            assert prompts.one_line(ex.answer)["text"] == ex.answer  # what the recipe's line parser keeps


# ------------------------------------------------------------------------------------------------ a tiny build

def _config(kind="garments"):
    """A synthesis-style config on small garments (or scenes) with a tiny, few-step demo MLLM."""
    return ml_collections.ConfigDict({
        "data": {"kind": kind,
                 "garments": {"num_train": 120, "num_val_queries": 6, "num_test_queries": 3, "image_size": 32,
                              "seed": 0},
                 "scenes": {"num_train": 120, "num_val_queries": 6, "num_test_queries": 3, "image_size": 32,
                            "seed": 0}},
        # No CLIP warm-up (a random vision tower); the full settings' task weights, as configs/synth/common.py's.
        "demo_mllm": {"smoke": True, "prepare": {"overrides": (("warmup.train.steps", 0),)},
                      "llm": {"hidden_size": 64, "intermediate_size": 128},
                      "tokenizer": {"per_task": 30}, "train": {"steps": 12, "log_every": 6},
                      "eval": {"num_images": 8, "num_text": 8, "batch_size": 8,
                               "max_new_tokens": {"attributes": 32, "relative": 16}}}})


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    from zscir_jax import sharding
    from zscir_jax.demo import mllm as dm

    workdir = str(tmp_path_factory.mktemp("demo_mllm_garments"))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    path = dm.build_or_reuse(_config(), workdir, mesh=mesh, progress=False)
    return workdir, path, mesh


def test_garments_build_exports_with_garment_metrics(build):
    from zscir_jax.models import mllm

    workdir, path, _ = build
    assert path == os.path.join(workdir, "demo_mllm", "export")
    assert os.path.isfile(os.path.join(path, mllm.EXPORT_MARKER))
    assert os.path.isfile(os.path.join(workdir, "garments", "DONE")) and not os.path.exists(
        os.path.join(workdir, "scenes"))
    quality = json.load(open(os.path.join(workdir, "demo_mllm", "quality.json")))
    assert quality["world"] == "garments" and quality["steps"] == 12
    assert set(quality["steps_per_group"]) <= {"image", "text"}  # only the attributes and relative shapes
    for key in ("attributes_parsable", "attributes_exact", "relative_parsable", "relative_correct",
                "relative_names_changes"):
        assert 0.0 <= quality[key] <= 1.0
    assert set(quality["attribute_accuracy"]) == set(garments.KEYS)
    assert quality["val_images"] == 8 and quality["val_text_prompts"] == 8
    assert "caption_exact" not in quality  # no scene metric


def test_garments_and_scenes_builds_never_share_an_export(build, monkeypatch, tmp_path):
    from zscir_jax.demo import mllm as dm

    workdir, path, mesh = build
    built = json.load(open(os.path.join(workdir, "demo_mllm", "settings.json")))
    assert built["world"] == "garments" and built["garments"]["num_train"] == 120
    weights = built["settings"]["train"]["task_weights"]
    assert {t for t, w in weights.items() if w > 0} == {"attributes", "relative"}
    scenes_config = _config("scenes")
    s = dm.resolve_settings(scenes_config)
    assert built != dm.fingerprint(s, dm.scene_params(scenes_config, s))

    class Called(Exception):
        pass

    def boom(*a, **k):
        raise Called

    monkeypatch.setattr(dm, "prepare", boom)
    monkeypatch.setattr(dm, "train", boom)
    assert dm.build_or_reuse(_config(), workdir, mesh=mesh, progress=False) == path  # reused: nothing trained
    copy = tmp_path / "w"
    shutil.copytree(os.path.join(workdir, "demo_mllm"), copy / "demo_mllm")
    with pytest.raises(Called):  # a scenes build does not take the garments' export
        dm.build_or_reuse(scenes_config, str(copy), mesh=mesh, progress=False)
    assert not os.path.exists(copy / "demo_mllm" / "export")
