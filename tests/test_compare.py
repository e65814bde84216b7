"""``python -m zscir_jax.evaluation.compare``: paired bootstrap intervals over the per-query ranks the evaluator
writes, on rows whose true difference is known."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from zscir_jax.errors import UserError
from zscir_jax.evaluation import compare

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def write_row(workdir, row, tag, ranks, subset=None, ids=None):
    d = os.path.join(workdir, row, "eval")
    os.makedirs(d, exist_ok=True)
    rec = {"query_ids": ids or [str(i) for i in range(len(ranks))], "target_rank": list(map(int, ranks))}
    if subset is not None:
        rec["subset_target_rank"] = list(map(int, subset))
    with open(os.path.join(d, f"{tag}_ranks.json"), "w") as f:
        json.dump(rec, f)


def test_interval_covers_the_difference_and_matches_the_normal_approximation(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    ref = rng.integers(0, 20, n)
    better = np.where(rng.random(n) < 0.3, 0, ref)  # some queries' targets moved to rank 0
    write_row(str(tmp_path), "ref", "cirr_val", ref, subset=ref % 3)
    write_row(str(tmp_path), "better", "cirr_val", better, subset=ref % 3)
    out = compare.compare(str(tmp_path), "ref", "cirr", ["recall@5", "recall_subset@1"], rows=["ref", "better"])
    value, diff, lo, hi = out["better"]["recall@5"]
    d = (better < 5).astype(float) - (ref < 5).astype(float)
    assert value == pytest.approx(100 * np.mean(better < 5))
    assert diff == pytest.approx(100 * d.mean())
    se = 100 * d.std() / np.sqrt(n)
    assert lo == pytest.approx(diff - 1.96 * se, abs=0.25 * se) and hi == pytest.approx(diff + 1.96 * se, abs=0.25 * se)
    assert lo > 0  # a real improvement is found
    assert out["better"]["recall_subset@1"][1:] == (0.0, 0.0, 0.0)  # identical subset ranks: no difference at all
    assert out["ref"]["recall@5"][1:] == (0.0, 0.0, 0.0)


def test_parts_are_averaged_like_fashioniq(tmp_path):
    w = str(tmp_path)
    for cat, shift in (("dress", 0), ("shirt", 5)):
        write_row(w, "a", f"fashioniq_{cat}_val", np.arange(20) + shift)
        write_row(w, "b", f"fashioniq_{cat}_val", np.arange(20))
    out = compare.compare(w, "b", "fashioniq", ["recall@10"], rows=["a", "b"])
    assert out["a"]["recall@10"][0] == pytest.approx((50.0 + 25.0) / 2)
    assert out["a"]["recall@10"][1] == pytest.approx(-12.5)


def test_mistakes(tmp_path):
    w = str(tmp_path)
    write_row(w, "a", "cirr_val", [0, 1, 2])
    write_row(w, "b", "cirr_val", [0, 1, 2], ids=["x", "y", "z"])
    with pytest.raises(UserError, match="ranked different queries"):
        compare.compare(w, "a", "cirr", ["recall@1"], rows=["b"])
    with pytest.raises(UserError, match="use recall@K or recall_subset@K"):
        compare.compare(w, "a", "cirr", ["map@5"], rows=["a"])
    with pytest.raises(UserError, match="no rankings for row 'c'"):
        compare.compare(w, "a", "cirr", ["recall@1"], rows=["c"])
    run = subprocess.run([sys.executable, "-m", "zscir_jax.evaluation.compare", w, "--reference", "a",
                          "--rows", "a,c"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_command_line_table(tmp_path):
    w = str(tmp_path)
    write_row(w, "a", "cirr_val", [0, 0, 9, 9], subset=[0, 1, 0, 1])
    write_row(w, "b", "cirr_val", [9, 0, 9, 9], subset=[0, 1, 0, 1])
    with open(os.path.join(w, "results.json"), "w") as f:
        json.dump({"a": {}, "b": {}}, f)
    run = subprocess.run([sys.executable, "-m", "zscir_jax.evaluation.compare", w, "--reference", "b"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "reference" in run.stdout and "+25.00" in run.stdout
