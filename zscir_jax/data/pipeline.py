"""Grain input pipelines: triplets for CIR training and image-caption pairs for contrastive warm-up.

Shape of both (as in the Grain docs and MaxText):

    MapDataset.source(records | ArrayRecordDataSource)
      .seed(seed).shuffle()            global, reshuffled every epoch
      .repeat(num_epochs)              None: forever
      _ProcessRows                     this host's rows of each global batch (contiguous blocks)
      .map(decode + preprocess + tokenize)   -> None for a bad image under on_error="skip"
      .filter(not None)
      .to_iter_dataset(ReadOptions)    threads, order preserved
      .batch(local_batch, drop_remainder=True)   after the filter, so skipped records never leave holes
      .mp_prefetch(MultiprocessingOptions)       when worker_count > 0

The iterator is a ``grain.DatasetIterator``: ``get_state()`` / ``set_state()`` resume exactly (no batch skipping),
and it can be saved with ``grain.checkpoint.CheckpointSave`` through Orbax. Every process builds the same global
order from the same seed and reads only its slice, so the host batches of one step form one global batch.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import zlib
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np

from zscir_jax.data import images, policy
from zscir_jax.data.triplets import TripletRecord, coerce

log = logging.getLogger(__name__)


SKIP_KINDS = ("bad_record", "missing_image", "undecodable_image")
DEFAULT_MAX_SKIP_FRACTION = 0.05  # config.data.max_skip_fraction when a config leaves it out


@dataclasses.dataclass
class PipelineStats:
    """What ``on_error="skip"`` dropped, per kind (``SKIP_KINDS``), and how many records were read in all.

    ``bad_record`` counts the malformed records the reader dropped when the source was loaded; the image kinds are
    counted as the pipeline decodes, in the process that decodes: with ``worker_count > 0`` the workers log each skip
    instead (``zscir_jax.data.pipeline`` logger)."""
    skipped: int = 0
    last_error: str = ""
    decoded: int = 0  # records that went through the transform whole
    by_kind: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(SKIP_KINDS, 0))

    def __post_init__(self):
        self._lock = threading.Lock()

    def record(self, message: str, kind: str = "undecodable_image") -> None:
        with self._lock:
            self.skipped += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            self.last_error = message

    def add_bad_records(self, n: int, last_error: str = "") -> None:
        with self._lock:
            self.skipped += n
            self.by_kind["bad_record"] += n
            if n and last_error:
                self.last_error = last_error

    def count_decoded(self) -> None:
        with self._lock:
            self.decoded += 1

    @property
    def seen(self) -> int:
        return self.decoded + self.skipped

    def summary(self) -> str:
        """"12 of 600 records skipped (3 bad records, 9 missing images)", or "" when nothing was skipped."""
        if not self.skipped:
            return ""
        parts = [f"{n} {k.replace('_', ' ')}s" for k, n in self.by_kind.items() if n]
        return f"{self.skipped} of {self.seen} records skipped ({', '.join(parts)})"

    def __getstate__(self):  # picklable for Grain workers: the lock is rebuilt there
        d = dict(self.__dict__)
        d.pop("_lock", None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()


def image_key(path: str) -> int:
    """A non-negative int32 naming an image by the last two parts of its path (folder/file): a batch's ``target_key``
    against a static bank's keys tells which bank entry is a row's own target (``methods.fashion``). Not the whole
    path: the bank's keys live in the checkpoint, and a workdir moved between two runs of a stage re-resolves its
    records' paths under the new place. CRC-32: two of 50k images share a key with probability ~0.5, which costs
    one negative, never a wrong positive."""
    tail = "/".join(os.path.normpath(path).replace(os.sep, "/").split("/")[-2:])
    return zlib.crc32(tail.encode("utf-8")) & 0x7FFFFFFF


def _resolve(path: str, image_root: str | None) -> str:
    return path if image_root is None or os.path.isabs(path) else os.path.join(image_root, path)


# Batch prefixes that hold a record's own field (every other tokenizer prefix re-tokenizes the modification text).
RECORD_FIELDS = ("text", "target_text", "caption")


class _Decode:
    """Shared part of the per-element transforms: raise-or-skip around image decoding."""

    def __init__(self, image_size: int, tokenizer, on_error: str, stats: PipelineStats, image_root, mean, std):
        policy.check(on_error)
        self.image_size, self.tokenizer, self.on_error, self.stats = image_size, tokenizer, on_error, stats
        self.image_root, self.mean, self.std = image_root, mean, std

    def pixels(self, path: str) -> np.ndarray:
        img = images.load_image(_resolve(path, self.image_root))
        return images.preprocess(img, self.image_size, self.mean, self.std)

    def tokens(self, text: str, prefix: str = "text") -> tuple[np.ndarray, np.ndarray]:
        tok = self.tokenizer.get(prefix, self.tokenizer["text"]) if isinstance(self.tokenizer, dict) else self.tokenizer
        ids, mask = tok([text])
        return ids[0], mask[0]

    def extra_fields(self, text: str) -> dict:
        """``{prefix}_ids`` / ``{prefix}_mask`` of ``text`` for every extra prefix of a per-field tokenizer dict."""
        out = {}
        if isinstance(self.tokenizer, dict):
            for prefix in self.tokenizer:
                if prefix not in RECORD_FIELDS:
                    out[f"{prefix}_ids"], out[f"{prefix}_mask"] = self.tokens(text, prefix)
        return out

    def guarded(self, fn: Callable[[Any], dict], element: Any) -> dict | None:
        try:
            out = fn(element)
        except images.ImageError as e:
            kind = e.kind
            policy.raise_or_skip(self.on_error, e, lambda message: self._skip(message, kind))
            return None
        self.stats.count_decoded()
        return out

    def _skip(self, message: str, kind: str) -> None:
        self.stats.record(message, kind)
        log.warning("skipping record: %s", message)


class _Indexed:
    """A source whose elements are (index, element): per-record features are looked up by the record's index."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return int(i), self.source[i]


class _TripletTransform(_Decode):
    features: dict = {}  # batch key -> data.features.RecordFeatures; elements are then (index, record)

    def _one(self, element: Any) -> dict:
        index = None
        if self.features:
            index, element = element
        r: TripletRecord = coerce(element)
        ids, mask = self.tokens(r.modification_text)
        tids, tmask = self.tokens(r.target_text, "target_text")
        has_target = r.target_image is not None and r.target_image != ""
        target = (self.pixels(r.target_image) if has_target
                  else np.zeros((self.image_size, self.image_size, 3), np.float32))
        out = {"reference_pixels": self.pixels(r.reference_image), "text_ids": ids, "text_mask": mask,
               "target_pixels": target, "has_target_image": np.bool_(has_target),
               "target_text_ids": tids, "target_text_mask": tmask, "has_target_text": np.bool_(bool(r.target_text)),
               "target_key": np.int32(image_key(r.target_image) if has_target else -1),
               **self.extra_fields(r.modification_text)}
        if isinstance(self.tokenizer, dict) and "caption" in self.tokenizer:
            out["caption_ids"], out["caption_mask"] = self.tokens(r.caption or "", "caption")
            out["has_caption"] = np.bool_(bool(r.caption))
        for key, table in self.features.items():
            out[key] = table[index]
        return out

    def __call__(self, element: Any) -> dict | None:
        return self.guarded(self._one, element)


class _PairTransform(_Decode):
    def _one(self, element: Any) -> dict:
        path, caption = element
        ids, mask = self.tokens(caption)
        return {"pixels": self.pixels(path), "text_ids": ids, "text_mask": mask, **self.extra_fields(caption)}

    def __call__(self, element: Any) -> dict | None:
        return self.guarded(self._one, element)


def _not_none(x) -> bool:  # module level: picklable for mp_prefetch workers
    return x is not None


def _ensure_absl_flags() -> None:
    """Grain's worker processes read its absl flags; outside an absl app (tests, notebooks) nothing parsed them,
    so accept the defaults. Under ``absl.app.run`` (our ``main``) they are parsed already and left alone."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _build(source, transform, stats: PipelineStats, *, global_batch_size: int, seed: int, shuffle: bool,
           num_epochs: int | None, process_index: int | None, process_count: int | None, worker_count: int,
           read_threads: int, prefetch_buffer_size: int, drop_remainder: bool = True,
           neighbours: np.ndarray | None = None) -> grain.DatasetIterator:
    """The shared pipeline of both loaders; the iterator carries ``stats`` (records the transform skipped).
    ``neighbours`` [N, k]: an epoch is every record once as an anchor, each followed by its k neighbours in the
    same batch."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} out of range for process_count {process_count}")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}")
    local_batch = global_batch_size // process_count
    if len(source) == 0:
        raise ValueError("the input pipeline got an empty data source")
    group = 1
    if neighbours is None:
        ds = grain.MapDataset.source(source)
        if shuffle:
            ds = ds.seed(seed).shuffle()
    else:  # shuffled anchors, each with its neighbours (read from the unshuffled source): one element a group
        anchors = grain.MapDataset.range(len(source))
        if shuffle:
            anchors = anchors.seed(seed).shuffle()
        ds = _NeighbourGroups(anchors, source, neighbours)
        group = ds.group
        if local_batch % group:
            raise ValueError(f"the per-process batch {local_batch} is not a multiple of the neighbour group size "
                             f"{group} (each record and its {group - 1} neighbour(s))")
        transform = _EachMember(transform)
    ds = ds.repeat(num_epochs)
    if process_count > 1:
        ds = _ProcessRows(ds, process_index, process_count, local_batch // group)
    ds = ds.map(transform).filter(_not_none)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size))
    # Groups stay whole through batching and the workers (which split the stream element by element).
    it = it.batch(local_batch // group, drop_remainder=drop_remainder)
    if group > 1:
        it = it.map(_ungroup)
    if worker_count > 0:
        _ensure_absl_flags()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    it = iter(it)
    it.stats = stats
    return it


class _NeighbourGroups(grain.MapDataset):
    """Element ``g``: the records of anchor ``anchors[g]`` and of its neighbours ``neighbours[anchor]``, a tuple of
    ``group = k + 1`` (kept whole until the batch, so related records share it: CoLLM's in-batch triplets)."""

    def __init__(self, anchors: grain.MapDataset, source, neighbours: np.ndarray):
        super().__init__(anchors)
        self._source = source
        self._neighbours = np.asarray(neighbours, np.int64)
        if self._neighbours.ndim != 2 or len(self._neighbours) != len(source):
            raise ValueError(f"neighbours must be [{len(source)}, k], got {self._neighbours.shape}")
        self.group = self._neighbours.shape[1] + 1

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, g):
        if isinstance(g, slice):
            return self.slice(g)
        anchor = int(self._parent[g])
        return tuple(self._source[i] for i in (anchor, *self._neighbours[anchor].tolist()))

    def __str__(self) -> str:
        return f"NeighbourGroups[{self.group - 1} per anchor]"


class _EachMember:
    """A record transform applied to every member of a group, stacked [group, ...]; a group with a skipped member
    is skipped whole (its anchor would have lost its neighbour)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, members) -> dict | None:
        outs = [self.transform(m) for m in members]
        if any(o is None for o in outs):
            return None
        return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def _ungroup(batch: dict) -> dict:
    """[b, group, ...] -> [b * group, ...]: each anchor's row followed by its neighbours' rows."""
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


class _ProcessRows(grain.MapDataset):
    """Process ``index``'s share of the global stream: rows ``[index * local, (index + 1) * local)`` of every
    global batch of ``count * local`` rows. The global batch a step sees, row order included, is then the one a
    single process reads, so a job gives the same numbers on any number of hosts (dropout masks and other
    per-row randomness follow the row's global position)."""

    def __init__(self, parent: grain.MapDataset, index: int, count: int, local: int):
        super().__init__(parent)
        self._index, self._local, self._global = index, local, count * local
        full, tail = divmod(len(parent), self._global)
        self._length = full * local + max(0, min(local, tail - index * local))

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, j: int) -> int:
        batch, row = divmod(j, self._local)
        return batch * self._global + self._index * self._local + row

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        return self._parent[self._parent_index(j)]

    def __str__(self) -> str:
        return f"ProcessRows[{self._index}, {self._local} of {self._global}]"


def _as_source(records_or_source):
    """Lists are used as they are (in-memory sources); anything with ``__len__``/``__getitem__`` (an
    ``ArrayRecordDataSource``) too. JSONL / ArrayRecord paths are read with ``triplets``."""
    if isinstance(records_or_source, (str, os.PathLike)):
        from zscir_jax.data import triplets

        p = os.fspath(records_or_source)
        return triplets.read_jsonl(p) if p.endswith(".jsonl") else triplets.array_record_source(p)
    return records_or_source


def triplet_loader(records_or_source, *, global_batch_size: int, image_size: int, tokenizer, seed: int = 0,
                   shuffle: bool = True, num_epochs: int | None = None, process_index: int | None = None,
                   process_count: int | None = None, worker_count: int = 0, on_error: str = "raise",
                   mean=images.CLIP_MEAN, std=images.CLIP_STD, image_root: str | None = None,
                   stats: PipelineStats | None = None, read_threads: int = 4,
                   prefetch_buffer_size: int = 64, features: dict | None = None) -> grain.DatasetIterator:
    """Batches of triplets (numpy, local batch = global_batch_size // process_count):

    ``reference_pixels`` f32 [b,S,S,3], ``text_ids``/``text_mask`` i32 [b,L], ``target_pixels`` f32 [b,S,S,3]
    (zeros where there is no target image), ``has_target_image`` bool [b], ``target_text_ids``/``target_text_mask``
    i32 [b,L], ``has_target_text`` bool [b]; with a ``"caption"`` entry in a tokenizer dict also
    ``caption_ids``/``caption_mask`` i32 [b,L] and ``has_caption`` bool [b] (the record's caption).

    ``records_or_source``: a list of ``TripletRecord`` / dicts, a Grain random-access source of JSON bytes
    (``triplets.array_record_source``), or a ``.jsonl`` / ``.array_record`` path. ``stats`` (or the returned
    iterator's ``.stats`` when omitted) counts records skipped under ``on_error="skip"``. ``features``
    ({batch key: ``data.features.RecordFeatures``}) adds each record's row of those arrays, f32 [b, D].
    """
    stats = stats if stats is not None else PipelineStats()
    transform = _TripletTransform(image_size, tokenizer, on_error, stats, image_root, mean, std)
    source = _as_source(records_or_source)
    if features:
        transform.features = dict(features)
        source = _Indexed(source)
    return _build(source, transform, stats, global_batch_size=global_batch_size, seed=seed,
                  shuffle=shuffle, num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                  worker_count=worker_count, read_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)


def pair_loader(pairs: Sequence[tuple[str, str]], *, global_batch_size: int, image_size: int, tokenizer,
                seed: int = 0, shuffle: bool = True, num_epochs: int | None = None, process_index: int | None = None,
                process_count: int | None = None, worker_count: int = 0, on_error: str = "raise",
                mean=images.CLIP_MEAN, std=images.CLIP_STD, image_root: str | None = None,
                stats: PipelineStats | None = None, read_threads: int = 4,
                prefetch_buffer_size: int = 64, neighbours: np.ndarray | None = None) -> grain.DatasetIterator:
    """Batches of image-caption pairs ``(path, caption)``: ``pixels`` f32 [b,S,S,3], ``text_ids``/``text_mask``
    i32 [b,L] (CLIP contrastive warm-up, CoLLM's in-batch triplets). Same options as ``triplet_loader``.
    ``neighbours`` [N, k] (``data.neighbours.caption_neighbours``): each shuffled pair is followed by its k
    neighbours in the same batch (the local batch must be a multiple of k + 1), so an epoch is N * (k + 1) rows."""
    stats = stats if stats is not None else PipelineStats()
    transform = _PairTransform(image_size, tokenizer, on_error, stats, image_root, mean, std)
    return _build([tuple(p) for p in pairs], transform, stats, global_batch_size=global_batch_size, seed=seed,
                  shuffle=shuffle, num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                  worker_count=worker_count, read_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size,
                  neighbours=neighbours)
