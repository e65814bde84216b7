"""The recipes' prompt templates and the parsers of what the (M)LLM answers: the contract between the synthesis
engine (``synthesis.engine``), its configs (``configs/synth/<recipe>.py`` copy these defaults, so a user can edit
them) and the demo MLLM, which is taught to answer exactly these prompts in exactly these formats.

Where a paper gives no template (MVFT-JI names P_c / P_m / P_tt but prints none; CoLLM and the fashion method give
none), the texts below are OURS. DistillCIR's is the supplement's Figure 7 (App. A), with its dynamic few-shot
examples inserted at ``{examples}``.

Every template is a ``str.format`` string; an image prompt is sent with the image (LLaVA's ``<image>`` placeholder
is added by the processor), a text prompt without one. A parser returns a dict of fields or raises
``ParseError`` with the reason; the engine quarantines such outputs with their raw text.
"""
from __future__ import annotations

import re


class ParseError(ValueError):
    """An output that does not have the recipe's format; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# MVFT-JI (seed 000): caption P_c, modification P_m (and the ablation's P'_m), target text P_tt. Ours.

MVFTJI_CAPTION = "Describe this image in one sentence."  # P_c (image)
MVFTJI_MODIFICATION = "Propose one change to this image, written as a short instruction."  # P_m (image)
MVFTJI_MODIFICATION_ALT = "Write a short edit request a user might give for this image."  # P'_m (image, ablation)
MVFTJI_TARGET = ("Apply this change to the image: {modification}\n"
                 "Describe the image after the change in one sentence.")  # P_tt (image + modification)

# ---------------------------------------------------------------------------------------------------------------
# DistillCIR (seed 004, App. A, Figure 7): a caption -> brainstorming, instruction, modified caption (text only).

DISTILLCIR = (
    "You are helping to create a multi-modal dataset for Composed Image Retrieval (CIR). The dataset requires pairs "
    "of source and target image captions, along with a single, concise instruction describing how the source image "
    "is transformed into the target image.\n"
    "Task\n"
    "1. Input: A source image caption will be provided.\n"
    "2. Brainstorming: Identify the key elements in the source caption (objects, actions, setting) and propose one "
    "significant, plausible modification.\n"
    "3. Modification Instruction: Write a clear, succinct directive describing the intended change.\n"
    "4. Modified Caption: Apply the change to the original caption, preserving all other details.\n"
    "Output exactly three items in this order:\n"
    "Brainstorming: briefly explain the original elements and the proposed change.\n"
    "Modification Instruction: a short statement of the exact change to be made.\n"
    "Modified Caption: the new caption reflecting the transformation.\n"
    "Important\n"
    "1. The modification instruction must focus on a single, significant change (e.g., changing an object's color, "
    "location, or action).\n"
    "2. The modified caption must only incorporate this one change and remain otherwise consistent with the original "
    "caption.\n"
    "3. The instruction and modified caption should be coherent and plausible.\n"
    "{examples}"
    "Input: {caption}"
)
# One dynamic example, as the engine fills ``{examples}`` (several, joined, each drawn from the config's pool).
DISTILLCIR_EXAMPLE = ("Example:\nInput: {caption}\nBrainstorming: {brainstorming}\nModification Instruction: "
                      "{instruction}\nModified Caption: {modified_caption}\n")

# ---------------------------------------------------------------------------------------------------------------
# CoLLM (seed 001): a modification text from the captions of a reference and a target image (text only). Ours.

COLLM = ("Caption of the reference image: {reference_caption}\nCaption of the target image: {target_caption}\n"
         "Write the short instruction that turns the reference image into the target image.")

# ---------------------------------------------------------------------------------------------------------------
# Fashion (seed 002): attribute lists per image, then a relative caption from two attribute lists. Ours.

FASHION_ATTRIBUTES = ("List the attributes of every item in this image, one item per line, as "
                      "'item N: key value, key value, ...'.")  # image
FASHION_RELATIVE = ("Attributes of the reference image:\n{reference_attributes}\nAttributes of the target image:\n"
                    "{target_attributes}\nWrite a short relative caption saying how the target differs from the "
                    "reference.")  # text only

DEFAULTS = {
    "mvftji": dict(caption=MVFTJI_CAPTION, modification=MVFTJI_MODIFICATION, modification_alt=MVFTJI_MODIFICATION_ALT,
                   target=MVFTJI_TARGET),
    "distillcir": dict(generate=DISTILLCIR, example=DISTILLCIR_EXAMPLE),
    "collm": dict(modification=COLLM),
    "fashion": dict(attributes=FASHION_ATTRIBUTES, relative=FASHION_RELATIVE),
}


# ---------------------------------------------------------------------------------------------------------------
# Parsers


def one_line(text: str, field: str = "text", max_words: int = 60) -> dict:
    """The first non-empty line, stripped of quotes and a leading label ("Caption:"); non-empty, not rambling."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise ParseError("empty output")
    line = re.sub(r"^[A-Za-z ]{1,30}:\s*", "", lines[0]).strip().strip("\"'").strip()
    if not line:
        raise ParseError("empty output after its label")
    if len(line.split()) > max_words:
        raise ParseError(f"more than {max_words} words in one line")
    return {field: line}


_DISTILL_FIELDS = (("brainstorming", r"brainstorming"), ("instruction", r"modification\s+instruction"),
                   ("modified_caption", r"modified\s+caption"))


def distillcir(text: str) -> dict:
    """``Brainstorming: ... / Modification Instruction: ... / Modified Caption: ...`` (numbering optional)."""
    out = {}
    for field, label in _DISTILL_FIELDS:
        m = re.search(rf"(?:^|\n)\s*(?:\d\.\s*)?{label}\s*:?\s*(.+)", text, flags=re.IGNORECASE)
        if m and m.group(1).strip():
            out[field] = m.group(1).strip()
    for field in ("instruction", "modified_caption"):
        if field not in out:
            raise ParseError(f"no '{field.replace('_', ' ')}' item")
    return out


def attributes(text: str) -> dict:
    """``item N: key value, key value`` lines -> {"items": [{key: value}, ...]} in item order."""
    items = {}
    for line in (ln.strip() for ln in text.strip().splitlines()):
        if not line:
            continue
        m = re.match(r"item\s+(\d+)\s*:\s*(.+)$", line, flags=re.IGNORECASE)
        if not m:
            raise ParseError(f"line not of the form 'item N: key value, ...': {line[:80]!r}")
        pairs = {}
        for part in (p.strip() for p in m.group(2).split(",")):
            key, _, value = part.partition(" ")
            if not key or not value.strip():
                raise ParseError(f"attribute without a value: {part!r}")
            pairs[key.lower()] = value.strip().lower()
        items[int(m.group(1))] = pairs
    if not items:
        raise ParseError("no items")
    return {"items": [items[k] for k in sorted(items)]}


def format_attributes(items: list[dict]) -> str:
    """The inverse of ``attributes``: what the demo MLLM is taught to write, and what fills FASHION_RELATIVE."""
    return "\n".join(f"item {i + 1}: " + ", ".join(f"{k} {v}" for k, v in item.items()) for i, item in enumerate(items))


def attribute_phrase(items: list[dict]) -> str:
    """A parsed attribute list as one line: "key value, key value" per item, items joined by "; " (one garment in
    ``garments.ATTRIBUTES`` order: exactly ``Garment.phrase()``). The fashion records' caption / target_text."""
    return "; ".join(", ".join(f"{k} {v}" for k, v in item.items()) for item in items)
