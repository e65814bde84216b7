"""Fuzzing as a test: a seeded generator of 1 000 bad inputs (malformed JSON, wrong types, missing keys, missing /
zero-byte / truncated / non-image / decompression-bomb images, bad benchmark annotations) through the triplet reader,
the Grain transform, the CIRR reader and the command line. Under ``skip`` nothing crashes and every bad input is
counted; under ``raise`` every one is an error that names it."""
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from zscir_jax.data import cirr, images, pipeline, scenes, triplets
from zscir_jax.data import tokenizer as tok_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
N = 1000


def _png_header(width, height):
    """A PNG signature and IHDR claiming ``width`` x ``height``, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def bad_images(folder, good_png):
    """kind -> path of one bad image of that kind."""
    os.makedirs(folder, exist_ok=True)
    data = open(good_png, "rb").read()
    files = {"zero_byte": b"", "truncated": data[: len(data) // 2], "not_an_image": b"caption: a red square\n",
             "bomb": _png_header(200_000, 200_000), "header_only": _png_header(8, 8)}
    out = {"missing": os.path.join(folder, "missing.png")}
    for kind, content in files.items():
        path = os.path.join(folder, f"{kind}.png")
        with open(path, "wb") as f:
            f.write(content)
        out[kind] = path
    return out


def bad_lines(rng, good_image, n):
    """n malformed JSONL lines, each bad in one seeded way."""
    makers = [
        lambda: "{not json",
        lambda: "[1, 2, 3]",
        lambda: "null",
        lambda: json.dumps({"modification_text": "x", "target_text": "y"}),  # no reference
        lambda: json.dumps({"reference_image": good_image, "target_text": "y"}),  # no modification
        lambda: json.dumps({"reference_image": int(rng.integers(1e6)), "modification_text": "x", "target_text": "y"}),
        lambda: json.dumps({"reference_image": good_image, "modification_text": ["x"], "target_text": "y"}),
        lambda: json.dumps({"reference_image": good_image, "modification_text": "x"}),  # no target at all
        lambda: json.dumps({"reference_image": good_image, "modification_text": "x", "target_text": "y",
                            "bogus_key": 1}),
        lambda: json.dumps({"reference_image": good_image, "modification_text": "x", "target_text": 3.5}),
        lambda: '{"reference_image": "' + good_image + '", "modification_text": "x", "target_text": "y"',
        lambda: bytes(rng.integers(32, 127, 12, dtype=np.uint8)).decode("ascii"),  # printable junk, one line
    ]
    return [makers[int(k)]() for k in rng.integers(0, len(makers), n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    root = scenes.build(str(base / "scenes"), num_train=8, num_val_queries=4, num_test_queries=2, image_size=16)
    pairs = scenes.train_pairs(root)
    tok = tok_lib.Tokenizer.from_dir(tok_lib.build_word_tokenizer([c for _, c in pairs], str(base / "tok"), 12), 12)
    return base, root, pairs, tok, bad_images(str(base / "images"), pairs[0][0])


def _inputs(world):
    """(bad JSONL lines, bad image records) in a seeded mix: N in all."""
    base, root, pairs, tok, bad = world
    rng = np.random.default_rng(0)
    kinds = sorted(bad)
    n_lines = N // 2
    lines = bad_lines(rng, pairs[0][0], n_lines)
    records = []
    for i in range(N - n_lines):
        kind = kinds[int(rng.integers(len(kinds)))]
        where = "reference" if rng.random() < 0.5 else "target"
        ref, tgt = (bad[kind], pairs[1][0]) if where == "reference" else (pairs[1][0], bad[kind])
        records.append((kind, triplets.TripletRecord(ref, f"fuzz {i}", target_text="t", target_image=tgt)))
    return lines, records


def test_skip_counts_every_bad_input_and_never_crashes(world, tmp_path):
    base, root, pairs, tok, bad = world
    lines, records = _inputs(world)
    good = [triplets.TripletRecord(p, "make it red", target_text=c) for p, c in pairs]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([r.to_json() for r in good] + lines + [r.to_json() for _, r in records]) + "\n")
    read = triplets.read_jsonl(str(path), "skip")
    assert read.skipped == len(lines) and len(read) == len(good) + len(records)
    stats = pipeline.PipelineStats()
    transform = pipeline._TripletTransform(16, tok, "skip", stats, None, images.CLIP_MEAN, images.CLIP_STD)
    outputs = [transform(r) for r in read]
    assert sum(o is not None for o in outputs) == len(good)
    assert stats.skipped == len(records)
    expected_missing = sum(kind == "missing" for kind, _ in records)
    assert stats.by_kind["missing_image"] == expected_missing
    assert stats.by_kind["undecodable_image"] == len(records) - expected_missing


def test_raise_names_every_bad_input(world, tmp_path):
    base, root, pairs, tok, bad = world
    lines, records = _inputs(world)
    good = triplets.TripletRecord(pairs[0][0], "make it red", target_text="x").to_json()
    for i, line in enumerate(lines):
        path = tmp_path / f"line_{i % 7}.jsonl"
        path.write_text(good + "\n" + line + "\n")
        with pytest.raises(ValueError) as e:
            triplets.read_jsonl(str(path), "raise")
        assert str(path) in str(e.value) and "line 2" in str(e.value), str(e.value)
    transform = pipeline._TripletTransform(16, tok, "raise", pipeline.PipelineStats(), None, images.CLIP_MEAN,
                                           images.CLIP_STD)
    for kind, record in records:
        with pytest.raises(images.ImageError) as e:
            transform(record)
        assert bad[kind] in str(e.value)


def test_bad_benchmark_annotations_are_named(world, tmp_path):
    base, root, pairs, tok, bad = world
    caption_file = cirr.caption_file(root, "val")
    good = json.load(open(caption_file))
    rng = np.random.default_rng(1)
    breakers = [lambda q: q.pop("reference"), lambda q: q.update(caption=7), lambda q: q.update(pairid="x"),
                lambda q: q.update(img_set=None), lambda q: q.update(target_hard=["a"])]
    for k in range(10):
        queries = json.loads(json.dumps(good))
        breakers[int(rng.integers(len(breakers)))](queries[k % len(queries)])
        with open(caption_file, "w") as f:
            json.dump(queries, f)
        try:
            with pytest.raises(ValueError) as e:
                cirr.load(root, "val")
            assert os.path.basename(caption_file) in str(e.value), str(e.value)
        finally:
            with open(caption_file, "w") as f:
                json.dump(good, f)


def test_the_command_line_turns_bad_data_into_one_line(world, tmp_path):
    """A real-backbone config on a transformers CLIP: a malformed line, then a bad image, under raise."""
    from test_mvftji import _tiny_hf_clip

    base, root, pairs, tok, bad = world
    clip_dir = _tiny_hf_clip(str(tmp_path / "clip"))
    good = [triplets.TripletRecord(p, "make it red", target_text=c, target_image=pairs[-1][0]).to_json()
            for p, c in pairs]
    cases = {"line": good + ["{not json"], "image": good + [
        triplets.TripletRecord(bad["truncated"], "x", target_text="y", target_image=pairs[0][0]).to_json()] * 8}
    for name, lines in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "pvlf_clip_b32.py:runlocal"),
               "--workdir", str(tmp_path / f"w_{name}"), f"--config.model.clip_path={clip_dir}",
               f"--config.data.triplets={path}", "--config.data.image_size=32", "--config.data.max_length=24",
               "--config.train.steps=2", "--config.train.progress_bar=False", "--config.model.fusion.heads=2",
               "--config.eval.compare=()"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
        lines_err = [ln for ln in run.stderr.strip().splitlines() if "empty: " not in ln]  # empty-root warnings
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert len(lines_err) == 1 and lines_err[0].startswith("zscir_jax.main: error:"), run.stderr[-3000:]
        assert (f"{path}: malformed record at line {len(lines)}" if name == "line" else bad["truncated"]) in lines_err[0]
