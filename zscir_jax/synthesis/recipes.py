"""The synthesis recipes: which prompts each one sends, how their answers are parsed and paired, and the records
that come out. A recipe is a function ``recipe(ctx, items) -> [TripletRecord]`` over the run's ``engine.Context``:

    ctx.request(name, item, fields, image=bool)   a Request for template ``config.templates[name]``
    ctx.generate(requests, stage)                  the Generations, in order (cached, batched, data-parallel)
    ctx.parse(request, generation, parser)         the parsed fields, or None (the output is quarantined)
    ctx.quarantine(request, raw, reason)           an output that parsed but is no use, with its reason
    ctx.record(**fields)                           a TripletRecord with the run's source and generator
    ctx.rng(*parts)                                a numpy Generator seeded from (run seed, parts)
    ctx.options                                    config.<recipe> (the recipe's own knobs)
    ctx.counts                                     a Counter written into the manifest (e.g. unpaired images)

Every failed parse is quarantined by ``ctx.parse`` with its raw text and reason; an item with a failed output
produces no record and no later prompt. Recipes are deterministic given the generations, so a resumed run rebuilds
exactly the records of an uninterrupted one.

    mvftji      per image: caption (P_c) and modification (P_m, or P'_m) with the image, then the target text (P_tt)
                from (image, modification) -> (reference, modification, target_text, caption)
    distillcir  per caption, text only, DistillCIR's template with few-shot examples drawn per item from
                ``config.distillcir.examples`` -> (reference, instruction, modified caption, caption)
    collm       per image, its partner: the most word-overlapping OTHER caption (or ``config.collm.pairs``), then a
                modification from the two captions -> (reference, modification, target image + its caption)
    fashion     per image an attribute list; pairs whose lists differ in 1..2 values; a relative caption from the
                two lists -> (reference, relative caption, target image; the two attribute phrases as caption and
                target text)
    rule_based  ``synthesis.rule_based`` over (image, caption) pairs; no prompts
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import re
from typing import Callable, Sequence

import numpy as np

from zscir_jax.data.triplets import TripletRecord
from zscir_jax.errors import UserError
from zscir_jax.synthesis import prompts


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: an image (``key``: its path as the data gives it, which the records carry; ``image``: where it is
    read from) and its caption when the data has one."""
    key: str
    image: str
    caption: str | None = None


# Per recipe: template name -> the fields it may use, and the templates sent with the image.
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "mvftji": {"caption": (), "modification": (), "modification_alt": (), "target": ("modification",)},
    "distillcir": {"generate": ("examples", "caption"),
                   "example": ("caption", "brainstorming", "instruction", "modified_caption")},
    "collm": {"modification": ("reference_caption", "target_caption")},
    "fashion": {"attributes": (), "relative": ("reference_attributes", "target_attributes")},
    "rule_based": {},  # phrasing templates per edit op (synthesis.templates), checked by the generator
}
WITH_IMAGE: dict[str, frozenset[str]] = {
    "mvftji": frozenset({"caption", "modification", "modification_alt", "target"}),
    "fashion": frozenset({"attributes"}),
}
NEEDS_CAPTIONS = ("distillcir", "collm", "rule_based")


def line(field: str) -> Callable[[str], dict]:
    return lambda text: prompts.one_line(text, field)


# ----------------------------------------------------------------------------------------------------------- MVFT-JI

def mvftji(ctx, items: Sequence[Item]) -> list[TripletRecord]:
    mod = ctx.options.get("modification_prompt", "modification")
    first = [r for it in items for r in (ctx.request("caption", it, image=True), ctx.request(mod, it, image=True))]
    gens = ctx.generate(first, "caption + modification")
    kept = []
    for k, it in enumerate(items):
        c = ctx.parse(first[2 * k], gens[2 * k], line("caption"))
        m = ctx.parse(first[2 * k + 1], gens[2 * k + 1], line("modification"))
        if c is not None and m is not None:
            kept.append((it, c["caption"], m["modification"]))
    second = [ctx.request("target", it, {"modification": m}, image=True) for it, _, m in kept]
    gens = ctx.generate(second, "target text")
    out = []
    for (it, c, m), req, gen in zip(kept, second, gens):
        t = ctx.parse(req, gen, line("target"))
        if t is not None:
            out.append(ctx.record(reference_image=it.key, modification_text=m, target_text=t["target"],
                                  caption=c))
    return out


# -------------------------------------------------------------------------------------------------------- DistillCIR

def distillcir(ctx, items: Sequence[Item]) -> list[TripletRecord]:
    pool = [dict(e) for e in ctx.options.get("examples", ())]
    n = min(int(ctx.options.get("num_examples", 2)), len(pool))
    example = ctx.templates["example"]
    reqs = []
    for it in items:
        picks = ctx.rng("examples", it.key).choice(len(pool), size=n, replace=False) if n else []
        examples = "".join(example.format(**pool[int(i)]) for i in picks)
        reqs.append(ctx.request("generate", it, {"examples": examples, "caption": it.caption}))
    gens = ctx.generate(reqs, "instruction + modified caption")
    out = []
    for it, req, gen in zip(items, reqs, gens):
        p = ctx.parse(req, gen, prompts.distillcir)
        if p is None:
            continue
        if _norm(p["modified_caption"]) == _norm(it.caption or ""):
            ctx.quarantine(req, gen.text, "the modified caption is the input caption: no modification")
            continue
        out.append(ctx.record(reference_image=it.key, modification_text=p["instruction"],
                              target_text=p["modified_caption"], caption=it.caption))
    return out


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


# ------------------------------------------------------------------------------------------------------------- CoLLM

def collm(ctx, items: Sequence[Item]) -> list[TripletRecord]:
    index = ctx.options.get("pairs", "")
    pairs = pairs_from_index(index, items) if index else nearest_caption_pairs([it.caption or "" for it in items])
    ctx.counts["unpaired_images"] += len(items) - len({i for i, _ in pairs})
    reqs = [ctx.request("modification", items[i], {"reference_caption": items[i].caption,
                                                   "target_caption": items[j].caption}) for i, j in pairs]
    return _pair_records(ctx, items, pairs, reqs, ctx.generate(reqs, "modification"), "modification")


def _pair_records(ctx, items, pairs, reqs, gens, field: str) -> list[TripletRecord]:
    """(reference i, target j) records from one-line answers in ``field``; unparsable answers are quarantined by
    ``ctx.parse``. CoLLM's (its target is another image, with that image's caption)."""
    out = []
    for (i, j), req, gen in zip(pairs, reqs, gens):
        m = ctx.parse(req, gen, line(field))
        if m is not None:
            out.append(ctx.record(reference_image=items[i].key, modification_text=m[field],
                                  target_image=items[j].key, target_text=items[j].caption or "",
                                  caption=items[i].caption))
    return out


def nearest_caption_pairs(captions: Sequence[str], block: int = 1024) -> list[tuple[int, int]]:
    """For each caption, the index of the OTHER caption with the highest word overlap (Jaccard of word sets; a
    caption equal to its own never counts; ties go to the lower index); captions with no partner are left out."""
    import scipy.sparse as sp

    vocab: dict[str, int] = {}
    rows, cols = [], []
    words = [sorted(set(re.findall(r"\w+", c.lower()))) for c in captions]
    for i, ws in enumerate(words):
        for w in ws:
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    n = len(captions)
    if n < 2 or not vocab:
        return []
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, len(vocab)))
    sizes = np.asarray([len(ws) for ws in words], np.float32)
    norm = [_norm(c) for c in captions]
    out = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        inter = np.asarray((x[start:stop] @ x.T).todense(), np.float32)
        union = sizes[start:stop, None] + sizes[None, :] - inter
        score = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        for r in range(stop - start):
            i = start + r
            same = [k for k in np.flatnonzero(score[r] >= 1.0) if norm[k] == norm[i]]
            score[r, same] = -1.0  # itself and equal captions
            score[r, i] = -1.0
            j = int(np.argmax(score[r]))  # first maximum: the lowest index among ties
            if score[r, j] > 0:
                out.append((i, j))
    return out


def pairs_from_index(path: str, items: Sequence[Item]) -> list[tuple[int, int]]:
    """``config.collm.pairs``: a JSONL of ``{"reference": key, "target": key}`` (keys: image paths as in the data)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"config.collm.pairs: file not found: {path}")
    where = {it.key: k for k, it in enumerate(items)}
    out = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
                i, j = where[d["reference"]], where[d["target"]]
            except (ValueError, TypeError, KeyError) as e:
                raise UserError(f"{path}, line {n}: expected {{\"reference\": KEY, \"target\": KEY}} with keys among "
                                f"the input images ({type(e).__name__}: {e})")
            out.append((i, j))
    return out


# ----------------------------------------------------------------------------------------------------------- fashion

def fashion(ctx, items: Sequence[Item]) -> list[TripletRecord]:
    """Records (reference image, ``modification_text`` = the relative caption, target image) whose ``caption`` is
    the reference's attribute phrase and ``target_text`` the target's (``prompts.attribute_phrase`` of the parsed
    lists: "category dress, colour red, ..."; items joined by "; "): the fashion training method reads ``caption``
    as the reference's sentence-level prompt, so it is what the MLLM saw, never the data's own caption."""
    reqs = [ctx.request("attributes", it, image=True) for it in items]
    gens = ctx.generate(reqs, "attributes")
    parsed = [ctx.parse(r, g, prompts.attributes) for r, g in zip(reqs, gens)]
    ok = [k for k, p in enumerate(parsed) if p is not None]
    pairs = attribute_pairs([parsed[k]["items"] for k in ok], min_diff=int(ctx.options.get("min_diff", 1)),
                            max_diff=int(ctx.options.get("max_diff", 2)),
                            per_item=int(ctx.options.get("targets_per_image", 1)))
    pairs = [(ok[a], ok[b]) for a, b in pairs]
    ctx.counts["unpaired_images"] += len(set(ok) - {i for i, _ in pairs})
    second = [ctx.request("relative", items[i], {
        "reference_attributes": prompts.format_attributes(parsed[i]["items"]),
        "target_attributes": prompts.format_attributes(parsed[j]["items"])}) for i, j in pairs]
    gens = ctx.generate(second, "relative caption")
    out = []
    for (i, j), req, gen in zip(pairs, second, gens):
        m = ctx.parse(req, gen, line("relative"))
        if m is not None:
            out.append(ctx.record(reference_image=items[i].key, modification_text=m["relative"],
                                  target_image=items[j].key,
                                  target_text=prompts.attribute_phrase(parsed[j]["items"]),
                                  caption=prompts.attribute_phrase(parsed[i]["items"])))
    return out


def attribute_pairs(lists: Sequence[list[dict]], min_diff: int = 1, max_diff: int = 2,
                    per_item: int = 1) -> list[tuple[int, int]]:
    """(reference, target) index pairs whose attribute lists have the same items and keys and differ in
    ``min_diff..max_diff`` values: per reference the ``per_item`` closest (fewest differences, then lowest index).

    Lists that differ in at most ``max_diff`` values agree everywhere else, so they share a key "the list with those
    positions blanked": grouping by every such key finds all candidate pairs without comparing every two lists.
    """
    flat = []
    for items in lists:
        slots = tuple((n, k) for n, d in enumerate(items) for k in sorted(d))
        flat.append((slots, tuple(items[n][k] for n, k in slots)))
    first: dict[tuple, int] = {}  # distinct list -> its lowest index
    for k, f in enumerate(flat):
        first.setdefault(f, k)
    groups: dict[tuple, list[tuple]] = collections.defaultdict(list)
    for slots, values in first:
        for r in range(1, max_diff + 1):
            for mask in itertools.combinations(range(len(values)), r):
                blank = tuple(None if p in mask else v for p, v in enumerate(values))
                groups[(slots, mask, blank)].append((slots, values))
    near: dict[tuple, dict[tuple, int]] = collections.defaultdict(dict)
    for members in groups.values():
        for a, b in itertools.permutations(members, 2):
            d = sum(x != y for x, y in zip(a[1], b[1]))
            if min_diff <= d <= max_diff:
                near[a][b] = d
    out = []
    for k, f in enumerate(flat):
        cands = sorted(near.get(f, {}).items(), key=lambda kv: (kv[1], first[kv[0]]))
        out += [(k, first[g]) for g, _ in cands[:per_item]]
    return out


# -------------------------------------------------------------------------------------------------------- rule-based

def rule_based(ctx, items: Sequence[Item]) -> list[TripletRecord]:
    from zscir_jax.data import scenes
    from zscir_jax.synthesis import rule_based as rb

    gen = rb.RuleBasedGenerator(templates=dict(ctx.templates) or None,
                                max_per_image=int(ctx.options.get("max_per_image", 2)),
                                prefer_existing=bool(ctx.options.get("prefer_existing", True)), source=ctx.source)
    for it in items:
        try:
            scenes.parse_caption(it.caption or "")
        except ValueError as e:
            ctx.quarantine(None, it.caption, str(e), item=it.key, prompt="rule_based", kind="input")
    return list(gen.generate([(it.key, it.caption or "") for it in items], seed=ctx.seed))


RECIPES: dict[str, Callable] = {"mvftji": mvftji, "distillcir": distillcir, "collm": collm, "fashion": fashion,
                                "rule_based": rule_based}
