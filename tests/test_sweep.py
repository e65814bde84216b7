"""python -m zscir_jax.sweep: one preparation, every (variant, seed) run in its own resumable directory, the table
with mean +- std over seeds and paired intervals; a rerun trains nothing; mistakes are one line before any stage."""
import json
import os
import subprocess
import sys

import pytest

from zscir_jax.errors import UserError
from zscir_jax.train import sweep as sweep_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SMALL = ["--config.prepare.num_train=120", "--config.prepare.num_val_queries=20", "--config.train.steps=4",
         "--config.warmup.train.steps=4", "--config.train.log_every=2", "--config.warmup.train.log_every=2"]


def _sweep(workdir, *extra, sweep="pvlf_ablations.py:smoke"):
    cmd = [sys.executable, "-m", "zscir_jax.sweep", "--config", os.path.join(ROOT, "configs", "demo.py:smoke"),
           "--sweep", os.path.join(ROOT, "configs", "sweeps", sweep), "--workdir", str(workdir), *SMALL, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_smoke_sweep_writes_the_table_and_a_rerun_trains_nothing(tmp_path):
    run = _sweep(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    table = json.load(open(tmp_path / "sweep.json"))  # {variant: {metric: {mean, std, n}, vs_reference: {...}}}
    assert list(table) == ["pvlf", "finetune_none", "transagg"]
    for name, entry in table.items():
        assert set(entry) == {"recall@1", "recall@5", "recall_subset@1", "vs_reference"}
        for metric in ("recall@1", "recall@5", "recall_subset@1"):
            assert set(entry[metric]) == {"mean", "std", "n"} and entry[metric]["n"] == 2
            ci = entry["vs_reference"][metric]
            assert set(ci) == {"diff", "ci_low", "ci_high"} and ci["ci_low"] <= ci["diff"] <= ci["ci_high"]
    assert table["pvlf"]["vs_reference"]["recall@5"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    result = json.load(open(tmp_path / "sweep_runs.json"))
    assert table == sweep_lib.table_json(result)
    assert list(result["rows"]) == ["pvlf", "finetune_none", "transagg"] and result["seeds"] == [0, 1]
    assert result["rows"]["transagg"]["row"] == "transagg"
    for name, entry in result["rows"].items():
        for metric in ("recall@1", "recall@5", "recall_subset@1"):
            e = entry[metric]
            assert len(e["values"]) == 2 and e["low"] <= e["diff"] <= e["high"]
            for seed, value in zip((0, 1), e["values"]):
                res = json.load(open(tmp_path / "runs" / name / f"seed_{seed}" / "results.json"))
                assert res[entry["row"]]["cirr"][metric] == pytest.approx(value)
    assert result["rows"]["pvlf"]["recall@5"]["diff"] == 0.0
    # Seeds differ in training only: the same benchmark, another model.
    a, b = (json.load(open(tmp_path / "runs" / "pvlf" / f"seed_{s}" / "results.json")) for s in (0, 1))
    assert a["pvlf"]["cirr"]["num_queries"] == b["pvlf"]["cirr"]["num_queries"] == 20
    assert "| `transagg` |" in open(tmp_path / "sweep.md").read() and "| `transagg` |" in run.stdout
    assert not os.path.exists(tmp_path / "prepared" / "pvlf")  # the preparation only
    # also_rows: another results row of a variant's runs, compared with the reference like the variants.
    import runpy

    spec = runpy.run_path(os.path.join(ROOT, "configs", "sweeps", "pvlf_ablations.py"))["get_sweep"]("smoke")
    extra = sweep_lib.summarize(str(tmp_path), dict(spec, also_rows={"pvlf_again": ("pvlf", "pvlf")}))
    assert extra["rows"]["pvlf_again"]["recall@5"] == result["rows"]["pvlf"]["recall@5"]
    with pytest.raises(UserError, match="has no row 'nope'"):
        sweep_lib.summarize(str(tmp_path), dict(spec, also_rows={"x": ("pvlf", "nope")}))
    again = _sweep(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already") == 6
    assert json.load(open(tmp_path / "sweep_runs.json")) == result and json.load(open(tmp_path / "sweep.json")) == table


def test_mistakes_are_one_line_before_any_stage(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    bad.write_text("def get_sweep(arg=None):\n    return dict(variants={'a': {}, 'b': {'optim.finetun': 'none'}}, "
                   "reference='a', seeds=(0,))\n")
    run = _sweep(tmp_path / "w", sweep=str(bad))
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert "sweep.variants.b: cannot set config.optim.finetun='none'" in lines[0]
    assert not os.path.exists(tmp_path / "w" / "prepared")


@pytest.mark.parametrize("sweep,message", [
    (dict(variants={"a": {}}, reference="b", seeds=(0,)), "sweep.reference='b' is not one of the variants"),
    (dict(variants={"a": {}}, reference="a", seeds=(0, 0)), "sweep.seeds=(0, 0): give distinct integers"),
    (dict(variants={"a": {"prepare.num_train": 5}}, reference="a", seeds=(0,)), "changes the shared preparation"),
    (dict(variants={"a": {}}, reference="a", seeds=(0,), grid=1), "sweep: unknown keys ['grid']"),
    (dict(variants={"a": {}}, reference="a", seeds=(0,), also_rows={"b": ("c", "row")}), "sweep.also_rows.b"),
])
def test_sweep_checks(sweep, message):
    with pytest.raises(UserError) as e:
        sweep_lib.check(sweep)
    assert message in str(e.value)


@pytest.mark.parametrize("config,sweep", [
    ("demo.py", "pvlf_ablations.py"), ("demo.py", "pvlf_ablations.py:pvlf_vs_transagg"),
    ("collm_demo.py", "collm_gap.py"), ("collm_demo.py", "collm_gap.py:closing"),
    ("collm_demo.py:mllm", "collm_gap.py:mllm"),
    ("distillcir_demo.py", "distillcir_ablations.py:all"), ("fashion_demo.py", "fashion_ablations.py"),
])
def test_every_run_of_the_shipped_sweeps_is_a_valid_config(config, sweep):
    """Every variant's keys exist in its base config and pass the preflight checks (nothing runs)."""
    import runpy

    from zscir_jax import methods, sweep as sweep_cli
    from zscir_jax.train import preflight

    path, _, arg = config.partition(":")
    base = runpy.run_path(os.path.join(ROOT, "configs", path))["get_config"](arg or None)
    spec = sweep_cli.load_sweep(os.path.join(ROOT, "configs", "sweeps", sweep))
    sweep_lib.check(spec)
    for name in spec["variants"]:
        c = sweep_lib.run_config(base, spec, name, spec["seeds"][0])
        preflight.check(c, methods.get(c.method), mode="train")
