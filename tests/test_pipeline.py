"""Grain loaders, image preprocessing and the word-level tokenizer, on a tiny generated scene set."""
import gc

import numpy as np
import pytest
from PIL import Image

from zscir_jax.data import images, pipeline, scenes
from zscir_jax.data import tokenizer as tok_lib
from zscir_jax.data.triplets import TripletRecord

S = 16  # image side in the loaders: small keeps the tests quick


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = scenes.build(str(tmp_path_factory.mktemp("scenes")), num_train=48, num_val_queries=2, num_test_queries=2,
                        image_size=32, seed=0)
    pairs = scenes.train_pairs(root)
    tok_dir = tok_lib.build_word_tokenizer([c for _, c in pairs] + list(scenes.PHRASINGS["colour"]),
                                           str(tmp_path_factory.mktemp("tok")), max_length=16)
    tok = tok_lib.Tokenizer.from_dir(tok_dir, 16)
    # odd records have no target image (target text only)
    records = [TripletRecord(p, f"make it {i}", target_text=c, target_image=None if i % 2 else pairs[-1 - i][0])
               for i, (p, c) in enumerate(pairs)]
    return root, pairs, tok, records, tok_dir


def _loader(records, tok, **kw):
    args = dict(global_batch_size=4, image_size=S, tokenizer=tok, seed=7, process_index=0, process_count=1)
    args.update(kw)
    return pipeline.triplet_loader(records, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return len(a) == len(b) and all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_triplet_batch_layout(data):
    _, _, tok, records, _ = data
    b = next(_loader(records, tok))
    assert b["reference_pixels"].shape == (4, S, S, 3) and b["reference_pixels"].dtype == np.float32
    assert b["target_pixels"].shape == (4, S, S, 3) and b["has_target_image"].dtype == np.bool_
    for k in ("text_ids", "text_mask", "target_text_ids", "target_text_mask"):
        assert b[k].shape == (4, 16) and b[k].dtype == np.int32
    # no target image -> zero pixels
    assert not np.any(b["target_pixels"][~b["has_target_image"]])
    assert np.all(np.abs(b["target_pixels"][b["has_target_image"]]).sum(axis=(1, 2, 3)) > 0)


def test_deterministic_and_resumable(data):
    _, _, tok, records, _ = data
    a = _take(_loader(records, tok), 5)
    assert _equal(a, _take(_loader(records, tok), 5))
    assert not _equal(a, _take(_loader(records, tok, seed=8), 5))
    it = _loader(records, tok)
    _take(it, 2)
    state = it.get_state()
    rest = _take(it, 3)
    it2 = _loader(records, tok)
    it2.set_state(state)
    assert _equal(rest, _take(it2, 3))
    # repeats forever, reshuffling every epoch: 48 records / 4 = 12 batches per epoch
    many = _take(_loader(records, tok), 30)
    assert len(many) == 30


def test_process_shards_are_disjoint_and_cover(data):
    _, pairs, tok, records, _ = data
    seen = []
    for pi in range(2):
        it = _loader(records, tok, num_epochs=1, global_batch_size=4, process_index=pi, process_count=2)
        batches = list(it)
        assert all(b["text_ids"].shape[0] == 2 for b in batches)  # local batch = global // processes
        seen.append({row.tobytes() for b in batches for row in b["reference_pixels"]})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == len(records)  # every reference image is a distinct scene


def test_processes_read_the_rows_of_the_single_process_global_batch_in_order(data):
    """Process i's local batch is rows [i * local, (i + 1) * local) of the global batch one process reads, so the
    hosts of a job assemble exactly that batch (row order included: per-row randomness follows the row)."""
    _, _, tok, records, _ = data
    whole = _take(_loader(records, tok, global_batch_size=8), 3)
    parts = [_take(_loader(records, tok, global_batch_size=8, process_index=i, process_count=2), 3) for i in range(2)]
    joined = [{k: np.concatenate([parts[0][s][k], parts[1][s][k]]) for k in whole[s]} for s in range(3)]
    assert _equal(whole, joined)


def test_corrupt_image_raises_or_is_skipped(data, tmp_path):
    _, pairs, tok, records, _ = data
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    recs = [TripletRecord(str(bad), "bad", target_text="x")] + records[:7]
    with pytest.raises(images.ImageError, match="broken.png"):
        _take(_loader(recs, tok, shuffle=False, num_epochs=1), 2)
    it = _loader(recs, tok, shuffle=False, num_epochs=1, on_error="skip")
    batches = list(it)
    assert len(batches) == 1 and it.stats.skipped == 1 and "broken.png" in it.stats.last_error
    missing = [TripletRecord(str(tmp_path / "nope.png"), "m", target_text="x")] + records[:3]
    with pytest.raises(images.ImageError, match="nope.png"):
        next(_loader(missing, tok, shuffle=False))


def test_pair_loader_and_array_record_source(data, tmp_path):
    from zscir_jax.data import triplets

    _, pairs, tok, records, _ = data
    b = next(pipeline.pair_loader(pairs, global_batch_size=4, image_size=S, tokenizer=tok, seed=0,
                                  process_index=0, process_count=1))
    assert b["pixels"].shape == (4, S, S, 3) and b["text_ids"].shape == (4, 16)
    paths = triplets.write_array_record(records, str(tmp_path / "tr"), num_shards=2)
    from_ar = _take(_loader(triplets.array_record_source(paths), tok, shuffle=False, num_epochs=1), 3)
    sorted_records = [records[i] for s in range(2) for i in range(s, len(records), 2)]  # round-robin shards
    assert _equal(from_ar, _take(_loader(sorted_records, tok, shuffle=False, num_epochs=1), 3))


def test_worker_processes(data):
    """worker_count=2: each Grain worker batches its slice [w::2] of the element stream, in turn; resumable.
    One worker start-up only (it dominates: ~5-10 s on 2 busy cores)."""
    _, _, tok, records, _ = data
    it = _loader(records, tok, worker_count=2)
    first = _take(it, 2)
    # worker w batches elements w, w + 2, ... of the stream a single in-process loader reads one by one
    single = _take(_loader(records, tok, global_batch_size=1), 8)
    expected = [{k: np.concatenate([single[j][k] for j in range(w, 8, 2)]) for k in single[0]} for w in range(2)]
    assert _equal(first, expected)
    state = it.get_state()
    rest = _take(it, 2)
    it.set_state(state)
    assert _equal(rest, _take(it, 2))
    it.close()
    gc.collect()


def test_preprocess_matches_clip_geometry(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    u8 = images.to_uint8_square(img, 20)
    assert u8.shape == (20, 20, 3) and u8.dtype == np.uint8
    ref = np.asarray(img.resize((30, 20), Image.BICUBIC))[:, 5:25]  # shorter side 40 -> 20, centre crop
    assert np.array_equal(u8, ref)
    x = images.preprocess(img, 20)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, (u8 / 255.0 - np.array(images.CLIP_MEAN)) / np.array(images.CLIP_STD), atol=1e-5)
    p = tmp_path / "gray.png"
    Image.new("L", (8, 8), 3).save(p)
    assert images.load_image(str(p)).mode == "RGB"
    with pytest.raises(images.ImageError, match="missing.png"):
        images.load_image(str(tmp_path / "missing.png"))


def test_word_tokenizer(data):
    from transformers import AutoTokenizer

    _, _, tok, _, tok_dir = data
    hf = AutoTokenizer.from_pretrained(tok_dir)
    ids = hf("Make the circle, BLUE!")["input_ids"]
    assert ids[0] == hf.convert_tokens_to_ids(tok_lib.BOS) and ids[-1] == hf.eos_token_id
    assert hf.convert_ids_to_tokens(ids[1:-1]) == ["make", "the", "circle", ",", "blue", "<unk>"]  # "!": unseen
    a, m = tok(["make the circle blue", "zzz " * 40])
    assert a.dtype == np.int32 and a.shape == (2, 16) and m.shape == (2, 16)
    assert a[0, m[0].sum() - 1] == tok.eos_token_id and np.all(a[0, m[0].sum():] == tok.pad_token_id)
    assert m[1].all() and a[1, -1] == tok.eos_token_id  # truncated: EOS kept last
    assert a[1, 1] == hf.unk_token_id
    assert tok.vocab_size == len(hf) and tok.pad_token_id != tok.eos_token_id


def _skip_config(tok_dir, tok, triplets, **data):
    import os
    import runpy

    common = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "configs", "common.py"))
    c = common["tiny"]("pvlf")
    c.model.clip_tiny.update(vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id, max_length=16, image_size=S)
    c.data.update(source="triplets", triplets=triplets, tokenizer=tok_dir, image_size=S, max_length=16,
                  on_error="skip", **data)
    c.train.update(steps=4, batch_size=8, log_every=2, checkpoint_every=4)
    return c


def test_skips_are_counted_per_kind_logged_and_a_run_that_skips_too_much_stops(data, tmp_path):
    import json

    from zscir_jax.errors import UserError
    from zscir_jax.train import trainer

    _, pairs, tok, records, tok_dir = data
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    lines = [r.to_json() for r in records[:20]]
    lines += ["{not json", json.dumps({"reference_image": 3, "modification_text": "x", "target_text": "y"})]
    lines += [TripletRecord(str(tmp_path / "nope.png"), "m", target_text="x").to_json(),
              TripletRecord(str(broken), "b", target_text="x").to_json()]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    mesh = trainer.sharding.make_mesh((-1, 1, 1))
    trainer.train(_skip_config(tok_dir, tok, str(path), max_skip_fraction=0.5), str(tmp_path / "run"), mesh)
    rows = trainer.read_metrics(str(tmp_path / "run"))
    last = rows[4]
    assert last["skipped/bad_record"] == 2
    assert last["skipped/missing_image"] >= 1 and last["skipped/undecodable_image"] >= 1
    assert 0 < last["skipped/fraction"] < 0.5
    with pytest.raises(UserError, match=r"more than config.data.max_skip_fraction=0.01"):
        trainer.train(_skip_config(tok_dir, tok, str(path), max_skip_fraction=0.01), str(tmp_path / "run2"), mesh)


def test_image_key_survives_a_moved_root():
    """A static bank's keys (in the checkpoint) still name the batch's targets after the workdir moves."""
    assert pipeline.image_key("/old/work/garments/images/a1.png") == pipeline.image_key("/new/w/garments/images/a1.png")
    assert pipeline.image_key("images/a1.png") == pipeline.image_key("/x/images/a1.png")
    assert pipeline.image_key("/w/images/a1.png") != pipeline.image_key("/w/images/a2.png")
    assert 0 <= pipeline.image_key("/w/images/a1.png") < 2 ** 31
