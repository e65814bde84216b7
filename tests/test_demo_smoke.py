"""The demo end to end from the command line, as a user runs it: scenes benchmark in three layouts, CLIP warm-up,
rule-based triplets, PVLF training, every method evaluated on CIRR / FashionIQ / CIRCO, one quiet log; then
``--config.mode=eval`` re-evaluates the finished workdir without training and writes the same numbers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
METHODS = {"pvlf", "pvlf_untrained", "image_only", "text_only", "image_plus_text"}
# Smaller than :smoke so the suite stays fast; the command is the README's.
SMALL = ["--config.prepare.num_train=120", "--config.prepare.num_val_queries=20", "--config.train.steps=8",
         "--config.warmup.train.steps=8", "--config.train.log_every=4", "--config.warmup.train.log_every=4"]


def _main(workdir, *extra):
    cmd = [sys.executable, "-m", "zscir_jax.main", "--config", os.path.join(ROOT, "configs", "demo.py:smoke"),
           "--workdir", str(workdir), *SMALL, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _metric_lines(workdir):
    """{path: number of lines} of every metrics.jsonl in the workdir."""
    return {os.path.join(d, f): len(open(os.path.join(d, f)).read().splitlines())
            for d, _, files in os.walk(workdir) for f in files if f == "metrics.jsonl"}


def _scores(results):
    """The metric values only (timings and cache flags differ between runs)."""
    return {m: {e: {k: v for k, v in r.items() if "@" in k or k == "recall_avg"} for e, r in evals.items()}
            for m, evals in results.items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    run = _main(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir, run


def test_smoke_run_is_quiet_and_writes_three_layouts(finished):
    workdir, run = finished
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) < 100, f"{len(lines)} lines:\n" + "\n".join(lines[:150])
    assert "Traceback" not in run.stderr and "INFO" not in run.stderr
    results = json.load(open(workdir / "results.json"))
    assert set(results) == METHODS
    for method, evals in results.items():
        assert set(evals) == {"cirr", "fashioniq", "circo"}, method
        cirr, fiq, circo = evals["cirr"], evals["fashioniq"], evals["circo"]
        recalls = [cirr[f"recall@{k}"] for k in (1, 5, 10, 50)]
        assert recalls == sorted(recalls) and all(0 <= r <= 100 for r in recalls)
        assert cirr["recall_avg"] == pytest.approx((cirr["recall@5"] + cirr["recall_subset@1"]) / 2)
        for k in (10, 50):
            per_cat = [fiq[f"{c}/recall@{k}"] for c in ("dress", "shirt", "toptee")]
            assert fiq[f"average/recall@{k}"] == pytest.approx(np.mean(per_cat))
        assert {f"map@{k}" for k in (5, 10, 25, 50)} <= set(circo)
        for name in ("cirr_val", "fashioniq_dress_val", "circo_val"):
            assert os.path.isfile(workdir / method / "eval" / f"{name}.json"), (method, name)
            assert os.path.isfile(workdir / method / "eval" / f"{name}.png"), (method, name)
    # Training changed the model; the chance level of recall@50 on a 150-image gallery is ~33%, and a warmed-up
    # CLIP's image embedding finds the near-duplicate target far more often.
    assert _scores(results)["pvlf"] != _scores(results)["pvlf_untrained"]
    assert results["image_only"]["cirr"]["recall@50"] > 50
    for header in ("cirr: cirr val", "fashioniq: fashioniq val", "circo: circo val"):
        assert header in run.stdout


def test_eval_mode_trains_nothing_and_reproduces(finished):
    workdir, _ = finished
    before_lines = _metric_lines(workdir)
    before = json.load(open(workdir / "results.json"))
    run = _main(workdir, "--config.mode=eval")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _metric_lines(workdir) == before_lines  # no training step logged anywhere
    assert _scores(json.load(open(workdir / "results.json"))) == _scores(before)


def test_eval_mode_on_an_empty_workdir_is_one_line(tmp_path):
    run = _main(tmp_path / "empty", "--config.mode=eval")
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zscir_jax.main: error:") and "no checkpoint" in lines[0], run.stderr
    assert not os.path.exists(tmp_path / "empty" / "scenes")  # refused before any stage ran


def test_a_changed_setting_on_a_finished_workdir_is_refused_in_one_line(finished):
    """The prepared stages and the checkpoints record the settings they were made from: a rerun that changes one
    (here the benchmark size, then a learning rate) names it and touches nothing."""
    workdir, _ = finished
    before = _metric_lines(workdir)
    for flag, expected in (("--config.prepare.num_train=100", "prepare.num_train: 120 -> 100"),
                           ("--config.optim.lr.fusion=0.5", "optim.lr.fusion: 0.001 -> 0.5")):
        run = _main(workdir, flag)
        err = run.stderr.strip().splitlines()
        assert run.returncode != 0 and len(err) == 1 and expected in err[0], run.stderr[-2000:]
    assert _metric_lines(workdir) == before


def test_a_moved_workdir_trains_on_and_evaluates_the_same(finished):
    """Stage outputs name the workdir's own files relative to themselves, and the records compare paths as
    ``<workdir>/...``: the finished workdir, moved, passes every check and trains on from its own images (the old
    place no longer exists while it runs)."""
    import ml_collections

    from zscir_jax.data import sources

    workdir, _ = finished
    before = json.load(open(workdir / "results.json"))
    moved = workdir.parent / (workdir.name + "_moved")
    os.rename(workdir, moved)
    try:
        line = open(moved / "triplets" / "rule_based.jsonl").readline()
        assert str(workdir) not in line and '"../scenes/' in line, line
        c = ml_collections.ConfigDict(dict(data=dict(triplets=str(moved / "triplets" / "rule_based.jsonl"),
                                                     on_error="raise", image_dir="")))
        records = sources.load_triplets(c)
        assert records and all(r.reference_image.startswith(str(moved) + os.sep)
                               and os.path.isfile(r.reference_image) for r in records)
        run = _main(moved, "--config.mode=eval")
        assert run.returncode == 0, run.stderr[-3000:]
        assert _scores(json.load(open(moved / "results.json"))) == _scores(before)
        lines = _metric_lines(moved)
        run = _main(moved, "--config.train.steps=10")  # two more steps, read from the moved images
        assert run.returncode == 0, run.stderr[-3000:]
        grown = {p for p, n in _metric_lines(moved).items() if n > lines.get(p, 0)}
        assert any(os.sep + "pvlf" + os.sep in p for p in grown), grown
    finally:
        os.rename(moved, workdir)
