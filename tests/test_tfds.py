"""A TFDS build (ArrayRecord) of a tiny CIRR dataset: the real annotation slice plus placeholder PNGs, read back by
random access."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")


def tiny_cirr(shared_data_dir, root, n=4):
    """First ``n`` val and test1 records, a split file restricted to their images, and a PNG per image."""
    os.makedirs(os.path.join(root, "captions"))
    os.makedirs(os.path.join(root, "image_splits"))
    for split in ("val", "test1"):
        with open(os.path.join(shared_data_dir, "cirr", "captions", f"cap.rc2.{split}.json")) as f:
            recs = json.load(f)[:n]
        with open(os.path.join(shared_data_dir, "cirr", "image_splits", f"split.rc2.{split}.json")) as f:
            paths = json.load(f)
        names = {r["reference"] for r in recs} | {m for r in recs for m in r["img_set"]["members"]}
        names |= {r["target_hard"] for r in recs if "target_hard" in r}
        kept = {k: v for k, v in paths.items() if k in names}
        for i, (name, rel) in enumerate(kept.items()):
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(np.full((5, 7, 3), i * 9 % 256, np.uint8)).save(path)
        with open(os.path.join(root, "captions", f"cap.rc2.{split}.json"), "w") as f:
            json.dump(recs, f)
        with open(os.path.join(root, "image_splits", f"split.rc2.{split}.json"), "w") as f:
            json.dump(kept, f)
    return root


def test_cirr_builder_array_record_random_access(shared_data_dir, tmp_path):
    from zscir_jax.data import cirr, tfds_builders

    manual = tiny_cirr(shared_data_dir, str(tmp_path / "manual"))
    builder = tfds_builders.ZscirCirr(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    assert set(builder.info.splits) == {"val", "val_gallery", "test1", "test1_gallery"}

    bench = cirr.load(manual, "val")
    queries = builder.as_data_source("val")
    gallery = builder.as_data_source("val_gallery")
    assert len(queries) == len(bench.queries) and len(gallery) == len(bench.gallery)
    # Random access, out of order; records come back with the reader's fields (order is TFDS's, keyed by id).
    by_id = {q.query_id: q for q in bench.queries}
    for i in (len(queries) - 1, 0):
        rec = queries[i]
        q = by_id[rec["query_id"].decode()]
        assert rec["name"].decode() == q.reference and rec["text"].decode() == q.text
        assert [t.decode() for t in rec["targets"]] == list(q.targets)
        with open(bench.image_path(q.reference), "rb") as f:
            assert rec["image"] == f.read()  # the PNG bytes, untouched
        assert np.asarray(Image.open(io.BytesIO(rec["image"]))).shape == (5, 7, 3)
    assert {gallery[i]["name"].decode() for i in range(len(gallery))} == set(bench.gallery)
    test = builder.as_data_source("test1")
    assert len(test[0]["targets"]) == 0

    # The files are plain ArrayRecord: grain reads them directly.
    import grain.python as grain

    files = sorted(
        os.path.join(builder.data_dir, f) for f in os.listdir(builder.data_dir) if "-val.array_record" in f
    )
    assert files
    src = grain.ArrayRecordDataSource(files)
    assert len(src) == len(queries)
    decoded = builder.info.features.deserialize_example_np(src[0])
    assert decoded["kind"] in (b"query", "query") and decoded["image"] == queries[0]["image"]
