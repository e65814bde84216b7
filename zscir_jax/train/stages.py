"""Earlier training stages of one job (``config.stages``): each trains its own method in ``<workdir>/<stage>``, before
the main method, and hands it what it made.

    config.stages.<name> = dict(
        method="pic2word",                      # a registered method with an ``export``
        output="model.pic2word.init_from",      # the main config's key that receives the stage's export path
        evaluate=True,                          # also a row <name> of results.json (the stage's model)
        train=dict(steps=500), optim=dict(...), loss=dict(...), model=dict(...),  # overrides of the main config
    )

A stage's config is the main config with the stage's overrides merged in (nested dicts key by key), without the
main-only parts (stages, preparation, synthesis, evals, joint inference). Stages run in the order of their names
(``ml_collections`` keeps a ConfigDict's keys sorted; prefix them, e.g. ``s1_align``, ``s2_...``, when one reads
another's output); a later stage's config sees what the earlier ones set. Each resumes from its
checkpoints like the main run; its export is written once per final step (``<stage>/export`` plus a marker naming the
step), so a rerun of a finished job trains and exports nothing. ``mode=eval`` trains nothing: every stage's export must
exist already.
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from zscir_jax.errors import UserError

RESERVED = ("method", "output", "evaluate")
MAIN_ONLY = ("stages", "prepare", "synthesis", "evals", "warmup")
EXPORT_DIR, EXPORT_MARKER = "export", "stage_export.json"


@dataclasses.dataclass
class StageRun:
    name: str
    config: ml_collections.ConfigDict
    method: object
    run_dir: str
    evaluate: bool
    model: object = None  # in memory when this job trained it, else restored on demand

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.run_dir, "checkpoints")


def names(config) -> list[str]:
    return list((config.get("stages") or {}).keys())


def stage_config(config, name: str) -> ml_collections.ConfigDict:
    """The main config with stage ``name``'s overrides; a ``UserError`` names an override key that does not exist."""
    entry = config.stages[name]
    c = config.copy_and_resolve_references()
    c.unlock()
    for key in MAIN_ONLY:
        if key in c:
            del c[key]
    c.evals = ml_collections.ConfigDict()
    c.eval.update(compare=(), untrained=False)
    if "joint" in c:
        c.joint = ml_collections.ConfigDict(dict(mode="query", weight=1.0, also=()))
    if "method" not in entry:
        raise UserError(f"config.stages.{name}.method is missing: name the method this stage trains")
    c.method = entry.method
    for key, value in entry.items():
        if key not in RESERVED:
            _merge(c, key, value, f"config.stages.{name}")
    return c


def _merge(c, key: str, value, where: str) -> None:
    """``c[key] = value``, nested dicts merged key by key; a new key is allowed only below an existing section."""
    if key not in c and where.count(".") < 3:  # config.stages.<name>.<section>: sections must exist
        raise UserError(f"{where}.{key}: the main config has no {key!r} section to override")
    current = c.get(key)
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, (dict, ml_collections.ConfigDict)):
        for k, v in value.items():
            _merge(current, k, v, f"{where}.{key}")
    else:
        c[key] = value


def check(config, mode: str) -> None:
    """Every stage's config, method and output key, before anything runs."""
    from zscir_jax import methods
    from zscir_jax.train import preflight

    for name in names(config):
        entry = config.stages[name]
        sc = stage_config(config, name)
        method = methods.get(sc.method)
        if not method.trainable:
            raise UserError(f"config.stages.{name}.method={sc.method!r} is training-free: nothing to train in a stage")
        output = entry.get("output", "")
        if output:
            if method.export is None:
                raise UserError(f"config.stages.{name}.output={output!r}: method {sc.method} exports nothing")
            _parent(config, output, f"config.stages.{name}.output")
        try:
            preflight.check(sc, method, mode="train")
        except UserError as e:  # the key may come from the stage's overrides or from the main config
            raise UserError(f"stage {name} (config.stages.{name} over the main config): {e}") from None


def _parent(config, dotted: str, key: str):
    *path, leaf = dotted.split(".")
    node = config
    for part in path:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise UserError(f"{key}={dotted!r}: the main config has no section {'.'.join(path)!r}")
        node = node[part]
    return node, leaf


def run(config, workdir: str, mesh, mode: str) -> list[StageRun]:
    """Train (or, in eval mode, find) every stage in order and point the main config at each export."""
    from zscir_jax import methods
    from zscir_jax.train import writers

    runs = []
    for name in names(config):
        entry = config.stages[name]
        sc = stage_config(config, name)  # after the earlier stages set their outputs
        run_ = StageRun(name, sc, methods.get(sc.method), os.path.join(workdir, name), bool(entry.get("evaluate")))
        export_dir = os.path.join(run_.run_dir, EXPORT_DIR)
        if mode == "train":
            from zscir_jax.train import trainer

            trainer.resolve_epochs(sc, run_.method)
            step = _final_step(run_)
            if step is None or _exported_step(export_dir) != step:
                writers.say(f"stage {name}: training {sc.method} in {run_.run_dir}")
                run_.model = trainer.train(sc, run_.run_dir, mesh)
                if entry.get("output"):
                    run_.method.export(run_.model, sc, export_dir)
                _mark_exported(export_dir, _final_step(run_))
        elif entry.get("output") and _exported_step(export_dir) is None:
            raise UserError(f"config.mode=eval: stage {name} has no export in {export_dir} (run the job in train mode "
                            "first)")
        if entry.get("output"):
            node, leaf = _parent(config, entry.output, f"config.stages.{name}.output")
            node[leaf] = export_dir
        runs.append(run_)
    return runs


def _final_step(run_: StageRun):
    """The stage's last checkpoint step when it reached config.train.steps, else None."""
    from zscir_jax.train import checkpoint as ckpt_lib

    latest = ckpt_lib.latest_in(run_.checkpoints)
    return latest if latest is not None and latest >= run_.config.train.steps else None


def _exported_step(export_dir: str):
    try:
        with open(os.path.join(export_dir, EXPORT_MARKER)) as f:
            return json.load(f)["step"]
    except (OSError, ValueError, KeyError):
        return None


def _mark_exported(export_dir: str, step: int) -> None:
    import jax

    from zscir_jax import files

    if jax.process_index() != 0:
        return
    os.makedirs(export_dir, exist_ok=True)
    files.write_json_atomic(os.path.join(export_dir, EXPORT_MARKER), {"step": int(step)})


def model_of(run_: StageRun, mesh):
    """The stage's trained model: the one in memory, else restored from its last checkpoint."""
    if run_.model is None:
        from zscir_jax.train import trainer

        run_.model = trainer.restore_model(run_.config, run_.checkpoints, mesh, run_.method)
    return run_.model
