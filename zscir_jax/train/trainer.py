"""``train_and_evaluate(config, workdir)``: prepare data, train the configured method, evaluate, print the results.

Workdir layout:
    <workdir>/<run>/checkpoints/<step>/{state,data,meta}    Orbax; a rerun resumes from the latest step
    <workdir>/<run>/tensorboard/                            CLU summaries
    <workdir>/<run>/metrics.jsonl                           train scalars and periodic ``eval/<name>/<metric>``
    <workdir>/<method>/eval/<eval name>_<split>.{json,png}  one directory per evaluated method
    <workdir>/results.json                                  {method: {eval name: {metric: value}}}

``config.synthesis`` (a ``configs/synth`` config) writes the training triplets first (``synthesis.engine``; cached, so
a rerun generates nothing) and trains on them. ``config.joint``: joint inference rows (``evaluation.joint``).

``config.mode``: "train" (train, or resume, then evaluate) or "eval" (restore the newest checkpoint in the workdir,
or ``config.init_from``, and evaluate; nothing is trained). ``config.prepare`` (the demo) runs first, see
``zscir_jax.demo.prepare``. ``config.evals`` lists the benchmarks (``zscir_jax.evaluation.suite``).
The trainer never branches on the method's name: everything method-specific is behind ``methods.get(name)``.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from zscir_jax import files, methods, sharding
from zscir_jax.data import sources
from zscir_jax.errors import UserError
from zscir_jax.evaluation import suite
from zscir_jax.train import checkpoint as ckpt_lib
from zscir_jax.train import optimizer, preflight, stages, step as step_lib, workdir_lock, writers

MODES = ("train", "eval")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


def train_and_evaluate(config, workdir: str) -> dict:
    """Run everything ``config`` asks for in ``workdir``; returns {method: {eval name: metrics}} (may be empty).

    Every check a user's mistake can fail (mode, method, values, evals, something to restore, a writable workdir
    that no other job holds) runs before any long stage.
    """
    config = _unlocked(config)
    workdir = os.path.abspath(workdir)
    t0 = time.perf_counter()
    mode = config.get("mode", "train")
    if mode not in MODES:
        raise UserError(f"config.mode={mode!r}: allowed values are {', '.join(MODES)}")
    method = methods.get(config.method)
    preflight.check(config, method, mode=mode)
    stages.check(config, mode)
    all_evals = suite.specs(config)
    restore_from = None
    if mode == "eval":
        restore_from = find_restore_source(config, workdir, method)
        if not all_evals:
            raise UserError("config.mode=eval but config.evals is empty: nothing to evaluate")
    preflight.check_workdir(workdir)
    lock = workdir_lock.WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        if config.get("prepare"):
            from zscir_jax.demo import prepare

            prepare.run(config, workdir)
        if config.get("synthesis") and mode == "train" and method.trainable:
            from zscir_jax.synthesis import engine

            config.data.triplets = engine.run_for_training(config.synthesis, workdir)
        mesh = sharding.make_mesh(tuple(config.mesh.shape))
        stage_runs = stages.run(config, workdir, mesh, mode)
        preflight.check_paths(config, method, mode=mode)
        evals = suite.usable(suite.specs(config), writers.warn)
        model = None
        if mode == "train" and method.trainable:
            resolve_epochs(config, method)
        if mode == "train" and method.trainable and config.train.steps > 0:
            model = train(config, os.path.join(workdir, config.method), mesh, evals)
        elif mode == "eval" and method.trainable:
            model = restore_model(config, restore_from, mesh, method)
        results = evaluate_all(config, workdir, mesh, model, evals, stage_runs) if evals else {}
    finally:
        if lock is not None:
            lock.release()
    logging.info("train_and_evaluate finished in %.1f s", time.perf_counter() - t0)
    return results


def resolve_epochs(config, method) -> None:
    """``config.train.epochs`` > 0 sets ``config.train.steps`` to that many passes over the training records (rounded
    up to whole global batches; Table-7-style configs give epochs, and the record count is known only now)."""
    epochs = config.train.get("epochs", 0) or 0
    if not epochs:
        return
    if config.data.get("source", "triplets") == "random":
        raise UserError("config.train.epochs needs real training data (config.data.source is 'random'): set "
                        "config.train.steps instead")
    n = len(sources.load_pairs(config) if method.batch == "pairs" else sources.load_triplets(config))
    if method.batch == "pairs":  # each pair is read once as an anchor and again as others' neighbour
        n *= 1 + sources.neighbour_count(config)
    config.train.steps = max(1, -(-int(epochs * n) // int(config.train.batch_size)))
    writers.say(f"{config.method}: {epochs} epoch(s) of {n} records at batch {config.train.batch_size} = "
                f"{config.train.steps} steps")


def _unlocked(config):
    config = config.copy_and_resolve_references()
    config.unlock()
    return config


# ----------------------------------------------------------------------------------------------------------------
# Restoring for evaluation


def find_restore_source(config, workdir: str, method) -> str | None:
    """The checkpoint (or exported CLIP) that ``mode=eval`` evaluates; a ``UserError`` when there is none.

    ``config.init_from``: a checkpoint directory (a run's ``checkpoints/``, its newest step is used, or one
    ``checkpoints/<step>``) or a CLIP exported by zscir_jax / a transformers CLIP (sets ``config.model.clip_path``).
    Otherwise the newest checkpoint in ``<workdir>/<method>/checkpoints``. Training-free methods need nothing.
    """
    init = os.path.expanduser(config.get("init_from", "") or "")
    if init:
        if not os.path.exists(init):
            raise UserError(f"config.init_from={init!r}: no such file or directory")
        if ckpt_lib.is_step_dir(init) or ckpt_lib.latest_in(init) is not None:
            return init
        from zscir_jax.methods import base

        if base.towers_config_from_path(init) is None:
            raise UserError(f"config.init_from={init!r} is neither a checkpoint directory nor a CLIP checkpoint")
        config.model.clip_path = init
        return None
    if not method.trainable:
        return None
    ckpt_dir = os.path.join(workdir, config.method, "checkpoints")
    if ckpt_lib.latest_in(ckpt_dir) is None:
        raise UserError(f"config.mode=eval: no checkpoint of {config.method} in {ckpt_dir} (train first, or set "
                        "config.init_from to a checkpoint directory)")
    return ckpt_dir


def restore_model(config, source: str | None, mesh, method):
    """The model of the checkpoint at ``source`` (a manager directory or one step of it); the optimizer state is
    restored alongside (the checkpoint holds both) and dropped."""
    if source is None:  # init_from named towers: the method's own build reads them
        with sharding.activate(mesh):
            return method.build(config, nnx.Rngs(config.seed))
    directory, step = ckpt_lib.split_step_dir(source)
    tx, _ = optimizer.make(config.optim, config.train.steps * config.optim.get("accumulate", 1))
    ts = step_lib.build(method, config, mesh, tx, abstract=True)
    ckpt = ckpt_lib.Checkpointer(directory, every=1, keep=None, use_async=False, create=False)
    try:
        step = ckpt.latest_step() if step is None else step
        ckpt_lib.check_compatible(ckpt.read_meta(step), ckpt_lib.resume_meta(config, ts.state), ckpt.directory,
                                  keys=("method",))
        state = ckpt.restore(step, ts.state, None)
    finally:
        ckpt.close()
    writers.say(f"{config.method}: evaluating the checkpoint of step {step} in {directory}")
    return ts.model(state)


# ----------------------------------------------------------------------------------------------------------------
# Training


def train(config, run_dir: str, mesh, evals=()):
    """Train ``config.method`` in ``run_dir`` (resuming from its latest checkpoint); returns the trained model.

    ``evals`` (``suite.EvalSpec``s) with ``every`` > 0 are evaluated every that many steps; their scalars go to
    TensorBoard and metrics.jsonl as ``eval/<name>/<metric>``."""
    method = methods.get(config.method)
    tc = config.train
    tx, schedules = optimizer.make(config.optim, tc.steps * config.optim.get("accumulate", 1))
    ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), every=tc.checkpoint_every,
                                 keep=tc.keep_checkpoints, use_async=tc.async_checkpoints)
    latest = ckpt.latest_step()
    ts = step_lib.build(method, config, mesh, tx, abstract=latest is not None)
    meta = ckpt_lib.resume_meta(config, ts.state, workdir=os.path.dirname(os.path.abspath(run_dir)))
    data = sources.make_loader(config, method)
    state, start = ts.state, 0
    if latest is not None:
        ckpt_lib.check_compatible(ckpt.read_meta(latest), meta, ckpt.directory)
        state = ckpt.restore(latest, ts.state, data)
        start = latest
        writers.say(f"{config.method}: resumed from step {latest} in {ckpt.directory}")
    periodic = [s for s in evals if s.every > 0]
    writer = writers.create(run_dir)
    if jax.process_index() == 0 and start == 0:
        writer.write_hparams({k: str(v) for k, v in _flat(config.to_dict()).items()})
    train_step, finite, t_log, s_log = None, None, time.perf_counter(), start
    bar = writers.progress(tc.steps, start, config.method, tc.get("progress_bar", True))
    try:
        for s in range(start, tc.steps):
            batch = _next_batch(data)
            if train_step is None:
                train_step = _compiled_step(method, config, ts, mesh, step_lib.batch_spec_of(batch))
            with jax.set_mesh(mesh):
                state, metrics = train_step(state, sharding.global_batch(mesh, batch))
            ok = jnp.isfinite(metrics["loss"])
            finite = ok if finite is None else jnp.logical_and(finite, ok)
            n = s + 1
            bar.update(1)
            last = n == tc.steps
            save = last or ckpt.should_save(n)
            if save or n % tc.log_every == 0:
                # Checked on the host before any save, so a NaN state is never written.
                if not bool(finite):
                    good = ckpt.latest_step()
                    raise TrainingDiverged(
                        f"{config.method}: the loss became NaN/inf at or before step {n} (last value "
                        f"{float(metrics['loss'])}); stopped without saving. Last good checkpoint: "
                        f"{'none' if good is None else f'step {good}'} in {ckpt.directory}. Lower the learning "
                        "rate (config.optim.lr), or enable clipping (config.optim.clip_norm).")
                if n % tc.log_every == 0 or last:
                    now = time.perf_counter()
                    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    scalars.update({f"lr/{k}": float(f(n)) for k, f in schedules.items()})
                    scalars["steps_per_second"] = (n - s_log) / max(now - t_log, 1e-9)
                    scalars.update(_skips(config, getattr(data, "stats", None)))
                    t_log, s_log = now, n
                    writer.write_scalars(n, scalars)
                    _append_jsonl(os.path.join(run_dir, "metrics.jsonl"), {"step": n, **scalars})
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
            if save:
                ckpt.save(n, state, data, meta, force=last)
            due = [s for s in periodic if n % s.every == 0 and not last]
            if due:
                scores = evaluate_periodic(config, due, mesh, method, ts.model(state), run_dir)
                writer.write_scalars(n, scores)
                _append_jsonl(os.path.join(run_dir, "metrics.jsonl"), {"step": n, **scores})
    finally:
        bar.close()
        ckpt.close()
        writer.flush()
    stats = getattr(data, "stats", None)
    if stats is not None and stats.skipped:
        writers.warn(f"{config.method}: {stats.summary()} under config.data.on_error=skip; last: {stats.last_error}")
    return ts.model(state)


def _skips(config, stats) -> dict:
    """``skipped/<kind>`` counts for the logs; stops the run (one line) when more than
    ``config.data.max_skip_fraction`` of the records read so far were skipped: bad data, not bad luck."""
    if stats is None:
        return {}
    from zscir_jax.data import pipeline

    limit = float(config.data.get("max_skip_fraction", pipeline.DEFAULT_MAX_SKIP_FRACTION))
    if stats.seen and stats.skipped / stats.seen > limit:
        raise UserError(f"{config.method}: {stats.summary()}, more than config.data.max_skip_fraction={limit} "
                        f"(last: {stats.last_error}); fix the data or raise the fraction")
    out = {f"skipped/{k}": float(stats.by_kind.get(k, 0)) for k in pipeline.SKIP_KINDS}
    out["skipped/fraction"] = stats.skipped / max(stats.seen, 1)
    return out


def _next_batch(data):
    """The next host batch; a missing or undecodable image under ``on_error=raise`` is the user's data: one line."""
    from zscir_jax.data import images

    try:
        return next(data)
    except images.ImageError as e:
        raise UserError(f"{e} (config.data.on_error=raise; 'skip' drops such records and counts them)") from None


_STEP_CACHE: dict = {}


def _compiled_step(method, config, ts, mesh, spec):
    """One jitted step per (model/loss/optimizer config, mesh, batch layout): reruns in a notebook or a test reuse it."""
    key = (config.method, config.seed, config.train.steps, config.model.to_json(), config.loss.to_json(),
           config.optim.to_json(), mesh.shape_tuple, tuple(d.id for d in mesh.devices.flat),
           tuple(sorted((k, v[0], str(v[1])) for k, v in spec.items())))
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = step_lib.make_train_step(method, config, ts, mesh, spec)
    return _STEP_CACHE[key]


def _append_jsonl(path, row):
    from zscir_jax import errors

    if jax.process_index() == 0:
        with errors.naming(path), open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str) -> dict[int, dict]:
    """step -> the scalars logged for that step, merged (train and eval rows; a resumed run may log a step twice,
    the later value wins)."""
    out: dict[int, dict] = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out.setdefault(row["step"], {}).update(row)
    return out


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def method_encoder(config, mesh, method, model):
    """The evaluator's encoder of ``method`` + ``model``: its query tokenizer and the towers' image normalisation."""
    from zscir_jax.data import images
    from zscir_jax.evaluation import encoders

    mean, std = images.normalization_for(config.model.get("clip_path", ""))
    tokenizer = sources.query_tokenizer(config, method)
    return encoders.MethodEncoder(method, model, tokenizer, mesh,
                                  batch_size=config.eval.batch_size, mean=mean, std=std)


def _target_texts(config, workdir: str, scorings):
    """``benchmark -> t-hat per query`` when a row needs the MLLM's target texts (``evaluation.joint``), else None."""
    if not any(s is not None and s.needs_texts for s in scorings):
        return None
    from zscir_jax.evaluation import joint
    from zscir_jax.synthesis import target_text

    writer = target_text.TargetTextWriter(config.joint.synthesis, workdir,
                                          progress=config.train.get("progress_bar", True))
    return joint.texts_function(writer)


def evaluate_periodic(config, evals, mesh, method, model, run_dir: str) -> dict:
    """``eval/<name>/<metric>`` scalars of the model in training, scored like its main result row (files go to
    ``<run_dir>/eval``)."""
    from zscir_jax.evaluation import joint

    enc = method_encoder(config, mesh, method, model)
    scoring = joint.rows(config, config.method)[0][1]
    texts_for = _target_texts(config, os.path.dirname(run_dir), [scoring])
    scalars = {}
    for spec in evals:
        out = suite.run(spec, suite.load(spec), enc, image_size=config.data.image_size,
                        batch_size=config.eval.batch_size, out_dir=run_dir, log=logging.info, scoring=scoring,
                        texts_for=texts_for)
        scalars.update({f"eval/{spec.name}/{k}": float(v) for k, v in out.items()
                        if "@" in k or k == "recall_avg"})
    return scalars


def evaluate_all(config, workdir: str, mesh, trained, evals, stage_runs=()) -> dict:
    """The method (trained, or restored), optionally its initialisation, the stages marked ``evaluate`` and
    ``config.eval.compare``, on every eval; prints one table per eval and writes ``results.json``."""
    from zscir_jax.evaluation import joint

    method = methods.get(config.method)
    own = joint.rows(config, config.method)  # the main row, then config.joint.also
    entries = []  # (row name, method, model: "trained" | "untrained" | "stage:<name>", scoring, its config)
    if not method.trainable or trained is not None:
        entries += [(name, method, "trained", scoring, config) for name, scoring in own]
    if config.eval.get("untrained") and method.trainable:
        entries.append((f"{config.method}_untrained", method, "untrained", own[0][1], config))
    entries += [(r.name, r.method, f"stage:{r.name}", None, r.config) for r in stage_runs if r.evaluate]
    entries += [(name, methods.get(name), "untrained", None, config) for name in config.eval.get("compare", ())]
    benchmarks = {spec.name: suite.load(spec) for spec in evals}  # read once, shared by every method
    texts_for = _target_texts(config, workdir, [e[3] for e in entries])
    stage_of = {f"stage:{r.name}": r for r in stage_runs}
    encoders: dict = {}  # one per (method, model), shared by that model's rows
    models: dict = {}
    results: dict = {}
    for name, m, which, scoring, cfg in entries:
        if (m.name, which) not in encoders:
            model = trained if which == "trained" else None
            if which in stage_of:
                model = stages.model_of(stage_of[which], mesh)
            elif model is None:
                with sharding.activate(mesh):
                    model = m.build(cfg, nnx.Rngs(cfg.seed))
            models[(m.name, which)] = model
            encoders[(m.name, which)] = method_encoder(cfg, mesh, m, model)
        enc = encoders[(m.name, which)]
        results[name] = {}
        for spec in evals:
            results[name][spec.name] = suite.run(spec, benchmarks[spec.name], enc, image_size=config.data.image_size,
                                                 batch_size=config.eval.batch_size,
                                                 out_dir=os.path.join(workdir, name), log=logging.info,
                                                 scoring=scoring, texts_for=texts_for)
            # The picture is computed eagerly on one host: skipped when the parameters span several processes.
            if m.explain is not None and which == "trained" and name == config.method and jax.process_count() == 1:
                path = os.path.join(workdir, name, "eval", f"{spec.name}_attention.png")
                m.explain(models[(m.name, which)], cfg, benchmarks[spec.name][0], path)
    if jax.process_index() == 0:
        print(format_results(config, evals, results), flush=True)
        path = os.path.join(workdir, "results.json")
        with files.atomic_text(path) as f:
            json.dump(results, f, indent=1, default=float)
    return results


def format_results(config, evals, results) -> str:
    """One table per eval (rows: methods), with what was skipped and where submission files are."""
    from zscir_jax.evaluation import report

    wanted = config.eval.get("table_metrics") or None
    parts = []
    for spec in evals:
        rows = {m: r[spec.name] for m, r in results.items()}
        cols = [c for c in suite.table_columns(spec, rows) if wanted is None or c in wanted
                or c.split("/")[-1] in wanted]
        table_rows = {m: {c: r[c] for c in cols if c in r} for m, r in rows.items()}
        parts.append(f"\n{spec.name}: {spec.reader} {spec.split} ({spec.root})")
        if any(table_rows.values()):
            parts.append(report.format_table(table_rows, columns=cols))
        first = next(iter(rows.values()), {})
        notes = [f"{k}={v}" for k, v in first.items()
                 if k.split("/")[-1] in ("skipped_queries", "limited_to") and v]
        if notes:
            parts.append("  note: evaluated on part of the split: " + ", ".join(notes))
        for f in first.get("submission_files", ()):
            parts.append(f"  submission file: {f}")
        if first.get("submission_problems"):
            parts.append("  submission problems: " + "; ".join(first["submission_problems"]))
    return "\n".join(parts)
