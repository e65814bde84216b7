"""What a workdir's outputs were made from, so that a rerun with other settings never meets outputs of the old ones.

Two records, each a flat {dotted key: value} of the config keys an output depends on:

- ``<workdir>/prepare.json``: the demo's preparation stages (benchmark, triplets, tokenizer, tower warm-up: the
  ``prepare`` and ``warmup`` sections, the benchmark seed, the text length and the tiny towers);
- each checkpoint's metadata: the trained run (method, model, loss, optimizer, data, batch size, seed) and a digest
  of the triplet files it reads (``input_fingerprints``).

A rerun compares its config with the record and refuses with one line naming every changed key: the outputs on disk
were made under the old values, and mixing them is what this prevents. Keys that do not change what is made (logging,
checkpoint cadence, the number of steps, evaluation settings, loader threads) are not recorded, so a run can be
continued for more steps or evaluated differently. Paths inside the workdir are recorded relative to it, so a moved
workdir still matches.
"""
from __future__ import annotations

import json
import os

import jax

from zscir_jax import files
from zscir_jax.errors import UserError

PREPARED = ("prepare", "warmup", "data.max_length", "model.clip_tiny", "model.backbone")
TRAINED = ("method", "seed", "model", "loss", "optim", "data", "train.batch_size")
# Settings under those sections that do not change what is made (remat recomputes the same numbers; nan_at is a
# test hook).
NOT_RECORDED = ("data.worker_count", "data.on_error", "data.max_skip_fraction", "data.read_threads", "data.nan_at",
                "model.remat", "warmup.train.log_every", "warmup.train.checkpoint_every",
                "warmup.train.keep_checkpoints", "warmup.train.async_checkpoints", "warmup.train.progress_bar")


class ChangedSettings(UserError):
    """A workdir's outputs were made under other values of these config keys."""


def _flatten(value, prefix: str, out: dict) -> None:
    if hasattr(value, "items"):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = [_plain(v) for v in value]
    else:
        out[prefix] = _plain(value)


def _plain(v):
    if hasattr(v, "items"):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


def record(config, sections, workdir: str, extra: dict | None = None) -> dict:
    """The flat {key: value} of ``sections`` (top-level names or dotted keys) in ``config``; strings that are paths
    inside ``workdir`` become ``<workdir>/relative``."""
    out: dict = {}
    for section in sections:
        node = config
        for part in section.split("."):
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                break
        if node is not None:
            _flatten(node, section, out)
    out.update(extra or {})
    for key in [k for k in out if any(k == n or k.startswith(n + ".") for n in NOT_RECORDED)]:
        del out[key]
    return {k: files.portable(v, workdir) for k, v in out.items()}


def input_fingerprints(config) -> dict:
    """{"data.triplets:contents": digest} of the triplet files a run reads: a file rewritten with other records at the
    same path (a new synthesis, an edited JSONL) changes it. The digest reads each file's size and its first and last
    MiB, so a multi-GB ArrayRecord costs two reads; empty when the run reads no triplet files."""
    import hashlib

    from zscir_jax.data import sources

    if config.data.get("source", "") == "random" or not config.data.get("triplets", ""):
        return {}
    digest = hashlib.sha256()
    for _, path in sources.triplet_sources(config):
        size = os.path.getsize(path)
        digest.update(f"{size}:".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return {"data.triplets:contents": digest.hexdigest()[:16]}


def changes(saved: dict, current: dict) -> list[str]:
    """'key: old -> new' for every key recorded on both sides whose value differs. A key on one side only is a
    setting added to (or removed from) the code since the record was written, not a change made by the user."""
    return [f"{key}: {json.dumps(saved[key])} -> {json.dumps(current[key])}"
            for key in sorted(set(saved) & set(current)) if saved[key] != current[key]]


def describe(diffs: list[str], limit: int = 6) -> str:
    more = f" (and {len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def check_or_write(path: str, current: dict, what: str) -> None:
    """Write ``current`` to ``path`` the first time (process 0); later, raise ``ChangedSettings`` (one line) when it
    differs."""
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        diffs = changes(saved, current)
        if diffs:
            raise ChangedSettings(
                f"{what} in {os.path.dirname(path)} was made with other settings ({describe(diffs)}): use a new "
                f"--workdir, or restore those values")
        return
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_json_atomic(path, current)
