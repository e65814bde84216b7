"""A grid of config variants over several training seeds, on ONE prepared workdir, into one table.

    result = run_sweep(base_config, sweep, workdir)       # python -m zscir_jax.sweep calls it

``sweep`` (a dict; ``configs/sweeps/*.py`` return one from ``get_sweep(arg)``):
    variants    {name: {dotted config key: value}}   the grid; one of them is the reference
    reference   the variant the others are compared with
    seeds       training seeds (``config.seed``; the demo's ``prepare.seed`` keeps the benchmark fixed)
    common      {dotted key: value} applied to every run (e.g. no baselines: ``eval.compare=()``)
    eval        the ``config.evals`` entry compared (default "cirr"); metrics: recall@K / recall_subset@K
    metrics     the table's columns
    also_rows   {table name: (variant, results row)}: more rows of the variants' own runs in the table, compared with
                the reference the same way (e.g. DistillCIR's ``pic2word`` stage and its baselines)

Layout: ``WORKDIR/prepared`` (the base config's preparation: benchmark, triplets, tokenizer, warmed-up towers, made
once), ``WORKDIR/runs/<variant>/seed_<s>`` (a normal run directory each: it resumes from its checkpoints, and a run
whose ``results.json`` exists is not run again), ``WORKDIR/sweep.json`` (``table_json``), ``WORKDIR/sweep.md`` (the
table) and ``WORKDIR/sweep_runs.json`` (every seed's value).

The table holds, per variant, the mean +- std over seeds of each metric, and the difference from the reference with
a 95% paired bootstrap interval over the queries (each query's hits averaged over the seeds, the same resampled
queries for both variants: ``evaluation.compare``).
"""
from __future__ import annotations

import json
import os
import statistics

import numpy as np

from zscir_jax import files
from zscir_jax.errors import UserError

KEYS = ("variants", "reference", "seeds", "common", "eval", "metrics", "also_rows")


def check(sweep: dict) -> None:
    unknown = set(sweep) - set(KEYS)
    if unknown:
        raise UserError(f"sweep: unknown keys {sorted(unknown)}; allowed: {', '.join(KEYS)}")
    variants = sweep.get("variants") or {}
    if not variants:
        raise UserError("sweep.variants is empty: give {name: {dotted key: value}}")
    if sweep.get("reference") not in variants:
        raise UserError(f"sweep.reference={sweep.get('reference')!r} is not one of the variants: "
                        f"{', '.join(variants)}")
    seeds = tuple(sweep.get("seeds") or ())
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise UserError(f"sweep.seeds={seeds!r}: give distinct integers >= 0")
    for name, where in (sweep.get("also_rows") or {}).items():
        if name in variants or not (isinstance(where, (tuple, list)) and len(where) == 2 and where[0] in variants):
            raise UserError(f"sweep.also_rows.{name}={where!r}: give (variant, results row) for a new table name")
    for name, overrides in variants.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise UserError(f"sweep.variants: {name!r} is not a usable name (a non-empty string without '/')")
        for key in overrides:
            if key.split(".")[0] in ("prepare", "warmup"):
                raise UserError(f"sweep.variants.{name}: {key} changes the shared preparation; set it in the base "
                                "config (every variant runs on the same prepared benchmark)")


def _set(config, dotted: str, value, where: str) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    try:
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = value
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"{where}: cannot set config.{dotted}={value!r} ({type(e).__name__}: {e})") from None


def run_config(prepared, sweep: dict, variant: str, seed: int):
    """The config of one run: the prepared base, ``common`` and the variant's overrides, the seed; no preparation."""
    c = prepared.copy_and_resolve_references()
    c.unlock()
    for key, value in (sweep.get("common") or {}).items():
        _set(c, key, value, "sweep.common")
    for key, value in sweep["variants"][variant].items():
        _set(c, key, value, f"sweep.variants.{variant}")
    c.seed = int(seed)
    c.prepare = None
    return c


def run_sweep(base, sweep: dict, workdir: str, *, log=print) -> dict:
    """Prepare once, train and evaluate every (variant, seed) not done yet, write and return the table."""
    from zscir_jax import methods
    from zscir_jax.train import preflight, trainer

    check(sweep)
    workdir = os.path.abspath(workdir)
    base = base.copy_and_resolve_references()
    base.unlock()
    # Every run's config is checked before anything runs (preparation included).
    for name in sweep["variants"]:
        c = run_config(base, sweep, name, sweep["seeds"][0])
        preflight.check(c, methods.get(c.method), mode="train")
    prepared_dir = os.path.join(workdir, "prepared")
    if base.get("prepare"):
        from zscir_jax.demo import prepare

        preflight.check_workdir(prepared_dir)
        prepare.run(base, prepared_dir)
    total = len(sweep["variants"]) * len(sweep["seeds"])
    k = 0
    for name in sweep["variants"]:
        for seed in sweep["seeds"]:
            k += 1
            run_dir = os.path.join(workdir, "runs", name, f"seed_{seed}")
            if os.path.isfile(os.path.join(run_dir, "results.json")):
                log(f"sweep [{k}/{total}] {name} seed {seed}: done already ({run_dir})")
                continue
            log(f"sweep [{k}/{total}] {name} seed {seed} -> {run_dir}")
            trainer.train_and_evaluate(run_config(base, sweep, name, seed), run_dir)
    result = summarize(workdir, sweep)
    _write(os.path.join(workdir, "sweep.json"), json.dumps(table_json(result), indent=1))
    _write(os.path.join(workdir, "sweep_runs.json"), json.dumps(result, indent=1))
    _write(os.path.join(workdir, "sweep.md"), format_markdown(result))
    log(format_markdown(result))
    return result


def summarize(workdir: str, sweep: dict) -> dict:
    """{"eval", "reference", "seeds", "rows": {variant: {row, metric: {mean, std, values, diff, low, high}}}}."""
    from zscir_jax.evaluation import compare

    eval_name = sweep.get("eval", "cirr")
    metrics = list(sweep.get("metrics") or ("recall@1", "recall@5", "recall_subset@1"))
    seeds = list(sweep["seeds"])

    def load(variant, row=None):
        """(the row: the method's own by default, its metrics per seed, its per-query rankings per seed)."""
        metrics_per_seed, parts_per_seed = [], []
        for seed in seeds:
            run_dir = os.path.join(workdir, "runs", variant, f"seed_{seed}")
            with open(os.path.join(run_dir, "results.json")) as f:
                results = json.load(f)
            row = row or next(iter(results))  # the method's own row comes first
            if row not in results:
                raise UserError(f"sweep: {run_dir}/results.json has no row {row!r}; rows: {', '.join(results)}")
            metrics_per_seed.append(results[row][eval_name])
            parts_per_seed.append(compare.parts(run_dir, row, eval_name))
        return row, metrics_per_seed, parts_per_seed

    def hits(parts_per_seed, metric):
        """[part][query] hits averaged over the seeds (parts: FashionIQ's categories)."""
        return [np.mean([compare.hits(p[t], metric) for p in parts_per_seed], axis=0)
                for t in sorted(parts_per_seed[0])]

    loaded = {variant: load(variant) for variant in sweep["variants"]}
    loaded.update({name: load(variant, row) for name, (variant, row) in (sweep.get("also_rows") or {}).items()})
    reference = sweep["reference"]
    rows = {}
    for variant, (row, per_seed, parts_per_seed) in loaded.items():
        entry = {"row": row}
        for metric in metrics:
            key = f"average/{metric}" if f"average/{metric}" in per_seed[0] else metric  # FashionIQ: the average
            values = [r[key] for r in per_seed]
            diff, low, high = compare.paired_bootstrap(hits(parts_per_seed, metric), hits(loaded[reference][2], metric))
            entry[metric] = {"mean": statistics.mean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "values": values, "diff": diff, "low": low, "high": high}
        rows[variant] = entry
    return {"eval": eval_name, "reference": reference, "seeds": seeds, "metrics": metrics, "rows": rows}


def table_json(result: dict) -> dict:
    """``sweep.json``: {variant: {metric: {"mean", "std", "n"}, "vs_reference": {metric: {"diff", "ci_low",
    "ci_high"}}}} (the reference's own differences are 0). ``sweep_runs.json`` keeps ``summarize``'s whole record:
    the per-seed values, the results row, the evaluation and the seeds."""
    out = {}
    for name, entry in result["rows"].items():
        row = {m: {"mean": entry[m]["mean"], "std": entry[m]["std"], "n": len(entry[m]["values"])}
               for m in result["metrics"]}
        row["vs_reference"] = {m: {"diff": entry[m]["diff"], "ci_low": entry[m]["low"], "ci_high": entry[m]["high"]}
                               for m in result["metrics"]}
        out[name] = row
    return out


def format_markdown(result: dict) -> str:
    metrics, ref = result["metrics"], result["reference"]
    head = ["variant"] + [f"{m} (mean ± std)" for m in metrics] + [f"{m} vs {ref} [95% CI]" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in result["rows"].items():
        cells = [f"`{name}`"] + [f"{entry[m]['mean']:.2f} ± {entry[m]['std']:.2f}" for m in metrics]
        for m in metrics:
            e = entry[m]
            mark = "*" if (e["low"] > 0 or e["high"] < 0) else ""
            cells.append("reference" if name == ref else f"{e['diff']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, result["seeds"]))
    return (f"{result['eval']}: seeds {seeds}; `*`: the interval excludes 0\n\n" + "\n".join(lines))


def _write(path: str, text: str) -> None:
    with files.atomic_text(path) as f:
        f.write(text + "\n")
