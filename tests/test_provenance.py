"""train.provenance: the config keys an output depends on, recorded and compared on a rerun."""
import json

import pytest

from zscir_jax.train import provenance

import ml_collections


def _config(workdir):
    c = ml_collections.ConfigDict()
    c.method, c.seed = "pvlf", 0
    c.data = dict(triplets=f"{workdir}/triplets/t.jsonl", image_size=32, worker_count=2, on_error="skip")
    c.optim = dict(lr=dict(fusion=1e-4), groups=((".*", "fusion"),))
    c.train = dict(batch_size=8, steps=10, log_every=5)
    return c


def test_record_keeps_what_the_output_depends_on_with_paths_relative_to_the_workdir(tmp_path):
    r = provenance.record(_config(tmp_path), provenance.TRAINED, str(tmp_path))
    assert r["data.triplets"] == "<workdir>/triplets/t.jsonl"
    assert r["optim.lr.fusion"] == 1e-4 and r["optim.groups"] == [[".*", "fusion"]] and r["train.batch_size"] == 8
    assert not {"data.worker_count", "data.on_error", "train.steps", "train.log_every"} & set(r)
    moved = provenance.record(_config(tmp_path / "elsewhere"), provenance.TRAINED, str(tmp_path / "elsewhere"))
    assert provenance.changes(r, moved) == []  # a moved workdir still matches


def test_check_or_write_records_once_then_names_every_changed_key(tmp_path):
    path = str(tmp_path / "prepare.json")
    first = provenance.record(_config(tmp_path), provenance.TRAINED, str(tmp_path))
    provenance.check_or_write(path, first, "the stages")
    provenance.check_or_write(path, first, "the stages")  # same settings: nothing to say
    assert json.load(open(path)) == json.loads(json.dumps(first))
    changed = _config(tmp_path)
    changed.seed, changed.data.image_size = 1, 64
    changed.train.steps = 99  # not recorded: a run may be continued for more steps
    with pytest.raises(provenance.ChangedSettings) as e:
        provenance.check_or_write(path, provenance.record(changed, provenance.TRAINED, str(tmp_path)), "the stages")
    message = str(e.value)
    assert "\n" not in message and "data.image_size: 32 -> 64" in message and "seed: 0 -> 1" in message
    assert "train.steps" not in message


def test_triplet_files_rewritten_with_other_records_change_the_fingerprint(tmp_path):
    """A resume on a triplets file that now holds other records is a changed input; the same bytes elsewhere are not
    (a moved or copied workdir)."""
    from zscir_jax.data import triplets

    def config(spec):
        return ml_collections.ConfigDict(dict(data=dict(triplets=spec, source="triplets", laion_format="")))

    recs = [triplets.TripletRecord(f"r{i}.png", f"make it {i}", target_text="t") for i in range(5)]
    a = triplets.write_jsonl(recs, str(tmp_path / "a" / "t.jsonl"))
    before = provenance.input_fingerprints(config(a))
    assert list(before) == ["data.triplets:contents"]
    b = triplets.write_jsonl(recs, str(tmp_path / "b" / "t.jsonl"))
    assert provenance.input_fingerprints(config(b)) == before
    triplets.write_jsonl(recs[:4] + [triplets.TripletRecord("r4.png", "make it 5", target_text="t")], a)
    after = provenance.input_fingerprints(config(a))
    assert provenance.changes(before, after) == [f"data.triplets:contents: \"{before['data.triplets:contents']}\" -> "
                                                 f"\"{after['data.triplets:contents']}\""]
    assert provenance.input_fingerprints(config("")) == {}
