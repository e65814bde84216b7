"""The demo MLLM's supervision on the garment benchmark (``data.garments``): the ``fashion`` recipe's two prompts with
their exact answers, the garment twin of ``demo.mllm_data`` (same :class:`~zscir_jax.demo.mllm_data.Example`, same
chat messages), and what ``synthesis.garment_rules.GarmentRuleBackend`` answers. Tasks (``TASKS``):

    attributes   FASHION_ATTRIBUTES (image) -> ``prompts.format_attributes([garment.to_dict()])``: one item, keys in
                 ``garments.KEYS`` order ("item 1: category dress, colour red, pattern plain, ...")
    relative     FASHION_RELATIVE (text; the attribute lists of a garment and of that garment with 1 or 2 attributes
                 changed, the category included, as the recipe's ``attribute_pairs`` pairs any two lists 1..2 values
                 apart) -> ``garments.relative_caption(reference, target, rng)``

The relative captions use ``garments.PHRASINGS``, the phrasings the rule-based backend writes (the garment world has
no separate training phrasings); ``relative_phrasings`` lists every caption a change can get, so a check against it
accepts any phrasing the training could have drawn. Everything is a pure function of the garments and a ``numpy``
Generator, so a seed fixes every answer.
"""
from __future__ import annotations

import itertools
import re
from typing import Sequence

import numpy as np

from zscir_jax.data import garments
from zscir_jax.demo.mllm_data import Example
from zscir_jax.synthesis import prompts

TASKS = ("attributes", "relative")
IMAGE_TASKS = ("attributes",)
TEXT_TASKS = ("relative",)
MAX_CHANGES = 2  # the fashion recipe's default max_diff


# ----------------------------------------------------------------------------------------------------- answers

def attributes_answer(garment: garments.Garment) -> str:
    return prompts.format_attributes([garment.to_dict()])


def parse_attributes(text: str) -> garments.Garment:
    """The one garment an attribute list names (``prompts.ParseError`` / ``ValueError`` for anything else)."""
    items = prompts.attributes(text)["items"]
    if len(items) != 1:
        raise prompts.ParseError(f"{len(items)} items, expected one garment")
    return garments.Garment.from_dict(items[0])


def random_change(garment: garments.Garment, rng: np.random.Generator, n: int) -> garments.Garment:
    """``garment`` with ``n`` distinct attributes (any of ``garments.KEYS``) set to another value."""
    keys = [garments.KEYS[int(i)] for i in sorted(rng.choice(len(garments.KEYS), size=n, replace=False))]
    changes = {}
    for key in keys:
        values = [v for v in garments.VALUES[key] if v != getattr(garment, key)]
        changes[key] = values[int(rng.integers(len(values)))]
    return garment.replace(**changes)


def _join(parts: Sequence[str]) -> str:
    """``garments.relative_captions``' join: "a", "a and b", "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def relative_phrasings(reference: garments.Garment, target: garments.Garment) -> set[str]:
    """Every caption ``garments.relative_caption(reference, target, rng)`` can give."""
    options = [garments.phrasings(k, getattr(target, k)) for k in garments.differences(reference, target)]
    return {_join(parts) for parts in itertools.product(*options)}


def named_changes(reference: garments.Garment, target: garments.Garment, text: str) -> bool:
    """Whether ``text`` names the new value of every changed attribute (a phrasing of each among its ", " / " and "
    separated parts), in any order and whatever else it says: looser than being one of ``relative_phrasings``."""
    parts = {p.strip() for p in re.split(r",| and ", text)}
    return all(parts & set(garments.phrasings(k, getattr(target, k)))
               for k in garments.differences(reference, target))


# ----------------------------------------------------------------------------------------------------- examples

def attributes_example(garment: garments.Garment, image: int | None = None) -> Example:
    return Example("attributes", prompts.FASHION_ATTRIBUTES, attributes_answer(garment), image)


def relative_prompt(reference: garments.Garment, target: garments.Garment) -> str:
    return prompts.FASHION_RELATIVE.format(reference_attributes=attributes_answer(reference),
                                           target_attributes=attributes_answer(target))


def relative_example(reference: garments.Garment, target: garments.Garment, rng: np.random.Generator) -> Example:
    return Example("relative", relative_prompt(reference, target), garments.relative_caption(reference, target, rng))


def random_pair(pool: Sequence[garments.Garment], rng: np.random.Generator,
                index: int | None = None) -> tuple[garments.Garment, garments.Garment]:
    """(reference from ``pool``, that reference with 1..``MAX_CHANGES`` attributes changed)."""
    reference = pool[int(rng.integers(len(pool))) if index is None else int(index)]
    return reference, random_change(reference, rng, 1 + int(rng.integers(MAX_CHANGES)))


# ----------------------------------------------------------------------------------------------------- sampling

class Supervisor:
    """Draws examples of either task about a pool of garments (the train split's); ``image`` indexes ``pool``."""

    def __init__(self, pool: Sequence[garments.Garment]):
        if len(pool) < 3:
            raise ValueError(f"the supervision needs at least 3 garments, got {len(pool)}")
        self.pool = list(pool)

    def example(self, task: str, rng: np.random.Generator, index: int | None = None) -> Example:
        if task == "attributes":
            i = int(rng.integers(len(self.pool))) if index is None else int(index)
            return attributes_example(self.pool[i], i)
        if task == "relative":
            return relative_example(*random_pair(self.pool, rng, index), rng)
        raise ValueError(f"unknown garment task {task!r}; tasks: {TASKS}")


def corpus(pool: Sequence[garments.Garment], rng: np.random.Generator, per_task: int = 300) -> list[str]:
    """Every kind of text the prompts and answers hold (for training the tokenizer): the prompt templates, every
    phrase the garment grammar writes, and ``per_task`` drawn examples of each task."""
    out = [t for group in prompts.DEFAULTS.values() for t in group.values()] + garments.phrase_texts()
    sup = Supervisor(pool)
    for task in TASKS:
        for _ in range(per_task):
            ex = sup.example(task, rng)
            out += [ex.prompt, ex.answer]
    return out
