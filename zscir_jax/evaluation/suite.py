"""``config.evals``: the benchmarks a run is evaluated on, big_vision-style, one entry per name.

    config.evals.cirr = dict(reader="cirr", root="/data/CIRR", split="val", options={}, every=0)
    config.evals.fiq = dict(reader="fashioniq", root="/data/fashionIQ", split="val",
                            options=dict(categories=("dress", "shirt", "toptee"), caption_join="and"), every=1000)
    config.evals.circo = dict(reader="circo", root="/data/CIRCO", split="val", options={}, every=0)

``reader`` picks ``zscir_jax.data.<reader>.load``; ``options`` are its keyword arguments (checked by name before
anything runs); ``every`` > 0 also evaluates every that many training steps (0: at the end only). An entry with an
empty ``root`` is skipped with a warning, so a config can list a benchmark the user has not downloaded.

Metric keys, as in ``WORKDIR/results.json`` = {method: {eval name: {metric: value}}}:
    cirr       recall@1/5/10/50, recall_subset@1/2/3, recall_avg
    fashioniq  <category>/recall@10, <category>/recall@50 for each category, average/recall@10, average/recall@50
    circo      map@5/10/25/50 (and recall@K on target_img_id, map@10/<semantic aspect>)
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping

from zscir_jax.errors import UserError

READERS = ("cirr", "fashioniq", "circo")
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
KEYS = ("reader", "root", "split", "options", "every")

# The columns of the final table, per benchmark family (other keys stay in results.json).
TABLE_COLUMNS = {
    "cirr": ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "recall_subset@2",
             "recall_subset@3", "recall_avg"),
    "fashioniq": tuple(f"{c}/recall@{k}" for c in FASHIONIQ_CATEGORIES + ("average",) for k in (10, 50)),
    "circo": ("map@5", "map@10", "map@25", "map@50"),
}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    name: str
    reader: str
    root: str
    split: str
    options: Mapping
    every: int = 0

    @property
    def key(self) -> str:
        return f"config.evals.{self.name}"


def _loader(reader: str) -> Callable:
    from zscir_jax.data import circo, cirr, fashioniq

    return {"cirr": cirr.load, "fashioniq": fashioniq.load, "circo": circo.load}[reader]


def _allowed_options(reader: str) -> set[str]:
    params = inspect.signature(_loader(reader)).parameters
    names = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    return names | ({"categories"} if reader == "fashioniq" else set())


def specs(config) -> list[EvalSpec]:
    """The configured evaluations, checked (reader, option names, every) without touching the disk."""
    out = []
    for name, entry in (config.get("evals") or {}).items():
        key = f"config.evals.{name}"
        entry = dict(entry)
        unknown = set(entry) - set(KEYS)
        if unknown:
            raise UserError(f"{key}: unknown keys {sorted(unknown)}; allowed: {', '.join(KEYS)}")
        reader = entry.get("reader", "")
        if reader not in READERS:
            raise UserError(f"{key}.reader={reader!r}: allowed readers are {', '.join(READERS)}")
        options = dict(entry.get("options") or {})
        bad = set(options) - _allowed_options(reader)
        if bad:
            raise UserError(f"{key}.options: {', '.join(sorted(bad))} not accepted by the {reader} reader; allowed: "
                            f"{', '.join(sorted(_allowed_options(reader)))}")
        if reader == "fashioniq":
            cats = tuple(options.get("categories", FASHIONIQ_CATEGORIES))
            if not cats or set(cats) - set(FASHIONIQ_CATEGORIES):
                raise UserError(f"{key}.options.categories={cats!r}: choose among {', '.join(FASHIONIQ_CATEGORIES)}")
            options["categories"] = cats
        every = int(entry.get("every", 0) or 0)
        if every < 0:
            raise UserError(f"{key}.every={every}: must be >= 0 (0: evaluate at the end only)")
        out.append(EvalSpec(name, reader, os.path.expanduser(str(entry.get("root", "") or "")),
                            str(entry.get("split", "val")), options, every))
    return out


def usable(all_specs: list[EvalSpec], warn: Callable[[str], None]) -> list[EvalSpec]:
    """The specs whose root is set and exists; an empty root is a warning, a missing one a ``UserError``."""
    out = []
    for s in all_specs:
        if not s.root:
            warn(f"{s.key}.root is empty: {s.name} is not evaluated (set it to the {s.reader} dataset's root)")
            continue
        if not os.path.isdir(s.root):
            raise UserError(f"{s.key}.root={s.root!r}: no such directory (the {s.reader} dataset's root)")
        out.append(s)
    return out


def load(spec: EvalSpec) -> list:
    """The benchmark(s) of one spec: one for CIRR / CIRCO, one per category for FashionIQ. Each is renamed after the
    eval (``<name>`` or ``<name>_<category>``) so its files in ``<method>/eval/`` are named after the config entry."""
    load_fn = _loader(spec.reader)
    options = {k: v for k, v in spec.options.items() if k != "categories"}
    if spec.reader == "fashioniq":
        return [dataclasses.replace(load_fn(spec.root, c, spec.split, **options), name=f"{spec.name}_{c}",
                                    kind="fashioniq") for c in spec.options["categories"]]
    return [dataclasses.replace(load_fn(spec.root, spec.split, **options), name=spec.name, kind=spec.reader)]


def run(spec: EvalSpec, benchmarks: list, encoder, *, image_size: int, batch_size: int, out_dir: str | None,
        log: Callable[[str], None] | None, scoring=None, texts_for: Callable | None = None) -> dict:
    """Evaluate ``encoder`` on a spec's benchmarks; returns one flat dict with the keys in the module docstring.
    ``scoring`` / ``texts_for``: joint inference (``evaluation.joint``); None scores by the queries alone."""
    from zscir_jax.evaluation import evaluator, joint

    kwargs = dict(image_size=image_size, batch_size=batch_size, workdir=out_dir, log=log)

    def one(b):
        return joint.evaluate(b, encoder, scoring, texts_for, **kwargs)

    if spec.reader != "fashioniq":
        out = one(benchmarks[0])
        out.update(_validated(out.get("submission_files", ()), spec, len(benchmarks[0].gallery)))
        return out
    per_cat = {b.name.removeprefix(f"{spec.name}_"): one(b) for b in benchmarks}
    out = {}
    if all(b.has_ground_truth for b in benchmarks):
        for row, metrics in evaluator.fashioniq_average(per_cat).items():
            out.update({f"{row}/{k}": v for k, v in metrics.items() if k.startswith("recall@")})
    for cat, r in per_cat.items():
        for k in ("num_queries", "skipped_queries", "total_queries", "limited_to", "complete"):
            if k in r:
                out[f"{cat}/{k}"] = r[k]
        out.setdefault("submission_files", []).extend(r.get("submission_files", ()))
    if not out["submission_files"]:
        del out["submission_files"]
    return out


def _validated(files, spec: EvalSpec, gallery_size: int) -> dict:
    """Hidden-test submission files, checked with the benchmark's validator (their paths go in the table); the
    CIRR files against the split's own annotations (no reference in its own list, subsets within img_set)."""
    from zscir_jax.evaluation import submission

    if not files:
        return {}
    problems, warnings = [], []
    for path in files:
        annotations = None
        if spec.reader == "cirr":
            from zscir_jax.data import cirr

            annotations = cirr.caption_file(spec.root, spec.split, spec.options.get("version", "rc2"))
        report = submission.check_file(path, spec.reader, annotations, gallery_size=gallery_size)
        problems += [f"{os.path.basename(path)}: {e}" for e in report.errors]
        warnings += [f"{os.path.basename(path)}: {w}" for w in report.warnings]
    return {"submission_valid": not problems, "submission_problems": problems, "submission_warnings": warnings}


def table_columns(spec: EvalSpec, rows: Mapping[str, Mapping]) -> list[str]:
    cols = [c for c in TABLE_COLUMNS[spec.reader] if any(c in r for r in rows.values())]
    if spec.reader == "fashioniq":  # only the configured categories
        cols = [c for c in cols if c.split("/")[0] in tuple(spec.options["categories"]) + ("average",)]
    return cols
