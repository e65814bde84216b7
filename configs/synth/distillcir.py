r"""DistillCIR's synthesis: an (M)LLM turns each caption into a modification instruction and a modified caption with
the supplement's fixed template (Figure 7), text only, with dynamic few-shot examples drawn per caption (seeded) from
``config.distillcir.examples``; records (reference image, instruction, modified caption, caption).

    python -m zscir_jax.synthesize --config configs/synth/distillcir.py:demo --workdir /tmp/zscir_synth
    python -m zscir_jax.synthesize --config configs/synth/distillcir.py --workdir runs/synth \
        --config.backend.checkpoint=~/ckpt/llava-1.5-7b-hf --config.data.pairs=~/data/captions.jsonl
"""
import os
import runpy

import ml_collections

common = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

# Few-shot pool for photographs (ours: the paper draws its examples from its own pool, which it does not print).
PHOTO_EXAMPLES = (
    dict(caption="A man riding a bicycle down a city street.",
         brainstorming="A man, a bicycle, a city street; replace the vehicle.",
         instruction="Make the man ride a motorcycle instead.",
         modified_caption="A man riding a motorcycle down a city street."),
    dict(caption="Two dogs playing with a ball on the grass.",
         brainstorming="Two dogs, a ball, grass; change the setting.",
         instruction="Move them onto a sandy beach.",
         modified_caption="Two dogs playing with a ball on a sandy beach."),
    dict(caption="A red car parked in front of a house.",
         brainstorming="A car, its colour, a house; change the colour.",
         instruction="Change the car to blue.",
         modified_caption="A blue car parked in front of a house."),
    dict(caption="A woman reading a book on a park bench.",
         brainstorming="A woman, a book, a bench; change the action.",
         instruction="Have her talk on the phone instead of reading.",
         modified_caption="A woman talking on the phone on a park bench."),
    dict(caption="A plate of pasta next to a glass of wine.",
         brainstorming="Pasta, a glass of wine; remove one object.",
         instruction="Remove the glass of wine.",
         modified_caption="A plate of pasta."),
    dict(caption="A cat sleeping on a windowsill.",
         brainstorming="A cat, a windowsill; add an object.",
         instruction="Add a potted plant beside the cat.",
         modified_caption="A cat sleeping on a windowsill beside a potted plant."),
)

# Few-shot pool for the scenes benchmark (the demo): canonical captions, one edit each, in the wording the demo MLLM
# and the rule-based backend use.
SCENE_EXAMPLES = (
    dict(caption="a small green triangle at the top left and a small blue square in the centre",
         brainstorming="the scene holds 2 object(s); change one by a single add edit.",
         instruction="include a small yellow ring on the right",
         modified_caption="a small green triangle at the top left, a small blue square in the centre and a small "
                          "yellow ring on the right"),
    dict(caption="a large cyan square at the top left, a large yellow square in the centre and a small orange circle "
                 "on the right",
         brainstorming="the scene holds 3 object(s); change one by a single remove edit.",
         instruction="remove the circle",
         modified_caption="a large cyan square at the top left and a large yellow square in the centre"),
    dict(caption="a small red circle at the top right and a small purple circle at the bottom left",
         brainstorming="the scene holds 2 object(s); change one by a single shape edit.",
         instruction="the red circle becomes a square",
         modified_caption="a small red square at the top right and a small purple circle at the bottom left"),
    dict(caption="a large orange square at the top, a small cyan diamond on the left and a large green square on the "
                 "right",
         brainstorming="the scene holds 3 object(s); change one by a single shape edit.",
         instruction="instead of the cyan diamond, show a cyan cross",
         modified_caption="a large orange square at the top, a small cyan cross on the left and a large green square "
                          "on the right"),
    dict(caption="a large yellow triangle at the top right",
         brainstorming="the scene holds 1 object(s); change one by a single size edit.",
         instruction="the yellow triangle should look smaller",
         modified_caption="a small yellow triangle at the top right"),
)


def get_config(arg=None):
    c = common["base"]("distillcir", arg)
    demo = arg in ("demo", "smoke")
    c.distillcir = ml_collections.ConfigDict(dict(num_examples=2,
                                                  examples=SCENE_EXAMPLES if demo else PHOTO_EXAMPLES))
    c.sampling.max_new_tokens = 128  # three items: brainstorming, instruction, modified caption
    return c
