"""FashionIQ reader.

    root/captions/cap.{category}.{split}.json        list of {candidate, target (not on test), captions: [c1, c2]}
    root/image_splits/split.{category}.{split}.json  list of ASINs: the gallery of that category and split
    root/images/<ASIN>.png (or .jpg)

``candidate`` is the reference image. The two captions of a pair become one query text; protocols
(``caption_join``), each reproducing its source's f-string character for character:

- ``"and"`` (CLIP4Cir ``src/validate.py`` / most papers), :func:`join_and`:
  ``f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"``. Note that ``str.capitalize`` also lower-cases the
  rest of the first caption ("Is more Asian-inspired" -> "Is more asian-inspired").
- ``"both_orders"`` (SEARLE ``src/validate.py``, ``fiq_generate_val_predictions``): the query is encoded for both
  ``f"{c1.strip('.?, ')} and {c2.strip('.?, ')}"`` (:func:`join_plain`) and
  ``f"{c2.strip('.?, ')} and {c1.strip('.?, ')}"`` (:func:`join_reversed`), neither capitalised, and the two
  normalised embeddings are averaged; the texts are in ``extra["texts"]`` (the evaluator averages them), ``text``
  holds the first. (SEARLE then wraps each in its own prompt, ``"a photo of $ that {text}"``: that is the method's
  business, not the reader's.)

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
    """CLIP4Cir's validation text: the first caption capitalised (``str.capitalize``), then " and " the second."""
    return f"{_clean(c1).capitalize()} and {_clean(c2)}"


def join_plain(c1: str, c2: str) -> str:
    """SEARLE's first text: both captions cleaned, in order, nothing capitalised."""
    return f"{_clean(c1)} and {_clean(c2)}"


def join_reversed(c1: str, c2: str) -> str:
    """SEARLE's second text: the captions swapped, nothing capitalised."""
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
    total_queries = len(records)
    if limit is not None:
        records = records[:limit]
    limited_to = limit if len(records) < total_queries else None
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
        extra = {"captions": tuple(captions)}
        if caption_join == "both_orders":
            text = join_plain(*captions)
            extra["texts"] = (text, join_reversed(*captions))
        else:
            text = join_and(*captions)
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
        total_queries=total_queries,
        limited_to=limited_to,
    )
