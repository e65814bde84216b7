"""Model-agnostic evaluation of a composed-retrieval encoder on a :class:`~zscir_jax.data.benchmarks.Benchmark`.

Pipeline: gallery images -> L2-normalised embeddings (cached per ``cache_key``) -> query embeddings (reference image
+ text; FashionIQ "both_orders" averages the alternatives in ``extra["texts"]``) -> block-wise ranking -> metrics,
a JSON file, a terminal table and a PNG of a few queries; hidden-ground-truth splits get submission files instead.

Per benchmark family:
  cirr       recall@1/5/10/50 with the reference removed from its ranking, recall_subset@1/2/3, recall_avg
             (mean of recall@5 and recall_subset@1, the number the CIRR papers quote)
  fashioniq  recall@10/50, reference kept in the ranking (the protocol of CLIP4Cir / SEARLE)
  circo      map@5/10/25/50 over all ground truths, recall@5/10/25/50 on target_img_id, map@10/<semantic aspect>

Coverage: every result (returned dict and JSON) says how much of the split was evaluated: ``num_queries`` (ranked),
``total_queries`` (query records in the annotation file), ``skipped_queries`` (dropped by the reader's
``on_missing="skip"``), ``limited_to`` (the reader's ``limit`` when it cut the file short, else null),
``skipped_gallery_images`` and ``complete`` (true only when nothing was left out). A partial run also says so under
its terminal table and in its log line.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import jax
import numpy as np

from zscir_jax import files
from zscir_jax.data.benchmarks import Benchmark
from zscir_jax.evaluation import gallery as gallery_lib
from zscir_jax.evaluation import metrics, pictures, ranking, report, submission


class Encoder(Protocol):
    def encode_images(self, images: np.ndarray) -> np.ndarray:  # uint8 [B, S, S, 3] -> [B, D]
        ...

    def encode_queries(self, images: np.ndarray, texts: list[str]) -> np.ndarray:  # reference + texts -> [B, D]
        ...


RECALL_KS = {"cirr": (1, 5, 10, 50), "fashioniq": (10, 50), "circo": (5, 10, 25, 50)}
TOPK = 50


def embed_gallery(benchmark: Benchmark, encoder: Encoder, *, image_size: int, batch_size: int, cache: str | None):
    names = benchmark.gallery
    paths = [benchmark.image_path(n) for n in names]

    def compute():
        return gallery_lib.encode_in_batches(
            len(names),
            batch_size,
            lambda a, b: encoder.encode_images(gallery_lib.load_images(paths[a:b], image_size)),
            desc=f"{benchmark.name}/{benchmark.split} gallery",
        )

    return gallery_lib.cached_gallery_embeddings(cache, names, image_size, compute)


def embed_queries(benchmark: Benchmark, encoder: Encoder, *, image_size: int, batch_size: int) -> np.ndarray:
    """One embedding per query; with ``extra["texts"]`` the normalised embeddings of each alternative are averaged."""
    queries = benchmark.queries
    alts = [tuple(q.extra.get("texts") or (q.text,)) for q in queries]
    n_alt = max((len(a) for a in alts), default=1)
    ref_paths = [benchmark.image_path(q.reference) for q in queries]

    def batch(a, b):
        images = gallery_lib.load_images(ref_paths[a:b], image_size)
        total = 0.0
        for j in range(n_alt):
            texts = [alt[min(j, len(alt) - 1)] for alt in alts[a:b]]
            total = total + gallery_lib.l2_normalize(encoder.encode_queries(images, texts))
        return total / n_alt

    return gallery_lib.encode_in_batches(len(queries), batch_size, batch, desc=f"{benchmark.name} queries")


def evaluate(
    benchmark: Benchmark,
    encoder: Encoder,
    *,
    image_size: int = 224,
    batch_size: int = 64,
    workdir: str | None = None,
    cache_key: str | None = None,
    joint_encoder: Encoder | None = None,
    joint_weight: float = 0.0,
    joint_benchmark: Benchmark | None = None,
    exclude_reference: bool | None = None,
    num_pictures: int = 4,
    log: Callable[[str], None] | None = print,
    block: int = 256,
    backend: str = "numpy",
) -> dict:
    """Evaluate ``encoder`` on ``benchmark``; returns a flat dict of metrics (percent), timings (seconds) and the
    coverage of the split (see :func:`coverage`).

    exclude_reference: drop the reference from its own ranking; None takes the benchmark's protocol default.
    joint_encoder / joint_weight: score = sim(query, img) + joint_weight * sim(joint query, img) (joint inference);
    the joint queries read their texts from ``joint_benchmark`` (the same queries, other texts: ``evaluation.joint``)
    when given, else from ``benchmark``.
    workdir: when given, writes ``workdir/eval/<name>_<split>.json`` and ``.png``, ``<name>_<split>_ranks.json``
    (each query's target rank, when the split has ground truth) and submission files for hidden splits;
    cache_key: cache gallery embeddings at ``workdir/eval/cache/<cache_key>/<name>_<split>.npy``.
    """
    log = log or (lambda s: None)
    family = benchmark.family
    if exclude_reference is None:
        exclude_reference = benchmark.exclude_reference
    if not benchmark.queries:
        raise ValueError(f"benchmark {benchmark.name}/{benchmark.split} has no queries")
    eval_dir = None if workdir is None else os.path.join(workdir, "eval")
    cache = None
    if workdir is not None and cache_key is not None:
        cache = gallery_lib.cache_path(workdir, cache_key, benchmark.name, benchmark.split)

    t0 = time.perf_counter()
    g_emb, from_cache = embed_gallery(benchmark, encoder, image_size=image_size, batch_size=batch_size, cache=cache)
    t1 = time.perf_counter()
    q_emb = embed_queries(benchmark, encoder, image_size=image_size, batch_size=batch_size)
    query_sets = [(q_emb, 1.0)]
    if joint_encoder is not None and joint_weight != 0.0:
        j_emb = embed_queries(joint_benchmark or benchmark, joint_encoder, image_size=image_size,
                              batch_size=batch_size)
        query_sets.append((j_emb, joint_weight))
    t2 = time.perf_counter()

    index = benchmark.gallery_index()
    exclude = None
    if exclude_reference:
        exclude = np.array([index.get(q.reference, -1) for q in benchmark.queries], np.int64)
    target = subset = None
    if benchmark.has_ground_truth:
        target = np.array([_index_of(index, q.targets[0], q, benchmark) for q in benchmark.queries], np.int64)
    if family == "cirr":
        subset = np.array([[_index_of(index, m, q, benchmark) for m in q.subset] for q in benchmark.queries])
    result = ranking.rank(
        query_sets, g_emb, k=TOPK, exclude_idx=exclude, target_idx=target, subset_idx=subset, block=block,
        backend=backend,
    )
    t3 = time.perf_counter()

    nq = len(benchmark.queries)
    out: dict = {}
    if benchmark.has_ground_truth:
        out.update(_metrics(benchmark, family, result, index))
    out["num_queries"] = nq
    out.update(coverage(benchmark))
    out.update(
        {
            "gallery_size": len(benchmark.gallery),
            "seconds_gallery": t1 - t0,
            "seconds_queries": t2 - t1,
            "seconds_ranking": t3 - t2,
            "seconds_per_1k_queries": (t3 - t1) / nq * 1000.0,
            "gallery_from_cache": float(from_cache),
        }
    )
    tag = f"{benchmark.name}_{benchmark.split}"
    if eval_dir is not None and jax.process_index() == 0:  # every process has the whole result; one writes it
        if not benchmark.has_ground_truth:
            out["submission_files"] = _write_submissions(benchmark, family, result, eval_dir)
        _write_json(os.path.join(eval_dir, f"{tag}.json"), benchmark, out)
        if benchmark.has_ground_truth:
            _write_ranks(os.path.join(eval_dir, f"{tag}_ranks.json"), benchmark, result)
        if num_pictures > 0:
            _save_pictures(os.path.join(eval_dir, f"{tag}.png"), benchmark, result, num_pictures)
    shown = {k: v for k, v in out.items() if "@" in k or k == "recall_avg"}
    note = partial_note(out)
    if shown:
        table = report.format_table({tag + (" *" if note else ""): shown})
        log(table + (f"\n* {note}" if note else ""))
    log(f"{tag}: {nq} queries, gallery {len(benchmark.gallery)}"
        f"{' (cached)' if from_cache else ''}; {out['seconds_per_1k_queries']:.2f} s per 1k queries"
        f"{'; ' + note if note else ''}")
    return out


def coverage(benchmark: Benchmark) -> dict:
    """How much of the split the benchmark holds (the JSON keys documented in the module docstring).

    ``total_queries`` comes from the reader (``Benchmark.total_queries``); a reader that did not record it is taken to
    have read the whole file, i.e. ranked + skipped queries (``limited_to`` is then unknown and null).
    """
    nq, skipped = len(benchmark.queries), int(benchmark.skipped)
    total = benchmark.total_queries if benchmark.total_queries is not None else nq + skipped
    limited = benchmark.limited_to
    return {
        "total_queries": int(total),
        "skipped_queries": skipped,
        "limited_to": None if limited is None else int(limited),
        "skipped_gallery_images": int(benchmark.skipped_images),
        "complete": nq == total and skipped == 0 and limited is None and benchmark.skipped_images == 0,
    }


def partial_note(out: Mapping) -> str:
    """One line saying what a partial evaluation left out ("" for a complete one)."""
    if out.get("complete", True):
        return ""
    parts = []
    if out.get("limited_to") is not None:
        parts.append(f"limited to the first {out['limited_to']} of {out['total_queries']} query records")
    if out.get("skipped_queries"):
        parts.append(f"{out['skipped_queries']} queries skipped by the reader (on_missing='skip')")
    if out.get("skipped_gallery_images"):
        parts.append(f"{out['skipped_gallery_images']} gallery images skipped (missing on disk)")
    evaluated = out.get("num_queries")
    if evaluated is not None and out.get("total_queries") is not None:
        parts.insert(0, f"{evaluated} of {out['total_queries']} queries evaluated")
    return "PARTIAL evaluation: " + "; ".join(parts)


def _index_of(index: Mapping[str, int], name: str, query, benchmark: Benchmark) -> int:
    try:
        return index[name]
    except KeyError:
        raise KeyError(
            f"{benchmark.name}/{benchmark.split} query {query.query_id}: image {name!r} is not in the gallery"
        ) from None


def _metrics(benchmark: Benchmark, family: str, result: ranking.Ranking, index) -> dict:
    out = {}
    ks = RECALL_KS.get(family, (1, 5, 10, 50))
    for k, v in metrics.recall_from_ranks(result.target_rank, ks).items():
        out[f"recall@{k}"] = v
    if family == "cirr":
        for k, v in metrics.recall_from_ranks(result.subset_target_rank, (1, 2, 3)).items():
            out[f"recall_subset@{k}"] = v
        out["recall_avg"] = (out["recall@5"] + out["recall_subset@1"]) / 2
    if family == "circo":
        target_sets = [[index[t] for t in q.targets] for q in benchmark.queries]
        for k, v in metrics.map_from_topk(result.topk_idx, target_sets, (5, 10, 25, 50)).items():
            out[f"map@{k}"] = v
        aspects = [q.extra.get("semantic_aspects", ()) for q in benchmark.queries]
        for aspect, v in metrics.semantic_map_at10(result.topk_idx, target_sets, aspects).items():
            out[f"map@10/{aspect}"] = v
    return out


def _top_names(benchmark: Benchmark, idx_rows) -> list[list[str]]:
    return [[benchmark.gallery[i] for i in row if i >= 0] for row in idx_rows]


def _write_submissions(benchmark: Benchmark, family: str, result: ranking.Ranking, eval_dir: str) -> list[str]:
    ids = [q.query_id for q in benchmark.queries]
    top = _top_names(benchmark, result.topk_idx)
    tag = f"{benchmark.name}_{benchmark.split}"
    if family == "cirr":
        recall, subset = submission.cirr_submissions(ids, top, _top_names(benchmark, result.subset_order))
        return [
            submission.write_json(os.path.join(eval_dir, f"{tag}_recall.json"), recall,
                                  max_bytes=submission.MAX_CIRR_BYTES),
            submission.write_json(os.path.join(eval_dir, f"{tag}_recall_subset.json"), subset,
                                  max_bytes=submission.MAX_CIRR_BYTES),
        ]
    if family == "circo":
        return [submission.write_json(os.path.join(eval_dir, f"{tag}_submission.json"),
                                      submission.circo_submission(ids, top))]
    # No server for the rest (e.g. FashionIQ test): keep the top-50 predictions.
    return [submission.write_json(os.path.join(eval_dir, f"{tag}_top50.json"), dict(zip(ids, top)))]


def _write_json(path: str, benchmark: Benchmark, out: Mapping, indent: int | None = 1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"benchmark": benchmark.name, "split": benchmark.split, **out}
    with files.atomic_text(path) as f:
        json.dump(record, f, indent=indent, sort_keys=False)


def _write_ranks(path: str, benchmark: Benchmark, result: ranking.Ranking) -> None:
    """Per query, the 0-based rank of its target (and within its subset): what paired comparisons of two runs
    resample (``evaluation.compare``)."""
    record = {"query_ids": [q.query_id for q in benchmark.queries],
              "target_rank": np.asarray(result.target_rank).tolist()}
    if result.subset_target_rank is not None:
        record["subset_target_rank"] = np.asarray(result.subset_target_rank).tolist()
    _write_json(path, benchmark, record, indent=None)  # one line: thousands of ranks


def _save_pictures(path: str, benchmark: Benchmark, result: ranking.Ranking, n: int, top: int = 5) -> None:
    pics = []
    for qi, q in enumerate(benchmark.queries[:n]):
        names = [benchmark.gallery[i] for i in result.topk_idx[qi, :top]]
        pics.append(
            pictures.QueryPicture(
                reference_path=benchmark.image_path(q.reference),
                text=q.text,
                results=[(nm, benchmark.image_path(nm)) for nm in names],
                targets=frozenset(q.targets),
                title=f"{q.query_id}",
            )
        )
    pictures.save_grid(path, pics)


def fashioniq_average(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Rows per category plus the usual "average" row: mean recall@10 / recall@50 over categories, and their mean."""
    rows = {}
    for cat, r in results.items():
        rows[cat] = {"recall@10": r["recall@10"], "recall@50": r["recall@50"]}
    r10 = float(np.mean([r["recall@10"] for r in rows.values()]))
    r50 = float(np.mean([r["recall@50"] for r in rows.values()]))
    rows["average"] = {"recall@10": r10, "recall@50": r50}
    for r in rows.values():
        r["mean"] = (r["recall@10"] + r["recall@50"]) / 2
    return rows


def evaluate_fashioniq(
    benchmarks: Sequence[Benchmark], encoder: Encoder, *, log: Callable[[str], None] | None = print, **kwargs
) -> dict[str, dict[str, float]]:
    """Evaluate each FashionIQ category, then print and return the per-category rows plus "average"."""
    per_cat = {}
    for b in benchmarks:
        per_cat[b.name.removeprefix("fashioniq_")] = evaluate(b, encoder, log=log, **kwargs)
    rows = fashioniq_average(per_cat)
    if log:
        notes = [f"{cat}: {partial_note(r)}" for cat, r in per_cat.items() if partial_note(r)]
        log(report.format_table(rows) + "".join(f"\n* {n}" for n in notes))
    return rows
