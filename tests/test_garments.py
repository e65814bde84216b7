"""The embedded garment benchmark: FashionIQ layout read by the FashionIQ reader, unique galleries, the garment
grammar (captions, phrases, relative captions), determinism, renderings that show every attribute, and the
``fashion`` synthesis recipe answered exactly by the garment rule backend."""
import filecmp
import json
import os
import runpy

import numpy as np
import pytest

from zscir_jax.data import fashioniq, garment_render, garments, triplets
from zscir_jax.synthesis import engine, garment_rules, prompts

SMALL = dict(num_train=60, num_val_queries=12, num_test_queries=6, image_size=32, seed=1)
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "synth")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("garments"))
    garments.build(path, **SMALL)
    return path


def _load(root, rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


# ------------------------------------------------------------------------------------------------- the layout

def test_fashioniq_reader_loads_every_category_and_split(root):
    structure = {s: garments.load_garments(root, s) for s in garments.SPLITS}
    for cat in fashioniq.CATEGORIES:
        for split in fashioniq.SPLITS:
            bench = fashioniq.load(root, cat, split)
            assert bench.skipped == 0 and bench.skipped_images == 0 and bench.gallery
            assert all(structure[split][name].category == cat for name in bench.gallery)
            expected = {"train": 0, "val": SMALL["num_val_queries"] // 3, "test": SMALL["num_test_queries"] // 3}
            assert len(bench.queries) == expected[split]
            for q in bench.queries:
                assert len(q.extra["captions"]) == 2 and q.extra["captions"][0] != q.extra["captions"][1]
                assert q.reference in bench.gallery
                if split == "val":
                    (target,) = q.targets
                    assert target in bench.gallery
                    assert 1 <= len(garments.differences(structure[split][q.reference], structure[split][target])) <= 2
                else:
                    assert q.targets == ()
    test = _load(root, "captions/cap.dress.test.json")
    assert all(list(r) == ["candidate", "captions"] for r in test)  # as the real FashionIQ test files
    assert all(list(r) == ["target", "candidate", "captions"] for r in _load(root, "captions/cap.dress.val.json"))


def test_galleries_hold_unique_garments_and_query_groups(root):
    for split in ("val", "test"):
        structure = garments.load_garments(root, split)
        for cat in garments.CATEGORIES:
            gallery = _load(root, f"image_splits/split.{cat}.{split}.json")
            assert len(set(structure[n] for n in gallery)) == len(gallery)
            assert len(gallery) == 5 * len(_load(root, f"captions/cap.{cat}.{split}.json"))
    val = garments.load_garments(root, "val")
    for rec in _load(root, "captions/cap.shirt.val.json"):
        ref, tgt = val[rec["candidate"]], val[rec["target"]]
        changed = garments.differences(ref, tgt)
        assert "category" not in changed
        for cap in rec["captions"]:  # each caption phrases every new value
            assert all(any(p in cap for p in garments.phrasings(k, getattr(tgt, k))) for k in changed)


def test_train_split_pairs_and_captions(root):
    pairs = garments.train_pairs(root)
    train = garments.load_garments(root, "train")
    assert len(pairs) == SMALL["num_train"] == len(train)
    assert pairs == sorted(pairs) and all(os.path.isabs(p) and os.path.isfile(p) for p, _ in pairs)
    for (path, caption), (name, g) in zip(pairs, train.items()):
        assert os.path.basename(path) == name + ".png" and caption == g.caption()
    counts = [len(_load(root, f"image_splits/split.{c}.train.json")) for c in garments.CATEGORIES]
    assert counts == [20, 20, 20]


def test_build_is_deterministic_and_skips_or_rebuilds_by_parameters(root, tmp_path):
    again = str(tmp_path / "again")
    garments.build(again, **SMALL)
    files = _all_files(root)
    assert files == _all_files(again)
    _, mismatch, errors = filecmp.cmpfiles(root, again, files, shallow=False)
    assert not mismatch and not errors
    stamp = os.path.getmtime(os.path.join(again, "DONE"))
    garments.build(again, **SMALL)  # same parameters: skipped
    assert os.path.getmtime(os.path.join(again, "DONE")) == stamp
    garments.build(again, **dict(SMALL, num_train=30, num_val_queries=3, num_test_queries=3))
    assert len(garments.train_pairs(again)) == 30
    assert len(os.listdir(os.path.join(again, "images"))) == 30 + 5 * 6  # the old images are gone
    assert _load(again, "DONE")["num_train"] == 30


# ------------------------------------------------------------------------------------------------ the grammar

def test_caption_round_trip_and_phrase_order():
    every = garments.all_garments()
    assert len(every) == 2160 and len({g.caption() for g in every}) == 2160
    for g in every:
        assert garments.parse_caption(g.caption()) == g
        assert garments.Garment.from_dict(g.to_dict()) == g
        assert list(g.to_dict()) == [k for k, _ in garments.ATTRIBUTES]
    g = garments.Garment("dress", "red", "striped", "short", "round", "long")
    assert g.phrase() == "category dress, colour red, pattern striped, sleeves short, neckline round, length long"
    assert g.caption() == "a red striped dress with short sleeves, a round neckline and a long length"
    assert g.replace(pattern="plain", sleeves="sleeveless").caption().startswith("a plain red dress without sleeves")
    assert prompts.attribute_phrase([g.to_dict()]) == g.phrase()
    for bad in ("a red dress", g.caption() + ".", g.caption().upper()):
        with pytest.raises(ValueError):
            garments.parse_caption(bad)
    with pytest.raises(ValueError):
        garments.Garment.from_dict(dict(g.to_dict(), colour="teal"))
    with pytest.raises(ValueError):
        garments.Garment.from_dict(dict(g.to_dict(), fabric="silk"))


def test_relative_captions_name_every_new_value_and_are_covered_by_phrase_texts():
    rng = np.random.default_rng(0)
    words = {w for t in garments.phrase_texts() for w in t.split()}
    ref = garments.Garment("toptee", "blue", "plain", "long", "square", "short")
    for key, values in garments.ATTRIBUTES:
        for value in values:
            if value == getattr(ref, key):
                continue
            tgt = ref.replace(**{key: value})
            texts = garments.relative_captions(ref, tgt, rng, 2)
            assert texts[0] != texts[1] and all(t in garments.phrasings(key, value) for t in texts)
            assert set(texts[0].split()) <= words
    tgt = ref.replace(colour="red", sleeves="sleeveless", length="long")
    text = garments.relative_caption(ref, tgt, rng)
    assert text.count(" and ") == 1 and ", " in text and "red" in text
    assert garments.relative_caption(ref, ref.replace(colour="pink", pattern="dotted"), rng).count(" and ") == 1
    with pytest.raises(ValueError):
        garments.relative_caption(ref, ref, rng)


# ---------------------------------------------------------------------------------------------- the renderings

def _pixels(g, seed):
    return np.asarray(garment_render.render(g, 32, np.random.default_rng(seed)), np.float32)


def _aligned_distance(a, b, reach=2):
    """Mean absolute difference at the best whole-pixel shift: what is left once the position jitter is undone."""
    n = a.shape[0]
    core = b[reach:n - reach, reach:n - reach]
    return min(np.abs(a[reach + dy:n - reach + dy, reach + dx:n - reach + dx] - core).mean()
               for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1))


def test_every_attribute_changes_the_pixels_and_jitter_stays_small():
    for base in (garments.Garment("dress", "red", "plain", "short", "round", "long"),
                 garments.Garment("shirt", "white", "striped", "long", "collared", "short")):
        again = _aligned_distance(_pixels(base, 0), _pixels(base, 1))
        assert 0 < again < 12
        assert again < _aligned_distance(_pixels(base, 0), _pixels(base.replace(colour="green"), 1))
        for key, values in garments.ATTRIBUTES:
            for value in values:
                if value == getattr(base, key):
                    continue
                other = base.replace(**{key: value})
                # The same seed: the jitter is identical, so the difference is the attribute's alone.
                diff = np.abs(_pixels(base, 0) - _pixels(other, 0)).mean()
                assert diff > 0.5, (base, key, value, diff)


# --------------------------------------------------------------------------------------- fashion synthesis

def test_fashion_recipe_on_garments_with_rule_answers(root, tmp_path):
    c = runpy.run_path(os.path.join(CONFIGS, "fashion.py"))["get_config"]()
    c.backend.kind = "rule_based"
    c.data.kind = "garments"
    c.data.garments.update(num_train=60, num_val_queries=3, num_test_queries=3, image_size=32, seed=1)
    c.progress_bar = False
    c.output.num_shards = 1
    workdir = str(tmp_path)
    manifest = engine.synthesize(c, workdir)
    assert manifest["source"] == "garments:train" and manifest["quarantined"] == 0
    out = engine.output_dir(workdir, "fashion")
    records = triplets.read_jsonl(os.path.join(out, manifest["shards"][0]))
    assert len(records) == manifest["records"] > 0
    assert not os.path.isabs(records[0].reference_image)  # the workdir's images, relative to the shard
    records = triplets.resolve_images(records, out)
    by_path = {p: garments.parse_caption(cap) for p, cap in garments.train_pairs(os.path.join(workdir, "garments"))}
    backend = garment_rules.GarmentRuleBackend()
    ctx = engine.Context(c, backend, cache=None, progress=False, workdir=workdir)
    for r in records:
        assert os.path.isfile(r.reference_image) and os.path.isfile(r.target_image)
        ref, tgt = by_path[r.reference_image], by_path[r.target_image]
        changed = garments.differences(ref, tgt)
        assert 1 <= len(changed) <= 2
        assert r.caption == ref.phrase() and r.target_text == tgt.phrase()
        # The relative caption is exactly the rule answer for the two attribute lists, with that request's seed.
        req = ctx.request("relative", _item(r.reference_image), {
            "reference_attributes": prompts.format_attributes([ref.to_dict()]),
            "target_attributes": prompts.format_attributes([tgt.to_dict()])})
        expected = garments.relative_caption(ref, tgt, np.random.default_rng(ctx.seed_of(req)))
        assert r.modification_text == expected
        assert all(any(p in r.modification_text for p in garments.phrasings(k, getattr(tgt, k))) for k in changed)


def _item(path):
    from zscir_jax.synthesis.recipes import Item

    return Item(key=path, image=path)


def test_rule_backend_answers_only_the_fashion_prompts():
    from zscir_jax.synthesis.backends import Request

    g = garments.Garment("dress", "red", "plain", "short", "round", "long")
    backend = garment_rules.GarmentRuleBackend({"/x.png": g.caption()})
    rng = np.random.default_rng(0)
    ask = lambda prompt, fields=None, image=None: backend.answer(Request(prompt, "", fields or {}, image, "k"), rng)
    assert ask("fashion.attributes", image="/x.png") == prompts.format_attributes([g.to_dict()])
    assert prompts.attributes(ask("fashion.attributes", image="/x.png"))["items"] == [g.to_dict()]
    assert ask("fashion.attributes", image="/y.png") == ""
    a = prompts.format_attributes([g.to_dict()])
    b = prompts.format_attributes([g.replace(colour="blue").to_dict()])
    assert ask("fashion.relative", {"reference_attributes": a, "target_attributes": b}) in garments.phrasings(
        "colour", "blue")
    assert ask("fashion.relative", {"reference_attributes": a, "target_attributes": a}) == ""
    assert ask("fashion.relative", {"reference_attributes": "item 1: shape circle", "target_attributes": b}) == ""
    assert ask("collm.modification", {"reference_caption": g.caption(), "target_caption": g.caption()}) == ""
