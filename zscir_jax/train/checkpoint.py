"""One Orbax CheckpointManager per run with three items:

    state  the NNX state of (model, optimizer) - optimizer step included - saved with StandardSave and restored
           into an abstract target that carries the CURRENT shardings (never the saved ones)
    data   the input iterator's position (Grain's own handler when the iterator is a Grain iterator, else its
           get_state() as JSON)
    meta   JSON: what a resume must agree on (model shapes, global batch size, process count, method)

Saves are periodic (``save_interval_steps``), asynchronous, keep the last k, and also happen when the job is being
preempted (``reached_preemption``).
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from zscir_jax.errors import UserError
from zscir_jax.train import provenance


class IncompatibleResume(UserError):
    """The workdir holds a checkpoint of a run whose config differs in something a resume cannot bridge."""


def _is_grain_iterator(it) -> bool:
    try:
        import grain

        kinds = tuple(k for k in (getattr(grain, "DatasetIterator", None),
                                  getattr(getattr(grain, "python", None), "DataLoaderIterator", None)) if k)
        from grain._src.python import data_loader
        from grain._src.python.dataset import dataset

        kinds += (dataset.DatasetIterator, data_loader.DataLoaderIterator)
        return isinstance(it, kinds)
    except ImportError:  # pragma: no cover
        return False


def latest_in(directory: str) -> int | None:
    """The newest finished step in a manager directory (Orbax renames a step's temp folder to ``<step>`` only once
    it is complete), or None; never creates anything."""
    if not os.path.isdir(directory):
        return None
    steps = [int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n))]
    return max(steps, default=None)


def is_step_dir(path: str) -> bool:
    """``path`` is one step of a manager directory (``.../checkpoints/<step>`` holding a ``state`` item)."""
    return os.path.basename(os.path.normpath(path)).isdigit() and os.path.isdir(os.path.join(path, "state"))


def split_step_dir(path: str) -> tuple[str, int | None]:
    """(manager directory, step) of a step directory; (path, None) for a manager directory."""
    path = os.path.abspath(path)
    if is_step_dir(path):
        return os.path.dirname(path), int(os.path.basename(path))
    return path, None


class Checkpointer:
    def __init__(self, directory: str, *, every: int, keep: int | None, use_async: bool = True, create: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(every), 1), max_to_keep=keep, create=create,
            enable_async_checkpointing=use_async)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step) or self.manager.reached_preemption(step)

    def save(self, step: int, state, data_iter, meta: dict, *, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            args["data"] = self._data_save(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def _data_save(self, it):
        if _is_grain_iterator(it):
            import grain

            return grain.checkpoint.CheckpointSave(it)
        return ocp.args.JsonSave({"state": it.get_state()})

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state, data_iter):
        """State restored into ``abstract_state`` (ShapeDtypeStructs with shardings); the data iterator in place."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        grain_iter = data_iter is not None and _is_grain_iterator(data_iter)
        if data_iter is not None:
            import grain

            args["data"] = (grain.checkpoint.CheckpointRestore(data_iter) if grain_iter
                            else ocp.args.JsonRestore())
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        if data_iter is not None and not grain_iter:
            data_iter.set_state(out["data"]["state"])
        return out["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def resume_meta(config, state, process_count: int | None = None, workdir: str | None = None) -> dict:
    """What must match for a resume: every parameter's shape, the global batch size, process count, method; with
    ``workdir``, also the config keys the training depends on (``provenance.TRAINED``, paths relative to it)."""
    from flax import nnx

    shapes = {"/".join(map(str, path)): list(v.shape)
              for path, v in nnx.to_flat_state(state) if hasattr(v, "shape") and path[0] == 0}
    meta = {
        "method": config.method,
        "global_batch_size": int(config.train.batch_size),
        "process_count": int(jax.process_count() if process_count is None else process_count),
        "param_shapes": shapes,
    }
    if workdir is not None:
        meta["config"] = provenance.record(config, provenance.TRAINED, workdir, provenance.input_fingerprints(config))
    return meta


def check_compatible(saved: dict, current: dict, directory: str,
                     keys=("method", "global_batch_size", "process_count")) -> None:
    """Raises ``IncompatibleResume`` (one line) listing every difference in ``keys``, in the parameter shapes and,
    where both sides recorded it, in the training config (checkpoints written before that record are not compared
    on it)."""
    problems = []
    for key in keys:
        if saved.get(key) != current.get(key):
            problems.append(f"{key}: checkpoint has {saved.get(key)!r}, config has {current.get(key)!r}")
    a, b = saved.get("param_shapes", {}), current.get("param_shapes", {})
    diffs = [f"{k}: checkpoint {a.get(k)} vs model {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        problems.append("model shape differs: " + "; ".join(diffs[:5]) + more)
    if "config" in saved and "config" in current:
        changed = provenance.changes(saved["config"], current["config"])
        if changed:
            problems.append("settings changed: " + provenance.describe(changed))
    if problems:
        raise IncompatibleResume(
            f"cannot resume from {directory}: the config changed incompatibly since the checkpoint was written ("
            + "; ".join(problems) + "): use a new --workdir, or restore the original settings")
