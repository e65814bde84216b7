"""An embedded, procedural CIR benchmark in the spirit of CSS (Vo et al. 2019), written in the official CIRR layout.

A scene is 1-3 objects on a 3x3 grid; each object has a shape, a colour, a size and a grid cell. A scene has one
canonical caption ("a large red circle at the top left and a small blue square in the centre") and an edit (change
colour / shape / size, move, add, remove) has several natural phrasings ("make the circle blue"). Everything is
seeded, so ``build`` writes byte-identical files for the same parameters.

Layout written by ``build(root)`` (the CIRR readers work on it unchanged):

    root/captions/cap.rc2.{val,test1}.json    CIRR query schema (test1 without target fields)
    root/image_splits/split.rc2.{train,val,test1}.json   name -> "./train/<k>/<name>.png" | "./dev/.." | "./test1/.."
    root/{train/<k>,dev,test1}/<name>.png
    root/captions/train_captions.json          name -> caption   (train: images + captions only, no triplets)
    root/scenes/{train,val,test1}.json         name -> scene dict (structure for the rule-based synthesizer)
    root/fashioniq/...                         the same val / test1 queries in the FashionIQ layout (``fashioniq.load``)
    root/circo/...                             the same val / test1 queries in the CIRCO layout (``circo.load``)
    root/DONE                                  the parameters; ``build`` is skipped when they match

The two extra layouts reuse the CIRR renderings (hard links, copies where the file system has none), so they add
no rendering; see ``fashioniq_root`` and ``circo_root`` for what they hold and how they are derived.

Query design (why it is neither image-only nor text-only solvable): every query group holds a reference R, two
one-edit variants V1, V2 (the targets of two queries), a near miss V3 (the same edit on the same object with another
value: "make the circle green" instead of "blue"), W (V1 plus one more edit: near the target) and Z (a fresh scene
that contains the edited object: it matches the text but not the reference). These six form the query's ``img_set``
and are all in the gallery; every scene is unique across the whole benchmark, so each target is the only exact answer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any, Sequence

import numpy as np

from zscir_jax.data import circo, scene_render

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = tuple(scene_render.COLOUR_RGB)
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
# "at the top left", "on the left", "in the centre": the natural preposition differs per cell.
_AT = {"top left": "at", "top": "at", "top right": "at", "left": "on", "centre": "in", "right": "on",
       "bottom left": "at", "bottom": "at", "bottom right": "at"}
OPS = ("colour", "shape", "size", "move", "add", "remove")
MAX_OBJECTS = 3
# 2: adds the FashionIQ and CIRCO layouts (a root of version 1 is rebuilt; its CIRR files come out identical).
FORMAT_VERSION = 2
LAYOUTS = ("cirr", "fashioniq", "circo")

# FashionIQ category of a query group: the shape of its reference's first object in grid order (two shapes each,
# so the three categories are about equally large; every group lands in exactly one category).
FASHIONIQ_CATEGORY_SHAPES = {"dress": ("circle", "ring"), "shirt": ("square", "diamond"),
                             "toptee": ("triangle", "cross")}
# CIRCO semantic_aspects of each edit op: the op itself, plus "cardinality" where the number of objects changes.
CIRCO_ASPECTS = {"colour": ("colour",), "shape": ("shape",), "size": ("size",), "move": ("position",),
                 "add": ("addition", "cardinality"), "remove": ("removal", "cardinality")}


def at_position(cell: int) -> str:
    name = POSITIONS[cell]
    return f"{_AT[name]} the {name}"


@dataclasses.dataclass(frozen=True, order=True)
class Obj:
    cell: int  # first field: sorting objects by it gives the canonical order
    shape: str
    colour: str
    size: str

    def phrase(self, with_position: bool = True) -> str:
        words = f"a {self.size} {self.colour} {self.shape}"
        return f"{words} {at_position(self.cell)}" if with_position else words

    def to_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": POSITIONS[self.cell]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Obj":
        return cls(POSITIONS.index(d["position"]), d["shape"], d["colour"], d["size"])


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    @classmethod
    def of(cls, objects: Sequence[Obj]) -> "Scene":
        objs = tuple(sorted(objects))
        cells = [o.cell for o in objs]
        if not objs or len(set(cells)) != len(cells):
            raise ValueError(f"a scene needs 1+ objects in distinct cells, got {objs}")
        return cls(objs)

    @property
    def caption(self) -> str:
        return render_caption(self)

    def free_cells(self) -> list[int]:
        used = {o.cell for o in self.objects}
        return [c for c in range(9) if c not in used]

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        return cls.of([Obj.from_dict(o) for o in d["objects"]])


def render_caption(scene: Scene) -> str:
    """The canonical caption: objects in grid order, joined "a, b and c". Two scenes are equal iff captions are."""
    parts = [o.phrase() for o in scene.objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


_OBJ_RE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) (?:at|on|in) the "
                     rf"({'|'.join(sorted(map(re.escape, POSITIONS), key=len, reverse=True))})")


def parse_caption(caption: str) -> Scene:
    """Inverse of ``render_caption`` for canonical captions; ``ValueError`` for anything else."""
    objs, rest = [], caption
    for k in range(MAX_OBJECTS):
        m = _OBJ_RE.match(rest)
        if not m:
            break
        objs.append(Obj(POSITIONS.index(m.group(4)), m.group(3), m.group(2), m.group(1)))
        rest = rest[m.end():]
        if not rest.startswith((", ", " and ")):
            break
        rest = rest[2:] if rest.startswith(", ") else rest[5:]
    try:
        scene = Scene.of(objs)
    except ValueError:
        scene = None
    if rest or scene is None or render_caption(scene) != caption:
        raise ValueError(f"not a canonical scene caption: {caption!r}")
    return scene


@dataclasses.dataclass(frozen=True)
class Edit:
    """One change to a scene. ``index`` points into ``scene.objects``; ``value`` is a colour / shape / size word,
    a cell (move) or an ``Obj`` (add)."""
    op: str
    index: int | None = None
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        v = self.value.to_dict() if isinstance(self.value, Obj) else self.value
        return {"op": self.op, "index": self.index, "value": v}


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    objs = list(scene.objects)
    if edit.op == "add":
        if len(objs) >= MAX_OBJECTS or edit.value.cell not in scene.free_cells():
            raise ValueError(f"cannot add {edit.value} to {scene.caption!r}")
        return Scene.of(objs + [edit.value])
    if edit.index is None or not 0 <= edit.index < len(objs):
        raise ValueError(f"edit {edit} has no valid object index for {scene.caption!r}")
    o = objs[edit.index]
    if edit.op == "remove":
        if len(objs) == 1:
            raise ValueError("cannot remove the only object")
        del objs[edit.index]
    elif edit.op == "move":
        if edit.value not in scene.free_cells():
            raise ValueError(f"cell {edit.value} is taken in {scene.caption!r}")
        objs[edit.index] = dataclasses.replace(o, cell=edit.value)
    elif edit.op in ("colour", "shape", "size"):
        if getattr(o, edit.op) == edit.value:
            raise ValueError(f"edit {edit} changes nothing")
        objs[edit.index] = dataclasses.replace(o, **{edit.op: edit.value})
    else:
        raise ValueError(f"unknown edit op {edit.op!r}")
    return Scene.of(objs)


def edited_object(scene: Scene, edit: Edit) -> Obj | None:
    """The object the edit produces (None for remove): what a text-only retriever would look for."""
    if edit.op == "add":
        return edit.value
    if edit.op == "remove":
        return None
    o = scene.objects[edit.index]
    field = "cell" if edit.op == "move" else edit.op
    return dataclasses.replace(o, **{field: edit.value})


def feasible_ops(scene: Scene) -> list[str]:
    ops = ["colour", "shape", "size"]
    if scene.free_cells():
        ops.append("move")
    if len(scene.objects) < MAX_OBJECTS:
        ops.append("add")
    if len(scene.objects) > 1:
        ops.append("remove")
    return ops


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def random_object(rng: np.random.Generator, cell: int) -> Obj:
    return Obj(cell, _choice(rng, SHAPES), _choice(rng, COLOURS), _choice(rng, SIZES))


def random_scene(rng: np.random.Generator, num_objects: int | None = None) -> Scene:
    n = num_objects or int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.3]))
    cells = rng.choice(9, size=n, replace=False)
    return Scene.of([random_object(rng, int(c)) for c in cells])


def random_value(rng: np.random.Generator, scene: Scene, op: str, index: int | None, exclude=()) -> Any:
    """A value for ``op`` that changes the scene and is not in ``exclude`` (None when there is none)."""
    if op == "add":
        cells = [c for c in scene.free_cells() if c not in exclude]
        return random_object(rng, _choice(rng, cells)) if cells else None
    if op == "move":
        cells = [c for c in scene.free_cells() if c not in exclude]
        return _choice(rng, cells) if cells else None
    if op == "remove":
        return None
    pool = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}[op]
    cur = getattr(scene.objects[index], op)
    vals = [v for v in pool if v != cur and v not in exclude]
    return _choice(rng, vals) if vals else None


def random_edit(scene: Scene, rng: np.random.Generator, ops: Sequence[str] | None = None) -> Edit:
    """A uniformly chosen feasible edit (restricted to ``ops`` when given)."""
    choices = [op for op in feasible_ops(scene) if ops is None or op in ops]
    if not choices:
        raise ValueError(f"no feasible edit among {ops} for {scene.caption!r}")
    op = _choice(rng, choices)
    index = None if op == "add" else int(rng.integers(len(scene.objects)))
    return Edit(op, index, random_value(rng, scene, op, index))


def all_edits(scene: Scene) -> list[Edit]:
    """Every single edit applicable to ``scene``, in a fixed order."""
    out = []
    for i, o in enumerate(scene.objects):
        out += [Edit("colour", i, c) for c in COLOURS if c != o.colour]
        out += [Edit("shape", i, v) for v in SHAPES if v != o.shape]
        out += [Edit("size", i, v) for v in SIZES if v != o.size]
        out += [Edit("move", i, c) for c in scene.free_cells()]
        if len(scene.objects) > 1:
            out.append(Edit("remove", i))
    if len(scene.objects) < MAX_OBJECTS:
        out += [Edit("add", None, Obj(c, sh, co, si)) for c in scene.free_cells()
                for sh in SHAPES for co in COLOURS for si in SIZES]
    return out


def diff(a: Scene, b: Scene) -> Edit | None:
    """The single edit turning ``a`` into ``b`` (None when they are equal or more than one edit apart)."""
    only_a = [o for o in a.objects if o not in b.objects]
    only_b = [o for o in b.objects if o not in a.objects]
    if len(only_a) == 0 and len(only_b) == 1:
        return Edit("add", None, only_b[0])
    if len(only_a) == 1 and len(only_b) == 0:
        return Edit("remove", a.objects.index(only_a[0]))
    if len(only_a) != 1 or len(only_b) != 1:
        return None
    x, y = only_a[0], only_b[0]
    i = a.objects.index(x)
    changed = [f for f in ("cell", "shape", "colour", "size") if getattr(x, f) != getattr(y, f)]
    if changed != ["cell"] and len(changed) != 1:
        return None
    field = changed[0]
    return Edit("move" if field == "cell" else field, i, getattr(y, field))


# ---------------------------------------------------------------------------------------------- edit phrasings

# Benchmark phrasings. Fields: {obj} referring expression ("the red circle"), {bare} without the article,
# {value} new word, {colour} the object's colour, {more} bigger/smaller, {resize} enlarge/shrink,
# {to_pos} "to the top right", {at_pos} "at the top right", {new} "a small green triangle".
PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": ("make {obj} {value}", "change {obj} to {value}", "turn {obj} {value}", "paint {obj} {value}",
               "{obj} should be {value}"),
    "shape": ("make {obj} a {value}", "change {obj} into a {value}", "replace {obj} with a {colour} {value}",
              "turn {obj} into a {value}"),
    "size": ("make {obj} {more}", "make {obj} {value}", "{resize} {obj}", "{obj} should be {more}"),
    "move": ("move {obj} {to_pos}", "put {obj} {at_pos}", "shift {obj} {to_pos}", "{obj} should be {at_pos}"),
    "add": ("add {new} {at_pos}", "put {new} {at_pos}", "place {new} {at_pos}", "also show {new} {at_pos}"),
    "remove": ("remove {obj}", "delete {obj}", "take away {obj}", "get rid of {obj}", "{obj} should be gone"),
}


def referring_expression(scene: Scene, index: int, rng: np.random.Generator | None = None) -> str:
    """The shortest description that picks out object ``index`` (sometimes a longer one, when ``rng`` says so)."""
    o = scene.objects[index]
    forms = [((lambda x: x.shape == o.shape), o.shape),
             ((lambda x: (x.colour, x.shape) == (o.colour, o.shape)), f"{o.colour} {o.shape}"),
             ((lambda x: (x.size, x.colour, x.shape) == (o.size, o.colour, o.shape)), f"{o.size} {o.colour} {o.shape}")]
    unique = [text for match, text in forms if sum(map(match, scene.objects)) == 1]
    unique.append(f"{o.shape} {at_position(o.cell)}")  # the cell is always unique
    k = 0
    if rng is not None and len(unique) > 1 and rng.random() < 0.3:
        k = 1
    return unique[k]


def edit_fields(scene: Scene, edit: Edit, rng: np.random.Generator | None = None) -> dict[str, str]:
    """The words a phrasing template may use for this edit."""
    f: dict[str, str] = {}
    if edit.op == "add":
        f.update(new=edit.value.phrase(with_position=False), at_pos=at_position(edit.value.cell),
                 to_pos=f"to the {POSITIONS[edit.value.cell]}", value=edit.value.shape)
        return f
    o = scene.objects[edit.index]
    bare = referring_expression(scene, edit.index, rng)
    f.update(obj=f"the {bare}", bare=bare, colour=o.colour, shape=o.shape)
    if edit.op == "move":
        f.update(to_pos=f"to the {POSITIONS[edit.value]}", at_pos=at_position(edit.value), value=POSITIONS[edit.value])
    elif edit.op == "size":
        big = edit.value == "large"
        f.update(value=edit.value, more="bigger" if big else "smaller", resize="enlarge" if big else "shrink")
    elif edit.value is not None:
        f["value"] = str(edit.value)
    return f


def edit_text(scene: Scene, edit: Edit, rng: np.random.Generator,
              phrasings: dict[str, Sequence[str]] | None = None) -> str:
    """A natural-language modification text for ``edit`` on ``scene``, one phrasing drawn from ``phrasings``."""
    templates = (phrasings or PHRASINGS)[edit.op]
    text = _choice(rng, list(templates)).format(**edit_fields(scene, edit, rng))
    return text[0].lower() + text[1:]


# ------------------------------------------------------------------------------------------------ generation

def _unique(scenes: Sequence[Scene], used: set[str]) -> bool:
    keys = [s.caption for s in scenes]
    return len(set(keys)) == len(keys) and not any(k in used for k in keys)


def _train_group(rng: np.random.Generator, used: set[str]) -> list[Scene]:
    """A base scene and 2-4 one-edit variants: near duplicates, so edits between train images exist (for the
    synthesizer to find real targets), as CIRR's train sets of similar images do."""
    while True:
        base = random_scene(rng)
        group = [base] + [apply_edit(base, random_edit(base, rng)) for _ in range(int(rng.integers(2, 5)))]
        if _unique(group, used):
            used.update(s.caption for s in group)
            return group


def _query_group(rng: np.random.Generator, used: set[str]):
    """(scenes [R, V1, V2, V3, W, Z], edits [e1, e2]) with V_i = apply(R, e_i); see the module docstring."""
    while True:
        ref = random_scene(rng)
        e1 = random_edit(ref, rng)
        e2 = random_edit(ref, rng)
        # Near miss: the same op on the same object with another value; falls back to any other edit.
        if e1.op == "add":  # the same cell, another colour
            colour = _choice(rng, [c for c in COLOURS if c != e1.value.colour])
            e3 = Edit("add", None, dataclasses.replace(e1.value, colour=colour))
        else:
            alt = random_value(rng, ref, e1.op, e1.index, exclude=(e1.value,))
            e3 = Edit(e1.op, e1.index, alt) if alt is not None and e1.op != "remove" else random_edit(ref, rng)
        v1, v2, v3 = (apply_edit(ref, e) for e in (e1, e2, e3))
        w = apply_edit(v1, random_edit(v1, rng))
        # Z: a fresh scene holding the object the text asks for, in its cell, with fresh other objects.
        z = random_scene(rng)
        obj = edited_object(ref, e1)
        if obj is not None:
            z = Scene.of([o for o in z.objects if o.cell != obj.cell][:MAX_OBJECTS - 1] + [obj])
        group = [ref, v1, v2, v3, w, z]
        if _unique(group, used):
            used.update(s.caption for s in group)
            return group, [e1, e2]


_SPLIT_CODE = {"train": 0, "val": 1, "test1": 2}
_PREFIX = {"train": "train", "val": "dev", "test1": "test1"}


def _rel_path(split: str, name: str, group: int) -> str:
    if split == "train":
        return f"./train/{group % 100}/{name}.png"
    return f"./{_PREFIX[split]}/{name}.png"


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _render_all(root: str, split: str, items, image_size: int, seed: int) -> None:
    """items: (name, rel_path, scene, group, member). Each image's jitter has its own seed, so the pixels of an
    image do not depend on generation order."""
    made = set()
    for name, rel, scene, g, j in items:
        path = os.path.join(root, rel)
        d = os.path.dirname(path)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], g, j, 7])
        scene_render.render(scene, image_size, rng).save(path, compress_level=1)


def _params(**kw) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "layouts": list(LAYOUTS), **kw}


def fashioniq_root(root: str) -> str:
    """Where ``build(root)`` writes the FashionIQ layout; ``fashioniq.load(fashioniq_root(root), cat, split)`` reads it.

        captions/cap.{dress,shirt,toptee}.{val,test}.json   [{target, candidate, captions: [c1, c2]}] (test: no target)
        image_splits/split.{dress,shirt,toptee}.{val,test}.json   [name, ...]: the gallery of that category and split
        images/<name>.png                                          the CIRR val / test1 renderings (hard links)

    FashionIQ ``val`` holds the CIRR val queries, ``test`` the test1 queries; image names are the CIRR names. The
    category of a query group is ``fashioniq_category(reference scene)``: the shape of the reference's first object in
    grid order (circle / ring -> dress, square / diamond -> shirt, triangle / cross -> toptee). All six scenes of the
    group (reference, targets, near misses) go into that category's gallery, so each category keeps CIRR's hard
    negatives. The two captions are two different phrasings (two distinct templates of ``PHRASINGS``) of the query's
    edit, drawn from their own seeded stream, so the CIRR files do not depend on this layout.
    """
    return os.path.join(root, "fashioniq")


def circo_root(root: str) -> str:
    """Where ``build(root)`` writes the CIRCO layout; ``circo.load(circo_root(root), split)`` reads it.

        annotations/{val,test}.json        [{reference_img_id, target_img_id, relative_caption, shared_concept,
                                             gt_img_ids, id, semantic_aspects}] (test: reference, caption, concept, id)
        COCO2017_unlabeled/unlabeled2017/<id:012d>.jpg   the gallery: every CIRR val and test1 rendering (hard links;
                                             the files are the PNG renderings under COCO's names, decoded by content)
        COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   {"images": [{id, file_name, ...}]} by id
        scene_names.json                   {"<id>": CIRR image name} (see ``circo_scenes``)

    CIRCO ``val`` holds the CIRR val queries, ``test`` the test1 queries, over one shared gallery (as CIRCO's COCO
    gallery); the reference is a gallery image. Image ids are distinct 6-digit numbers drawn from the seed, so an id
    says nothing about a scene's role. ``relative_caption`` is the query's CIRR caption; ``semantic_aspects`` is
    ``CIRCO_ASPECTS[op]``; ``shared_concept`` is ``shared_concept(reference, edit)``.

    Ground truth (``circo_satisfies``): every gallery scene that equals the target (the edit applied to the reference)
    up to the positions the edit does not mention. That is, a scene is a ground truth when its objects match the
    target's one to one on shape, colour and size, and, for a move or an add (edits that name a cell), the moved /
    added object is also in the named cell; all other positions are free. The reference never qualifies (an edit
    always changes the multiset of objects or, for a move, the cell it names is free in the reference).
    ``gt_img_ids`` lists the target first (``target_img_id``), then the other ground truths by id.
    """
    return os.path.join(root, "circo")


def fashioniq_category(scene: Scene) -> str:
    """The FashionIQ category of a query group with reference ``scene`` (see ``fashioniq_root``)."""
    shape = scene.objects[0].shape
    return next(cat for cat, shapes in FASHIONIQ_CATEGORY_SHAPES.items() if shape in shapes)


def edit_texts(scene: Scene, edit: Edit, rng: np.random.Generator, n: int = 2,
               phrasings: dict[str, Sequence[str]] | None = None) -> list[str]:
    """``n`` phrasings of one edit from ``n`` distinct templates (so the texts differ), like ``edit_text``."""
    templates = list((phrasings or PHRASINGS)[edit.op])
    out = []
    for k in rng.choice(len(templates), size=n, replace=False):
        text = templates[int(k)].format(**edit_fields(scene, edit, rng))
        out.append(text[0].lower() + text[1:])
    return out


def shared_concept(scene: Scene, edit: Edit) -> str:
    """CIRCO's ``shared_concept``: what the reference and the ground truths share. The reference objects whose
    shape, colour and size the edit leaves alone (a moved object included), without positions ("a large red circle
    and a small blue square"); when the edit changes the only object, that object without the changed attribute
    ("a large circle" for a colour edit, "a small red shape" for a shape edit, "an orange circle" for a size
    edit)."""
    touched = None if edit.op == "add" else edit.index
    rest = [o.phrase(with_position=False) for i, o in enumerate(scene.objects) if i != touched or edit.op == "move"]
    if rest:
        return " and ".join(rest)
    o = scene.objects[edit.index]
    words = " ".join(w for w in (o.size if edit.op != "size" else "", o.colour if edit.op != "colour" else "",
                                 o.shape if edit.op != "shape" else "shape") if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def circo_satisfies(reference: Scene, edit: Edit, candidate: Scene) -> bool:
    """The CIRCO ground-truth rule (see ``circo_root``): ``candidate`` equals ``apply_edit(reference, edit)`` up to
    the positions the edit does not mention."""
    if candidate == reference:
        return False
    return _circo_key(candidate) == _circo_key(apply_edit(reference, edit)) and _pinned_ok(reference, edit, candidate)


def _circo_key(scene: Scene) -> tuple:
    return tuple(sorted((o.shape, o.colour, o.size) for o in scene.objects))


def _pinned_ok(reference: Scene, edit: Edit, candidate: Scene) -> bool:
    if edit.op not in ("move", "add"):
        return True
    return edited_object(reference, edit) in candidate.objects


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (another file system, FAT, ...): copy
        shutil.copyfile(src, dst)


@dataclasses.dataclass
class _Group:
    """One query group of a CIRR split as generated: names / scenes in group order (reference first) and its queries
    as (target position in the group, edit, CIRR caption)."""
    names: list[str]
    scenes: list[Scene]
    queries: list[tuple[int, Edit, str]]


def _write_fashioniq(root: str, groups: dict[str, list[_Group]], seed: int) -> None:
    froot = fashioniq_root(root)
    image_dir = os.path.join(froot, "images")
    for sub in ("captions", "image_splits", "images"):
        os.makedirs(os.path.join(froot, sub), exist_ok=True)
    for split, fiq_split in (("val", "val"), ("test1", "test")):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], 101])
        caps: dict[str, list] = {c: [] for c in FASHIONIQ_CATEGORY_SHAPES}
        gallery: dict[str, list] = {c: [] for c in FASHIONIQ_CATEGORY_SHAPES}
        for grp in groups[split]:
            cat = fashioniq_category(grp.scenes[0])
            gallery[cat] += sorted(grp.names)  # name suffixes are shuffled: this order hides the roles
            for tgt, edit, _ in grp.queries:
                c1, c2 = edit_texts(grp.scenes[0], edit, rng)
                rec = {"target": grp.names[tgt]} if fiq_split != "test" else {}
                rec.update(candidate=grp.names[0], captions=[c1, c2])
                caps[cat].append(rec)
            for name in grp.names:
                _link(os.path.join(root, _rel_path(split, name, 0)), os.path.join(image_dir, name + ".png"))
        for cat in FASHIONIQ_CATEGORY_SHAPES:
            _write_json(os.path.join(froot, "captions", f"cap.{cat}.{fiq_split}.json"), caps[cat])
            _write_json(os.path.join(froot, "image_splits", f"split.{cat}.{fiq_split}.json"), gallery[cat])


def _write_circo(root: str, groups: dict[str, list[_Group]], seed: int, image_size: int) -> None:
    croot = circo_root(root)
    coco = os.path.join(croot, "COCO2017_unlabeled")
    image_dir = os.path.join(coco, "unlabeled2017")
    for d in (os.path.join(croot, "annotations"), image_dir, os.path.join(coco, "annotations")):
        os.makedirs(d, exist_ok=True)
    entries = [(split, name, scene) for split in ("val", "test1") for grp in groups[split]
               for name, scene in zip(grp.names, grp.scenes)]
    rng = np.random.default_rng([seed, 102])
    ids = [int(i) for i in rng.choice(900_000, size=len(entries), replace=False) + 100_000]
    id_of = {name: i for (_, name, _), i in zip(entries, ids)}
    by_key: dict[tuple, list[tuple[int, Scene]]] = {}
    for (split, name, scene), i in zip(entries, ids):
        _link(os.path.join(root, _rel_path(split, name, 0)), os.path.join(image_dir, circo.image_name(i)))
        by_key.setdefault(_circo_key(scene), []).append((i, scene))
    for split, circo_split in (("val", "val"), ("test1", "test")):
        records = []
        for grp in groups[split]:
            ref = grp.scenes[0]
            ref_id = id_of[grp.names[0]]
            for tgt, edit, caption in grp.queries:
                concept = shared_concept(ref, edit)
                if circo_split == "test":
                    records.append({"reference_img_id": ref_id, "relative_caption": caption,
                                    "shared_concept": concept, "id": len(records)})
                    continue
                target_id = id_of[grp.names[tgt]]
                target = apply_edit(ref, edit)
                others = sorted(i for i, s in by_key.get(_circo_key(target), ())
                                if i not in (target_id, ref_id) and _pinned_ok(ref, edit, s))
                records.append({"reference_img_id": ref_id, "target_img_id": target_id,
                                "relative_caption": caption, "shared_concept": concept,
                                "gt_img_ids": [target_id] + others, "id": len(records),
                                "semantic_aspects": list(CIRCO_ASPECTS[edit.op])})
        _write_json(os.path.join(croot, "annotations", f"{circo_split}.json"), records)
    images = [{"id": i, "file_name": circo.image_name(i), "width": image_size, "height": image_size}
              for i in sorted(ids)]
    _write_json(os.path.join(coco, "annotations", "image_info_unlabeled2017.json"), {"images": images})
    _write_json(os.path.join(croot, "scene_names.json"), {str(i): name for name, i in sorted(id_of.items(),
                                                                                            key=lambda x: x[1])})


# The files whose presence says a layout is complete (DONE is written last, but a layout may have been deleted).
_LAYOUT_FILES = ("captions/cap.rc2.val.json", "fashioniq/captions/cap.toptee.test.json",
                 "circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")


def build(root: str, *, num_train: int = 5000, num_val_queries: int = 1000, num_test_queries: int = 1000,
          image_size: int = 64, seed: int = 0, force: bool = False) -> str:
    """Generates the benchmark under ``root`` (see the module docstring) and returns ``root``.

    Skipped when ``root/DONE`` records the same parameters (format version and layouts included) and every layout is
    there (unless ``force``); otherwise stale outputs are removed first and everything is written again.
    """
    params = _params(num_train=num_train, num_val_queries=num_val_queries, num_test_queries=num_test_queries,
                     image_size=image_size, seed=seed)
    done = os.path.join(root, "DONE")
    if not force and os.path.isfile(done) and all(os.path.isfile(os.path.join(root, f)) for f in _LAYOUT_FILES):
        with open(done) as f:
            if json.load(f) == params:
                return root
    for sub in ("captions", "image_splits", "scenes", "train", "dev", "test1", "fashioniq", "circo", "DONE"):
        p = os.path.join(root, sub)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    for sub in ("captions", "image_splits", "scenes"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)

    used: set[str] = set()  # canonical captions across all splits: every scene appears once in the benchmark

    # Train: images + captions only (zero-shot), in small groups of near duplicates.
    rng = np.random.default_rng([seed, _SPLIT_CODE["train"]])
    items, g = [], 0
    while len(items) < num_train:
        for j, s in enumerate(_train_group(rng, used)):
            if len(items) < num_train:
                name = f"train-{g}-{j}"
                items.append((name, _rel_path("train", name, g), s, g, j))
        g += 1
    _render_all(root, "train", items, image_size, seed)
    _write_json(os.path.join(root, "image_splits", "split.rc2.train.json"), {n: r for n, r, *_ in items})
    _write_json(os.path.join(root, "captions", "train_captions.json"), {n: s.caption for n, _, s, *_ in items})
    _write_json(os.path.join(root, "scenes", "train.json"), {n: s.to_dict() for n, _, s, *_ in items})

    pairid = 0
    groups: dict[str, list[_Group]] = {}  # what the FashionIQ and CIRCO layouts are written from
    for split, num_queries in (("val", num_val_queries), ("test1", num_test_queries)):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split]])
        items, queries, groups[split] = [], [], []
        for g in range((num_queries + 1) // 2):
            group, edits = _query_group(rng, used)
            # Shuffled name suffixes, so a name never tells the reference or the target apart.
            ids = rng.permutation(len(group))
            names = [f"{_PREFIX[split]}-{g}-{k}" for k in ids]
            items += [(n, _rel_path(split, n, g), s, g, int(k)) for n, s, k in zip(names, group, ids)]
            members = [names[i] for i in rng.permutation(len(names))]
            grp = _Group(names, list(group), [])
            for q, edit in enumerate(edits[: num_queries - 2 * g]):
                ref, tgt = names[0], names[1 + q]
                entry = {"pairid": pairid, "reference": ref}
                if split == "val":
                    entry.update(target_hard=tgt, target_soft={tgt: 1.0})
                entry["caption"] = edit_text(group[0], edit, rng)
                img_set = {"id": g, "members": members, "reference_rank": members.index(ref)}
                if split == "val":
                    img_set["target_rank"] = members.index(tgt)
                entry["img_set"] = img_set
                queries.append(entry)
                grp.queries.append((1 + q, edit, entry["caption"]))
                pairid += 1
            groups[split].append(grp)
        _render_all(root, split, items, image_size, seed)
        _write_json(os.path.join(root, "captions", f"cap.rc2.{split}.json"), queries)
        _write_json(os.path.join(root, "image_splits", f"split.rc2.{split}.json"), {n: r for n, r, *_ in items})
        _write_json(os.path.join(root, "scenes", f"{split}.json"), {n: s.to_dict() for n, _, s, *_ in items})

    _write_fashioniq(root, groups, seed)
    _write_circo(root, groups, seed, image_size)
    _write_json(done, params)
    return root


# --------------------------------------------------------------------------------------------------- readers

def load_scenes(root: str, split: str = "train") -> dict[str, Scene]:
    """name -> Scene for one split (``train``, ``val`` or ``test1``)."""
    with open(os.path.join(root, "scenes", f"{split}.json")) as f:
        return {name: Scene.from_dict(d) for name, d in json.load(f).items()}


def image_paths(root: str, split: str = "train") -> dict[str, str]:
    """name -> absolute image path, from the split file."""
    with open(os.path.join(root, "image_splits", f"split.rc2.{split}.json")) as f:
        return {name: os.path.normpath(os.path.join(root, rel)) for name, rel in json.load(f).items()}


def train_pairs(root: str) -> list[tuple[str, str]]:
    """(absolute image path, caption) for every train image, in split-file order."""
    with open(os.path.join(root, "captions", "train_captions.json")) as f:
        captions = json.load(f)
    return [(path, captions[name]) for name, path in image_paths(root, "train").items()]


def circo_scenes(root: str) -> dict[int, Scene]:
    """CIRCO image id -> Scene for the gallery ``build(root)`` wrote under ``circo_root(root)``."""
    with open(os.path.join(circo_root(root), "scene_names.json")) as f:
        names = json.load(f)
    by_name = {**load_scenes(root, "val"), **load_scenes(root, "test1")}
    return {int(i): by_name[name] for i, name in names.items()}
