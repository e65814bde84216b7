"""Modification-text templates for synthesizing training triplets (the Laion-CIR-Template idea).

Deliberately not the benchmark's phrasings (``data.scenes.PHRASINGS``): like Laion-CIR-Template ("X has been
added.", "instead of X, show Y.", "X is missing."), the training texts share the edit vocabulary with the test
queries but not their sentence forms, so a model must generalise across phrasings (zero-shot).

Fields (see ``data.scenes.edit_fields``): {obj} "the red circle", {bare} "red circle", {value} new word,
{colour}/{shape} of the edited object, {more} bigger/smaller, {resize} enlarge/shrink, {to_pos} "to the top
right", {at_pos} "at the top right", {new} "a small green triangle".
"""
from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("{obj} is {value} now", "instead of a {colour} {shape}, show a {value} {shape}",
               "change the colour of {obj} to {value}", "recolour {obj} {value}", "make {obj} {value}"),
    "shape": ("{obj} becomes a {value}", "instead of {obj}, show a {colour} {value}", "swap {obj} for a {value}",
              "make {obj} a {value}"),
    "size": ("{obj} is {more} now", "make {obj} {more}", "{resize} {obj}", "{obj} should look {more}"),
    "move": ("{obj} has moved {to_pos}", "move {obj} {to_pos}", "{obj} is now {at_pos}", "relocate {obj} {to_pos}"),
    "add": ("{new} has been added {at_pos}", "add {new} {at_pos}", "there is also {new} {at_pos}",
            "include {new} {at_pos}"),
    "remove": ("{bare} is missing", "remove {obj}", "{obj} has been removed", "without {obj}",
               "no {bare} anymore"),
}


def check(templates: dict[str, tuple[str, ...]]) -> None:
    """Every edit op needs at least one template; raises ``ValueError`` naming what is missing."""
    from zscir_jax.data.scenes import OPS

    missing = [op for op in OPS if not templates.get(op)]
    if missing:
        raise ValueError(f"templates missing for edit ops {missing}")
