"""Checks of a run config that a user's mistake can fail, all made before any stage runs (minutes of preparation or
training must not end in a traceback about a typo). Each failure is a ``UserError`` naming the key and what is
allowed; ``main`` prints it as one line.
"""
from __future__ import annotations

import os

from zscir_jax.data.policy import POLICIES as ON_ERROR
from zscir_jax.errors import UserError, renamed_keys
from zscir_jax.train.optimizer import FINETUNE_FROZEN

LOSSES = ("focal", "info_nce")  # methods.base.triplet_loss
SOURCES = ("triplets", "pairs", "random")  # data.sources.make_loader
FINETUNE = tuple(FINETUNE_FROZEN)


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r}: allowed values are {', '.join(map(str, allowed))}")


def _positive(key: str, value, *, strict: bool = True) -> None:
    try:
        ok = value > 0 if strict else value >= 0
    except TypeError:
        ok = False
    if not ok:
        raise UserError(f"{key}={value!r}: must be {'> 0' if strict else '>= 0'}")


def _check_pair_neighbours(config, method) -> None:
    import jax

    k = config.data.get("pair_neighbours", 0) or 0
    _positive("config.data.pair_neighbours", k, strict=False)
    if not isinstance(k, int):
        raise UserError(f"config.data.pair_neighbours={k!r}: must be a whole number")
    if k and method.batch != "pairs":
        raise UserError(f"config.data.pair_neighbours={k}: only methods trained on image-caption pairs use it; "
                        f"{method.name} trains on {method.batch}")
    local = config.train.batch_size // jax.process_count()
    if k and local % (k + 1):
        raise UserError(f"config.data.pair_neighbours={k}: each process's batch ({local}) must be a multiple of "
                        f"{k + 1} (every pair comes with its {k} neighbour(s))")


def check(config, method, *, mode: str) -> None:
    """Everything that can be checked without touching the disk (mesh and paths: see ``check_paths``)."""
    from zscir_jax import methods

    training = mode == "train" and method.trainable and (config.train.get("steps", 0) > 0
                                                          or (config.train.get("epochs", 0) or 0) > 0)
    _positive("config.train.steps", config.train.get("steps", 0), strict=False)
    _positive("config.train.epochs", config.train.get("epochs", 0) or 0, strict=False)
    if training:
        _positive("config.train.batch_size", config.train.batch_size)
        _positive("config.train.log_every", config.train.get("log_every", 1))
        _positive("config.train.checkpoint_every", config.train.get("checkpoint_every", 1))
        _one_of("config.data.source", config.data.get("source", "triplets"), SOURCES)
        _one_of("config.data.on_error", config.data.get("on_error", "raise"), ON_ERROR)
        from zscir_jax.data.pipeline import DEFAULT_MAX_SKIP_FRACTION

        fraction = config.data.get("max_skip_fraction", DEFAULT_MAX_SKIP_FRACTION)
        if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
            raise UserError(f"config.data.max_skip_fraction={fraction!r}: must be a fraction in [0, 1]")
        _check_pair_neighbours(config, method)
        _one_of("config.optim.finetune", config.optim.get("finetune", "both"), FINETUNE)
        _positive("config.optim.accumulate", config.optim.get("accumulate", 1))
    loss = config.get("loss")
    if training and loss is not None and "name" in loss:
        _one_of("config.loss.name", loss.name, LOSSES)
    if training and loss is not None and "temperature" in loss:
        _positive("config.loss.temperature", loss.temperature)
    _positive("config.eval.batch_size", config.eval.get("batch_size", 64))
    from zscir_jax.models.towers import FAMILIES

    _one_of("config.model.backbone", config.model.get("backbone", "clip"), FAMILIES)
    from zscir_jax.methods.base import REMAT_MODES

    _one_of("config.model.remat", config.model.get("remat", "none"), REMAT_MODES)
    for name in config.eval.get("compare", ()):
        try:
            methods.get(name)
        except UserError as e:
            raise UserError(f"config.eval.compare: {e}") from None
    if method.check is not None:
        method.check(config)
    if config.get("synthesis") and mode == "train" and method.trainable:
        from zscir_jax.synthesis import engine

        with renamed_keys("config.synthesis"):
            engine.check_config(config.synthesis)
    from zscir_jax.evaluation import joint

    joint.check(config, method)
    mesh = _check_mesh(config)
    if training:
        _check_batch(config, mesh)


def _check_mesh(config) -> None:
    """The mesh the run will build, built now: ``sharding.make_mesh``'s own checks, reported as the config key."""
    import jax

    from zscir_jax import sharding

    shape = tuple(config.mesh.shape)
    try:
        mesh = sharding.make_mesh(shape)
    except ValueError as e:
        raise UserError(f"config.mesh.shape={shape}: needs (data, fsdp, model) whose product is the "
                        f"{jax.device_count()} devices (one entry may be -1 to take the rest): {e}") from None
    return mesh


def _check_batch(config, mesh) -> None:
    """The global batch splits evenly over the data-parallel devices (data x fsdp)."""
    width = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = config.train.batch_size
    if batch % width:
        raise UserError(f"config.train.batch_size={batch}: must be a multiple of the {width} data-parallel devices "
                        f"(config.mesh.shape={tuple(config.mesh.shape)}: data x fsdp = {width}); e.g. "
                        f"{max(width, batch // width * width)}")


def check_paths(config, method, *, mode: str) -> None:
    """Inputs named by the config that must exist (after the demo's preparation has filled in its own)."""
    path = config.model.get("clip_path", "")
    if path and not os.path.exists(os.path.expanduser(path)):
        raise UserError(f"config.model.clip_path={path!r}: no such file or directory (a local transformers / "
                        "OpenCLIP CLIP checkpoint)")
    mllm_path = config.model.get("mllm_path", "")
    if mllm_path and not os.path.isdir(os.path.expanduser(mllm_path)):
        raise UserError(f"config.model.mllm_path={mllm_path!r}: no such directory (a transformers LLaVA checkpoint or "
                        "a zscir_jax MLLM export)")
    tok = config.data.get("tokenizer", "")
    if tok and not os.path.isdir(tok):
        raise UserError(f"config.data.tokenizer={tok!r}: no such directory")
    training = mode == "train" and method.trainable and config.train.get("steps", 0) > 0
    if training and method.batch == "triplets" and config.data.get("source") == "triplets":
        from zscir_jax.data import sources

        sources.triplet_sources(config)  # raises naming a missing file or a bad format
    if training and config.data.get("image_dir") and not os.path.isdir(config.data.image_dir):
        raise UserError(f"config.data.image_dir={config.data.image_dir!r}: no such directory")


def check_workdir(workdir: str) -> None:
    """The workdir can be created and written to."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--workdir {workdir}: not writable ({e.strerror})") from None
