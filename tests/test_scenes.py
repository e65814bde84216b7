"""The embedded synthetic benchmark: CIRR schema, determinism, query design, scene grammar."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from zscir_jax.data import scenes

SMALL = dict(num_train=120, num_val_queries=30, num_test_queries=11, image_size=32, seed=3)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return scenes.build(str(tmp_path_factory.mktemp("scenes")), **SMALL)


def _load(root, rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


def test_val_schema_matches_cirr(root):
    val = _load(root, "captions/cap.rc2.val.json")
    split = _load(root, "image_splits/split.rc2.val.json")
    assert isinstance(val, list) and len(val) == SMALL["num_val_queries"]
    assert len({q["pairid"] for q in val}) == len(val)
    for q in val:
        assert list(q) == ["pairid", "reference", "target_hard", "target_soft", "caption", "img_set"]
        assert isinstance(q["pairid"], int) and isinstance(q["caption"], str) and q["caption"]
        assert q["reference"].startswith("dev-") and q["target_hard"] != q["reference"]
        assert q["target_soft"] == {q["target_hard"]: 1.0}
        s = q["img_set"]
        assert set(s) == {"id", "members", "reference_rank", "target_rank"} and isinstance(s["id"], int)
        assert len(s["members"]) == 6 and len(set(s["members"])) == 6
        assert q["reference"] in s["members"] and q["target_hard"] in s["members"]
        assert all(isinstance(s[k], int) and 0 <= s[k] <= 5 for k in ("reference_rank", "target_rank"))
        for name in s["members"]:
            assert split[name] == f"./dev/{name}.png"
    for rel in split.values():
        assert os.path.isfile(os.path.join(root, rel))


def test_test_and_train_schema(root):
    test = _load(root, "captions/cap.rc2.test1.json")
    split = _load(root, "image_splits/split.rc2.test1.json")
    assert len(test) == SMALL["num_test_queries"]
    for q in test:
        assert list(q) == ["pairid", "reference", "caption", "img_set"]
        assert set(q["img_set"]) == {"id", "members", "reference_rank"}
        assert all(m in split and m.startswith("test1-") for m in q["img_set"]["members"])
    train = _load(root, "image_splits/split.rc2.train.json")
    caps = _load(root, "captions/train_captions.json")
    assert len(train) == SMALL["num_train"] and set(caps) == set(train)
    assert all(rel.startswith("./train/") and rel.endswith(f"/{n}.png") for n, rel in train.items())
    assert not os.path.exists(os.path.join(root, "captions", "cap.rc2.train.json"))  # zero-shot: no triplets
    pairs = scenes.train_pairs(root)
    assert len(pairs) == SMALL["num_train"] and all(os.path.isfile(p) for p, _ in pairs)
    img = Image.open(pairs[0][0])
    assert img.size == (32, 32) and img.mode == "RGB"


def test_targets_are_the_edited_reference_and_unique(root):
    val = _load(root, "captions/cap.rc2.val.json")
    sc = scenes.load_scenes(root, "val")
    all_captions = [s.caption for split in ("train", "val", "test1") for s in scenes.load_scenes(root, split).values()]
    assert len(set(all_captions)) == len(all_captions)  # every scene once: each target is the only right answer
    for q in val:
        ref, tgt = sc[q["reference"]], sc[q["target_hard"]]
        assert tgt in {scenes.apply_edit(ref, e) for e in scenes.all_edits(ref)}  # exactly one edit apart
        near = [m for m in q["img_set"]["members"] if m not in (q["reference"], q["target_hard"])]
        assert tgt.caption != ref.caption and all(sc[m].caption != tgt.caption for m in near)


def test_build_is_deterministic_and_cached(root, tmp_path):
    other = scenes.build(str(tmp_path / "again"), **SMALL)
    for rel in ("captions/cap.rc2.val.json", "captions/cap.rc2.test1.json", "image_splits/split.rc2.train.json",
                "captions/train_captions.json", "scenes/val.json"):
        with open(os.path.join(root, rel), "rb") as a, open(os.path.join(other, rel), "rb") as b:
            assert a.read() == b.read(), rel
    name, rel = next(iter(_load(root, "image_splits/split.rc2.val.json").items()))
    assert np.array_equal(np.asarray(Image.open(os.path.join(root, rel))), np.asarray(Image.open(os.path.join(other, rel))))
    stamp = os.path.getmtime(os.path.join(other, "DONE"))
    scenes.build(other, **SMALL)  # same parameters: skipped
    assert os.path.getmtime(os.path.join(other, "DONE")) == stamp
    scenes.build(other, **{**SMALL, "seed": 4})  # other parameters: rebuilt, differently
    assert _load(other, "captions/cap.rc2.val.json") != _load(root, "captions/cap.rc2.val.json")


def test_edits_and_captions():
    a = scenes.Obj(0, "circle", "red", "large")
    b = scenes.Obj(4, "square", "blue", "small")
    s = scenes.Scene.of([b, a])
    assert s.caption == "a large red circle at the top left and a small blue square in the centre"
    assert scenes.apply_edit(s, scenes.Edit("colour", 0, "blue")).caption.startswith("a large blue circle")
    assert scenes.apply_edit(s, scenes.Edit("remove", 1)).caption == "a large red circle at the top left"
    moved = scenes.apply_edit(s, scenes.Edit("move", 0, 8))
    assert moved.caption == "a small blue square in the centre and a large red circle at the bottom right"
    added = scenes.apply_edit(s, scenes.Edit("add", None, scenes.Obj(3, "triangle", "green", "small")))
    assert len(added.objects) == 3 and "a small green triangle on the left" in added.caption
    with pytest.raises(ValueError):
        scenes.apply_edit(s, scenes.Edit("move", 0, 4))  # cell taken
    with pytest.raises(ValueError):
        scenes.apply_edit(scenes.Scene.of([a]), scenes.Edit("remove", 0))
    rng = np.random.default_rng(0)
    assert scenes.edit_text(s, scenes.Edit("remove", 1), rng, {"remove": ["remove {obj}"]}) == "remove the square"
    twins = scenes.Scene.of([a, scenes.Obj(8, "circle", "blue", "large")])
    assert scenes.referring_expression(twins, 0) == "red circle"  # the shape alone is ambiguous
    assert scenes.Scene.from_dict(added.to_dict()) == added
    for i in range(200):  # random edits are always applicable and always change the scene
        sc = scenes.random_scene(rng)
        e = scenes.random_edit(sc, rng)
        assert scenes.apply_edit(sc, e) != sc
        assert scenes.edit_text(sc, e, rng)
