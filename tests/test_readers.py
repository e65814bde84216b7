"""Benchmark readers on the real annotation files, with placeholder images for a slice of the records only."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from zscir_jax.data import circo, cirr, fashioniq
from zscir_jax.data.benchmarks import AnnotationError, MissingImageError
from zscir_jax.evaluation import evaluator


def placeholder(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = np.random.default_rng(abs(hash(path)) % 2**32 + seed).integers(0, 255, 3).astype(np.uint8)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8) + colour).save(path)


# --- CIRR -----------------------------------------------------------------------------------------------------------


def cirr_slice_images(data, image_root, n):
    """Write images for the first ``n`` val records (references, targets, img_set members)."""
    with open(os.path.join(data, "cirr", "captions", "cap.rc2.val.json")) as f:
        recs = json.load(f)[:n]
    with open(os.path.join(data, "cirr", "image_splits", "split.rc2.val.json")) as f:
        split = json.load(f)
    names = {r["reference"] for r in recs} | {r["target_hard"] for r in recs}
    names |= {m for r in recs for m in r["img_set"]["members"]}
    for name in names:
        placeholder(os.path.join(image_root, split[name]))
    return recs, names


def test_cirr_val_slice_with_placeholder_images(shared_data_dir, tmp_path):
    root = os.path.join(shared_data_dir, "cirr")
    recs, names = cirr_slice_images(shared_data_dir, str(tmp_path), 30)
    b = cirr.load(root, "val", image_root=str(tmp_path), on_missing="skip", limit=30)
    assert b.name == "cirr" and b.split == "val" and b.has_ground_truth and b.exclude_reference
    assert len(b.queries) == 30 and b.skipped == 0
    assert set(b.gallery) == names and b.skipped_images == 2297 - len(names)
    q = b.queries[0]
    assert q.query_id == "12060" and q.reference == "dev-244-0-img0" and q.targets == ("dev-1028-1-img1",)
    assert q.text == "show three bottles of soft drink" and len(q.subset) == 6
    assert q.extra["target_soft"] == {"dev-1028-1-img1": 1.0}
    assert b.image_path("dev-244-0-img0") == str(tmp_path / "dev" / "dev-244-0-img0.png")
    with pytest.raises(KeyError, match="no image named 'nope'"):
        b.image_path("nope")
    # Gallery order is the split file's order (restricted to the written images).
    with open(os.path.join(root, "image_splits", "split.rc2.val.json")) as f:
        assert list(b.gallery) == [n for n in json.load(f) if n in names]
    # Without "skip" the first missing gallery image is named.
    with pytest.raises(MissingImageError, match=r"split\.rc2\.val\.json.*not found"):
        cirr.load(root, "val", image_root=str(tmp_path), limit=30)


def test_cirr_full_annotations_without_images(shared_data_dir):
    root = os.path.join(shared_data_dir, "cirr")
    val = cirr.load(root, "val", check_images=False)
    assert len(val.queries) == 4181 and len(val.gallery) == 2297
    assert all(len(q.targets) == 1 and q.reference in q.subset for q in val.queries)
    test = cirr.load(root, "test1", check_images=False)
    assert len(test.queries) == 4148 and not test.has_ground_truth
    assert all(q.targets == () for q in test.queries) and test.queries[0].query_id == "12063"
    with pytest.raises(FileNotFoundError, match=r"cap\.rc2\.train\.json"):
        cirr.load(root, "train", check_images=False)  # not in the shared data


def _copy_cirr(shared_data_dir, dst, records):
    os.makedirs(os.path.join(dst, "captions"))
    shutil.copytree(os.path.join(shared_data_dir, "cirr", "image_splits"), os.path.join(dst, "image_splits"))
    with open(os.path.join(dst, "captions", "cap.rc2.val.json"), "w") as f:
        json.dump(records, f)
    return os.path.join(dst, "captions", "cap.rc2.val.json")


def test_cirr_malformed_records_are_named(shared_data_dir, tmp_path):
    with open(os.path.join(shared_data_dir, "cirr", "captions", "cap.rc2.val.json")) as f:
        recs = json.load(f)[:5]
    bad = [dict(r) for r in recs]
    del bad[3]["caption"]
    path = _copy_cirr(shared_data_dir, str(tmp_path / "a"), bad)
    with pytest.raises(AnnotationError, match=r"cap\.rc2\.val\.json: record #3 \(pairid \d+\) has no key 'caption'"):
        cirr.load(str(tmp_path / "a"), "val", check_images=False)
    assert path.endswith("cap.rc2.val.json")

    bad = [dict(r) for r in recs]
    bad[2]["pairid"] = "x"
    _copy_cirr(shared_data_dir, str(tmp_path / "b"), bad)
    with pytest.raises(AnnotationError, match=r"record #2 .* key 'pairid' is str"):
        cirr.load(str(tmp_path / "b"), "val", check_images=False)

    bad = [dict(r) for r in recs]
    bad[1]["target_hard"] = "dev-nowhere"
    _copy_cirr(shared_data_dir, str(tmp_path / "c"), bad)
    with pytest.raises(AnnotationError, match=r"record #1 .*'dev-nowhere', absent from .*split\.rc2\.val\.json"):
        cirr.load(str(tmp_path / "c"), "val", check_images=False)


def test_cirr_missing_query_image_named_or_skipped(shared_data_dir, tmp_path):
    root = os.path.join(shared_data_dir, "cirr")
    recs, _ = cirr_slice_images(shared_data_dir, str(tmp_path), 10)
    ref = recs[4]["reference"]
    os.remove(tmp_path / "dev" / f"{ref}.png")
    b = cirr.load(root, "val", image_root=str(tmp_path), on_missing="skip", limit=10)
    users = [r for r in recs if ref in [r["reference"], r["target_hard"], *r["img_set"]["members"]]]
    assert b.skipped == len(users) and len(b.queries) == 10 - len(users)
    with pytest.raises(ValueError, match="on_missing"):
        cirr.load(root, "val", image_root=str(tmp_path), on_missing="ignore")


# --- FashionIQ ------------------------------------------------------------------------------------------------------


def test_fashioniq_slice_and_caption_protocols(shared_data_dir, tmp_path):
    src = os.path.join(shared_data_dir, "fashioniq")
    with open(os.path.join(src, "captions", "cap.dress.val.json")) as f:
        recs = json.load(f)[:12]
    for r in recs:
        for asin in (r["candidate"], r["target"]):
            placeholder(str(tmp_path / "images" / f"{asin}.jpg"))  # .jpg download: found automatically
    b = fashioniq.load(src, "dress", "val", image_dir=str(tmp_path / "images"), on_missing="skip", limit=12)
    assert b.name == "fashioniq_dress" and b.family == "fashioniq" and not b.exclude_reference
    assert len(b.queries) == 12 and b.skipped == 0 and b.skipped_images == 3817 - len(b.gallery)
    assert b.total_queries == 2017 and b.limited_to == 12  # the reader says it read only part of the file
    q = b.queries[0]
    c1, c2 = recs[0]["captions"]
    assert q.query_id == "dress-0" and q.reference == recs[0]["candidate"] and q.targets == (recs[0]["target"],)
    assert q.text == f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"
    assert q.extra["captions"] == (c1, c2) and "texts" not in q.extra
    assert b.image_path(q.reference).endswith(".jpg")

    both = fashioniq.load(src, "dress", "val", caption_join="both_orders", check_images=False, limit=3)
    # SEARLE: neither of its two texts is capitalised; `text` is the first.
    plain = f"{c1.strip('.?, ')} and {c2.strip('.?, ')}"
    assert both.queries[0].extra["texts"] == (plain, f"{c2.strip('.?, ')} and {c1.strip('.?, ')}")
    assert both.queries[0].text == plain
    assert fashioniq.join_and(" pink.", "is longer?") == "Pink and is longer"

    test = fashioniq.load(src, "toptee", "test", check_images=False)
    assert len(test.queries) == 2056 and not test.has_ground_truth and len(test.gallery) == 5374
    assert test.total_queries == 2056 and test.limited_to is None
    assert fashioniq.load(src, "dress", "val", check_images=False, limit=5000).limited_to is None  # nothing cut
    with pytest.raises(ValueError, match="caption_join"):
        fashioniq.load(src, "dress", "val", caption_join="or", check_images=False)


# Real dress/val records, with the texts written out by hand from the official f-strings:
#   CLIP4Cir src/validate.py: f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"
#   SEARLE   src/validate.py: f"{c1.strip('.?, ')} and {c2.strip('.?, ')}"
#                          and f"{c2.strip('.?, ')} and {c1.strip('.?, ')}" (both orders, averaged)
FIQ_DRESS_VAL_TEXTS = {
    # captions: "is a plain white feminine t shirt" / "is a tan shirt."
    3: ("Is a plain white feminine t shirt and is a tan shirt",
        "is a plain white feminine t shirt and is a tan shirt",
        "is a tan shirt and is a plain white feminine t shirt"),
    # captions: "is gold and strapless" / " button front longer sleeves"
    6: ("Is gold and strapless and button front longer sleeves",
        "is gold and strapless and button front longer sleeves",
        "button front longer sleeves and is gold and strapless"),
    # captions: " and black" / "the shoulder straps more resemble a crop top."
    67: ("And black and the shoulder straps more resemble a crop top",
         "and black and the shoulder straps more resemble a crop top",
         "the shoulder straps more resemble a crop top and and black"),
    # captions: "Is longer and more Asian-inspired" / "is longer and shiny black": capitalize() lower-cases "Asian"
    99: ("Is longer and more asian-inspired and is longer and shiny black",
         "Is longer and more Asian-inspired and is longer and shiny black",
         "is longer and shiny black and Is longer and more Asian-inspired"),
    # captions: " and red pattern. With short sleeves" / "More yellow and thinner strap"
    148: ("And red pattern. with short sleeves and More yellow and thinner strap",
          "and red pattern. With short sleeves and More yellow and thinner strap",
          "More yellow and thinner strap and and red pattern. With short sleeves"),
    # captions: "is white colored with British flag" / "is a t shirt with the British flag in the background and a
    # phone booth in the front."
    319: ("Is white colored with british flag and is a t shirt with the British flag in the background and a phone "
          "booth in the front",
          "is white colored with British flag and is a t shirt with the British flag in the background and a phone "
          "booth in the front",
          "is a t shirt with the British flag in the background and a phone booth in the front and is white colored "
          "with British flag"),
}


def test_fashioniq_caption_joins_match_clip4cir_and_searle_exactly(shared_data_dir):
    src = os.path.join(shared_data_dir, "fashioniq")
    n = max(FIQ_DRESS_VAL_TEXTS) + 1
    clip4cir = fashioniq.load(src, "dress", "val", check_images=False, limit=n)
    searle = fashioniq.load(src, "dress", "val", caption_join="both_orders", check_images=False, limit=n)
    for i, (and_text, first, second) in FIQ_DRESS_VAL_TEXTS.items():
        assert clip4cir.queries[i].query_id == searle.queries[i].query_id == f"dress-{i}"
        assert clip4cir.queries[i].text == and_text, i
        assert "texts" not in clip4cir.queries[i].extra
        assert searle.queries[i].extra["texts"] == (first, second), i
        assert searle.queries[i].text == first, i
        c1, c2 = searle.queries[i].extra["captions"]
        assert fashioniq.join_and(c1, c2) == and_text
        assert (fashioniq.join_plain(c1, c2), fashioniq.join_reversed(c1, c2)) == (first, second)


def test_fashioniq_malformed_and_missing(shared_data_dir, tmp_path):
    src = os.path.join(shared_data_dir, "fashioniq")
    root = tmp_path / "fiq"
    shutil.copytree(os.path.join(src, "image_splits"), root / "image_splits")
    os.makedirs(root / "captions")
    with open(os.path.join(src, "captions", "cap.shirt.val.json")) as f:
        recs = json.load(f)[:4]
    recs[2]["captions"] = ["only one"]
    with open(root / "captions" / "cap.shirt.val.json", "w") as f:
        json.dump(recs, f)
    with pytest.raises(AnnotationError, match=r"cap\.shirt\.val\.json: record #2 has 1 captions"):
        fashioniq.load(str(root), "shirt", "val", check_images=False)
    with pytest.raises(MissingImageError, match="not found"):
        fashioniq.load(src, "shirt", "val", image_dir=str(tmp_path / "none"))


# --- CIRCO ----------------------------------------------------------------------------------------------------------


def circo_slice(shared_data_dir, image_dir, n, distractors=5):
    with open(os.path.join(shared_data_dir, "circo", "annotations", "val.json")) as f:
        recs = json.load(f)[:n]
    ids = {r["reference_img_id"] for r in recs} | {g for r in recs for g in r["gt_img_ids"]}
    ids |= set(range(1, distractors + 1))
    for i in ids:
        placeholder(os.path.join(image_dir, f"{i:012d}.jpg"))
    return recs, ids


def test_circo_gallery_sources(shared_data_dir, tmp_path):
    root = os.path.join(shared_data_dir, "circo")
    image_dir = str(tmp_path / "unlabeled2017")
    recs, ids = circo_slice(shared_data_dir, image_dir, 8)
    b = circo.load(root, "val", image_dir=image_dir, limit=8)  # no image info file: the ids on disk
    assert b.name == "circo" and not b.exclude_reference and len(b.queries) == 8
    assert list(b.gallery) == [str(i) for i in sorted(ids)]
    q = b.queries[0]
    assert q.query_id == "0" and q.reference == "271520" and q.targets[0] == "355099"
    assert q.targets == tuple(str(g) for g in recs[0]["gt_img_ids"])
    assert q.extra["semantic_aspects"][0] == "cardinality" and q.text == recs[0]["relative_caption"]
    assert b.image_path("271520").endswith("000000271520.jpg")
    with_concept = circo.load(root, "val", image_dir=image_dir, limit=1, include_shared_concept=True)
    assert with_concept.queries[0].text == f"{recs[0]['relative_caption']}, {recs[0]['shared_concept']}"

    # COCO's image info file gives the order; an explicit list wins over both.
    info = tmp_path / "info.json"
    order = sorted(ids, reverse=True)
    info.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in order]}))
    b2 = circo.load(root, "val", image_dir=image_dir, image_info=str(info), limit=8)
    assert list(b2.gallery) == [str(i) for i in order]
    extra_id = sorted(ids)[:3]
    b3 = circo.load(root, "val", image_dir=image_dir, gallery_ids=extra_id, limit=8, on_missing="skip")
    assert list(b3.gallery) == [str(i) for i in extra_id] and len(b3.queries) < 8

    with pytest.raises(AnnotationError, match=r"val\.json: record #0 \(id 0\): ground truth"):
        circo.load(root, "val", image_dir=image_dir, gallery_ids=extra_id, limit=8)
    with pytest.raises(FileNotFoundError, match="gallery_ids"):
        circo.load(root, "val", image_dir=str(tmp_path / "nowhere"))
    test = circo.load(root, "test", gallery_ids=[1, 2], check_images=False)
    assert len(test.queries) == 800 and not test.has_ground_truth


def test_circo_malformed(shared_data_dir, tmp_path):
    with open(os.path.join(shared_data_dir, "circo", "annotations", "val.json")) as f:
        recs = json.load(f)[:3]
    recs[1]["gt_img_ids"] = ["355099"]
    os.makedirs(tmp_path / "annotations")
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(recs))
    with pytest.raises(AnnotationError, match=r"val\.json: record #1 \(id 1\) 'gt_img_ids'"):
        circo.load(str(tmp_path), "val", gallery_ids=[1], check_images=False, on_missing="skip")


def test_circo_evaluation_reports_map(shared_data_dir, tmp_path):
    root = os.path.join(shared_data_dir, "circo")
    image_dir = str(tmp_path / "unlabeled2017")
    circo_slice(shared_data_dir, image_dir, 6)
    b = circo.load(root, "val", image_dir=image_dir, limit=6)

    class Pixels:
        def encode_images(self, images):
            return images.reshape(len(images), -1).astype(np.float32) + 1

        def encode_queries(self, images, texts):
            return self.encode_images(images)

    out = evaluator.evaluate(b, Pixels(), image_size=4, log=None)
    for key in ("map@5", "map@10", "map@25", "map@50", "recall@5", "recall@50", "map@10/cardinality"):
        assert key in out
    # The gallery is smaller than 50, so every ground truth is retrieved: recall@50 is 100.
    assert out["recall@50"] == 100.0 and 0.0 < out["map@50"] <= 100.0
