"""FashionIQ reader.

    root/captions/cap.{category}.{split}.json        list of {candidate, target (not on test), captions: [c1, c2]}
    root/image_splits/split.{category}.{split}.json  list of ASINs: the gallery of that category and split
    root/images/<ASIN>.png (or .jpg)

``candidate`` is the reference image. The two captions of a pair become one query text; protocols
(``caption_join``):

- ``"and"`` (CLIP4Cir / most papers): ``f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"``.
- ``"both_orders"`` (SEARLE): the query is encoded for both ``"C1 and c2"`` (as above) and ``"c2 and c1"``
  (``f"{c2.strip('.?, ')} and {c1.strip('.?, ')}"``) and the two normalised embeddings are averaged; the texts are
  in ``extra["texts"]`` (the evaluator averages them), ``text`` holds the first.

The raw pair is always in ``extra["captions"]``. The reference is kept in the ranking (``exclude_reference=False``),
as in the published FashionIQ evaluations.
"""
from __future__ import annotations

import os

from zscir_jax.data.benchmarks import (
    AnnotationError,
    Benchmark,
    CIRQuery,
    ImageChecker,
    field,
    load_json,
    str_list,
)

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
CAPTION_JOINS = ("and", "both_orders")


def _clean(c: str) -> str:
    return c.strip(".?, ")


def join_and(c1: str, c2: str) -> str:
    return f"{_clean(c1).capitalize()} and {_clean(c2)}"


def join_reversed(c1: str, c2: str) -> str:
    return f"{_clean(c2)} and {_clean(c1)}"


def image_file(image_dir: str, asin: str, image_ext: str | None) -> str:
    """Path of an ASIN's image; ``image_ext=None`` picks whichever of .png / .jpg exists (.png when neither)."""
    if image_ext is not None:
        return os.path.join(image_dir, asin + image_ext)
    for ext in (".png", ".jpg", ".jpeg"):
        p = os.path.join(image_dir, asin + ext)
        if os.path.isfile(p):
            return p
    return os.path.join(image_dir, asin + ".png")


def load(
    root: str,
    category: str,
    split: str,
    *,
    caption_join: str = "and",
    image_dir: str | None = None,
    image_ext: str | None = None,
    check_images: bool = True,
    on_missing: str = "raise",
    limit: int | None = None,
) -> Benchmark:
    """Read one FashionIQ category and split (see the module docstring for ``caption_join``).

    image_dir: default ``root/images``; image_ext: ".png", ".jpg" or None (whichever exists).
    on_missing / check_images / limit: as in :func:`zscir_jax.data.cirr.load`.
    """
    if category not in CATEGORIES:
        raise ValueError(f"FashionIQ category must be one of {CATEGORIES}, got {category!r}")
    if split not in SPLITS:
        raise ValueError(f"FashionIQ split must be one of {SPLITS}, got {split!r}")
    if caption_join not in CAPTION_JOINS:
        raise ValueError(f"caption_join must be one of {CAPTION_JOINS}, got {caption_join!r}")
    image_dir = os.path.join(root, "images") if image_dir is None else image_dir
    cap_path = os.path.join(root, "captions", f"cap.{category}.{split}.json")
    spl_path = os.path.join(root, "image_splits", f"split.{category}.{split}.json")
    asins = load_json(spl_path)
    if not isinstance(asins, list) or not all(isinstance(a, str) for a in asins):
        raise AnnotationError(f"{spl_path}: expected a list of image names (str)")
    records = load_json(cap_path)
    if not isinstance(records, list):
        raise AnnotationError(f"{cap_path}: expected a list of records, got {type(records).__name__}")
    if limit is not None:
        records = records[:limit]
    has_gt = split != "test"
    checker = ImageChecker(check_images, on_missing)
    paths = {a: os.path.abspath(image_file(image_dir, a, image_ext)) for a in asins}
    gallery, skipped_images = checker.filter_gallery(list(dict.fromkeys(asins)), paths, spl_path)
    in_gallery, split_set = set(gallery), set(asins)

    queries, skipped = [], 0
    for i, rec in enumerate(records):
        where = f"#{i}"
        reference = field(rec, "candidate", str, cap_path, where)
        captions = str_list(rec, "captions", cap_path, where)
        if len(captions) != 2:
            raise AnnotationError(f"{cap_path}: record {where} has {len(captions)} captions, expected 2")
        targets = (field(rec, "target", str, cap_path, where),) if has_gt else ()
        for t in targets:
            if t not in split_set:
                raise AnnotationError(f"{cap_path}: record {where} target {t!r} is not in the gallery {spl_path}")
        names = [reference, *targets]
        for name in names:
            if name not in paths:
                # References outside the split file still need a path (they are not ranked).
                paths[name] = os.path.abspath(image_file(image_dir, name, image_ext))
        if not checker.query_ok(paths, names, cap_path, where) or not in_gallery.issuperset(targets):
            skipped += 1
            continue
        text = join_and(*captions)
        extra = {"captions": tuple(captions)}
        if caption_join == "both_orders":
            extra["texts"] = (text, join_reversed(*captions))
        queries.append(
            CIRQuery(query_id=f"{category}-{i}", reference=reference, text=text, targets=targets, extra=extra)
        )
    return Benchmark(
        name=f"fashioniq_{category}",
        split=split,
        queries=tuple(queries),
        gallery=tuple(gallery),
        image_paths=paths,
        has_ground_truth=has_gt,
        kind="fashioniq",
        exclude_reference=False,
        skipped=skipped,
        skipped_images=skipped_images,
    )
