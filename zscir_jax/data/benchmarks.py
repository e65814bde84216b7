"""Record types shared by the benchmark readers (CIRR, FashionIQ, CIRCO), the evaluator and the training code.

A reader turns a dataset's annotation files into one :class:`Benchmark`: queries, the gallery in its fixed order
(ties in a ranking are broken by this order) and where each image lives. Everything downstream works on names only.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from zscir_jax.data import policy


class AnnotationError(ValueError):
    """A malformed annotation file or record; the message names the file and the record."""


class MissingImageError(FileNotFoundError):
    """An image that a record refers to is not on disk; the message names the image file and the record."""


@dataclasses.dataclass(frozen=True)
class CIRQuery:
    query_id: str  # CIRR pairid / FashionIQ "<category>-<index>" / CIRCO id, as str
    reference: str  # reference image name (gallery key)
    text: str  # modification text (FashionIQ: the joined captions per the chosen protocol)
    targets: tuple[str, ...] = ()  # ground-truth image names; empty where the ground truth is hidden
    subset: tuple[str, ...] = ()  # CIRR img_set members
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str  # e.g. "cirr", "fashioniq_dress", "circo"
    split: str
    queries: tuple[CIRQuery, ...]
    gallery: tuple[str, ...]  # image names in gallery order
    image_paths: Mapping[str, str]  # name -> absolute path (gallery and references)
    has_ground_truth: bool
    kind: str = ""  # "cirr" | "fashioniq" | "circo": picks the metrics; defaults to the name's first word
    exclude_reference: bool = False  # protocol default: drop the reference from its own ranking (CIRR: True)
    skipped: int = 0  # queries dropped by on_missing="skip"
    skipped_images: int = 0  # gallery images dropped by on_missing="skip"
    total_queries: int | None = None  # query records in the annotation file, before limit and skip (None: unknown)
    limited_to: int | None = None  # the reader's ``limit`` when it cut the file short (None: every record was read)

    @property
    def family(self) -> str:
        return self.kind or self.name.split("_")[0]

    def image_path(self, name: str) -> str:
        try:
            return self.image_paths[name]
        except KeyError:
            raise KeyError(f"benchmark {self.name}/{self.split} has no image named {name!r}") from None

    def gallery_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.gallery)}


# ---------------------------------------------------------------------------------------------------------------
# Helpers the readers share: strict field access that names the file and the record, and image checks.


def load_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None


def field(record: Any, key: str, types, path: str, where: str):
    """``record[key]`` checked for presence and type; ``where`` names the record (index and id) in the error."""
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: record {where} is a {type(record).__name__}, expected an object")
    if key not in record:
        raise AnnotationError(f"{path}: record {where} has no key {key!r}")
    value = record[key]
    # bool is an int subclass; an id of `true` is a malformed record, not the id 1.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise AnnotationError(
            f"{path}: record {where} key {key!r} is {type(value).__name__} {value!r:.60}, "
            f"expected {' or '.join(t.__name__ for t in _as_tuple(types))}"
        )
    return value


def str_list(record: Any, key: str, path: str, where: str) -> list[str]:
    value = field(record, key, list, path, where)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise AnnotationError(f"{path}: record {where} key {key!r} item {i} is {type(v).__name__}, expected str")
    return value


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def check_on_missing(on_missing: str) -> None:
    policy.check(on_missing, "on_missing")


class ImageChecker:
    """Decides what happens to records whose images are missing: raise naming file and record, or skip and count."""

    def __init__(self, check: bool, on_missing: str):
        check_on_missing(on_missing)
        self.check, self.on_missing = check, on_missing
        self._cache: dict[str, bool] = {}

    def exists(self, path: str) -> bool:
        if not self.check:
            return True
        if path not in self._cache:
            self._cache[path] = os.path.isfile(path)
        return self._cache[path]

    def query_ok(self, paths: Mapping[str, str], names, source: str, where: str) -> bool:
        """True when every image of a query exists; False (skip) or an error otherwise."""
        for name in names:
            if not self.exists(paths[name]):
                if self.on_missing == "skip":
                    return False
                raise MissingImageError(f"{source}: record {where}: image {name!r} not found at {paths[name]}")
        return True

    def filter_gallery(self, gallery, paths: Mapping[str, str], source: str) -> tuple[list[str], int]:
        kept = [n for n in gallery if self.exists(paths[n])]
        if len(kept) != len(gallery) and self.on_missing == "raise":
            missing = [n for n in gallery if not self.exists(paths[n])]
            raise MissingImageError(
                f"{source}: {len(missing)} gallery image(s) not found, first {missing[0]!r} at {paths[missing[0]]}"
            )
        return kept, len(gallery) - len(kept)

