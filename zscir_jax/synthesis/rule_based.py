"""Rule-based triplet synthesis from image-caption pairs (the Laion-CIR-Template recipe, on structured scenes).

For each train image: pick an edit of its scene, phrase it with a template (the modification text), render the
edited caption (the target text), and take as target image the train image whose canonical caption equals the
edited caption, when there is one (retrieval by exact caption; Laion-CIR retrieves by caption similarity). Only
the train split is read, never val/test.

A ``Generator`` is anything with ``name`` and ``generate(pairs, *, seed) -> list[TripletRecord]``; this module has
the rule-based one, an LLM or HTTP generator plugs in with the same surface.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Protocol, Sequence

import numpy as np

from zscir_jax.data import scenes
from zscir_jax.data.triplets import TripletRecord
from zscir_jax.synthesis import templates as templates_lib


class Generator(Protocol):
    name: str

    def generate(self, pairs: Sequence[tuple[str, str]], *, seed: int) -> list[TripletRecord]:
        ...


@dataclasses.dataclass
class SynthesisStats:
    images: int = 0  # input pairs
    unparsed: int = 0  # captions the rules cannot read (not canonical scene captions): no triplet
    triplets: int = 0
    with_target_image: int = 0
    by_op: dict[str, int] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        frac = self.with_target_image / max(1, self.triplets)
        return (f"{self.triplets} triplets from {self.images} images ({self.unparsed} unparsed); "
                f"{self.with_target_image} ({frac:.0%}) with a target image; by op {self.by_op}")


class Triplets(list):
    """The generated records, with ``.stats`` (a ``SynthesisStats``)."""

    def __init__(self, items=(), stats: SynthesisStats | None = None):
        super().__init__(items)
        self.stats = stats or SynthesisStats()


class RuleBasedGenerator:
    """``max_per_image`` edits per image; with ``prefer_existing`` the edits whose result is another train image
    come first (the retrieval step of Laion-CIR-Template), then random edits with a target text only."""

    name = "rule_based"

    def __init__(self, templates: dict[str, Sequence[str]] | None = None, max_per_image: int = 2,
                 prefer_existing: bool = True, source: str = "scenes:train"):
        self.templates = dict(templates or templates_lib.TEMPLATES)
        templates_lib.check(self.templates)
        self.max_per_image, self.prefer_existing, self.source = max_per_image, prefer_existing, source

    def generate(self, pairs: Sequence[tuple[str, str]], *, seed: int = 0) -> Triplets:
        stats = SynthesisStats(images=len(pairs))
        parsed: list[tuple[str, str, scenes.Scene]] = []
        for path, caption in pairs:
            try:
                parsed.append((path, caption, scenes.parse_caption(caption)))
            except ValueError:
                stats.unparsed += 1
        by_caption = {}
        for path, caption, _ in parsed:
            by_caption.setdefault(caption, path)  # the first image with a caption is its retrieval answer
        neighbours = _NeighbourIndex([s for _, _, s in parsed])
        out = Triplets(stats=stats)
        ops = collections.Counter()
        for i, (path, caption, scene) in enumerate(parsed):
            rng = np.random.default_rng([seed, i])  # per image: output does not depend on batching or order
            for edit in self._pick_edits(scene, neighbours.of(scene), rng):
                target = scenes.apply_edit(scene, edit)
                target_path = by_caption.get(target.caption)
                text = scenes.edit_text(scene, edit, rng, self.templates)
                out.append(TripletRecord(reference_image=path, modification_text=text, target_text=target.caption,
                                         target_image=target_path, caption=caption, source=self.source,
                                         generator=self.name))
                ops[edit.op] += 1
                stats.with_target_image += target_path is not None
        stats.triplets = len(out)
        stats.by_op = dict(sorted(ops.items()))
        return out

    def _pick_edits(self, scene, existing: list[scenes.Scene], rng) -> list[scenes.Edit]:
        chosen, seen = [], set()
        if self.prefer_existing:
            for k in rng.permutation(len(existing))[: self.max_per_image]:
                chosen.append(scenes.diff(scene, existing[k]))
                seen.add(existing[k].caption)
        tries = 0
        while len(chosen) < self.max_per_image and tries < 10 * self.max_per_image:
            tries += 1
            e = scenes.random_edit(scene, rng)
            key = scenes.apply_edit(scene, e).caption
            if key not in seen:
                chosen.append(e)
                seen.add(key)
        return chosen


class _NeighbourIndex:
    """Finds the scenes one edit away from a scene without trying every edit: two scenes are one edit apart only
    if they share all objects but one (recolour / reshape / resize / move) or one is the other plus one object
    (add / remove). Keys are object tuples; lookups are O(objects)."""

    def __init__(self, all_scenes: Sequence[scenes.Scene]):
        self.full: dict[tuple, scenes.Scene] = {}
        self.minus_one: dict[tuple, list[scenes.Scene]] = collections.defaultdict(list)
        for s in all_scenes:
            if s.objects in self.full:
                continue
            self.full[s.objects] = s
            for i in range(len(s.objects)):
                self.minus_one[s.objects[:i] + s.objects[i + 1:]].append(s)

    def of(self, scene: scenes.Scene) -> list[scenes.Scene]:
        objs = scene.objects
        cands = list(self.minus_one.get(objs, ()))  # scene plus one object: an add
        for i in range(len(objs)):
            rest = objs[:i] + objs[i + 1:]
            if rest in self.full:
                cands.append(self.full[rest])  # a remove
            cands += self.minus_one.get(rest, ())  # one object differs
        out, seen = [], {scene.caption}
        for c in cands:  # keep real one-edit neighbours, once each, in a fixed order
            if c.caption not in seen and scenes.diff(scene, c) is not None:
                seen.add(c.caption)
                out.append(c)
        return out


def generate(root_or_pairs: str | os.PathLike | Sequence[tuple[str, str]], *, seed: int = 0,
             max_per_image: int = 2, prefer_existing: bool = True,
             templates: dict[str, Sequence[str]] | None = None) -> Triplets:
    """Triplets from a ``scenes.build`` root (its train split only) or from ``(image_path, caption)`` pairs.
    The result is a list of ``TripletRecord`` with ``.stats``."""
    pairs = (scenes.train_pairs(os.fspath(root_or_pairs)) if isinstance(root_or_pairs, (str, os.PathLike))
             else list(root_or_pairs))
    gen = RuleBasedGenerator(templates, max_per_image=max_per_image, prefer_existing=prefer_existing)
    return gen.generate(pairs, seed=seed)
