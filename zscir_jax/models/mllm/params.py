"""HF LLaVA tensor names -> paths in ``zscir_jax.models.mllm.MLLM``.

Both layouts load: transformers v5's module tree (``model.vision_tower.``, ``model.multi_modal_projector.``,
``model.language_model.``, ``lm_head``) and the one Hub checkpoints use (which v5's ``save_pretrained`` still writes):
``vision_tower.[vision_model.]``, ``multi_modal_projector.``, ``language_model.model.``, ``language_model.lm_head``.
"""
from __future__ import annotations

from zscir_jax.models.clip import params as clip_weights
from zscir_jax.models.llm import params as llama_weights
from zscir_jax.weights.loader import Rule, transpose

TEXT_PREFIX = r"(?:model\.language_model\.|language_model\.model\.)"
LM_HEAD = r"(?:language_model\.)?lm_head\.weight"
# Old checkpoints nest the tower as `vision_tower.vision_model.`; v5 writes `vision_tower.` straight. No trailing dot:
# CLIP's rules capture the rest of the name with its leading dot, which lands right after our `vision_model`.
VISION_PREFIX = r"(?:model\.)?vision_tower(?:\.vision_model)?"
PROJECTOR = r"(?:model\.)?multi_modal_projector\.linear_([12])\."


def rules() -> list[Rule]:
    return [
        Rule(PROJECTOR + "weight", r"multi_modal_projector.linear_\1.kernel", transpose),
        Rule(PROJECTOR + "bias", r"multi_modal_projector.linear_\1.bias"),
        *llama_weights.rules(TEXT_PREFIX, "llm.", LM_HEAD),
        # CLIP's rules end in catch-alls, so they go last and only see the vision tower's names.
        *clip_weights.rules(VISION_PREFIX, "vision_tower.vision_model"),
    ]


def ignore(tied: bool) -> list[str]:
    return [*clip_weights.IGNORE, *llama_weights.ignore(tied, LM_HEAD)]
