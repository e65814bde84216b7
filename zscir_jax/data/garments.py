"""An embedded, procedural garment benchmark in the official FashionIQ layout (the garment twin of ``scenes``).

A garment has six attributes (``ATTRIBUTES``: category, colour, pattern, sleeves, neckline, length); it has one
canonical caption ("a red striped dress with short sleeves, a round neckline and a long length") and a change of
one or more attributes has several FashionIQ-style relative phrasings ("is blue", "has long sleeves and is
shorter"). Everything is seeded, so ``build`` writes byte-identical files for the same parameters.

Layout written by ``build(root)`` (``fashioniq.load(root, category, split)`` reads it unchanged):

    root/images/<name>.png                            every rendering, train / val / test
    root/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json   [name, ...]: that category's gallery
    root/captions/cap.{dress,shirt,toptee}.{val,test}.json   [{target, candidate, captions: [c1, c2]}] (test: no
                                                      target, as the real FashionIQ test files)
    root/captions/cap.{dress,shirt,toptee}.train.json [] (zero-shot: train has images + captions, no triplets)
    root/captions/train_captions.json                 name -> caption, the train images
    root/garments/{train,val,test}.json               name -> ``Garment.to_dict()`` (structure, for debugging)
    root/DONE                                         the parameters; ``build`` is skipped when they match

Query design (why it is neither image-only nor text-only solvable): each query is a group of five garments of one
category in that category's gallery: the reference R, the target T (R with 1 or 2 attributes changed, never the
category), a near miss N (the same changed attribute with another value; when only the binary length changed, R
with another single change), W (T plus one more change: near the target) and Z (it has the caption's new values
but differs from R in 2 more attributes: it matches the text, not the reference). Within one category and split
every garment is unique, so each target is the only exact answer. The two captions of a query are two different
phrasings of the same change(s), like FashionIQ's two annotators.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import shutil
from typing import Any, Sequence

import numpy as np

from zscir_jax.data import garment_render

# The order is the API: "key value" phrases, to_dict and the captions follow it.
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("category", ("dress", "shirt", "toptee")),
    ("colour", ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "grey")),
    ("pattern", ("plain", "striped", "dotted", "checked")),
    ("sleeves", ("sleeveless", "short", "long")),
    ("neckline", ("round", "square", "collared")),
    ("length", ("short", "long")),
)
CATEGORIES = ("dress", "shirt", "toptee")
KEYS = tuple(k for k, _ in ATTRIBUTES)
VALUES = dict(ATTRIBUTES)
# What a query may change: everything but the category (a FashionIQ query stays in its category).
EDITABLE = KEYS[1:]
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True, order=True)
class Garment:
    category: str
    colour: str
    pattern: str
    sleeves: str
    neckline: str
    length: str

    def __post_init__(self):
        for key, values in ATTRIBUTES:
            if getattr(self, key) not in values:
                raise ValueError(f"{key} must be one of {values}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Garment":
        unknown = set(d) - set(KEYS)
        if unknown or set(d) != set(KEYS):
            raise ValueError(f"a garment needs exactly the keys {KEYS}, got {sorted(d)}")
        return cls(**{key: d[key] for key in KEYS})

    def phrase(self) -> str:
        """The attribute phrase "category dress, colour red, ..." in ``ATTRIBUTES`` order."""
        return ", ".join(f"{k} {v}" for k, v in self.to_dict().items())

    def caption(self) -> str:
        return render_caption(self)

    def replace(self, **changes: str) -> "Garment":
        return dataclasses.replace(self, **changes)


def differences(a: Garment, b: Garment) -> list[str]:
    """The keys whose values differ, in ``ATTRIBUTES`` order."""
    return [k for k in KEYS if getattr(a, k) != getattr(b, k)]


def all_garments() -> list[Garment]:
    """Every garment the grammar allows (2160), in attribute order."""
    return [Garment(*values) for values in itertools.product(*(v for _, v in ATTRIBUTES))]


# ------------------------------------------------------------------------------------------------------- captions

def render_caption(g: Garment) -> str:
    """The canonical caption: "a [plain] COLOUR [PATTERN] CATEGORY with SLEEVES, a NECKLINE and a LENGTH length".
    Sleeveless garments say "without sleeves, with ..."; a collared neckline is "a collar"."""
    noun = f"a plain {g.colour} {g.category}" if g.pattern == "plain" else f"a {g.colour} {g.pattern} {g.category}"
    neck = "a collar" if g.neckline == "collared" else f"a {g.neckline} neckline"
    rest = f"{neck} and a {g.length} length"
    if g.sleeves == "sleeveless":
        return f"{noun} without sleeves, with {rest}"
    return f"{noun} with {g.sleeves} sleeves, {rest}"


@functools.lru_cache(maxsize=1)
def _caption_index() -> dict[str, Garment]:
    return {render_caption(g): g for g in all_garments()}


def parse_caption(text: str) -> Garment:
    """Inverse of ``render_caption`` (a lookup over every garment: exact by construction); ``ValueError`` else."""
    try:
        return _caption_index()[text]
    except KeyError:
        raise ValueError(f"not a canonical garment caption: {text!r}") from None


# --------------------------------------------------------------------------------------------- relative captions

# FashionIQ-style phrasings of "the target's KEY is VALUE", per key and value; {value} is the new value. Every list
# has 2+ entries, so the two captions of a query can be two different phrasings.
PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "category": {v: ("is a {value}", "is a {value} instead") for v in VALUES["category"]},
    "colour": {v: ("is {value}", "is {value} in colour", "is a {value} one") for v in VALUES["colour"]},
    "pattern": {"plain": ("is plain", "has no pattern"), "striped": ("has stripes", "is striped"),
                "dotted": ("has dots", "is dotted"), "checked": ("has checks", "is checked")},
    "sleeves": {"sleeveless": ("is sleeveless", "has no sleeves"),
                "short": ("has short sleeves", "is short sleeved"),
                "long": ("has long sleeves", "is long sleeved")},
    "neckline": {"round": ("has a round neckline", "has a round neck"),
                 "square": ("has a square neckline", "has a square neck"),
                 "collared": ("has a collar", "is collared")},
    "length": {"long": ("is longer", "is long"), "short": ("is shorter", "is short")},
}


def phrasings(key: str, value: str) -> list[str]:
    """Every phrasing of "the target's ``key`` is ``value``"."""
    return [t.format(value=value) for t in PHRASINGS[key][value]]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def relative_captions(ref: Garment, tgt: Garment, rng: np.random.Generator, n: int = 1) -> list[str]:
    """``n`` relative captions of the change ``ref`` -> ``tgt`` (every differing attribute, in ``ATTRIBUTES``
    order, joined "a, b and c"), each attribute with a different phrasing per caption (``n`` <= 2 guarantees it)."""
    keys = differences(ref, tgt)
    if not keys:
        raise ValueError(f"the garments are equal: {ref.phrase()!r}")
    picks = []
    for key in keys:
        options = phrasings(key, getattr(tgt, key))
        order = rng.permutation(len(options))
        picks.append([options[int(order[k % len(options)])] for k in range(n)])
    return [_join([p[k] for p in picks]) for k in range(n)]


def relative_caption(ref: Garment, tgt: Garment, rng: np.random.Generator) -> str:
    """One relative caption naming the new value of every attribute that differs (``ValueError`` if none does)."""
    return relative_captions(ref, tgt, rng, 1)[0]


def phrase_texts() -> list[str]:
    """Every text a word tokenizer must cover: every phrasing with every value, every "key value" attribute phrase,
    and captions covering every caption word (each attribute value substituted into one garment)."""
    texts = [p for key, by_value in PHRASINGS.items() for value in by_value for p in phrasings(key, value)]
    texts += [f"{k} {v}" for k, values in ATTRIBUTES for v in values]
    base = Garment("dress", "red", "plain", "short", "round", "long")
    texts += [base.replace(**{k: v}).caption() for k, values in ATTRIBUTES for v in values]
    return list(dict.fromkeys(texts))


# ------------------------------------------------------------------------------------------------------ generation

def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def random_garment(rng: np.random.Generator, category: str | None = None) -> Garment:
    values = {k: _choice(rng, vs) for k, vs in ATTRIBUTES}
    if category is not None:
        values["category"] = category
    return Garment(**values)


def _other_value(rng: np.random.Generator, key: str, exclude: Sequence[str]) -> str | None:
    options = [v for v in VALUES[key] if v not in exclude]
    return _choice(rng, options) if options else None


def _changed(rng: np.random.Generator, g: Garment, keys: Sequence[str]) -> Garment:
    """``g`` with every key in ``keys`` set to another random value."""
    return g.replace(**{k: _other_value(rng, k, (getattr(g, k),)) for k in keys})


def _near_miss(rng: np.random.Generator, ref: Garment, tgt: Garment, keys: Sequence[str]) -> Garment:
    """The same change on a key with a third value (another value than the target's), else (only the binary length
    changed) the reference with another single change."""
    ternary = [k for k in keys if len(VALUES[k]) > 2]
    if ternary:
        key = _choice(rng, ternary)
        return tgt.replace(**{key: _other_value(rng, key, (getattr(ref, key), getattr(tgt, key)))})
    return _changed(rng, ref, [_choice(rng, [k for k in EDITABLE if k not in keys])])


def _query_group(rng: np.random.Generator, category: str, used: set[Garment],
                 max_tries: int = 100_000) -> list[Garment]:
    """[R, T, N, W, Z] (see the module docstring), all new to ``used``, which is updated."""
    for _ in range(max_tries):
        ref = random_garment(rng, category)
        keys = [EDITABLE[int(i)] for i in sorted(rng.choice(len(EDITABLE), size=int(rng.integers(1, 3)),
                                                            replace=False))]
        tgt = _changed(rng, ref, keys)
        rest = [k for k in EDITABLE if k not in keys]
        near = _near_miss(rng, ref, tgt, keys)
        further = _changed(rng, tgt, [_choice(rng, rest)])
        # Z: the caption's new values, two more keys away from R (and T).
        text_match = _changed(rng, tgt, [rest[int(i)] for i in rng.choice(len(rest), size=2, replace=False)])
        group = [ref, tgt, near, further, text_match]
        if len(set(group)) == len(group) and not used.intersection(group):
            used.update(group)
            return group
    raise ValueError(f"cannot place another query group in the {category} gallery ({len(used)} garments used of "
                     f"{len(all_garments()) // len(CATEGORIES)}): ask for fewer queries")


def _query_split(rng: np.random.Generator, num_queries: int):
    """[(category, [R, T, N, W, Z], [c1, c2])], the queries split evenly over the categories (in order)."""
    out = []
    used: dict[str, set[Garment]] = {c: set() for c in CATEGORIES}
    for q in range(num_queries):
        category = CATEGORIES[q % len(CATEGORIES)]
        group = _query_group(rng, category, used[category])
        out.append((category, group, relative_captions(group[0], group[1], rng, 2)))
    return out


# ----------------------------------------------------------------------------------------------------------- build

def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _render_all(root: str, split: str, named: Sequence[tuple[str, Garment]], image_size: int, seed: int) -> None:
    """Each image's jitter has its own seed (split, index), so its pixels do not depend on generation order."""
    for index, (name, g) in enumerate(named):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 7])
        garment_render.render(g, image_size, rng).save(os.path.join(root, "images", name + ".png"),
                                                       compress_level=1)


def _params(**kw) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **kw}


def _clean(root: str) -> None:
    for sub in ("images", "image_splits", "captions", "garments", "DONE"):
        p = os.path.join(root, sub)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    for sub in ("images", "image_splits", "captions", "garments"):
        os.makedirs(os.path.join(root, sub))


def _build_train(root: str, num_train: int, image_size: int, seed: int) -> None:
    """Random garments (duplicates allowed), categories in turn; images and captions only."""
    rng = np.random.default_rng([seed, _SPLIT_CODE["train"]])
    named = [(f"train-{i:05d}", random_garment(rng, CATEGORIES[i % len(CATEGORIES)])) for i in range(num_train)]
    _render_all(root, "train", named, image_size, seed)
    for cat in CATEGORIES:
        _write_json(os.path.join(root, "image_splits", f"split.{cat}.train.json"),
                    [n for n, g in named if g.category == cat])
        _write_json(os.path.join(root, "captions", f"cap.{cat}.train.json"), [])
    _write_json(os.path.join(root, "captions", "train_captions.json"), {n: g.caption() for n, g in named})
    _write_json(os.path.join(root, "garments", "train.json"), {n: g.to_dict() for n, g in named})


def _build_queries(root: str, split: str, num_queries: int, image_size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split]])
    queries = _query_split(rng, num_queries)
    # Names from a permutation, so a name never tells the role (reference, target, negative) apart.
    ids = rng.permutation(sum(len(group) for _, group, _ in queries))
    names = iter(f"{split}-{int(i):05d}" for i in ids)
    named_groups = [(cat, [(next(names), g) for g in group], caps) for cat, group, caps in queries]
    named = sorted(pair for _, group, _ in named_groups for pair in group)
    _render_all(root, split, named, image_size, seed)
    for cat in CATEGORIES:
        records, gallery = [], []
        for c, group, (c1, c2) in named_groups:
            if c != cat:
                continue
            gallery += [n for n, _ in group]
            record = {"target": group[1][0]} if split != "test" else {}  # the real test files have no target
            record.update(candidate=group[0][0], captions=[c1, c2])
            records.append(record)
        _write_json(os.path.join(root, "captions", f"cap.{cat}.{split}.json"), records)
        _write_json(os.path.join(root, "image_splits", f"split.{cat}.{split}.json"), sorted(gallery))
    _write_json(os.path.join(root, "garments", f"{split}.json"), {n: g.to_dict() for n, g in named})


def build(root: str, *, num_train: int = 3000, num_val_queries: int = 300, num_test_queries: int = 30,
          image_size: int = 32, seed: int = 0) -> None:
    """Generates the benchmark under ``root`` (see the module docstring).

    Skipped when ``root/DONE`` records the same parameters; otherwise earlier outputs are removed first and
    everything is written again, ``DONE`` last.
    """
    params = _params(num_train=num_train, num_val_queries=num_val_queries, num_test_queries=num_test_queries,
                     image_size=image_size, seed=seed)
    done = os.path.join(root, "DONE")
    if os.path.isfile(done):
        with open(done) as f:
            if json.load(f) == params:
                return
    _clean(root)
    _build_train(root, num_train, image_size, seed)
    _build_queries(root, "val", num_val_queries, image_size, seed)
    _build_queries(root, "test", num_test_queries, image_size, seed)
    _write_json(done, params)


# --------------------------------------------------------------------------------------------------------- readers

def load_garments(root: str, split: str = "train") -> dict[str, Garment]:
    """name -> Garment for one split (``train``, ``val`` or ``test``)."""
    with open(os.path.join(root, "garments", f"{split}.json")) as f:
        return {name: Garment.from_dict(d) for name, d in json.load(f).items()}


def image_path(root: str, name: str) -> str:
    return os.path.abspath(os.path.join(root, "images", name + ".png"))


def train_pairs(root: str) -> list[tuple[str, str]]:
    """(absolute image path, caption) for every train image, in name order."""
    with open(os.path.join(root, "captions", "train_captions.json")) as f:
        captions = json.load(f)
    return [(image_path(root, name), caption) for name, caption in captions.items()]
