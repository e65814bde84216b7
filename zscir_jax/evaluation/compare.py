r"""Paired comparisons of the result rows of a workdir, with bootstrap confidence intervals over the queries.

    python -m zscir_jax.evaluation.compare WORKDIR --reference image_plus_text --eval cirr \
        --metrics recall@5,recall_subset@1

For every row (``WORKDIR/<row>/eval/<eval>_*_ranks.json``, written by the evaluator) and metric: its value, and its
difference from the reference row with a 95% paired bootstrap interval: the queries are resampled with replacement
(2000 times, seed 0) and each resample scores both rows on the SAME queries, so the interval reflects which queries
the benchmark happens to hold, not training noise (for that, compare runs with different ``config.seed``). An eval
with several parts (FashionIQ's categories) averages the parts' recalls, as its "average" row does, each part
resampled on its own. An interval that excludes 0 marks the difference with ``*``.

Metrics: ``recall@K`` (the target within the first K) and ``recall_subset@K`` (CIRR: within the reference's subset).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

from zscir_jax.errors import UserError

RESAMPLES, LEVEL = 2000, 0.95


def hits(record: dict, metric: str) -> np.ndarray:
    """bool [Q]: the queries that count for ``metric`` (``recall@K`` / ``recall_subset@K``)."""
    m = re.fullmatch(r"recall(_subset)?@(\d+)", metric)
    if not m:
        raise UserError(f"metric {metric!r}: use recall@K or recall_subset@K")
    key = "subset_target_rank" if m.group(1) else "target_rank"
    if key not in record:
        raise UserError(f"metric {metric!r}: these rankings have no {key} (recall_subset is CIRR's)")
    return np.asarray(record[key]) < int(m.group(2))


def parts(workdir: str, row: str, eval_name: str) -> dict[str, dict]:
    """{file tag: ranks record} of one row's eval (one part, or one per FashionIQ category)."""
    pattern = os.path.join(workdir, row, "eval", f"{eval_name}_*_ranks.json")
    out = {}
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            out[os.path.basename(path)[: -len("_ranks.json")]] = json.load(f)
    if not out:
        raise UserError(f"no rankings for row {row!r}, eval {eval_name!r} ({pattern}); evaluate it first")
    return out


def paired_bootstrap(a: list[np.ndarray], b: list[np.ndarray], *, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = LEVEL) -> tuple[float, float, float]:
    """(difference, low, high) in points of mean(a) - mean(b), both averaged over parts; ``a[i]`` and ``b[i]`` are
    the hits of the same queries of part i."""
    rng = np.random.default_rng(seed)
    diffs = np.zeros(resamples)
    point = 0.0
    for x, y in zip(a, b):
        if len(x) != len(y):
            raise ValueError(f"paired rows must rank the same queries ({len(x)} vs {len(y)})")
        d = x.astype(np.float64) - y.astype(np.float64)
        point += d.mean()
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        diffs += d[idx].mean(axis=1)
    n = len(a)
    lo, hi = np.quantile(diffs / n, [(1 - level) / 2, (1 + level) / 2])
    return 100.0 * point / n, 100.0 * lo, 100.0 * hi


def compare(workdir: str, reference: str, eval_name: str, metrics: list[str], rows: list[str] | None = None,
            seed: int = 0) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """{row: {metric: (value, difference, low, high)}} against ``reference`` (its own row: difference 0)."""
    if rows is None:
        with open(os.path.join(workdir, "results.json")) as f:
            rows = list(json.load(f))
    ref = parts(workdir, reference, eval_name)
    out = {}
    for row in rows:
        mine = parts(workdir, row, eval_name)
        if set(mine) != set(ref):
            raise UserError(f"row {row!r} has parts {sorted(mine)}, the reference {sorted(ref)}")
        for tag in ref:
            if mine[tag]["query_ids"] != ref[tag]["query_ids"]:
                raise UserError(f"row {row!r} and the reference ranked different queries in {tag}")
        out[row] = {}
        for metric in metrics:
            a = [hits(mine[t], metric) for t in sorted(ref)]
            b = [hits(ref[t], metric) for t in sorted(ref)]
            value = 100.0 * float(np.mean([x.mean() for x in a]))
            out[row][metric] = (value, *paired_bootstrap(a, b, seed=seed))
    return out


def format_table(result: dict, reference: str) -> str:
    metrics = list(next(iter(result.values())))
    head = ["row"] + [f"{m} | vs {reference} [95% CI]" for m in metrics]
    lines = []
    for row, vals in result.items():
        cells = [row]
        for m in metrics:
            v, d, lo, hi = vals[m]
            mark = "*" if (lo > 0 or hi < 0) else " "
            cells.append(f"{v:6.2f} | {d:+6.2f} [{lo:+6.2f}, {hi:+6.2f}]{mark}" if row != reference else
                         f"{v:6.2f} | reference")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zscir_jax.evaluation.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--reference", required=True, help="the row the others are compared with")
    p.add_argument("--eval", default="cirr", help="the config.evals entry (default: cirr)")
    p.add_argument("--metrics", default="recall@1,recall@5,recall_subset@1")
    p.add_argument("--rows", default="", help="comma-separated rows (default: every row of results.json)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        result = compare(a.workdir, a.reference, a.eval, [m for m in a.metrics.split(",") if m],
                         [r for r in a.rows.split(",") if r] or None, seed=a.seed)
    except (UserError, FileNotFoundError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result, a.reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
