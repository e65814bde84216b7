"""AdamW with per-group learning rates chosen by regexes over parameter paths (big_vision style), frozen groups,
warm-up + cosine decay, global-norm clipping and optional gradient accumulation.

``config.optim``:
    groups        ((regex, label), ...) first match wins, e.g. (("clip/text_.*", "text_tower"), (".*", "fusion"))
    lr            {label: peak learning rate}
    finetune      "none" (towers frozen) | "text" (text tower trained) | "both" (PVLF Table 3); adds to ``frozen``
    frozen        (label, ...) never updated (optax.set_to_zero) and not differentiated (see ``trainable_filter``)
    weight_decay, b1, b2, eps, warmup_steps, clip_norm (0 = off), accumulate (micro-steps per update, 1 = off),
    min_lr_ratio  the cosine ends at peak * min_lr_ratio
"""
from __future__ import annotations

import re

import jax
import optax
from flax import nnx

FROZEN = "frozen"

# PVLF Table 3's fine-tuning modes -> the tower groups they freeze.
FINETUNE_FROZEN = {"none": ("image_tower", "text_tower"), "text": ("image_tower",), "both": ()}


def path_str(path) -> str:
    """'clip/text_model/encoder/layers/0/mlp/fc1/kernel' from an nnx path or a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                k = getattr(k, attr)
                break
        parts.append(str(k))
    return "/".join(parts)


def label_fn(optim_config):
    groups = [(re.compile(rx), label) for rx, label in optim_config.groups]
    mode = optim_config.get("finetune", "both")
    if mode not in FINETUNE_FROZEN:
        raise ValueError(f"config.optim.finetune must be one of {sorted(FINETUNE_FROZEN)}, got {mode!r}")
    frozen = set(optim_config.get("frozen", ())) | set(FINETUNE_FROZEN[mode])

    def label(path) -> str:
        s = path_str(path)
        for rx, name in groups:
            if rx.fullmatch(s):
                return FROZEN if name in frozen else name
        raise ValueError(f"parameter {s!r} matches no pattern in config.optim.groups; add a catch-all ('.*', label)")

    return label


def trainable_filter(optim_config):
    """An nnx filter selecting the parameters that are trained (not in a frozen group): only these get gradients."""
    label = label_fn(optim_config)
    return nnx.All(nnx.Param, lambda path, _: label(path) != FROZEN)


def schedule(peak: float, optim_config, total_steps: int):
    warmup = min(optim_config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=peak * optim_config.get("min_lr_ratio", 0.0))


def make(optim_config, total_steps: int) -> tuple[optax.GradientTransformation, dict]:
    """The optax transformation and the per-label schedules (for logging learning rates)."""
    label = label_fn(optim_config)
    schedules = {name: schedule(lr, optim_config, total_steps) for name, lr in optim_config.lr.items()}
    transforms = {
        name: optax.adamw(s, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                          weight_decay=optim_config.weight_decay)
        for name, s in schedules.items()
    }
    transforms[FROZEN] = optax.set_to_zero()

    def labels(params):
        def one(path, _):
            name = label(path)
            if name not in transforms:
                raise ValueError(f"label {name!r} (from config.optim.groups) has no learning rate in config.optim.lr")
            return name
        return jax.tree_util.tree_map_with_path(one, params)

    tx = optax.multi_transform(transforms, labels)
    if optim_config.get("clip_norm", 0):
        tx = optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), tx)
    if optim_config.get("accumulate", 1) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim_config.accumulate)
    return tx, schedules
