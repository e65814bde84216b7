"""The training-triplet record schema, its storage (JSONL, ArrayRecord shards) and converters for public files.

A record is one (reference image, modification text) -> target, where the target is an image, a target text, or
both. Storage is one JSON object per record: a line in JSONL, or the bytes of one ArrayRecord entry (what Grain
reads, via ``grain.sources.ArrayRecordDataSource``; Grain has no JSONL source, so convert once with
``write_array_record``).

Malformed input is never silently dropped: ``on_error="raise"`` raises ``ValueError`` naming the file and the record
index or key; ``on_error="skip"`` drops it and counts it in the returned ``RecordList.skipped``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

from zscir_jax.data import policy
from zscir_jax.files import atomic_text

ON_ERROR = policy.POLICIES


@dataclasses.dataclass(frozen=True)
class TripletRecord:
    reference_image: str
    modification_text: str
    target_text: str = ""
    target_image: str | None = None
    caption: str | None = None  # the reference image's caption, when known
    source: str = ""  # where it came from: "laion_cir_template", "scenes:train", ...
    generator: str = ""  # what wrote it: "rule_based", "human", "llm:<model>", ...

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Any) -> "TripletRecord":
        """Checks keys and types; raises ``ValueError`` (no context: callers add the file and index)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        for key in ("reference_image", "modification_text"):
            if key not in d:
                raise ValueError(f"missing key {key!r}")
        for key, value in d.items():
            optional = key in ("target_image", "caption")
            if not (isinstance(value, str) or (optional and value is None)):
                raise ValueError(f"key {key!r} must be a string{' or null' if optional else ''}, got {value!r}")
        if not d.get("target_text") and not d.get("target_image"):
            raise ValueError("a record needs a target_text or a target_image")
        return cls(**d)


def coerce(x: Any) -> TripletRecord:
    """A ``TripletRecord`` from a record, a dict, or JSON bytes/str (an ArrayRecord entry)."""
    if isinstance(x, TripletRecord):
        return x
    if isinstance(x, (bytes, str)):
        x = json.loads(x)
    return TripletRecord.from_dict(x)


class RecordList(list):
    """A list of records that also says how many inputs were skipped as malformed (``on_error="skip"``)."""
    skipped: int = 0
    errors: list[str]

    def __init__(self, items=(), skipped: int = 0, errors: Sequence[str] = ()):
        super().__init__(items)
        self.skipped = skipped
        self.errors = list(errors)


class _Collector:
    """Shared raise-or-skip bookkeeping of the readers and converters."""

    def __init__(self, path: str, on_error: str):
        self.path, self.on_error, self.out = path, policy.check(on_error), RecordList()

    def fail(self, where: str, err: Exception) -> None:
        error = ValueError(f"{self.path}: malformed record {where}: {err}")
        error.__cause__ = err
        policy.raise_or_skip(self.on_error, error, self._count)

    def _count(self, message: str) -> None:
        self.out.skipped += 1
        if len(self.out.errors) < 20:
            self.out.errors.append(message)


# ------------------------------------------------------------------------------------------------ image paths
# A triplet file names its images either absolutely or relative to a root: ``config.data.image_dir`` when set,
# else the file's own folder. Our stages write the images of their workdir relative to the file, so a workdir
# moved or copied as a whole still trains.

IMAGE_FIELDS = ("reference_image", "target_image")


def relative_images(record: TripletRecord, base_dir: str, under: str) -> TripletRecord:
    """``record`` with each absolute image path inside folder ``under`` written relative to ``base_dir``."""
    under = os.path.abspath(under) + os.sep
    changes = {}
    for key in IMAGE_FIELDS:
        path = getattr(record, key)
        if path and os.path.isabs(path) and path.startswith(under):
            changes[key] = os.path.relpath(path, base_dir)
    return dataclasses.replace(record, **changes) if changes else record


def resolve_images(records: "RecordList", root: str) -> "RecordList":
    """The records with relative image paths joined to ``root`` (absolute ones unchanged)."""
    def resolve(r: TripletRecord) -> TripletRecord:
        changes = {k: os.path.normpath(os.path.join(root, getattr(r, k))) for k in IMAGE_FIELDS
                   if getattr(r, k) and not os.path.isabs(getattr(r, k))}
        return dataclasses.replace(r, **changes) if changes else r

    return RecordList([resolve(r) for r in records], records.skipped, records.errors)


# ---------------------------------------------------------------------------------------------------- JSONL

def write_jsonl(records: Iterable[TripletRecord], path: str, *, relative_under: str | None = None) -> str:
    """All records or none: written to a temporary file renamed over ``path``, so a cut-off write leaves no
    half file for a later run to read. ``relative_under``: images inside that folder are written relative to the
    file's folder (``relative_images``)."""
    base = os.path.dirname(os.path.abspath(path))
    os.makedirs(base, exist_ok=True)
    with atomic_text(path) as f:
        for r in records:
            if relative_under:
                r = relative_images(r, base, relative_under)
            f.write(r.to_json() + "\n")
    return path


def read_jsonl(path: str, on_error: str = "raise") -> RecordList:
    c = _Collector(path, on_error)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                c.out.append(coerce(line))
            except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
                c.fail(f"at line {i + 1}", e)
    return c.out


# ---------------------------------------------------------------------------------------------- ArrayRecord

def write_array_record(records: Sequence[TripletRecord], path_prefix: str, num_shards: int = 1, *,
                       relative_under: str | None = None) -> list[str]:
    """Writes ``records`` round-robin into ``num_shards`` files ``{prefix}-0000i-of-0000n.array_record``
    (``relative_under`` as for ``write_jsonl``)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    base = os.path.dirname(os.path.abspath(path_prefix))
    os.makedirs(base, exist_ok=True)
    if relative_under:
        records = [relative_images(r, base, relative_under) for r in records]
    paths = [f"{path_prefix}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
    # group_size:1 keeps every record individually addressable: Grain reads in random (shuffled) order.
    writers = [ArrayRecordWriter(p, "group_size:1") for p in paths]
    try:
        for i, r in enumerate(records):
            writers[i % num_shards].write(r.to_json().encode("utf-8"))
    finally:
        for w in writers:
            w.close()
    return paths


def array_record_source(paths: str | Sequence[str]):
    """A Grain random-access source over ArrayRecord shards; elements are JSON bytes (``coerce`` decodes them)."""
    import grain

    paths = [paths] if isinstance(paths, str) else list(paths)
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"ArrayRecord shard not found: {p}")
    return grain.sources.ArrayRecordDataSource(paths)


def read_array_record(paths: str | Sequence[str], on_error: str = "raise") -> RecordList:
    src = array_record_source(paths)
    c = _Collector(",".join([paths] if isinstance(paths, str) else paths), on_error)
    for i in range(len(src)):
        try:
            c.out.append(coerce(src[i]))
        except (ValueError, TypeError) as e:
            c.fail(f"at index {i}", e)
    return c.out


# ------------------------------------------------------------------------------- public Laion-CIR converters

def laion_image_path(image_dir: str, image_id: Any) -> str:
    """TransAgg's naming: the id zero-padded to 7 digits, ``.png``. Ids come as str or int."""
    s = str(image_id)
    if not s.isdigit():
        raise ValueError(f"image id must be digits, got {image_id!r}")
    return os.path.join(image_dir, f"{int(s):07d}.png")


def _load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _str_field(entry: Any, key: str, allow_int: bool = False) -> str:
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"missing key {key!r}")
    v = entry[key]
    if isinstance(v, bool) or not (isinstance(v, str) or (allow_int and isinstance(v, int))):
        raise ValueError(f"key {key!r} has type {type(v).__name__}")
    return str(v)


def from_laion_template(json_path: str, image_dir: str, on_error: str = "raise") -> RecordList:
    """Laion-CIR-Template: a list of ``{ref_image_id, relative_cap, tgt_image_id}`` (tgt id str or int)."""
    data = _load_json(json_path)
    if not isinstance(data, list):
        raise ValueError(f"{json_path}: expected a JSON list of records, got {type(data).__name__}")
    c = _Collector(json_path, on_error)
    for i, e in enumerate(data):
        try:
            ref = laion_image_path(image_dir, _str_field(e, "ref_image_id", allow_int=True))
            tgt = laion_image_path(image_dir, _str_field(e, "tgt_image_id", allow_int=True))
            c.out.append(TripletRecord(ref, _str_field(e, "relative_cap"), "", tgt, None, "laion_cir_template",
                                       "template"))
        except ValueError as err:
            c.fail(f"at index {i}", err)
    return c.out


def from_laion_llm(json_path: str, image_dir: str, on_error: str = "raise") -> RecordList:
    """Laion-CIR-LLM: a dict keyed by reference id of ``{tgt_image_id, relative_cap, tgt_cap}``."""
    data = _load_json(json_path)
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: expected a JSON object keyed by reference id, got {type(data).__name__}")
    c = _Collector(json_path, on_error)
    for key, e in data.items():
        try:
            ref = laion_image_path(image_dir, key)
            tgt = laion_image_path(image_dir, _str_field(e, "tgt_image_id", allow_int=True))
            c.out.append(TripletRecord(ref, _str_field(e, "relative_cap"), _str_field(e, "tgt_cap"), tgt, None,
                                       "laion_cir_llm", "llm"))
        except ValueError as err:
            c.fail(f"at key {key!r}", err)
    return c.out
