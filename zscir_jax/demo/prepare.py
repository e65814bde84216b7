"""The demo's preparation stages (``config.prepare``): everything a run needs that no download can give offline.

1. build the synthetic scenes benchmark in ``<workdir>/scenes``, in the official CIRR, FashionIQ and CIRCO layouts;
   or with ``config.prepare.world="garments"`` the garment benchmark (``data.garments``) in ``<workdir>/garments``,
   FashionIQ layout only (the fashion demo)
2. synthesise training triplets from its train image-caption pairs with the rule-based generator (scenes only: the
   garment world's triplets come from ``config.prepare.synthesis``, step 5)
3. train a word tokenizer on the train captions and triplet texts
4. warm up a tiny CLIP contrastively on the train pairs (``config.warmup``), standing in for a pretrained VLM, and
   export it to ``<workdir>/clip_pretrain/export``
5. with ``config.prepare.synthesis`` (a ``configs/synth`` config), synthesise triplets with the demo MLLM and train
   on those instead of the rule-based ones (that config, and ``config.joint.synthesis``, are pointed at the scenes
   built in step 1, so the demo MLLM they build trains on the same benchmark)
6. with ``config.prepare.mllm_as_model``, point ``config.model.mllm_path`` at that demo MLLM (a method that runs an
   MLLM itself: DistillCIR's teacher)
Then ``config`` points at what was made (clip_path, tokenizer, triplets, and the roots of the ``config.evals``
entries whose ``root`` is empty: by reader, the scenes in that layout). Every stage is skipped when its output
already exists, and the warm-up resumes from its checkpoints, so a rerun of the demo is cheap. The settings the
stages depend on are recorded in ``<workdir>/prepare.json`` (``train.provenance``); a rerun that changes one is
refused in one line naming it, before any stage runs.
"""
from __future__ import annotations

import os

import jax
from absl import logging

from zscir_jax import sharding
from zscir_jax.errors import UserError
from zscir_jax.train import provenance, writers

WORLDS = ("scenes", "garments")


def run(config, workdir: str, *, reuse_prepared: bool = False) -> None:
    """``reuse_prepared``: a workdir already prepared is used as it is, whatever its recorded settings (the demo
    MLLM's own preparation: it builds on the benchmark and towers of the run that asked for it)."""
    from zscir_jax.data import tokenizer
    from zscir_jax.methods import base
    from zscir_jax.train import trainer

    p = config.prepare
    seed = int(p.get("seed", config.seed))  # the benchmark's and warm-up's; config.seed is the trained method's
    world = p.get("world", "scenes")
    if world not in WORLDS:
        raise UserError(f"config.prepare.world={world!r}: allowed values are {', '.join(WORLDS)}")
    # Outputs made under other settings are never reused: a changed key is refused before any stage runs.
    record = os.path.join(workdir, "prepare.json")
    if not (reuse_prepared and os.path.isfile(record)):  # (a reuse is the asking run's own, announced by it)
        provenance.check_or_write(record, provenance.record(config, provenance.PREPARED, workdir,
                                                            {"prepare.seed": seed}),
                                  "the prepared benchmark, triplets, tokenizer and towers")
        writers.say(f"demo: preparing the {world} benchmark, triplets, tokenizer and CLIP in {workdir}")
    if world == "garments":
        root, layouts, records, texts = _garments(p, seed, workdir)
    else:
        root, layouts, records, texts = _scenes(p, seed, workdir)
        config.data.triplets = os.path.join(workdir, "triplets", "rule_based.jsonl")

    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")) and jax.process_index() == 0:
        tokenizer.build_word_tokenizer(texts + [t for r in records for t in _texts(r)], tok_dir,
                                       max_length=config.data.max_length)
    sharding.sync("zscir_prepare:tokenizer")
    tok = tokenizer.Tokenizer.from_dir(tok_dir, config.data.max_length)

    config.data.tokenizer = tok_dir
    config.data.pairs_root = root
    for name, entry in (config.get("evals") or {}).items():
        if not entry.get("root"):
            if entry.reader not in layouts:
                raise UserError(f"config.evals.{name}.reader={entry.reader!r}: the {world} benchmark has only the "
                                f"{', '.join(layouts)} layout(s); set config.evals.{name}.root or remove the entry")
            entry.root = layouts[entry.reader]
    tiny = config.model.clip_tiny
    tiny.vocab_size, tiny.eos_token_id, tiny.max_length = tok.vocab_size, tok.eos_token_id, config.data.max_length

    if config.get("warmup") and config.warmup.train.steps > 0:
        export = os.path.join(workdir, "clip_pretrain", "export")
        if not os.path.isfile(os.path.join(export, base.EXPORT_MARKER)):
            w = config.copy_and_resolve_references()
            w.unlock()
            w.method = "clip_pretrain"
            w.seed = seed
            w.model.clip_path = ""
            w.optim = config.warmup.optim
            w.train = config.warmup.train
            w.data.source = "pairs"
            w.evals = {}
            model = trainer.train(w, os.path.join(workdir, "clip_pretrain"), sharding.make_mesh(tuple(config.mesh.shape)))
            base.export_towers(model, export)  # every process (a collective save); process 0 writes the marker
        sharding.sync("zscir_prepare:export")
        config.model.clip_path = export

    for synth in (p.get("synthesis"), (config.get("joint") or {}).get("synthesis")):
        if synth is not None and synth.data.kind == world:
            align_synthesis(synth, p, seed, root)
    if p.get("synthesis"):
        from zscir_jax.synthesis import engine

        config.data.triplets = engine.run_for_training(p.synthesis, workdir)
    if p.get("mllm_as_model"):  # the method itself runs the demo MLLM (DistillCIR's teacher)
        from zscir_jax.demo import mllm as demo_mllm

        config.model.mllm_path = demo_mllm.build_or_reuse(p.synthesis, workdir)


def _scenes(p, seed: int, workdir: str):
    """The scenes benchmark and its rule-based triplets: (root, reader -> root, records, tokenizer texts)."""
    from zscir_jax.data import scenes, triplets
    from zscir_jax.synthesis import rule_based

    root = os.path.join(workdir, "scenes")
    triplet_path = os.path.join(workdir, "triplets", "rule_based.jsonl")
    if jax.process_index() == 0:  # the others wait, then read what it wrote
        scenes.build(root, num_train=p.num_train, num_val_queries=p.num_val_queries,
                     num_test_queries=p.num_test_queries, image_size=p.render_size, seed=seed)
        if not os.path.isfile(triplet_path):
            records = rule_based.generate(root, seed=seed, max_per_image=p.triplets_per_image)
            logging.info("rule-based synthesis: %s", getattr(records, "stats", len(records)))
            triplets.write_jsonl(records, triplet_path, relative_under=workdir)
    sharding.sync("zscir_prepare:scenes")
    layouts = {"cirr": root, "fashioniq": scenes.fashioniq_root(root), "circo": scenes.circo_root(root)}
    return root, layouts, triplets.read_jsonl(triplet_path), [c for _, c in scenes.train_pairs(root)]


def _garments(p, seed: int, workdir: str):
    """The garment benchmark (FashionIQ layout): (root, reader -> root, no records, tokenizer texts: the train
    captions and every phrase the garment grammar can write, so the triplets the synthesis writes later are known
    words)."""
    from zscir_jax.data import garments

    root = os.path.join(workdir, "garments")
    if jax.process_index() == 0:
        garments.build(root, num_train=p.num_train, num_val_queries=p.num_val_queries,
                       num_test_queries=p.num_test_queries, image_size=p.render_size, seed=seed)
    sharding.sync("zscir_prepare:garments")
    texts = [c for _, c in garments.train_pairs(root)] + list(garments.phrase_texts())
    return root, {"fashioniq": root}, [], texts


def align_synthesis(synth, p, seed: int, root: str) -> None:
    """A synthesis config on the scenes (and the demo MLLM it builds) reads the benchmark this preparation built:
    its own ``data.scenes`` would otherwise rebuild ``root`` with other parameters under the run's feet."""
    synth.data.root = root
    synth.data[p.get("world", "scenes")].update(num_train=int(p.num_train), num_val_queries=int(p.num_val_queries),
                             num_test_queries=int(p.num_test_queries), image_size=int(p.render_size), seed=seed)


def _texts(record) -> list[str]:
    out = []
    for field in ("modification_text", "target_text", "caption"):
        v = getattr(record, field, None)
        if isinstance(v, str):
            out.append(v)
    return out
