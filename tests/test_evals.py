"""config.evals from the trainer: checked before anything runs, periodic scalars in metrics.jsonl, hidden test splits
write validated submission files, mode=eval restores a chosen checkpoint; several triplet sources mix."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402
import demo  # noqa: E402

from zscir_jax.data import sources, triplets  # noqa: E402
from zscir_jax.errors import UserError  # noqa: E402
from zscir_jax.evaluation import suite  # noqa: E402
from zscir_jax.train import trainer  # noqa: E402


def _with_evals(**entries):
    c = common.tiny("pvlf")
    for name, entry in entries.items():
        c.evals[name] = entry
    return c


@pytest.mark.parametrize("entry, message", [
    (common.eval_entry("coco"), "config.evals.x.reader='coco': allowed readers are cirr, fashioniq, circo"),
    (common.eval_entry("cirr", caption_join="and"), "config.evals.x.options: caption_join not accepted by the cirr"),
    (common.eval_entry("fashioniq", categories=("dress", "shoes")), "config.evals.x.options.categories"),
    (common.eval_entry("circo", every=-1), "config.evals.x.every=-1"),
])
def test_bad_eval_entries_name_the_key(entry, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        suite.specs(_with_evals(x=entry))


def test_missing_root_is_an_error_and_an_empty_one_a_warning(tmp_path):
    warnings = []
    specs = suite.specs(_with_evals(a=common.eval_entry("cirr"), b=common.eval_entry("circo", root=str(tmp_path))))
    assert [s.name for s in suite.usable(specs, warnings.append)] == ["b"]
    assert warnings == ["config.evals.a.root is empty: a is not evaluated (set it to the cirr dataset's root)"]
    missing = suite.specs(_with_evals(c=common.eval_entry("cirr", root=str(tmp_path / "nope"))))
    with pytest.raises(UserError, match="config.evals.c.root=.*nope.*no such directory"):
        suite.usable(missing, warnings.append)


def test_bad_mode_and_unknown_method_fail_before_any_stage(tmp_path):
    c = demo.get_config("smoke")
    c.mode = "evaluate"
    with pytest.raises(UserError, match="config.mode='evaluate': allowed values are train, eval"):
        trainer.train_and_evaluate(c, str(tmp_path))
    c = demo.get_config("smoke")
    c.method = "pvfl"
    with pytest.raises(UserError, match="unknown method 'pvfl'"):
        trainer.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "scenes")


def test_several_triplet_sources_mix(tmp_path):
    def write(name, n):
        recs = [triplets.TripletRecord(f"{name}{i}.png", f"make it {i}", target_text=f"t{i}") for i in range(n)]
        return triplets.write_jsonl(recs, str(tmp_path / f"{name}.jsonl"))

    a, b = write("a", 3), write("b", 5)
    c = common.tiny("pvlf")
    c.data.triplets = f"{a},jsonl:{b}"
    records = sources.load_triplets(c)
    # Relative image paths are read beside their file.
    assert [r.reference_image for r in records] == ([str(tmp_path / f"a{i}.png") for i in range(3)]
                                                    + [str(tmp_path / f"b{i}.png") for i in range(5)])
    c.data.triplets = f"csv:{a}"
    with pytest.raises(UserError, match="file not found: csv"):  # an unknown prefix is part of the path
        sources.load_triplets(c)
    c.data.triplets = f"{a},{tmp_path}/missing.jsonl"
    with pytest.raises(UserError, match="config.data.triplets: file not found: .*missing.jsonl"):
        sources.load_triplets(c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo run with a periodic CIRR eval and a hidden-test CIRR eval."""
    workdir = str(tmp_path_factory.mktemp("evals"))
    c = demo.get_config("smoke")
    c.prepare.update(num_train=120, num_val_queries=20, num_test_queries=6)
    c.train.update(steps=4, log_every=2, checkpoint_every=2, progress_bar=False)
    c.warmup.train.update(steps=4, progress_bar=False)
    c.eval.update(compare=(), untrained=False)
    c.evals = {"cirr": common.eval_entry("cirr", every=2), "cirr_test": common.eval_entry("cirr", split="test1")}
    results = trainer.train_and_evaluate(c, workdir)
    return c, workdir, results


def test_periodic_eval_scalars_and_hidden_test_submission(trained):
    c, workdir, results = trained
    rows = trainer.read_metrics(os.path.join(workdir, "pvlf"))
    assert "eval/cirr/recall@5" in rows[2] and "loss" in rows[2]  # train and eval rows of one step merged
    assert not any(k.startswith("eval/cirr_test/") for r in rows.values() for k in r)  # every=0: end only
    test = results["pvlf"]["cirr_test"]
    assert test["submission_valid"] is True and test["submission_problems"] == []
    assert sorted(os.path.basename(f) for f in test["submission_files"]) == [
        "cirr_test_test1_recall.json", "cirr_test_test1_recall_subset.json"]
    for f in test["submission_files"]:
        assert os.path.isfile(f)
    assert not any("recall@" in k for k in test)  # hidden ground truth: no metrics
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["pvlf"]["cirr"]["recall@5"] == results["pvlf"]["cirr"]["recall@5"]


def test_eval_mode_restores_the_step_named_by_init_from(trained):
    c, workdir, results = trained
    c = c.copy_and_resolve_references()
    c.mode = "eval"
    c.init_from = os.path.join(workdir, "pvlf", "checkpoints", "2")
    at_step_2 = trainer.train_and_evaluate(c, workdir)["pvlf"]["cirr"]
    rows = trainer.read_metrics(os.path.join(workdir, "pvlf"))
    for k in ("recall@1", "recall@5", "recall_subset@1"):
        assert at_step_2[k] == pytest.approx(rows[2][f"eval/cirr/{k}"])  # what the periodic eval saw at step 2
    c.init_from = os.path.join(workdir, "nowhere")
    with pytest.raises(UserError, match="config.init_from=.*nowhere.*no such file"):
        trainer.train_and_evaluate(c, workdir)
