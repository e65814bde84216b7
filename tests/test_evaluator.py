"""End to end: a tiny generated CIRR-layout dataset, a trivial encoder, evaluate(), files and cache."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from zscir_jax.data import cirr
from zscir_jax.evaluation import evaluator, report, submission

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "cyan": (30, 220, 220), "magenta": (220, 30, 220)}


def make_cirr_like(root, n_sets=4, seed=0):
    """Each img_set holds 6 single-colour squares; a query asks to turn the reference into another colour."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    for split, prefix in (("val", "dev"), ("test1", "test1")):
        images, captions, pairid = {}, [], 0
        os.makedirs(os.path.join(root, prefix), exist_ok=True)
        for s in range(n_sets):
            members = []
            for j, colour in enumerate(names):
                name = f"{prefix}-{s}-{j}-img0"
                arr = np.zeros((20, 28, 3), np.uint8) + np.array(COLOURS[colour], np.uint8)
                arr[rng.integers(0, 20), :] = 128  # a line so that images of the same colour differ
                Image.fromarray(arr).save(os.path.join(root, prefix, name + ".png"))
                images[name] = f"./{prefix}/{name}.png"
                members.append(name)
            for r in range(2):
                ref, tgt = rng.choice(6, 2, replace=False)
                rec = {"pairid": pairid, "reference": members[ref], "caption": f"make it {names[tgt]}",
                       "img_set": {"id": s, "members": members, "reference_rank": 0}}
                if split == "val":
                    rec["target_hard"] = members[tgt]
                    rec["target_soft"] = {members[tgt]: 1.0}
                    rec["img_set"]["target_rank"] = 1
                captions.append(rec)
                pairid += 1
        os.makedirs(os.path.join(root, "captions"), exist_ok=True)
        os.makedirs(os.path.join(root, "image_splits"), exist_ok=True)
        with open(os.path.join(root, "captions", f"cap.rc2.{split}.json"), "w") as f:
            json.dump(captions, f)
        with open(os.path.join(root, "image_splits", f"split.rc2.{split}.json"), "w") as f:
            json.dump(images, f)
    return root


class TrivialEncoder:
    """Images: mean colour; queries: the colour named in the text (a hashed word otherwise)."""

    calls = 0

    def encode_images(self, images):
        TrivialEncoder.calls += 1
        return images.reshape(images.shape[0], -1, 3).mean(1).astype(np.float32) / 255.0 + 0.01

    def encode_queries(self, images, texts):
        out = []
        for t in texts:
            v = np.full(3, 0.01, np.float32)
            for w in t.lower().split():
                if w in COLOURS:
                    v += np.array(COLOURS[w], np.float32) / 255.0
                else:
                    v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 3] += 1e-3
            out.append(v)
        return np.stack(out)


def test_evaluate_end_to_end_and_cache(tmp_path):
    root = make_cirr_like(str(tmp_path / "cirr"))
    bench = cirr.load(root, "val")
    assert len(bench.queries) == 8 and len(bench.gallery) == 24
    work = str(tmp_path / "work")
    logs = []
    enc = TrivialEncoder()
    TrivialEncoder.calls = 0
    r1 = evaluator.evaluate(bench, enc, image_size=16, batch_size=5, workdir=work, cache_key="step_1", log=logs.append)
    calls = TrivialEncoder.calls
    for key in ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "recall_subset@2",
                "recall_subset@3", "seconds_gallery", "seconds_per_1k_queries"):
        assert key in r1
    # Within its img_set the target is the only image of the asked colour.
    assert r1["recall_subset@1"] == 100.0
    assert r1["recall@50"] == 100.0
    assert os.path.isfile(os.path.join(work, "eval", "cirr_val.json"))
    assert os.path.isfile(os.path.join(work, "eval", "cirr_val.png"))
    assert os.path.isfile(os.path.join(work, "eval", "cache", "step_1", "cirr_val.npy"))
    with open(os.path.join(work, "eval", "cirr_val.json")) as f:
        saved = json.load(f)
    assert saved["recall@1"] == r1["recall@1"] and saved["split"] == "val"
    assert any("recall@1" in line for line in logs)

    r2 = evaluator.evaluate(bench, enc, image_size=16, batch_size=5, workdir=work, cache_key="step_1", log=None,
                            num_pictures=0)
    # Only the query side was encoded again: the gallery came from the cache, with identical metrics.
    assert TrivialEncoder.calls == calls and r2["gallery_from_cache"] == 1.0
    assert {k: v for k, v in r1.items() if "@" in k} == {k: v for k, v in r2.items() if "@" in k}


def test_joint_scoring_changes_ranking(tmp_path):
    root = make_cirr_like(str(tmp_path / "cirr"), n_sets=2)
    bench = cirr.load(root, "val")

    class Opposite(TrivialEncoder):
        def encode_queries(self, images, texts):
            return -super().encode_queries(images, texts)

    base = evaluator.evaluate(bench, TrivialEncoder(), image_size=8, log=None)
    hurt = evaluator.evaluate(bench, TrivialEncoder(), image_size=8, log=None, joint_encoder=Opposite(),
                              joint_weight=5.0)
    assert hurt["recall_subset@1"] < base["recall_subset@1"]


def test_hidden_split_writes_valid_submissions(tmp_path):
    root = make_cirr_like(str(tmp_path / "cirr"), n_sets=2)
    bench = cirr.load(root, "test1")
    assert not bench.has_ground_truth
    work = str(tmp_path / "work")
    out = evaluator.evaluate(bench, TrivialEncoder(), image_size=8, workdir=work, log=None)
    assert "recall@1" not in out and len(out["submission_files"]) == 2
    ann = os.path.join(root, "captions", "cap.rc2.test1.json")
    recall_file, subset_file = out["submission_files"]
    with open(recall_file) as f:
        rec = json.load(f)
    assert rec["metric"] == "recall" and all(len(v) == 11 for k, v in rec.items() if k.isdigit())
    # The gallery has only 12 images, so the top-50 rule cannot hold; everything else must.
    problems = submission.validate_file(recall_file, "cirr", ann)
    assert problems and all("expected 50" in p for p in problems)
    assert submission.validate_file(subset_file, "cirr", ann) == []


def test_format_table_and_fashioniq_average():
    rows = evaluator.fashioniq_average({
        "dress": {"recall@10": 10.0, "recall@50": 30.0},
        "shirt": {"recall@10": 20.0, "recall@50": 40.0},
        "toptee": {"recall@10": 30.0, "recall@50": 50.0},
    })
    assert rows["average"] == {"recall@10": 20.0, "recall@50": 40.0, "mean": 30.0}
    text = report.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["recall@10", "recall@50", "mean"]
    assert "average" in lines[-1] and "20.00" in lines[-1]
    assert report.format_table({"a": {"x": 1.0}, "b": {"y": 2.0}}).splitlines()[2].split() == ["a", "1.00", "-"]


def test_missing_gallery_image_is_named(tmp_path):
    root = make_cirr_like(str(tmp_path / "cirr"), n_sets=2)
    os.remove(os.path.join(root, "dev", "dev-1-3-img0.png"))
    with pytest.raises(FileNotFoundError, match="dev-1-3-img0"):
        cirr.load(root, "val")
    bench = cirr.load(root, "val", on_missing="skip")
    assert bench.skipped_images == 1 and "dev-1-3-img0" not in bench.gallery
    assert bench.skipped == 2  # both queries of set 1 have the image among their img_set members


def test_both_orders_texts_are_averaged(tmp_path):
    from zscir_jax.data.benchmarks import Benchmark, CIRQuery

    path = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    q = CIRQuery("dress-0", "a", "red", targets=("a",), extra={"texts": ("red", "blue")})
    bench = Benchmark("fashioniq_dress", "val", (q,), ("a",), {"a": path}, True, kind="fashioniq")
    emb = evaluator.embed_queries(bench, TrivialEncoder(), image_size=4, batch_size=2)
    red, blue = (TrivialEncoder().encode_queries(None, [t]) for t in ("red", "blue"))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    np.testing.assert_allclose(emb[0], unit(unit(red[0]) + unit(blue[0])), rtol=1e-6)


def _saved(work, tag="cirr_val"):
    with open(os.path.join(work, "eval", f"{tag}.json")) as f:
        return json.load(f)


def test_complete_run_says_so(tmp_path):
    root = make_cirr_like(str(tmp_path / "cirr"), n_sets=2)
    bench = cirr.load(root, "val")
    work, logs = str(tmp_path / "work"), []
    out = evaluator.evaluate(bench, TrivialEncoder(), image_size=8, workdir=work, num_pictures=0, log=logs.append)
    expect = {"num_queries": 4, "total_queries": 4, "skipped_queries": 0, "limited_to": None,
              "skipped_gallery_images": 0, "complete": True}
    assert {k: out[k] for k in expect} == expect
    assert {k: _saved(work)[k] for k in expect} == expect
    assert not any("PARTIAL" in line or "*" in line for line in logs)


def test_skipped_queries_are_reported_in_json_table_and_log(tmp_path):
    root = make_cirr_like(str(tmp_path / "cirr"), n_sets=2)
    os.remove(os.path.join(root, "dev", "dev-1-3-img0.png"))
    bench = cirr.load(root, "val", on_missing="skip")
    work, logs = str(tmp_path / "work"), []
    out = evaluator.evaluate(bench, TrivialEncoder(), image_size=8, workdir=work, num_pictures=0, log=logs.append)
    expect = {"num_queries": 2, "total_queries": 4, "skipped_queries": 2, "limited_to": None,
              "skipped_gallery_images": 1, "complete": False}
    assert {k: out[k] for k in expect} == expect
    saved = _saved(work)
    assert {k: saved[k] for k in expect} == expect
    table, line = logs
    assert table.splitlines()[2].startswith("cirr_val *")
    assert table.splitlines()[-1].startswith("* PARTIAL evaluation: 2 of 4 queries evaluated")
    assert "2 queries skipped by the reader" in table and "1 gallery images skipped" in table
    assert line.startswith("cirr_val: 2 queries") and "PARTIAL evaluation: 2 of 4 queries evaluated" in line


def test_limited_run_is_reported(tmp_path):
    """A reader that records its limit (FashionIQ does; see Benchmark.total_queries / limited_to)."""
    import dataclasses

    root = make_cirr_like(str(tmp_path / "cirr"), n_sets=2)
    full = cirr.load(root, "val")
    bench = dataclasses.replace(full, queries=full.queries[:3], total_queries=4, limited_to=3)
    work, logs = str(tmp_path / "work"), []
    out = evaluator.evaluate(bench, TrivialEncoder(), image_size=8, workdir=work, num_pictures=0, log=logs.append)
    saved = _saved(work)
    for d in (out, saved):
        assert (d["num_queries"], d["total_queries"], d["skipped_queries"], d["limited_to"], d["complete"]) == (
            3, 4, 0, 3, False)
    assert "limited to the first 3 of 4 query records" in logs[0] and "3 of 4 queries evaluated" in logs[1]
    assert evaluator.partial_note(out) in logs[1]


def test_fashioniq_limit_reaches_the_json(shared_data_dir, tmp_path):
    from zscir_jax.data import fashioniq

    src = os.path.join(shared_data_dir, "fashioniq")
    with open(os.path.join(src, "captions", "cap.dress.val.json")) as f:
        recs = json.load(f)[:5]
    for r in recs:
        for asin in (r["candidate"], r["target"]):
            path = str(tmp_path / "images" / f"{asin}.png")
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(np.full((4, 4, 3), len(asin) * 7 % 255, np.uint8)).save(path)
    b = fashioniq.load(src, "dress", "val", image_dir=str(tmp_path / "images"), on_missing="skip", limit=5)
    work, logs = str(tmp_path / "work"), []
    rows = evaluator.evaluate_fashioniq([b], TrivialEncoder(), image_size=4, workdir=work, num_pictures=0,
                                        log=logs.append)
    saved = _saved(work, "fashioniq_dress_val")
    assert (saved["num_queries"], saved["total_queries"], saved["limited_to"], saved["complete"]) == (
        5, 2017, 5, False)
    assert saved["skipped_gallery_images"] == 3817 - len(b.gallery)
    assert "recall@10" in rows["average"]
    assert logs[-1].splitlines()[-1].startswith("* dress: PARTIAL evaluation: 5 of 2017 queries evaluated")
