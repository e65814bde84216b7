"""TFDS builders for the CIR benchmarks: the user's download (``manual_dir``) -> ArrayRecord files with encoded images.

Build once, then read by random access (``builder.as_data_source(split)`` or grain's ``ArrayRecordDataSource`` on
the files), which suits Grain pipelines and sharded evaluation:

    import numpy as np
import tensorflow_datasets as tfds
    from zscir_jax.data import tfds_builders
    b = tfds_builders.ZscirCirr(data_dir="~/tensorflow_datasets", file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="/data/CIRR"))
    queries, gallery = b.as_data_source("val"), b.as_data_source("val_gallery")

``manual_dir`` has the layout the matching reader expects (``cirr.load`` / ``fashioniq.load`` / ``circo.load``).
Each benchmark split ``s`` becomes two TFDS splits with one schema: ``s`` (queries: ``name`` = the reference,
``image`` = the reference image) and ``s_gallery`` (one record per gallery image, empty text). Image bytes are
stored as they are on disk (PNG stays PNG, JPEG stays JPEG). Splits whose annotation files are absent are left out.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from zscir_jax.data import circo, cirr, fashioniq
from zscir_jax.data.benchmarks import Benchmark

_CITATION = "See the dataset's own page: CIRR (Liu et al. 2021), FashionIQ (Wu et al. 2021), CIRCO (Baldrati et al. 2023)."


def _features():
    text = tfds.features.Text()
    return tfds.features.FeaturesDict(
        {
            "kind": text,  # "query" or "gallery"
            "query_id": text,
            "name": text,  # the reference (queries) or the gallery image
            "text": text,
            "targets": tfds.features.Sequence(text),
            "subset": tfds.features.Sequence(text),
            # Raw file bytes: no decode/re-encode at build time; decode with PIL (or tfds) when reading.
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        }
    )


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def benchmark_examples(bench: Benchmark, which: str):
    """(key, example) pairs for the queries or the gallery of a Benchmark."""
    if which == "query":
        for q in bench.queries:
            yield f"q{q.query_id}", {
                "kind": "query",
                "query_id": q.query_id,
                "name": q.reference,
                "text": q.text,
                "targets": list(q.targets),
                "subset": list(q.subset),
                "image": _read_bytes(bench.image_path(q.reference)),
            }
    else:
        for name in bench.gallery:
            yield f"g{name}", {
                "kind": "gallery",
                "query_id": "",
                "name": name,
                "text": "",
                "targets": [],
                "subset": [],
                "image": _read_bytes(bench.image_path(name)),
            }


class _CIRBuilder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Queries and gallery with the raw image bytes."}
    SPLITS: tuple[str, ...] = ()
    # Nothing is downloaded (manual_dir only), so there are no checksums to find; this also keeps TFDS from
    # resolving the builder's code path, which needs the optional `importlib_resources` package.
    url_infos = None

    def _info(self):
        return self.dataset_info_from_configs(features=_features(), citation=_CITATION)

    def _annotation_file(self, manual_dir: str, split: str) -> str:
        raise NotImplementedError

    def _load(self, manual_dir: str, split: str) -> Benchmark:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        manual = os.fspath(dl_manager.manual_dir)
        out = {}
        for split in self.SPLITS:
            if not os.path.isfile(self._annotation_file(manual, split)):
                continue
            bench = self._load(manual, split)
            out[split] = self._generate_examples(bench, "query")
            out[f"{split}_gallery"] = self._generate_examples(bench, "gallery")
        if not out:
            raise FileNotFoundError(
                f"{manual}: no annotation files of {self.name} found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return out

    def _generate_examples(self, bench: Benchmark, which: str):
        yield from benchmark_examples(bench, which)


class ZscirCirr(_CIRBuilder):
    """CIRR (rc2) queries and galleries."""

    SPLITS = cirr.SPLITS
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put CIRR's captions/ and image_splits/ (github.com/Cuberick-Orion/CIRR) and the NLVR2 raw images "
        "(train/, dev/, test1/ as named in image_splits) in manual_dir."
    )

    def _annotation_file(self, manual_dir, split):
        return cirr.caption_file(manual_dir, split)

    def _load(self, manual_dir, split):
        return cirr.load(manual_dir, split)


class ZscirFashionIq(_CIRBuilder):
    """FashionIQ queries and galleries, one config per category (captions joined with CLIP4Cir's "and" rule)."""

    SPLITS = fashioniq.SPLITS
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in fashioniq.CATEGORIES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put FashionIQ's captions/, image_splits/ (github.com/XiaoxiaoGuo/fashion-iq) and images/<ASIN>.png|jpg "
        "in manual_dir."
    )

    def _annotation_file(self, manual_dir, split):
        return os.path.join(manual_dir, "captions", f"cap.{self.builder_config.name}.{split}.json")

    def _load(self, manual_dir, split):
        return fashioniq.load(manual_dir, self.builder_config.name, split)


class ZscirCirco(_CIRBuilder):
    """CIRCO queries and the COCO 2017 unlabeled gallery."""

    SPLITS = circo.SPLITS
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put CIRCO's annotations/ (github.com/miccunifi/CIRCO) and COCO2017_unlabeled/unlabeled2017/*.jpg "
        "(with COCO2017_unlabeled/annotations/image_info_unlabeled2017.json) in manual_dir."
    )

    def _annotation_file(self, manual_dir, split):
        return os.path.join(manual_dir, "annotations", f"{split}.json")

    def _load(self, manual_dir, split):
        return circo.load(manual_dir, split)
