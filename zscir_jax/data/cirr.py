"""CIRR reader (official layout, version rc2).

    root/captions/cap.rc2.{split}.json       list of {pairid, reference, caption, img_set{id, members, ...},
                                             target_hard, target_soft (not on test1)}
    root/image_splits/split.rc2.{split}.json {image name: "./dev/dev-244-0-img0.png", ...}

Image paths in the split file are relative to the directory that holds the raw images (``img_raw`` in the official
download; the synthetic scene benchmark writes them beside ``captions/``), given as ``image_root`` (default: root).
Splits: ``train``, ``val``, ``test1``. The gallery is the split file in its order; the protocol drops the reference
from its own ranking (``exclude_reference=True``) and Recall_subset ranks ``img_set.members`` minus the reference.
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

SPLITS = ("train", "val", "test1")


def caption_file(root: str, split: str, version: str = "rc2") -> str:
    return os.path.join(root, "captions", f"cap.{version}.{split}.json")


def split_file(root: str, split: str, version: str = "rc2") -> str:
    return os.path.join(root, "image_splits", f"split.{version}.{split}.json")


def read_image_split(path: str, image_root: str) -> dict[str, str]:
    """Image name -> absolute path, in the file's order."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected an object mapping image name to path, got {type(data).__name__}")
    paths = {}
    for name, rel in data.items():
        if not isinstance(rel, str):
            raise AnnotationError(f"{path}: entry {name!r} has a {type(rel).__name__} path, expected str")
        paths[name] = os.path.abspath(os.path.normpath(os.path.join(image_root, rel)))
    return paths


def load(
    root: str,
    split: str,
    *,
    image_root: str | None = None,
    check_images: bool = True,
    on_missing: str = "raise",
    limit: int | None = None,
    version: str = "rc2",
) -> Benchmark:
    """Read one CIRR split into a :class:`Benchmark`.

    check_images: stat every referenced image (off: trust the annotation, e.g. for TFDS builds from records).
    on_missing: "raise" names the image file and the record; "skip" drops the query (and any gallery image that is
        missing) and counts them in ``Benchmark.skipped`` / ``skipped_images``.
    limit: read only the first ``limit`` caption records (quick runs, tests).
    """
    if split not in SPLITS:
        raise ValueError(f"CIRR split must be one of {SPLITS}, got {split!r}")
    image_root = root if image_root is None else image_root
    cap_path, spl_path = caption_file(root, split, version), split_file(root, split, version)
    paths = read_image_split(spl_path, image_root)
    records = load_json(cap_path)
    if not isinstance(records, list):
        raise AnnotationError(f"{cap_path}: expected a list of records, got {type(records).__name__}")
    total_queries = len(records)
    if limit is not None:
        records = records[:limit]
    limited_to = limit if len(records) < total_queries else None
    # test1 hides the targets; every other split must carry them.
    has_gt = split != "test1"
    checker = ImageChecker(check_images, on_missing)
    gallery, skipped_images = checker.filter_gallery(list(paths), paths, spl_path)
    in_gallery = set(gallery)

    queries, skipped = [], 0
    for i, rec in enumerate(records):
        pairid = rec.get("pairid", "?") if isinstance(rec, dict) else "?"
        where = f"#{i} (pairid {pairid})"
        pairid = field(rec, "pairid", int, cap_path, where)
        reference = field(rec, "reference", str, cap_path, where)
        caption = field(rec, "caption", str, cap_path, where)
        img_set = field(rec, "img_set", dict, cap_path, where)
        members = str_list(img_set, "members", cap_path, where + " img_set")
        extra = {"img_set_id": img_set.get("id")}
        targets: tuple[str, ...] = ()
        if has_gt:
            targets = (field(rec, "target_hard", str, cap_path, where),)
            if "target_soft" in rec:
                extra["target_soft"] = dict(field(rec, "target_soft", dict, cap_path, where))
        names = [reference, *targets, *members]
        for name in names:
            if name not in paths:
                raise AnnotationError(f"{cap_path}: record {where} refers to image {name!r}, absent from {spl_path}")
        if not checker.query_ok(paths, names, cap_path, where) or not in_gallery.issuperset(targets):
            skipped += 1
            continue
        queries.append(
            CIRQuery(
                query_id=str(pairid),
                reference=reference,
                text=caption,
                targets=targets,
                subset=tuple(members),
                extra=extra,
            )
        )
    return Benchmark(
        name="cirr",
        split=split,
        queries=tuple(queries),
        gallery=tuple(gallery),
        image_paths=paths,
        has_ground_truth=has_gt,
        kind="cirr",
        exclude_reference=True,
        skipped=skipped,
        skipped_images=skipped_images,
        total_queries=total_queries,
        limited_to=limited_to,
    )
