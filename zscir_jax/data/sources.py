"""What a config trains on: the tokenizer, the triplet / pair records and the Grain loader built from them.

``config.data.triplets`` names one or several sources, comma-separated, each optionally prefixed by its format:

    runs/triplets.jsonl                                   our TripletRecord JSONL (or *.array_record shards)
    template:laion_template_info.json                     TransAgg's Laion-CIR-Template file
    template:laion_template_info.json,llm:laion_llm_info.json   Laion-CIR-Combined (PVLF's best setting)

A source without a prefix uses ``config.data.laion_format`` ("" = by extension). The records of all sources are
concatenated (then shuffled by the loader); ``config.data.on_error`` ("raise" | "skip") applies to every one.
"""
from __future__ import annotations

import csv
import json
import os

from zscir_jax.errors import UserError

FORMATS = ("jsonl", "array_record", "template", "llm")


def tokenizer_for(config, role: str = "clip"):
    """The tokenizer of a role (``methods.surface``): "clip" is the word tokenizer at ``config.data.tokenizer``, else
    the CLIP checkpoint's own; "llm" is the one in ``config.model.mllm_path`` (``config.data.llm_max_length`` tokens),
    else the "clip" one."""
    if role == "llm" and config.model.get("mllm_path"):
        from zscir_jax.data import tokenizer as tok_lib

        path = os.path.expanduser(config.model.mllm_path)
        if not os.path.isdir(path):
            raise UserError(f"config.model.mllm_path={path!r}: no such directory (a LLaVA / LLM checkpoint)")
        return tok_lib.Tokenizer.from_dir(path, config.data.get("llm_max_length", config.data.max_length))
    if config.data.get("tokenizer"):
        from zscir_jax.data import tokenizer as tok_lib

        return tok_lib.Tokenizer.from_dir(config.data.tokenizer, config.data.max_length)
    if config.model.get("clip_path"):
        from zscir_jax.methods import base
        from zscir_jax.models import towers

        path = config.model.clip_path
        return towers.load_tokenizer(path, towers.family_of(path, base.EXPORT_MARKER), config.data.max_length)
    raise UserError("no tokenizer: set config.data.tokenizer (a word tokenizer directory) or config.model.clip_path")


def triplet_sources(config) -> list[tuple[str, str]]:
    """[(format, path)] from ``config.data.triplets``; a bad format or a missing file is a ``UserError``."""
    spec = config.data.get("triplets", "")
    if not spec:
        raise UserError("config.data.triplets is empty: give a JSONL of triplet records, Laion-CIR files "
                        "('template:FILE,llm:FILE'), or use configs/demo.py")
    default = config.data.get("laion_format", "") or ""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        fmt, path = item.split(":", 1) if item.split(":", 1)[0] in FORMATS else ("", item)
        fmt = fmt or default or ("array_record" if ".array_record" in path else "jsonl")
        if fmt not in FORMATS:
            raise UserError(f"config.data.triplets: unknown format {fmt!r} for {path!r}; allowed: {', '.join(FORMATS)}")
        if not os.path.exists(path):
            raise UserError(f"config.data.triplets: file not found: {path}")
        out.append((fmt, path))
    return out


def load_triplets(config):
    """Every configured source's records, concatenated (a ``triplets.RecordList``: ``.skipped`` is the total).
    Relative image paths in a JSONL / ArrayRecord file are read under ``config.data.image_dir`` when it is set,
    else under the file's own folder."""
    from zscir_jax.data import triplets

    on_error = config.data.get("on_error", "raise")
    image_dir = config.data.get("image_dir", "")
    readers = {
        "jsonl": lambda p: triplets.read_jsonl(p, on_error),
        "array_record": lambda p: triplets.read_array_record(p, on_error),
        "template": lambda p: triplets.from_laion_template(p, image_dir, on_error),
        "llm": lambda p: triplets.from_laion_llm(p, image_dir, on_error),
    }
    records = triplets.RecordList()
    for fmt, path in triplet_sources(config):
        try:
            part = readers[fmt](path)
        except UserError:
            raise
        except ValueError as e:  # a malformed record under on_error=raise: the message names the file and record
            raise UserError(f"config.data.triplets: {e} (config.data.on_error=skip drops such records and counts "
                            "them)") from None
        if fmt in ("jsonl", "array_record"):  # relative images: under data.image_dir, else beside the file
            part = triplets.resolve_images(part, os.path.expanduser(image_dir) or os.path.dirname(os.path.abspath(path)))
        records.extend(part)
        records.skipped += part.skipped
    return records


def read_pairs(path: str, image_root: str) -> list[tuple[str, str, str]]:
    """(image as given, caption or None, resolved path) per line of a JSONL ({"image", "caption"}) or CSV
    (image,caption) of captioned images; relative images are resolved under ``image_root``. Mistakes name the file
    and line (``UserError``)."""
    if not path:
        raise UserError("config.data.pairs is empty: give a JSONL ({\"image\": PATH, \"caption\": TEXT} per line) or "
                        "a CSV (columns image,caption) of the unlabeled images, or use the :demo config")
    if not os.path.isfile(path):
        raise UserError(f"config.data.pairs: file not found: {path}")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".csv"):
            reader = csv.DictReader(f)
            if "image" not in (reader.fieldnames or []):
                raise UserError(f"{path}: a CSV of pairs needs a header with an 'image' column (and 'caption')")
            for n, row in enumerate(reader, 2):
                rows.append((n, row.get("image"), row.get("caption")))
        else:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    d = json.loads(raw)
                except ValueError as e:
                    raise UserError(f"{path}, line {n}: not JSON ({e})")
                if not isinstance(d, dict):
                    raise UserError(f"{path}, line {n}: expected an object with 'image' and 'caption'")
                rows.append((n, d.get("image"), d.get("caption")))
    out = []
    for n, image, caption in rows:
        if not isinstance(image, str) or not image:
            raise UserError(f"{path}, line {n}: 'image' must be a non-empty path")
        if caption is not None and not isinstance(caption, str):
            raise UserError(f"{path}, line {n}: 'caption' must be a string")
        resolved = image if os.path.isabs(image) or not image_root else os.path.join(image_root, image)
        out.append((image, caption, resolved))
    return out


def load_pairs(config):
    """[(image path, caption)]: ``config.data.pairs`` (a JSONL of {"image", "caption"} or a CSV image,caption;
    relative paths under ``config.data.image_dir``; a missing caption is "") when set, else the scenes benchmark's
    train pairs at ``config.data.pairs_root`` (or the garment benchmark's, ``data.garments``)."""
    if config.data.get("pairs"):
        path = os.path.expanduser(config.data.pairs)
        rows = read_pairs(path, os.path.expanduser(config.data.get("image_dir", "") or ""))
        return [(resolved, caption or "") for _, caption, resolved in rows]
    if not config.data.get("pairs_root"):
        raise UserError("no image-caption pairs: set config.data.pairs (a JSONL / CSV of image, caption) or "
                        "config.data.pairs_root (a scenes benchmark)")
    from zscir_jax.data import garments, scenes

    root = config.data.pairs_root
    if os.path.isfile(os.path.join(root, "garments", "train.json")):  # the garment benchmark (fashion demo)
        return garments.train_pairs(root)
    return scenes.train_pairs(root)


def neighbour_count(config) -> int:
    """k of ``config.data.pair_neighbours`` (0: off); each training pair then comes with k neighbours."""
    return int(config.data.get("pair_neighbours", 0) or 0)


def pair_neighbours(config, pairs):
    """[N, k] indices of each pair's nearest captions when ``config.data.pair_neighbours`` = k > 0 (batches then
    hold every anchor with its k neighbours: ``data.neighbours``), else None."""
    k = neighbour_count(config)
    if k <= 0:
        return None
    if k >= len(pairs):
        raise UserError(f"config.data.pair_neighbours={k}: must be below the number of pairs ({len(pairs)})")
    from zscir_jax.data import neighbours

    return neighbours.caption_neighbours([caption for _, caption in pairs], k)


def tokenizers_for(config, method) -> dict:
    """{batch prefix: tokenizer} for a method's ``text_fields`` (one instance per role), wrapped in the method's
    prompt templates where it has them (``Method.templates``)."""
    from zscir_jax.data import tokenizer as tok_lib

    by_role = {role: tokenizer_for(config, role) for role in set(method.roles.values())}
    templates = dict(method.templates(config)) if method.templates else {}
    out = {}
    for prefix, role in method.roles.items():
        tok = by_role[role]
        if prefix in templates:
            template, append_eos = templates[prefix]
            tok = tok_lib.Templated(tok, template, append_eos)
        out[prefix] = tok
    return out


def query_tokenizer(config, method):
    """The tokenizer that writes an evaluation query's modification text for ``method`` (its template included)."""
    return tokenizers_for(config, method)[method.query_field]


def make_loader(config, method):
    """This process's iterator of host batches (``global_batch_size / process_count`` rows each)."""
    kind = method.batch
    import jax

    pc, pi = jax.process_count(), jax.process_index()
    gbs = config.train.batch_size
    if gbs % pc:
        raise UserError(f"config.train.batch_size={gbs} is not divisible by the {pc} processes")
    d = config.data
    if d.source == "random":
        from zscir_jax.data import fake_data

        tiny = config.model.clip_tiny
        return fake_data.RandomTriplets(batch_size=gbs // pc, image_size=tiny.image_size, max_length=tiny.max_length,
                                        vocab_size=tiny.vocab_size, seed=config.seed * 1000 + pi, kind=kind,
                                        nan_at=d.get("nan_at", -1))
    from zscir_jax.data import images, pipeline

    mean, std = images.normalization_for(config.model.get("clip_path", ""))
    common = dict(global_batch_size=gbs, image_size=d.image_size, tokenizer=tokenizers_for(config, method),
                  seed=config.seed,
                  process_index=pi, process_count=pc, worker_count=d.worker_count, on_error=d.on_error,
                  mean=mean, std=std)
    if kind == "pairs":
        pairs = load_pairs(config)
        return pipeline.pair_loader(pairs, neighbours=pair_neighbours(config, pairs), **common)
    records = load_triplets(config)
    it = pipeline.triplet_loader(records, features=record_features(config, records), **common)
    it.stats.add_bad_records(records.skipped, records.errors[-1] if records.errors else "")
    return it


def record_features(config, records) -> dict:
    """{batch key: RecordFeatures} of ``config.data.features`` (batch key -> a features directory; empty entries are
    left out), each checked against ``records``."""
    from zscir_jax.data import features

    out = {}
    for key, path in dict(config.data.get("features") or {}).items():
        if path:
            out[key] = features.RecordFeatures(path, [r.target_text for r in records], f"config.data.features.{key}")
    return out
