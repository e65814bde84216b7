"""Triplet records: schema checks, JSONL / ArrayRecord round trips, the real Laion-CIR files."""
import json
import os

import pytest

from zscir_jax.data import triplets
from zscir_jax.data.triplets import TripletRecord

IMG = "/imgs"


def _laion(shared_data_dir, name):
    return os.path.join(shared_data_dir, "triplets", "transagg_laion_cir", name)


def test_laion_template_real_file(shared_data_dir):
    recs = triplets.from_laion_template(_laion(shared_data_dir, "laion_template_info.json"), IMG)
    assert len(recs) == 16000 and recs.skipped == 0
    assert recs[0] == TripletRecord(f"{IMG}/0306448.png", "beds has been newly placed.", "", f"{IMG}/0347794.png",
                                    None, "laion_cir_template", "template")
    # entries 8000-9999 have int target ids and a full caption as text
    assert recs[8000].target_image == f"{IMG}/0078025.png"
    assert recs[8000].modification_text == "A man in uniform smiles while wearing his hat."
    assert recs[15999].reference_image == f"{IMG}/0254644.png" and recs[15999].target_image == f"{IMG}/0279367.png"
    assert all(r.target_text == "" and r.target_image for r in recs)


def test_laion_llm_real_file(shared_data_dir):
    recs = triplets.from_laion_llm(_laion(shared_data_dir, "laion_llm_info.json"), IMG)
    assert len(recs) == 16000 and recs.skipped == 0
    r = next(r for r in recs if r.reference_image == f"{IMG}/0071565.png")
    assert r.target_image == f"{IMG}/0305939.png"
    assert r.modification_text == "Remove one drawer from the old wooden table."
    assert r.target_text == "An old wooden table with one drawer." and r.generator == "llm"
    assert all(r.reference_image != r.target_image for r in recs)


def test_malformed_laion_records(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"ref_image_id": "1", "relative_cap": "add a dog.", "tgt_image_id": 2},
                             {"ref_image_id": "3", "relative_cap": "x"},  # no target
                             {"ref_image_id": "4", "relative_cap": 5, "tgt_image_id": "6"}]))
    with pytest.raises(ValueError, match=r"t\.json.*index 1.*tgt_image_id"):
        triplets.from_laion_template(str(p), IMG)
    recs = triplets.from_laion_template(str(p), IMG, on_error="skip")
    assert len(recs) == 1 and recs.skipped == 2 and recs[0].target_image == f"{IMG}/0000002.png"
    q = tmp_path / "l.json"
    q.write_text(json.dumps({"7": {"tgt_image_id": "8", "relative_cap": "c"}}))
    with pytest.raises(ValueError, match=r"l\.json.*key '7'.*tgt_cap"):
        triplets.from_laion_llm(str(q), IMG)
    with pytest.raises(ValueError, match="JSON list"):
        triplets.from_laion_template(str(q), IMG)


def test_jsonl_and_array_record_round_trip(tmp_path):
    recs = [TripletRecord(f"r{i}.png", f"make it {i}", target_text=f"t{i}" if i % 2 else "",
                          target_image=None if i % 2 else f"t{i}.png", caption="c", source="s", generator="g")
            for i in range(11)]
    path = triplets.write_jsonl(recs, str(tmp_path / "a.jsonl"))
    assert triplets.read_jsonl(path) == recs
    shards = triplets.write_array_record(recs, str(tmp_path / "ar" / "train"), num_shards=3)
    assert [os.path.basename(s) for s in shards] == [f"train-0000{i}-of-00003.array_record" for i in range(3)]
    back = triplets.read_array_record(shards)
    assert sorted(back, key=lambda r: r.reference_image) == sorted(recs, key=lambda r: r.reference_image)
    assert len(triplets.array_record_source(shards)) == 11


def test_malformed_jsonl(tmp_path):
    p = tmp_path / "b.jsonl"
    good = TripletRecord("r.png", "m", target_text="t").to_json()
    p.write_text("\n".join([good, "{not json", json.dumps({"reference_image": "r.png"}),
                            json.dumps({"reference_image": "r", "modification_text": "m"}),  # no target at all
                            json.dumps({"reference_image": 3, "modification_text": "m", "target_text": "t"}), good]))
    with pytest.raises(ValueError, match=r"b\.jsonl.*line 2"):
        triplets.read_jsonl(str(p))
    recs = triplets.read_jsonl(str(p), on_error="skip")
    assert len(recs) == 2 and recs.skipped == 4
    assert any("line 3" in e and "modification_text" in e for e in recs.errors)
    with pytest.raises(ValueError, match="on_error"):
        triplets.read_jsonl(str(p), on_error="ignore")


def test_images_inside_the_workdir_are_written_relative_and_read_back_beside_the_file(tmp_path):
    """Written relative to the file's folder (only images inside ``relative_under``), read back under the file's
    folder, or under ``config.data.image_dir`` when set; absolute paths elsewhere are kept as they are."""
    import ml_collections

    from zscir_jax.data import sources

    work, elsewhere = tmp_path / "work", "/data/elsewhere/x.png"
    recs = [TripletRecord(str(work / "scenes" / "a.png"), "m", target_image=str(work / "scenes" / "b.png")),
            TripletRecord(elsewhere, "m", target_text="t"), TripletRecord("rel/c.png", "m", target_text="t")]
    path = triplets.write_jsonl(recs, str(work / "triplets" / "t.jsonl"), relative_under=str(work))
    stored = triplets.read_jsonl(path)
    assert [(r.reference_image, r.target_image) for r in stored] == [
        ("../scenes/a.png", "../scenes/b.png"), (elsewhere, None), ("rel/c.png", None)]
    shards = triplets.write_array_record(recs, str(work / "ar" / "t"), relative_under=str(work))
    assert triplets.read_array_record(shards)[0].reference_image == "../scenes/a.png"

    def load(spec, image_dir=""):
        return sources.load_triplets(ml_collections.ConfigDict(
            dict(data=dict(triplets=spec, on_error="raise", image_dir=image_dir))))

    moved = tmp_path / "moved"
    os.rename(work, moved)
    for spec in (str(moved / "triplets" / "t.jsonl"), "array_record:" + str(moved / "ar" / os.path.basename(shards[0]))):
        got = load(spec)
        assert (got[0].reference_image, got[0].target_image) == (str(moved / "scenes" / "a.png"),
                                                                 str(moved / "scenes" / "b.png"))
        assert got[1].reference_image == elsewhere
    got = load(str(moved / "triplets" / "t.jsonl"), image_dir=str(tmp_path / "images"))
    assert got[2].reference_image == str(tmp_path / "images" / "rel" / "c.png")
