"""The demo MLLM's supervision: for every synthesis prompt of ``synthesis.prompts``, the exact answer, computed by the
scene generator (``data.scenes``) from a scene's structure.

An :class:`Example` is one (user prompt, optional image, answer) triple; the trainer wraps the prompt in the chat
format (``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]``) and learns the
answer. Modification texts are the TRAINING phrasings (``synthesis.templates.TEMPLATES``), never the benchmark's
(``scenes.PHRASINGS``), so the demo stays zero-shot. Tasks (``TASKS``):

    caption           MVFTJI_CAPTION (image)            -> the scene's canonical caption
    modification      MVFTJI_MODIFICATION (image)       -> the text of a random feasible edit
    modification_alt  MVFTJI_MODIFICATION_ALT (image)   -> the same
    target            MVFTJI_TARGET {modification} (image, the text of a random edit)
                                                        -> the caption of the edited scene
    attributes        FASHION_ATTRIBUTES (image)        -> ``prompts.format_attributes(attribute_items(scene))``:
                      one item per object in the caption's (grid) order, keys in ``ATTRIBUTE_KEYS`` order
                      (shape, colour, size, position: ``Obj.to_dict``'s order, as the rule-based backend writes)
    distillcir        DISTILLCIR {caption} {examples} (text; 0-2 DISTILLCIR_EXAMPLE blocks made from OTHER scenes)
                      -> "Brainstorming: ...\\nModification Instruction: <edit text>\\nModified Caption: <caption>"
    collm             COLLM {reference_caption} {target_caption} (text) -> the text of the edit between them; for a
                      pair two edits apart (``collm_far`` of the time) "show <target caption> instead", as the
                      rule-based backend answers pairs that are not one edit apart
    relative          FASHION_RELATIVE (text; two attribute lists with the same items differing in 1 or 2 values)
                      -> the edits' texts joined by " and ", each phrased on the scene the previous ones produced

Everything is a pure function of the scenes and a ``numpy`` Generator, so a seed fixes every answer.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from zscir_jax.data import scenes
from zscir_jax.synthesis import prompts, templates

TASKS = ("caption", "modification", "modification_alt", "target", "attributes", "distillcir", "collm", "relative")
IMAGE_TASKS = ("caption", "modification", "modification_alt", "target", "attributes")
TEXT_TASKS = ("distillcir", "collm", "relative")
ATTRIBUTE_KEYS = ("shape", "colour", "size", "position")
_KEY_OP = {"shape": "shape", "colour": "colour", "size": "size", "position": "move"}


@dataclasses.dataclass(frozen=True)
class Example:
    task: str
    prompt: str  # the user message's text
    answer: str
    image: int | None = None  # index of the scene whose image goes with the prompt (image tasks), else None


def messages(prompt: str, with_image: bool) -> list[dict]:
    """The chat messages of one prompt, as the synthesis backends send them."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------------------------------- answers

def edit_text(scene: scenes.Scene, edit: scenes.Edit, rng: np.random.Generator) -> str:
    """A training phrasing (``templates.TEMPLATES``) of ``edit``."""
    return scenes.edit_text(scene, edit, rng, templates.TEMPLATES)


def edit_phrasings(scene: scenes.Scene, edit: scenes.Edit) -> set[str]:
    """Every text ``edit_text`` can give for ``edit``: each training template with each referring expression it
    may draw (the shortest unique one, or the next longer one)."""
    class _Longer:  # a stand-in rng under which referring_expression takes its second form (where there is one)
        def random(self):
            return 0.0

    out = set()
    for rng in (None, _Longer()):
        fields = scenes.edit_fields(scene, edit, rng)
        for t in templates.TEMPLATES[edit.op]:
            text = t.format(**fields)
            out.add(text[0].lower() + text[1:])
    return out


def attribute_items(scene: scenes.Scene) -> list[dict[str, str]]:
    """One dict per object (grid order), keys in ``ATTRIBUTE_KEYS`` order."""
    return [{k: o.to_dict()[k] for k in ATTRIBUTE_KEYS} for o in scene.objects]


def attributes_answer(scene: scenes.Scene) -> str:
    return prompts.format_attributes(attribute_items(scene))


def brainstorming(scene: scenes.Scene, edit: scenes.Edit) -> str:
    """DistillCIR's brainstorming line (the rule-based backend's wording)."""
    return f"the scene holds {len(scene.objects)} object(s); change one by a single {edit.op} edit."


def distillcir_answer(scene: scenes.Scene, edit: scenes.Edit, instruction: str) -> str:
    return (f"Brainstorming: {brainstorming(scene, edit)}\nModification Instruction: {instruction}\n"
            f"Modified Caption: {scenes.apply_edit(scene, edit).caption}")


def distillcir_example_block(scene: scenes.Scene, rng: np.random.Generator) -> str:
    """One DISTILLCIR_EXAMPLE block about ``scene`` (a random edit of it)."""
    edit = scenes.random_edit(scene, rng)
    return prompts.DISTILLCIR_EXAMPLE.format(caption=scene.caption, brainstorming=brainstorming(scene, edit),
                                             instruction=edit_text(scene, edit, rng),
                                             modified_caption=scenes.apply_edit(scene, edit).caption)


def collm_answer(reference: scenes.Scene, target: scenes.Scene, rng: np.random.Generator) -> str:
    edit = scenes.diff(reference, target)
    return edit_text(reference, edit, rng) if edit is not None else f"show {target.caption} instead"


def relative_target(scene: scenes.Scene, changes: Sequence[tuple[int, str, str]]) -> scenes.Scene | None:
    """The scene whose attribute list is ``scene``'s with ``(item, key, value)`` changed, item for item; None when
    that is no valid scene (two objects in one cell) or its items would come out in another order."""
    objs = [o.to_dict() for o in scene.objects]
    for i, key, value in changes:
        objs[i] = {**objs[i], key: value}
    new = [scenes.Obj.from_dict(d) for d in objs]
    cells = [o.cell for o in new]
    if len(set(cells)) != len(cells) or cells != sorted(cells):
        return None
    return scenes.Scene.of(new)


def relative_answer(scene: scenes.Scene, changes: Sequence[tuple[int, str, str]],
                    rng: np.random.Generator) -> str | None:
    """The edit texts of ``changes`` (in order), each phrased on the scene the previous edits made, joined by
    " and "; None when the changes cannot be applied one after the other (a move into a cell still taken)."""
    current = list(scene.objects)  # the current version of every reference item
    cur = scene
    texts = []
    for i, key, value in changes:
        index = cur.objects.index(current[i])
        op = _KEY_OP[key]
        v = scenes.POSITIONS.index(value) if op == "move" else value
        edit = scenes.Edit(op, index, v)
        try:
            nxt = scenes.apply_edit(cur, edit)
        except ValueError:
            return None
        texts.append(edit_text(cur, edit, rng))
        current[i] = scenes.edited_object(cur, edit)
        cur = nxt
    return " and ".join(texts)


def relative_phrasings(scene: scenes.Scene, changes: Sequence[tuple[int, str, str]]) -> set[str]:
    """Every answer ``relative_answer`` can give for ``changes`` (empty when they cannot be applied in order)."""
    current, cur = list(scene.objects), scene
    options = [""]
    for i, key, value in changes:
        op = _KEY_OP[key]
        edit = scenes.Edit(op, cur.objects.index(current[i]), scenes.POSITIONS.index(value) if op == "move" else value)
        try:
            nxt = scenes.apply_edit(cur, edit)
        except ValueError:
            return set()
        options = [f"{o} and {t}" if o else t for o in options for t in sorted(edit_phrasings(cur, edit))]
        current[i] = scenes.edited_object(cur, edit)
        cur = nxt
    return set(options)


def random_changes(scene: scenes.Scene, rng: np.random.Generator, n: int) -> list[tuple[int, str, str]] | None:
    """``n`` distinct (item, key, new value) changes whose target is a valid scene with the same item order (None
    after a few failed draws)."""
    slots = [(i, k) for i in range(len(scene.objects)) for k in ATTRIBUTE_KEYS]
    for _ in range(20):
        picks = rng.choice(len(slots), size=min(n, len(slots)), replace=False)
        changes = []
        for p in sorted(int(p) for p in picks):
            i, key = slots[p]
            cur = scene.objects[i].to_dict()[key]
            pool = {"shape": scenes.SHAPES, "colour": scenes.COLOURS, "size": scenes.SIZES,
                    "position": scenes.POSITIONS}[key]
            values = [v for v in pool if v != cur]
            changes.append((i, key, values[int(rng.integers(len(values)))]))
        if relative_target(scene, changes) is not None:
            return changes
    return None


# ----------------------------------------------------------------------------------------------------- examples

def caption_example(scene: scenes.Scene, image: int | None = None) -> Example:
    return Example("caption", prompts.MVFTJI_CAPTION, scene.caption, image)


def modification_example(scene: scenes.Scene, rng: np.random.Generator, image: int | None = None,
                         alt: bool = False) -> Example:
    text = edit_text(scene, scenes.random_edit(scene, rng), rng)
    if alt:
        return Example("modification_alt", prompts.MVFTJI_MODIFICATION_ALT, text, image)
    return Example("modification", prompts.MVFTJI_MODIFICATION, text, image)


def target_example(scene: scenes.Scene, rng: np.random.Generator, image: int | None = None,
                   edit: scenes.Edit | None = None, modification: str | None = None) -> Example:
    edit = edit or scenes.random_edit(scene, rng)
    text = modification if modification is not None else edit_text(scene, edit, rng)
    return Example("target", prompts.MVFTJI_TARGET.format(modification=text),
                   scenes.apply_edit(scene, edit).caption, image)


def attributes_example(scene: scenes.Scene, image: int | None = None) -> Example:
    return Example("attributes", prompts.FASHION_ATTRIBUTES, attributes_answer(scene), image)


def distillcir_example(scene: scenes.Scene, rng: np.random.Generator, others: Sequence[scenes.Scene] = (),
                       edit: scenes.Edit | None = None) -> Example:
    """``others``: the scenes the few-shot blocks are made from (0..2 of them, in order)."""
    blocks = "".join(distillcir_example_block(o, rng) for o in others)
    edit = edit or scenes.random_edit(scene, rng)
    answer = distillcir_answer(scene, edit, edit_text(scene, edit, rng))
    return Example("distillcir", prompts.DISTILLCIR.format(examples=blocks, caption=scene.caption), answer)


def collm_example(reference: scenes.Scene, target: scenes.Scene, rng: np.random.Generator) -> Example:
    prompt = prompts.COLLM.format(reference_caption=reference.caption, target_caption=target.caption)
    return Example("collm", prompt, collm_answer(reference, target, rng))


def relative_example(scene: scenes.Scene, changes: Sequence[tuple[int, str, str]],
                     rng: np.random.Generator) -> Example | None:
    target = relative_target(scene, changes)
    answer = None if target is None else relative_answer(scene, changes, rng)
    if answer is None:
        return None
    prompt = prompts.FASHION_RELATIVE.format(reference_attributes=attributes_answer(scene),
                                             target_attributes=attributes_answer(target))
    return Example("relative", prompt, answer)


# ----------------------------------------------------------------------------------------------------- sampling

class Supervisor:
    """Draws examples of any task about a pool of scenes (the train split's); ``image`` indexes ``pool``.

    ``collm_far``: the share of CoLLM pairs two edits apart (answered "show <caption> instead").
    """

    def __init__(self, pool: Sequence[scenes.Scene], collm_far: float = 0.2):
        if len(pool) < 3:
            raise ValueError(f"the supervision needs at least 3 scenes, got {len(pool)}")
        self.pool = list(pool)
        self.collm_far = float(collm_far)

    def example(self, task: str, rng: np.random.Generator, index: int | None = None) -> Example:
        i = int(rng.integers(len(self.pool))) if index is None else int(index)
        s = self.pool[i]
        if task == "caption":
            return caption_example(s, i)
        if task in ("modification", "modification_alt"):
            return modification_example(s, rng, i, alt=task == "modification_alt")
        if task == "target":
            return target_example(s, rng, i)
        if task == "attributes":
            return attributes_example(s, i)
        if task == "distillcir":
            n = int(rng.integers(3))
            others = [j for j in rng.choice(len(self.pool), size=n + 1, replace=False) if j != i][:n]
            return distillcir_example(s, rng, [self.pool[int(j)] for j in others])
        if task == "collm":
            t = scenes.apply_edit(s, scenes.random_edit(s, rng))
            if rng.random() < self.collm_far:
                t2 = scenes.apply_edit(t, scenes.random_edit(t, rng))
                t = t2 if scenes.diff(s, t2) is None and t2 != s else t
            return collm_example(s, t, rng)
        if task == "relative":
            for _ in range(20):
                changes = random_changes(s, rng, 1 + int(rng.integers(2)))
                ex = relative_example(s, changes, rng) if changes else None
                if ex is not None:
                    return ex
                s = self.pool[int(rng.integers(len(self.pool)))]
            raise RuntimeError("could not draw a relative-caption example")  # pragma: no cover
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")


def corpus(pool: Sequence[scenes.Scene], rng: np.random.Generator, per_task: int = 300) -> list[str]:
    """Every kind of text the prompts and answers hold (for training the tokenizer): the prompt templates, the
    training and benchmark phrasings, and ``per_task`` drawn examples of every task."""
    out = [t for group in prompts.DEFAULTS.values() for t in group.values()]
    sup = Supervisor(pool)
    for task in TASKS:
        for _ in range(per_task):
            ex = sup.example(task, rng)
            out += [ex.prompt, ex.answer]
    for s in pool[:per_task]:
        for e in scenes.all_edits(s)[:: 7]:
            out.append(scenes.edit_text(s, e, rng))  # benchmark phrasings: may reach the target prompt
    return out
