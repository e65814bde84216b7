"""CIRCO reader (miccunifi/CIRCO layout).

    root/annotations/{val,test}.json                               list of {id, reference_img_id, relative_caption,
                                                                   shared_concept, target_img_id, gt_img_ids,
                                                                   semantic_aspects} (test: no targets/aspects)
    root/COCO2017_unlabeled/unlabeled2017/000000243611.jpg         the gallery images: f"{id:012d}.jpg"
    root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   COCO's image list (gives the gallery ids)

Image names in the Benchmark are the COCO ids as strings ("243611"). The gallery id list comes from, in order of
preference: the ``gallery_ids`` argument, COCO's ``image_info_unlabeled2017.json`` (its ``images`` order), or the
``*.jpg`` files in ``image_dir`` (sorted by id). ``targets`` are ``gt_img_ids`` (first = ``target_img_id``, the one
CIRCO's Recall@K counts); ``extra`` holds ``shared_concept``, ``semantic_aspects`` and ``target_img_id``.

Protocol flags: ``include_shared_concept=True`` makes the text ``f"{relative_caption}, {shared_concept}"`` —
off by default, as in SEARLE. The reference stays in the ranking (``exclude_reference=False``), as in CIRCO's
evaluation; no ground truth ever equals the reference.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence

from zscir_jax.data.benchmarks import (
    AnnotationError,
    Benchmark,
    CIRQuery,
    ImageChecker,
    field,
    load_json,
)

SPLITS = ("val", "test")
_JPG = re.compile(r"^(\d+)\.jpg$")


def image_name(image_id: int) -> str:
    return f"{int(image_id):012d}.jpg"


def gallery_from_image_info(path: str) -> list[int]:
    info = load_json(path)
    images = info.get("images") if isinstance(info, dict) else None
    if not isinstance(images, list):
        raise AnnotationError(f"{path}: expected an object with an 'images' list (COCO image info)")
    return [int(field(im, "id", int, path, f"images #{i}")) for i, im in enumerate(images)]


def gallery_from_disk(image_dir: str) -> list[int]:
    ids = [int(m.group(1)) for m in map(_JPG.match, os.listdir(image_dir)) if m]
    return sorted(ids)


def load(
    root: str,
    split: str,
    *,
    gallery_ids: Sequence[int] | None = None,
    image_dir: str | None = None,
    image_info: str | None = None,
    include_shared_concept: bool = False,
    check_images: bool = True,
    on_missing: str = "raise",
    limit: int | None = None,
) -> Benchmark:
    """Read a CIRCO split (see the module docstring for the gallery sources and protocol flags).

    image_dir: default ``root/COCO2017_unlabeled/unlabeled2017``; image_info: default
    ``root/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json``. The reference images of the queries are
    looked up in ``image_dir`` whether or not they are in the gallery.
    """
    if split not in SPLITS:
        raise ValueError(f"CIRCO split must be one of {SPLITS}, got {split!r}")
    coco = os.path.join(root, "COCO2017_unlabeled")
    image_dir = os.path.join(coco, "unlabeled2017") if image_dir is None else image_dir
    image_info = os.path.join(coco, "annotations", "image_info_unlabeled2017.json") if image_info is None else image_info
    ann_path = os.path.join(root, "annotations", f"{split}.json")
    records = load_json(ann_path)
    if not isinstance(records, list):
        raise AnnotationError(f"{ann_path}: expected a list of records, got {type(records).__name__}")
    total_queries = len(records)
    if limit is not None:
        records = records[:limit]
    limited_to = limit if len(records) < total_queries else None

    if gallery_ids is not None:
        ids, source = [int(i) for i in gallery_ids], "the gallery_ids argument"
    elif os.path.isfile(image_info):
        ids, source = gallery_from_image_info(image_info), image_info
    elif os.path.isdir(image_dir):
        ids, source = gallery_from_disk(image_dir), image_dir
    else:
        raise FileNotFoundError(
            f"CIRCO gallery: neither {image_info} nor the image folder {image_dir} exists; download COCO 2017 "
            "unlabeled images and image info, or pass gallery_ids=[...]"
        )
    names = [str(i) for i in dict.fromkeys(ids)]
    paths = {n: os.path.abspath(os.path.join(image_dir, image_name(int(n)))) for n in names}
    checker = ImageChecker(check_images, on_missing)
    gallery, skipped_images = checker.filter_gallery(names, paths, source)
    in_gallery = set(gallery)

    has_gt = split != "test"
    queries, skipped = [], 0
    for i, rec in enumerate(records):
        qid = rec.get("id", "?") if isinstance(rec, dict) else "?"
        where = f"#{i} (id {qid})"
        qid = field(rec, "id", int, ann_path, where)
        ref = str(field(rec, "reference_img_id", int, ann_path, where))
        caption = field(rec, "relative_caption", str, ann_path, where)
        concept = field(rec, "shared_concept", str, ann_path, where)
        extra = {"shared_concept": concept}
        targets: tuple[str, ...] = ()
        if has_gt:
            gts = field(rec, "gt_img_ids", list, ann_path, where)
            if not gts or not all(isinstance(g, int) and not isinstance(g, bool) for g in gts):
                raise AnnotationError(f"{ann_path}: record {where} 'gt_img_ids' must be a non-empty list of ints")
            target = field(rec, "target_img_id", int, ann_path, where)
            targets = tuple(str(g) for g in gts)
            if str(target) != targets[0]:
                # CIRCO's recall counts target_img_id: keep it first so targets[0] is always the one counted.
                targets = (str(target),) + tuple(t for t in targets if t != str(target))
            aspects = rec.get("semantic_aspects", [])
            if not isinstance(aspects, list) or not all(isinstance(a, str) for a in aspects):
                raise AnnotationError(f"{ann_path}: record {where} 'semantic_aspects' must be a list of str")
            extra.update(target_img_id=str(target), semantic_aspects=tuple(aspects))
        paths.setdefault(ref, os.path.abspath(os.path.join(image_dir, image_name(int(ref)))))
        missing_gt = [t for t in targets if t not in in_gallery]
        if missing_gt and on_missing == "raise":
            raise AnnotationError(f"{ann_path}: record {where}: ground truth {missing_gt[0]} is not in the gallery "
                                  f"({source})")
        if missing_gt or not checker.query_ok(paths, [ref], ann_path, where):
            skipped += 1
            continue
        text = f"{caption}, {concept}" if include_shared_concept else caption
        queries.append(CIRQuery(query_id=str(qid), reference=ref, text=text, targets=targets, extra=extra))
    return Benchmark(
        name="circo",
        split=split,
        queries=tuple(queries),
        gallery=tuple(gallery),
        image_paths=paths,
        has_ground_truth=has_gt,
        kind="circo",
        exclude_reference=False,
        skipped=skipped,
        skipped_images=skipped_images,
        total_queries=total_queries,
        limited_to=limited_to,
    )
