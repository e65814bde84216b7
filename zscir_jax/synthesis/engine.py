"""The synthesis job: a recipe's prompts through a backend, cached, batched and data-parallel, into sharded triplet
records that the training pipeline reads as they are.

    synthesize(config, workdir) -> manifest dict          (python -m zscir_jax.synthesize calls it)

Output in ``workdir/synthesis/<recipe>/``:

    triplets-0000i-of-0000n.jsonl | .array_record   the records, round-robin over ``config.output.num_shards``
    quarantine.jsonl                                every output that did not parse, with its raw text and reason
    manifest.json                                   records, quarantined, shards (relative paths), model, template
                                                    hashes, parse failures per prompt, sampling, seed, ...
    cache/p<process>.jsonl                          every generation, keyed by what produced it (``cache``)

How a run goes: every process builds the same items and requests; each generation is keyed by the hash of (model
fingerprint, template, inputs, sampling, seed); each process takes the keys ``unique_keys[index::count]``, cuts
them into fixed batches of ``config.batch_size`` (image prompts and text prompts apart, similar prompt lengths
together), runs every batch that misses a generation and appends it to its cache file before the next; then the
processes meet and read each other's files. The records are then a pure function of the items and the cached
generations, so a rerun generates only what is missing and a run killed at any point and restarted writes exactly
what an uninterrupted run writes. Process 0 writes the shards, the quarantine and, last, the manifest, each to a
temporary file renamed into place.

A sampled generation draws from its own seed, derived from (``config.sampling.seed``, the request), never from its
batch, so results do not depend on batch size, order or process count.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np

from zscir_jax import sharding
from zscir_jax.data import sources, triplets
from zscir_jax.data.triplets import TripletRecord
from zscir_jax.errors import UserError
from zscir_jax import files
from zscir_jax.files import write_json_atomic
from zscir_jax.synthesis import backends, cache as cache_lib, prompts, recipes
from zscir_jax.synthesis.backends import Generation, Request, Sampling
from zscir_jax.synthesis.recipes import Item

FORMATS = ("jsonl", "array_record")
DATA_KINDS = ("scenes", "garments", "pairs", "folder")
# The built-in benchmarks a run can read its train split from: zscir_jax.data.<kind> with build / train_pairs.
BENCHMARK_KINDS = ("scenes", "garments")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SHARD_PREFIX = "triplets"


# ---------------------------------------------------------------------------------------------------------- checks

def check_config(config, check_backend: bool = True) -> None:
    """Every mistake a user can make in the config, as a ``UserError``, before anything slow runs
    (``check_backend=False``: the backend is given as an object, ``config.backend`` is not used)."""
    recipe = config.get("recipe", "")
    if recipe not in recipes.RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; known recipes: {', '.join(recipes.RECIPES)}")
    templates = dict(config.get("templates") or {})
    if recipe == "rule_based":
        from zscir_jax.synthesis import templates as phrasing

        try:
            phrasing.check(templates)
        except ValueError as e:
            raise UserError(f"config.templates: {e}")
    else:
        for name, allowed in recipes.FIELDS[recipe].items():
            if name not in templates:
                if name == "modification_alt" or (recipe == "mvftji" and name == "modification"):
                    continue  # checked below against the chosen modification prompt
                raise UserError(f"config.templates.{name} is missing (recipe {recipe} needs "
                                f"{', '.join(recipes.FIELDS[recipe])})")
            check_template(name, templates[name], allowed)
        unknown = set(templates) - set(recipes.FIELDS[recipe])
        if unknown:
            raise UserError(f"config.templates has entries recipe {recipe} does not use: {', '.join(sorted(unknown))}")
    s = config.sampling
    _number(s, "temperature", lambda v: v >= 0, ">= 0 (0 = greedy)")
    _number(s, "top_p", lambda v: 0 < v <= 1, "in (0, 1]")
    _integer(s, "max_new_tokens", 1)
    _integer(s, "seed", 0, name="config.sampling.seed")
    _integer(config, "batch_size", 1, name="config.batch_size")
    _integer(config, "limit", 0, name="config.limit")
    _integer(config.output, "num_shards", 1, name="config.output.num_shards")
    if config.output.format not in FORMATS:
        raise UserError(f"config.output.format={config.output.format!r} is not one of {', '.join(FORMATS)}")
    if config.data.kind not in DATA_KINDS:
        raise UserError(f"config.data.kind={config.data.kind!r} is not one of {', '.join(DATA_KINDS)}")
    if recipe == "rule_based" and config.data.kind == "garments":
        raise UserError("config.recipe='rule_based' edits scenes; the garments (config.data.kind='garments') are "
                        "paired by the fashion recipe (config.recipe='fashion', config.backend.kind='rule_based')")
    check_backend = check_backend and recipe != "rule_based"
    if check_backend and config.backend.kind not in backends.KINDS:
        raise UserError(f"config.backend.kind={config.backend.kind!r} is not one of {', '.join(backends.KINDS)}")
    if check_backend and config.backend.kind == "mllm":
        kind = backends.check_checkpoint(os.path.expanduser(config.backend.get("checkpoint", "") or ""))
        if kind == "llm" and recipe in recipes.WITH_IMAGE:
            raise UserError(f"config.backend.checkpoint is a text-only LLM; recipe {recipe} sends images: give a "
                            f"LLaVA directory")
    opts = config.get(recipe) or {}
    if recipe == "mvftji":
        mod = opts.get("modification_prompt", "modification")
        if mod not in ("modification", "modification_alt"):
            raise UserError(f"config.mvftji.modification_prompt={mod!r} is not 'modification' or 'modification_alt'")
        if mod not in templates:
            raise UserError(f"config.templates.{mod} is missing (config.mvftji.modification_prompt names it)")
    if recipe == "distillcir":
        _integer(opts, "num_examples", 0, name="config.distillcir.num_examples", default=2)
        need = recipes.FIELDS["distillcir"]["example"]
        for k, ex in enumerate(opts.get("examples", ())):
            missing = [f for f in need if f not in dict(ex)]
            if missing:
                raise UserError(f"config.distillcir.examples[{k}] lacks {', '.join(missing)}")
    if recipe == "fashion":
        lo, hi = int(opts.get("min_diff", 1)), int(opts.get("max_diff", 2))
        if not 1 <= lo <= hi:
            raise UserError(f"config.fashion: need 1 <= min_diff <= max_diff, got {lo} and {hi}")
        _integer(opts, "targets_per_image", 1, name="config.fashion.targets_per_image", default=1)


def check_template(name: str, template, allowed: Sequence[str]) -> None:
    if not isinstance(template, str) or not template.strip():
        raise UserError(f"config.templates.{name} must be a non-empty string")
    try:
        used = backends.template_fields(template)
    except ValueError as e:
        raise UserError(f"config.templates.{name} is not a valid format string: {e}")
    unknown = used - set(allowed)
    if unknown:
        braced = ", ".join("{" + u + "}" for u in sorted(unknown))
        raise UserError(f"config.templates.{name} uses unknown field(s) {braced}; allowed: "
                        f"{', '.join('{' + a + '}' for a in allowed) or 'none'}")


def _number(d, key, ok, what):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(float(v)):
        raise UserError(f"config.sampling.{key}={v!r} must be a number {what}")


def _integer(d, key, minimum, name=None, default=None):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise UserError(f"{name or 'config.sampling.' + key}={v!r} must be an integer >= {minimum}")


# ------------------------------------------------------------------------------------------------------------ data

def load_items(config, workdir: str) -> list[Item]:
    """The run's inputs, in data order (the first ``config.limit`` when it is > 0).

    ``config.data.kind``: ``scenes`` (the scenes benchmark's train split at ``data.root``, default
    ``workdir/scenes``, built there from ``data.scenes`` when absent) or ``garments`` (the same for the garment
    benchmark: ``data.garments``, default root ``workdir/garments``, the garments' captions) or ``pairs``
    (``data.pairs``: a JSONL of ``{"image": PATH, "caption": TEXT}`` or a CSV with columns ``image,caption``;
    relative image paths are read under ``data.image_root`` and kept relative in the records) or ``folder`` (every
    image file under ``data.folder``, recursively, as absolute paths; no captions, so image-only recipes).
    Image-only recipes keep the first line of an image seen twice; the caption recipes need a caption on every line.
    """
    d = config.data
    recipe = config.recipe
    if d.kind in BENCHMARK_KINDS:
        raw = [(p, c, p) for p, c in _benchmark_train_pairs(d, workdir)]
    elif d.kind == "folder":
        if recipe in recipes.NEEDS_CAPTIONS:
            raise UserError(f"config.data.kind=folder gives images without captions; recipe {recipe} needs captions "
                            "(use kind=pairs)")
        raw = [(p, None, p) for p in _image_files(os.path.expanduser(d.get("folder", "") or ""))]
    else:
        raw = sources.read_pairs(os.path.expanduser(d.get("pairs", "") or ""),
                          os.path.expanduser(d.get("image_root", "") or ""))
    needs_caption = recipe in recipes.NEEDS_CAPTIONS
    items, seen = [], set()
    for key, caption, image in raw:
        if needs_caption and not caption:
            raise UserError(f"recipe {recipe} needs a caption for every image; {key} has none")
        ident = (key, caption) if needs_caption else key
        if ident in seen:
            continue
        seen.add(ident)
        items.append(Item(key=key, image=image, caption=caption or None))
    if config.limit:
        items = items[: config.limit]
    return items


def _benchmark_train_pairs(d, workdir: str) -> list[tuple[str, str]]:
    """(image path, caption) of the train split of benchmark ``d.kind`` at ``d.root`` (default ``workdir/<kind>``),
    built there from ``d.<kind>`` when absent (by process 0; the others wait at a barrier)."""
    import importlib

    import jax

    module = importlib.import_module(f"zscir_jax.data.{d.kind}")
    root = os.path.expanduser(d.get("root", "") or os.path.join(workdir, d.kind))
    if not os.path.isfile(os.path.join(root, "captions", "train_captions.json")):
        if d.get("root"):
            raise UserError(f"config.data.root: no {d.kind} benchmark at {root} (captions/train_captions.json)")
        if jax.process_index() == 0:
            module.build(root, **dict(d.get(d.kind) or {}))
        if jax.process_count() > 1:
            sharding.sync(f"zscir_synthesis:{d.kind}")
    return module.train_pairs(root)


def _image_files(folder: str) -> list[str]:
    """Every image file under ``folder`` (recursively, by extension), as sorted absolute paths."""
    if not folder:
        raise UserError("config.data.folder is empty: give a directory of unlabeled images (kind=folder)")
    if not os.path.isdir(folder):
        raise UserError(f"config.data.folder: no such directory: {folder}")
    out = []
    for parent, _, names in os.walk(os.path.abspath(folder)):
        out += [os.path.join(parent, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not out:
        raise UserError(f"config.data.folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return sorted(out)


def source_name(config) -> str:
    if config.data.get("source"):
        return config.data.source
    if config.data.kind in BENCHMARK_KINDS:
        return f"{config.data.kind}:train"
    if config.data.kind == "folder":
        return os.path.basename(os.path.normpath(config.data.get("folder", "") or "folder"))
    return os.path.basename(config.data.get("pairs", "") or "pairs")


# --------------------------------------------------------------------------------------------------------- context

class Context:
    """What a recipe sees of the run (see ``recipes``)."""

    def __init__(self, config, backend, cache: cache_lib.Cache, *, process_index: int = 0, process_count: int = 1,
                 progress: bool = True, workdir: str = ""):
        self.recipe = config.recipe
        self.templates = {k: v for k, v in dict(config.templates).items()}
        self.options = _plain(config.get(config.recipe) or {})
        self.seed = int(config.sampling.seed)
        self.workdir = workdir  # image paths inside it enter keys and seeds as <workdir>/...: a moved workdir matches
        self.sampling = Sampling(float(config.sampling.temperature), float(config.sampling.top_p),
                                 int(config.sampling.max_new_tokens))
        self.batch_size = int(config.batch_size)
        self.backend, self.cache = backend, cache
        self.source = source_name(config)
        self.generator = getattr(backend, "name", "rule_based") if backend is not None else "rule_based"
        self.process_index, self.process_count, self.progress = process_index, process_count, progress
        self.quarantined: list[dict] = []
        self.used_keys: dict[str, None] = {}  # every generation this run's records rest on, in order
        self.stats = collections.Counter()  # generated / cached / tokens / seconds, this process, this run
        self.counts = collections.Counter()  # the recipe's own tallies (unpaired images ...), into the manifest
        self._fingerprint = backend.fingerprint() if backend is not None else ""

    # -- requests ---------------------------------------------------------------------------------------------------
    def request(self, name: str, item: Item, fields: dict | None = None, image: bool = False) -> Request:
        return Request(f"{self.recipe}.{name}", self.templates[name], {k: str(v) for k, v in (fields or {}).items()},
                       item.image if image else None, item.key)

    def key(self, r: Request) -> str:
        return cache_lib.key({"model": self._fingerprint, "template": r.template, "prompt": r.prompt,
                              "inputs": {"fields": r.fields, "image": self.portable(r.image)}, "sampling": self.sampling.to_dict(),
                              "seed": self.seed})

    def portable(self, value):
        return files.portable(value, self.workdir)

    def seed_of(self, r: Request) -> int:
        """The request's own seed: from (run seed, prompt, inputs), never from its batch."""
        return int(cache_lib.key({"seed": self.seed, "prompt": r.prompt, "fields": r.fields, "image": self.portable(r.image)})[:8], 16)

    def rng(self, *parts) -> np.random.Generator:
        return np.random.default_rng(int(cache_lib.key({"seed": self.seed, "parts": [self.portable(p) for p in parts]})[:16], 16))

    # -- generation -------------------------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], stage: str) -> list[Generation]:
        keys = [self.key(r) for r in requests]
        first: dict[str, Request] = {}
        for k, r in zip(keys, requests):
            first.setdefault(k, r)
        self.used_keys.update(dict.fromkeys(first))
        mine = list(first)[self.process_index::self.process_count]
        chunks = self.batches(mine, first)
        todo = [c for c in chunks if not all(self.cache.done(k) for k in c)]
        missing = sum(not self.cache.done(k) for c in todo for k in c)
        self.stats["cached"] += len(mine) - missing
        if todo:
            self._generate(todo, first, stage, missing)
        if self.process_count > 1:
            sharding.sync(f"zscir_synthesis:{self.recipe}:{stage}")
            self.cache.reload()
        out = []
        for k in keys:
            e = self.cache.get(k)
            if e is None:
                out.append(Generation(None, 0, "no generation for this request (its process did not write one)"))
            else:
                out.append(Generation(e.get("text"), int(e.get("tokens", 0)), e.get("error")))
        return out

    def batches(self, keys: list[str], first: dict[str, Request]) -> list[list[str]]:
        """This process's batches: image prompts, then text prompts, each sorted by prompt length (stable), cut into
        ``batch_size`` rows. They depend only on the request list, never on what the cache holds, so a resumed run
        computes every row in the same batch as an uninterrupted run would (bit-identical results)."""
        out = []
        for with_image in (True, False):
            group = [k for k in keys if (first[k].image is not None) == with_image]
            group.sort(key=lambda k: len(first[k].text))
            out += [group[s: s + self.batch_size] for s in range(0, len(group), self.batch_size)]
        return out

    def _generate(self, todo: list[list[str]], first: dict[str, Request], stage: str, missing: int) -> None:
        """Runs every batch that misses a generation (the whole batch: its rows are computed as they always are)
        and appends the missing ones to the cache, batch by batch."""
        bar = progress_bar(missing, f"{self.recipe}: {stage}", self.progress and self.process_index == 0)
        start, tokens = time.perf_counter(), 0
        try:
            for chunk in todo:
                reqs = [first[k] for k in chunk]
                gens = self.backend.generate(reqs, [self.seed_of(r) for r in reqs], self.sampling)
                if len(gens) != len(reqs):
                    raise RuntimeError(f"backend {self.generator} returned {len(gens)} generations for "
                                       f"{len(reqs)} requests")
                entries = []
                for k, g in zip(chunk, gens):
                    if self.cache.done(k):
                        continue
                    entries.append({"key": k, "error": g.error} if g.text is None else
                                   {"key": k, "text": g.text, "tokens": int(g.tokens)})
                    tokens += int(g.tokens) if g.text is not None else 0
                self.cache.append(entries)
                self.stats["generated"] += len(entries)
                bar.update(len(entries))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{tokens / elapsed:.1f} tok/s", refresh=False)
        finally:
            bar.close()
            self.stats["tokens"] += tokens
            self.stats["seconds"] += time.perf_counter() - start

    # -- parsing ----------------------------------------------------------------------------------------------------
    def parse(self, r: Request, g: Generation, parser: Callable[[str], dict]) -> dict | None:
        if g.text is None:
            self.quarantine(r, None, g.error or "not generated", kind="error")
            return None
        try:
            return parser(g.text)
        except prompts.ParseError as e:
            self.quarantine(r, g.text, str(e))
            return None

    def quarantine(self, r: Request | None, raw: str | None, reason: str, *, item: str | None = None,
                   prompt: str | None = None, kind: str = "parse") -> None:
        entry = {"kind": kind, "prompt": prompt or (r.prompt if r else self.recipe),
                 "item": item or (r.item if r else None), "reason": reason, "raw": raw}
        if r is not None:
            entry.update(image=r.image, fields=r.fields)
        self.quarantined.append(entry)

    def record(self, **fields) -> TripletRecord:
        return TripletRecord(source=self.source, generator=self.generator, **fields)


def _plain(d) -> dict:
    if hasattr(d, "to_dict"):
        return d.to_dict()
    return dict(d)


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A generations bar with items/s (and tok/s as its postfix); on a terminal it redraws often, in a log file
    (no TTY) once a minute, like ``train.writers.progress``."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, mininterval=0.1 if tty else 60.0,
                disable=not enabled)


# ---------------------------------------------------------------------------------------------------------- output

def output_dir(workdir: str, recipe: str) -> str:
    return os.path.join(workdir, "synthesis", recipe)


def shard_names(fmt: str, n: int) -> list[str]:
    ext = "jsonl" if fmt == "jsonl" else "array_record"
    return [f"{SHARD_PREFIX}-{i:05d}-of-{n:05d}.{ext}" for i in range(n)]


def _fsync_replace(tmp: str, final: str) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_outputs(out_dir: str, records: Sequence[TripletRecord], quarantined: Sequence[dict], manifest: dict,
                  fmt: str, num_shards: int, relative_under: str | None = None) -> list[str]:
    """Shards, quarantine, then the manifest, each written to a temporary file and renamed; stale shards of another
    shard count or format are removed after the manifest names the new ones. Images inside ``relative_under`` (the
    workdir) are written relative to ``out_dir``, so a moved workdir still trains."""
    for stale in glob.glob(os.path.join(out_dir, "*.tmp")) + glob.glob(os.path.join(out_dir, ".tmp-*")):
        os.remove(stale)
    names = shard_names(fmt, num_shards)
    if fmt == "jsonl":
        for i, name in enumerate(names):
            tmp = os.path.join(out_dir, name + ".tmp")
            triplets.write_jsonl(records[i::num_shards], tmp, relative_under=relative_under)
            _fsync_replace(tmp, os.path.join(out_dir, name))
    else:
        tmp_paths = triplets.write_array_record(list(records), os.path.join(out_dir, f".tmp-{SHARD_PREFIX}"),
                                                num_shards, relative_under=relative_under)
        for tmp, name in zip(tmp_paths, names):
            _fsync_replace(tmp, os.path.join(out_dir, name))
    write_json_atomic(os.path.join(out_dir, "quarantine.jsonl"), quarantined, lines=True)
    write_json_atomic(os.path.join(out_dir, "manifest.json"), dict(manifest, shards=names))
    keep = set(names)
    for path in glob.glob(os.path.join(out_dir, f"{SHARD_PREFIX}-*-of-*")):
        if os.path.basename(path) not in keep:
            os.remove(path)
    return [os.path.join(out_dir, n) for n in names]


def _template_hashes(templates: dict) -> dict[str, str]:
    return {k: hashlib.sha256(json.dumps(v, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]
            for k, v in sorted(templates.items())}


# ------------------------------------------------------------------------------------------------------------- run

def synthesize(config, workdir: str, *, backend=None, progress: bool | None = None) -> dict:
    """Runs ``config.recipe`` into ``workdir/synthesis/<recipe>/`` and returns the manifest (see the module doc).

    ``backend``: an object with the ``backends.Backend`` surface instead of ``config.backend`` (a model already in
    memory, a test double).
    """
    check_config(config, check_backend=backend is None)
    import jax

    recipe = config.recipe
    pi, pc = jax.process_index(), jax.process_count()
    out_dir = output_dir(workdir, recipe)
    os.makedirs(out_dir, exist_ok=True)

    if recipe == "rule_based":
        items, backend = load_items(config, workdir), None
    elif backend is not None:
        items = load_items(config, workdir)
    elif config.backend.kind == "rule_based":
        items = load_items(config, workdir)
        backend = backends.rule_backend(config.data.kind, {it.image: it.caption for it in items if it.caption})
    else:
        backend = backends.from_config(config, workdir)  # demo_mllm: builds the demo (and its scenes) first
        items = load_items(config, workdir)
    if progress is None:
        progress = bool(config.get("progress_bar", True))
    if pc > 1 and hasattr(backend, "load"):
        backend.load()  # by every process at once (a checkpoint restore may be collective), not lazily

    with cache_lib.Cache(os.path.join(out_dir, "cache"), pi) as cache:
        ctx = Context(config, backend, cache, process_index=pi, process_count=pc, progress=progress,
                      workdir=workdir)
        records = list(recipes.RECIPES[recipe](ctx, items))
        valid = []
        for r in records:
            try:
                valid.append(TripletRecord.from_dict(r.to_dict()))
            except ValueError as e:
                ctx.quarantine(None, r.to_json(), f"invalid record: {e}", item=r.reference_image, kind="invalid")
        tokens = sum(int((cache.get(k) or {}).get("tokens", 0)) for k in ctx.used_keys)

    q = ctx.quarantined
    manifest = {
        "recipe": recipe,
        "records": len(valid),
        "quarantined": len(q),
        "shards": [],
        "format": config.output.format,
        "quarantine": "quarantine.jsonl",
        "items": len(items),
        "with_target_image": sum(r.target_image is not None for r in valid),
        "generations": len(ctx.used_keys),
        "tokens": tokens,
        "generator": ctx.generator,
        "model": backend.describe() if backend is not None else {"kind": "rule_based", "name": "rule_based"},
        "templates": _template_hashes(ctx.templates),
        "sampling": ctx.sampling.to_dict(),
        "seed": ctx.seed,
        "parse_failures": dict(sorted(collections.Counter(e["prompt"] for e in q if e["kind"] == "parse").items())),
        "quarantine_reasons": dict(sorted(collections.Counter(e["kind"] for e in q).items())),
        "source": ctx.source,
        "counts": dict(sorted(ctx.counts.items())),
    }
    if pi == 0:
        paths = write_outputs(out_dir, valid, q, manifest, config.output.format, config.output.num_shards,
                              relative_under=workdir)
        manifest["shards"] = [os.path.basename(p) for p in paths]
    else:
        manifest["shards"] = shard_names(config.output.format, config.output.num_shards)
    if pc > 1:
        sharding.sync(f"zscir_synthesis:{recipe}:written")
    manifest["run"] = dict(ctx.stats)  # this process, this run (not written: the manifest stays deterministic)
    return manifest


def run_for_training(config, workdir: str) -> str:
    """Run (or reuse: every generation is cached) a recipe in the workdir and return its shards as a
    ``config.data.triplets`` value (the main job's ``config.synthesis`` stage and the demo's preparation)."""
    from zscir_jax.train import writers

    manifest = synthesize(config, workdir)
    out_dir = output_dir(workdir, config.recipe)
    writers.say(f"training on {manifest['records']} {config.recipe} triplets written by {manifest['generator']} "
                f"({manifest['quarantined']} outputs quarantined; {out_dir})")
    return ",".join(os.path.join(out_dir, shard) for shard in manifest["shards"])


def training_flag(workdir: str, manifest: dict) -> str:
    """``--config.data.triplets=...`` that trains on this output."""
    d = output_dir(workdir, manifest["recipe"])
    paths = [f"{manifest['format']}:{os.path.join(d, s)}" for s in manifest["shards"]]
    return "--config.data.triplets=" + ",".join(paths)


def summary(workdir: str, manifest: dict) -> str:
    run = manifest.get("run", {})
    gen, secs = run.get("generated", 0), run.get("seconds", 0.0)
    speed = (f" ({gen / secs:.1f} items/s, {run.get('tokens', 0) / secs:.1f} tokens/s)" if gen and secs else "")
    return (f"synthesis {manifest['recipe']}: {manifest['records']} records, {manifest['quarantined']} quarantined, "
            f"from {manifest['items']} items in {output_dir(workdir, manifest['recipe'])}; "
            f"{gen} generated now{speed}, {run.get('cached', 0)} from the cache")
