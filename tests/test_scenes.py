"""The embedded synthetic benchmark: CIRR schema, determinism, query design, scene grammar; the FashionIQ and CIRCO
layouts it also writes, read by their readers and evaluated end to end."""
import functools
import itertools
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from zscir_jax.data import circo, fashioniq, scenes
from zscir_jax.evaluation import evaluator
from zscir_jax.evaluation import gallery as gallery_lib

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


# ------------------------------------------------------------------------------- FashionIQ and CIRCO layouts

class _LongForms:
    """An rng stand-in that makes ``referring_expression`` take its longer form (the only use of rng there)."""

    def random(self):
        return 0.0


@functools.lru_cache(maxsize=None)
def _decode(ref, text):
    """The single edit of ``ref`` that ``text`` phrases, found by matching every phrasing of every edit (the grammar
    of ``PHRASINGS`` with both forms of referring expression); a text that is not exactly one edit fails."""
    found = set()
    for e in scenes.all_edits(ref):
        for fields in (scenes.edit_fields(ref, e), scenes.edit_fields(ref, e, _LongForms())):
            for t in scenes.PHRASINGS[e.op]:
                s = t.format(**fields)
                if s[0].lower() + s[1:] == text:
                    found.add(e)
    assert len(found) == 1, (ref.caption, text, found)
    return found.pop()


def _satisfies(ref, edit, cand):
    """The CIRCO ground-truth rule, written independently of ``scenes.circo_satisfies``: ``cand`` (not the reference)
    matches the edited reference object for object on shape, colour and size, and on the cell for the object that a
    move or an add puts in a named cell."""
    target = scenes.apply_edit(ref, edit)
    if cand == ref or len(cand.objects) != len(target.objects):
        return False
    pinned = scenes.edited_object(ref, edit) if edit.op in ("move", "add") else None
    what = lambda o: (o.shape, o.colour, o.size)  # noqa: E731
    return any(all(what(a) == what(b) and (b != pinned or a.cell == b.cell) for a, b in zip(perm, target.objects))
               for perm in itertools.permutations(cand.objects))


class SceneOracle:
    """Knows the scenes, not the layouts: an image is recognised by its exact pixels among the CIRR renderings of the
    val / test1 scenes and embedded as the one-hot of its scene caption. A query decodes its text (FashionIQ: the two
    joined captions, which must agree) into the edit of the reference scene and embeds the edited scene (weight 2);
    with ``all_ground_truths`` also every scene that satisfies the edit (``_satisfies``, weight 1), so a CIRCO
    layout whose files, ids or ground truths disagree with the scenes cannot reach 100. ``mode="reference"`` embeds
    the reference scene instead (a control that must not reach 100)."""

    def __init__(self, root, size=32, all_ground_truths=False, mode="edit"):
        self.scene_of, self.all = {}, []
        for split in ("val", "test1"):
            paths = scenes.image_paths(root, split)
            for name, s in scenes.load_scenes(root, split).items():
                self.scene_of[gallery_lib.load_image(paths[name], size).tobytes()] = s
                self.all.append(s)
        assert len(self.scene_of) == len(self.all)  # every rendering is distinct
        self.index = {s.caption: i for i, s in enumerate(self.all)}
        self.all_ground_truths, self.mode = all_ground_truths, mode

    def _one_hot(self, scene, weight=1.0, out=None):
        out = np.zeros(len(self.all), np.float32) if out is None else out
        out[self.index[scene.caption]] = weight
        return out

    def encode_images(self, images):
        return np.stack([self._one_hot(self.scene_of[im.tobytes()]) for im in images])

    def edit_of(self, ref, text):
        parts = (text[0].lower() + text[1:]).split(" and ")  # FashionIQ's "C1 and c2"; no phrasing holds " and "
        edits = {_decode(ref, p) for p in parts}
        assert len(edits) == 1, (text, edits)
        return edits.pop()

    def encode_queries(self, images, texts):
        out = []
        for im, text in zip(images, texts):
            ref = self.scene_of[im.tobytes()]
            if self.mode == "reference":
                out.append(self._one_hot(ref))
                continue
            edit = self.edit_of(ref, text)
            target = scenes.apply_edit(ref, edit)
            v = self._one_hot(target, 2.0)
            if self.all_ground_truths:
                for s in self.all:
                    if s != target and _satisfies(ref, edit, s):
                        self._one_hot(s, 1.0, v)
            out.append(v)
        return np.stack(out)


def _scene_by_pixels(oracle, path):
    return oracle.scene_of[gallery_lib.load_image(path, SMALL["image_size"]).tobytes()]


def test_fashioniq_layout(root):
    froot = scenes.fashioniq_root(root)
    assert froot == os.path.join(root, "fashioniq")
    oracle = SceneOracle(root)
    cirr_val = {(q["reference"], q["target_hard"]) for q in _load(root, "captions/cap.rc2.val.json")}
    sc = scenes.load_scenes(root, "val")
    pairs, n_test = set(), 0
    for cat in fashioniq.CATEGORIES:
        recs = _load(froot, f"captions/cap.{cat}.val.json")
        assert recs and all(list(r) == ["target", "candidate", "captions"] for r in recs)
        b = fashioniq.load(froot, cat, "val")
        assert len(b.queries) == len(recs) and b.skipped == 0 and b.skipped_images == 0
        gallery = set(b.gallery)
        for q in b.queries:
            (tgt,) = q.targets
            c1, c2 = q.extra["captions"]
            assert c1 != c2 and tgt in gallery and q.reference in gallery
            ref = sc[q.reference]
            assert scenes.fashioniq_category(ref) == cat
            assert ref.objects[0].shape in scenes.FASHIONIQ_CATEGORY_SHAPES[cat]
            # Both captions phrase the one edit that turns the reference into the target.
            assert _decode(ref, c1) == _decode(ref, c2) == scenes.diff(ref, sc[tgt])
            # The images are the CIRR renderings of those scenes.
            assert _scene_by_pixels(oracle, b.image_path(q.reference)) == ref
            assert _scene_by_pixels(oracle, b.image_path(tgt)) == sc[tgt]
            assert b.image_path(tgt) == os.path.join(froot, "images", f"{tgt}.png")
            pairs.add((q.reference, tgt))
        # A category's gallery holds whole CIRR query groups ("dev-<group>-<k>", six scenes each).
        groups = {n.rsplit("-", 1)[0] for n in gallery}
        assert len(gallery) == 6 * len(groups) and len(b.gallery) == len(gallery)
        test = fashioniq.load(froot, cat, "test")
        assert not test.has_ground_truth and all(len(q.extra["captions"]) == 2 for q in test.queries)
        assert all(list(r) == ["candidate", "captions"] for r in _load(froot, f"captions/cap.{cat}.test.json"))
        n_test += len(test.queries)
    assert pairs == cirr_val  # every CIRR val query once, in exactly one category
    assert n_test == SMALL["num_test_queries"]


def test_circo_layout(root):
    croot = scenes.circo_root(root)
    assert croot == os.path.join(root, "circo")
    oracle = SceneOracle(root)
    val = circo.load(croot, "val")
    test = circo.load(croot, "test")
    assert val.gallery == test.gallery and len(val.gallery) == len(oracle.all)  # one gallery: val + test1 scenes
    assert [int(i) for i in val.gallery] == sorted(int(i) for i in val.gallery)
    assert len(val.queries) == SMALL["num_val_queries"] and len(test.queries) == SMALL["num_test_queries"]
    by_id = {i: _scene_by_pixels(oracle, val.image_path(i)) for i in val.gallery}
    assert {int(i): s for i, s in by_id.items()} == scenes.circo_scenes(root)
    recs = _load(croot, "annotations/val.json")
    keys = ["reference_img_id", "target_img_id", "relative_caption", "shared_concept", "gt_img_ids", "id",
            "semantic_aspects"]
    assert all(list(r) == keys for r in recs) and [r["id"] for r in recs] == list(range(len(recs)))
    assert all(list(r) == ["reference_img_id", "relative_caption", "shared_concept", "id"]
               for r in _load(croot, "annotations/test.json"))
    multi = 0
    for q, r in zip(val.queries, recs):
        assert q.targets[0] == q.extra["target_img_id"] == str(r["target_img_id"]) == str(r["gt_img_ids"][0])
        assert q.reference in by_id and q.reference not in q.targets and len(set(q.targets)) == len(q.targets)
        ref, tgt = by_id[q.reference], by_id[q.targets[0]]
        edit = oracle.edit_of(ref, q.text)
        assert scenes.apply_edit(ref, edit) == tgt  # the target is the edited reference
        assert list(q.extra["semantic_aspects"]) == list(scenes.CIRCO_ASPECTS[edit.op])
        assert q.extra["shared_concept"] == scenes.shared_concept(ref, edit)
        # Ground truths: exactly the gallery scenes that satisfy the edit.
        assert set(q.targets) == {i for i, s in by_id.items() if _satisfies(ref, edit, s)}
        assert all(scenes.circo_satisfies(ref, edit, by_id[t]) for t in q.targets)
        multi += len(q.targets) > 1
    assert multi > 0


def test_layouts_evaluate_to_100_with_a_scene_oracle(root):
    froot, croot = scenes.fashioniq_root(root), scenes.circo_root(root)
    kw = dict(image_size=SMALL["image_size"], batch_size=16, log=None)
    fiq = [fashioniq.load(froot, cat, "val") for cat in fashioniq.CATEGORIES]
    for b in fiq:
        out = evaluator.evaluate(b, SceneOracle(root), **kw)
        assert out["recall@10"] == out["recall@50"] == 100.0, b.name
    both = fashioniq.load(froot, "dress", "val", caption_join="both_orders")
    assert evaluator.evaluate(both, SceneOracle(root), **kw)["recall@10"] == 100.0
    # Control: the reference scene alone does not find the targets.
    assert min(evaluator.evaluate(b, SceneOracle(root, mode="reference"), **kw)["recall@10"] for b in fiq) < 100.0

    bench = circo.load(croot, "val")
    out = evaluator.evaluate(bench, SceneOracle(root, all_ground_truths=True), **kw)
    for k in (5, 10, 25, 50):
        assert out[f"map@{k}"] == 100.0 and out[f"recall@{k}"] == 100.0, k
    assert all(v == 100.0 for k, v in out.items() if k.startswith("map@10/"))
    # Control: the target alone misses the other ground truths, and mAP counts them.
    only = evaluator.evaluate(bench, SceneOracle(root), **kw)
    assert only["recall@5"] == 100.0 and only["map@50"] < 100.0


def test_new_layouts_are_deterministic_and_added_to_old_roots(tmp_path):
    kw = {**SMALL, "num_train": 30}
    a = scenes.build(str(tmp_path / "a"), **kw)
    b = scenes.build(str(tmp_path / "b"), **kw)
    rels = [f"fashioniq/{d}/{kind}.{cat}.{split}.json" for cat in fashioniq.CATEGORIES for split in ("val", "test")
            for d, kind in (("captions", "cap"), ("image_splits", "split"))]
    rels += ["circo/annotations/val.json", "circo/annotations/test.json", "circo/scene_names.json",
             "circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"]
    for rel in rels:
        with open(os.path.join(a, rel), "rb") as x, open(os.path.join(b, rel), "rb") as y:
            assert x.read() == y.read(), rel
    # A root written by the old code (format 1: CIRR only) gets the new layouts.
    done = _load(b, "DONE")
    shutil.rmtree(os.path.join(b, "fashioniq"))
    shutil.rmtree(os.path.join(b, "circo"))
    with open(os.path.join(b, "DONE"), "w") as f:
        json.dump({k: v for k, v in {**done, "format_version": 1}.items() if k != "layouts"}, f)
    scenes.build(b, **kw)
    assert _load(b, "DONE") == done and fashioniq.load(scenes.fashioniq_root(b), "shirt", "val").queries
    # A missing layout under an up-to-date DONE is rebuilt too.
    shutil.rmtree(os.path.join(b, "circo"))
    scenes.build(b, **kw)
    assert _load(b, "circo/annotations/val.json") == _load(a, "circo/annotations/val.json")
