"""``train_and_evaluate(config, workdir)``: prepare data, train the configured method, evaluate, print one table.

Workdir layout:
    <workdir>/<run>/checkpoints/<step>/{state,data,meta}    Orbax; a rerun resumes from the latest step
    <workdir>/<run>/tensorboard/                            CLU summaries
    <workdir>/<name>/eval/<benchmark>_<split>.{json,png}    one directory per evaluated method
    <workdir>/results.json                                  the comparison table as JSON

``config.prepare`` (optional, the demo) runs before training: it builds the synthetic scenes benchmark, a word
tokenizer, a contrastive CLIP warm-up (``config.warmup``, itself a full run config) and rule-based triplets, and
points ``config.model.clip_path`` / ``config.data.triplets`` / ``config.eval.benchmark`` at what it made.
The trainer never branches on the method's name: everything method-specific is behind ``methods.get(name)``.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from zscir_jax import methods, sharding
from zscir_jax.train import checkpoint as ckpt_lib
from zscir_jax.train import encoders, optimizer, step as step_lib, writers


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


def train_and_evaluate(config, workdir: str) -> dict:
    """Run everything ``config`` asks for in ``workdir``; returns {name: metrics} of the evaluation (may be empty)."""
    config = _unlocked(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    if config.get("prepare"):
        from zscir_jax.train import prepare

        prepare.run(config, workdir)
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    method = methods.get(config.method)
    model = None
    if method.BATCH is not None and config.train.steps > 0:
        model = train(config, os.path.join(workdir, config.method), mesh)
    results = {}
    if config.eval.get("benchmark"):
        results = evaluate_all(config, workdir, mesh, model)
    logging.info("train_and_evaluate finished in %.1f s", time.perf_counter() - t0)
    return results


def _unlocked(config):
    config = config.copy_and_resolve_references()
    config.unlock()
    return config


# ----------------------------------------------------------------------------------------------------------------
# Data


def tokenizer_for(config):
    """The word tokenizer at ``config.data.tokenizer``, else the CLIP checkpoint's own."""
    if config.data.get("tokenizer"):
        from zscir_jax.data import tokenizer as tok_lib

        return tok_lib.Tokenizer.from_dir(config.data.tokenizer, config.data.max_length)
    if config.model.get("clip_path"):
        from zscir_jax.models import clip

        return clip.load_tokenizer(config.model.clip_path, config.data.max_length)
    raise ValueError("no tokenizer: set config.data.tokenizer (a word tokenizer directory) or config.model.clip_path")


def make_data(config, kind: str):
    """This process's iterator of host batches (``global_batch_size / process_count`` rows each)."""
    pc, pi = jax.process_count(), jax.process_index()
    gbs = config.train.batch_size
    if gbs % pc:
        raise ValueError(f"config.train.batch_size={gbs} is not divisible by the {pc} processes")
    d = config.data
    if d.source == "random":
        from zscir_jax.train import fake_data

        tiny = config.model.clip_tiny
        return fake_data.RandomTriplets(batch_size=gbs // pc, image_size=tiny.image_size, max_length=tiny.max_length,
                                        vocab_size=tiny.vocab_size, seed=config.seed * 1000 + pi, kind=kind,
                                        nan_at=d.get("nan_at", -1))
    from zscir_jax.data import pipeline

    common = dict(global_batch_size=gbs, image_size=d.image_size, tokenizer=tokenizer_for(config), seed=config.seed,
                  process_index=pi, process_count=pc, worker_count=d.worker_count, on_error=d.on_error)
    if kind == "pairs":
        return pipeline.pair_loader(load_pairs(config), **common)
    return pipeline.triplet_loader(load_triplets(config), **common)


def load_triplets(config):
    from zscir_jax.data import triplets

    path = config.data.triplets
    if not path:
        raise ValueError("config.data.triplets is empty: give a JSONL of triplet records (or use configs/demo.py)")
    fmt = config.data.get("laion_format", "")
    if fmt == "template":
        return triplets.from_laion_template(path, config.data.image_dir)
    if fmt == "llm":
        return triplets.from_laion_llm(path, config.data.image_dir)
    return triplets.read_jsonl(path)


def load_pairs(config):
    from zscir_jax.data import scenes

    return scenes.train_pairs(config.data.pairs_root)


# ----------------------------------------------------------------------------------------------------------------
# Training


def train(config, run_dir: str, mesh):
    """Train ``config.method`` in ``run_dir`` (resuming from its latest checkpoint); returns the trained model."""
    method = methods.get(config.method)
    tc = config.train
    tx, schedules = optimizer.make(config.optim, tc.steps * config.optim.get("accumulate", 1))
    ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), every=tc.checkpoint_every,
                                 keep=tc.keep_checkpoints, use_async=tc.async_checkpoints)
    latest = ckpt.latest_step()
    ts = step_lib.build(method, config, mesh, tx, abstract=latest is not None)
    meta = ckpt_lib.resume_meta(config, ts.state)
    data = make_data(config, method.BATCH)
    state, start = ts.state, 0
    if latest is not None:
        ckpt_lib.check_compatible(ckpt.read_meta(latest), meta, ckpt.directory)
        state = ckpt.restore(latest, ts.state, data)
        start = latest
        logging.info("resumed %s from step %d", run_dir, latest)
    writer = writers.create(run_dir)
    if jax.process_index() == 0 and start == 0:
        writer.write_hparams({k: str(v) for k, v in _flat(config.to_dict()).items()})
    train_step, finite, t_log, s_log = None, None, time.perf_counter(), start
    bar = writers.progress(tc.steps, start, config.method, tc.get("progress_bar", True))
    try:
        for s in range(start, tc.steps):
            batch = next(data)
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
                    t_log, s_log = now, n
                    writer.write_scalars(n, scalars)
                    _append_jsonl(os.path.join(run_dir, "metrics.jsonl"), {"step": n, **scalars})
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}")
            if save:
                ckpt.save(n, state, data, meta, force=last)
            if tc.get("eval_every") and n % tc.eval_every == 0 and not last and config.eval.get("benchmark"):
                _evaluate_one(config, run_dir, mesh, method, ts.model(state), config.method, step=n)
    finally:
        bar.close()
        ckpt.close()
        writer.flush()
    return ts.model(state)


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
    if jax.process_index() == 0:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str) -> dict[int, dict]:
    """step -> the last logged scalars for that step (a resumed run may log a step twice)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row
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


def evaluate_all(config, workdir: str, mesh, trained=None) -> dict:
    """The trained method, optionally its initialisation, and ``config.eval.compare``, on one benchmark."""
    method = methods.get(config.method)
    entries = []
    if method.BATCH is None or trained is not None:
        entries.append((config.method, method, trained))
    if config.eval.get("untrained") and method.BATCH is not None:
        entries.append((f"{config.method}_untrained", method, None))
    entries += [(name, methods.get(name), None) for name in config.eval.get("compare", ())]
    results = {}
    for name, m, model in entries:
        if model is None:
            with sharding.activate(mesh):
                model = m.build(config, nnx.Rngs(config.seed))
        results[name] = _evaluate_one(config, workdir, mesh, m, model, name)
    keys = config.eval.get("table_metrics") or None
    rows = {n: {k: v for k, v in r.items() if ("@" in k or k == "recall_avg") and (keys is None or k in keys)}
            for n, r in results.items()}
    from zscir_jax.evaluation import report

    table = report.format_table(rows)
    if jax.process_index() == 0:
        print(f"\n{config.eval.benchmark} ({config.eval.split}):\n{table}", flush=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
    return results


def _evaluate_one(config, workdir, mesh, method, model, name, step=None):
    from zscir_jax.data import cirr
    from zscir_jax.evaluation import evaluator

    bench = cirr.load(config.eval.benchmark, config.eval.split)
    enc = encoders.MethodEncoder(method, model, tokenizer_for(config), mesh, batch_size=config.eval.batch_size)
    out_dir = os.path.join(workdir, name) if step is None else workdir
    return evaluator.evaluate(bench, enc, image_size=config.data.image_size, batch_size=config.eval.batch_size,
                              workdir=out_dir, cache_key=None, log=logging.info)
