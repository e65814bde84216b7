r"""The demo MLLM: a tiny LLaVA trained in the workdir, standing in for a pretrained one (nothing can be downloaded).

    build_or_reuse(config, workdir) -> "<workdir>/demo_mllm/export"      (what the synthesis engine calls)
    python -m zscir_jax.demo.mllm --workdir /tmp/zscir_synth [--smoke]    (the same from a shell)

Architecture: LLaVA-1.5's (``models.mllm.MLLM``): our CLIP vision tower, initialised from the demo's warmed-up CLIP
(``<workdir>/clip_pretrain/export``, see ``demo.prepare``), its ``vision_feature_layer`` patch features (no CLS)
through the 2-layer GELU projector, spliced into a tiny Llama at the ``<image>`` placeholders (16 per 32-pixel image
with patch 8).

Teaching: the synthesis recipes' prompts (``synthesis.prompts``) on the scenes' TRAIN split only, with the exact
answers the scene generator computes (``demo.mllm_data``), each prompt sent through the tokenizer's chat template
and ``Processor.prompt_ids``, the code path that serves real LLaVA checkpoints. Loss: next-token cross entropy on
the answer tokens (and the closing eos) only. Each step is one batch shape (``train.groups``: short image prompts,
longer image prompts, short text prompts, DistillCIR's long prompt; a fixed [rows, length] of about
``train.tokens_per_batch`` tokens each, the step compiled ahead of time for every shape, two at a time); batch ``s``
is a pure function of (seed, s), so a resumed run sees the batches an uninterrupted one would. AdamW with warm-up
and cosine decay (``train.optimizer``; groups: vision tower, projector, LLM), Orbax checkpoints
(``train.checkpoint.Checkpointer``) in ``<workdir>/demo_mllm/checkpoints``, on the mesh ``mesh_shape`` (the demo's
CPU mesh: all devices on ``data``).

What it learns in the full setting's 4 minutes (``quality.json``; held-out VAL scenes): the formats of every prompt
(attribute lists and DistillCIR's three items parse), captions that are mostly right on colour, size and position but
weak on shape (small shapes are a few pixels at 32 px), edit texts in the training phrasings; NOT the text-only
reasoning (CoLLM's caption difference, DistillCIR's caption edit, relative captions), which stays near chance at this
budget: use the rule-based backend, or far more steps (``--set train.steps=...``), where those matter.

Worlds (``world_of(config)``, ``WORLDS``): the scenes, as above, unless the caller's config reads the garments
(``data.kind="garments"`` of a synthesis config, ``prepare.world="garments"`` of a demo config). Then it is taught on
the garments' TRAIN split (``data.garments``, built in ``<workdir>/garments`` by the garments' demo config,
``configs/fashion_demo.py`` / ``prepare.garments_config``) only the fashion recipe's two prompts with the answers the
rule-based garment backend gives (``demo.mllm_garments``: attribute lists, relative captions), every other task's
weight set to 0, and ``quality.json`` holds the garment metrics (``evaluate_garments``, held-out VAL garments).
``settings.json`` names the world and its benchmark's parameters, so neither world reuses the other's export.

The tokenizer is trained here too: byte-level BPE whose merges run until every word of the prompts and answers is
one token (word-level on everything the demo writes, bytes for anything else, so any prompt still tokenizes and
decoding gives back the exact text, spaces, newlines and case included), specials ``<pad> <s> </s> <image>`` = ids
0..3 (``<image>`` is ``MLLMConfig.image_token_id``), and a LLaVA-style chat template
(``USER: <image>\n{text}\nASSISTANT: {answer}</s>``); ``save_pretrained`` writes it, so ``AutoTokenizer`` loads it.

Output in ``<workdir>/demo_mllm/``: ``export/`` (``mllm.export``: parameters, tokenizer files, chat template,
``preprocessor_config.json``), ``settings.json`` (what it was built from: a rebuild happens when it differs),
``quality.json`` (held-out VAL scenes, greedy decoding, and the build times), ``tokenizer/``, ``checkpoints/``,
``metrics.jsonl``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import queue
import re
import runpy
import shutil
import threading
import time
from collections import Counter
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from zscir_jax import files, sharding
from zscir_jax.data import garments
from zscir_jax.data import images as image_io
from zscir_jax.data import scenes
from zscir_jax.demo import mllm_data, mllm_garments
from zscir_jax.errors import UserError
from zscir_jax.synthesis import prompts

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
SPECIALS = (PAD, BOS, EOS, IMAGE)  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = range(4)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
DIRNAME = "demo_mllm"
SETTINGS_FILE = "settings.json"
QUALITY_FILE = "quality.json"


# ---------------------------------------------------------------------------------------------------------- settings

def settings(smoke: bool = False) -> ml_collections.ConfigDict:
    """The demo MLLM's knobs (``configs/demo_mllm.py`` returns these; ``config.demo_mllm`` entries override them).

    Full: a 4-layer, 128-wide Llama (1.0M parameters with its 895-token embeddings), 1000 steps of ~2k tokens: about
    4 minutes on 2 idle CPU cores (5 under load). Smoke: 2 layers, 96 wide, 60 steps: about 30 s (plus the scenes
    and the CLIP warm-up when they are not there yet)."""
    s = ml_collections.ConfigDict()
    s.smoke = bool(smoke)
    s.seed = 0
    s.llm = dict(hidden_size=96 if smoke else 128, intermediate_size=256 if smoke else 384,
                 num_layers=2 if smoke else 4, num_heads=4, num_kv_heads=2, max_position_embeddings=1024,
                 rope_theta=10000.0)
    s.vision_feature_layer = -1  # the demo CLIP has 2 layers: its last one, not LLaVA's penultimate
    s.vision_feature_select_strategy = "default"  # LLaVA's: patch features only ("full": with the CLS token)
    s.tokenizer = dict(per_task=100 if smoke else 300)  # drawn examples of each task in the tokenizer's training corpus
    # Batch shapes ("groups": name -> its tasks, comma-separated; each compiles the step once, so the smoke setting
    # has one image shape fewer): short image prompts, longer image prompts, short text prompts, DistillCIR's long one.
    groups = dict(image="caption,modification,modification_alt", image_long="target,attributes",
                  text="collm,relative", long="distillcir")
    weights = dict(image=0.45, image_long=0.3, text=0.15, long=0.1)
    if smoke:
        groups = dict(image=groups["image"] + "," + groups.pop("image_long"), text=groups["text"], long="distillcir")
        weights = dict(image=0.75, text=0.15, long=0.1)
    s.train = dict(steps=60 if smoke else 1000, tokens_per_batch=2048, groups=groups,
                   # share of steps per batch shape, and of tasks within a shape
                   group_weights=weights,
                   task_weights=dict(caption=2.0, modification=1.0, modification_alt=1.0, target=2.0,
                                     attributes=1.5, collm=1.0, relative=1.0, distillcir=1.0),
                   collm_far=0.2, log_every=20 if smoke else 100, checkpoint_every=250, prefetch=4)
    s.optim = dict(lr=dict(llm=3e-3, projector=3e-3, vision=3e-4), warmup_steps=10 if smoke else 60,
                   weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-8, clip_norm=1.0, min_lr_ratio=0.05)
    # Held-out evaluation on VAL scenes into quality.json (0 images: skipped).
    s.eval = dict(num_images=0 if smoke else 200, num_text=0 if smoke else 100, batch_size=50,
                  max_new_tokens=dict(caption=48, modification=32, target=48, attributes=80, distillcir=112,
                                      collm=40, relative=40))  # relative: the garments' (the scenes' use collm's)
    s.mesh_shape = (-1, 1, 1)
    # The demo config whose preparation (benchmark + CLIP warm-up) runs first, per world: "" = the checkout's
    # configs/demo.py (scenes) / configs/fashion_demo.py (garments), with ":smoke" for the smoke setting; the
    # benchmark's parameters come from the caller's config.
    s.prepare = dict(config="", garments_config="", arg="smoke" if smoke else "",
                     overrides=())  # ((dotted key, value), ...)
    return s


def resolve_settings(config) -> ml_collections.ConfigDict:
    """``settings(smoke)`` updated with the entries of ``config.demo_mllm`` (a ConfigDict / dict, or missing); in the
    garments world (:func:`world_of`) only its tasks keep their weights (the scene tasks have no garment answers)."""
    given = config.get("demo_mllm") if config is not None and hasattr(config, "get") else None
    given = dict(given.to_dict() if hasattr(given, "to_dict") else (given or {}))
    s = settings(bool(given.get("smoke", False)))
    _update(s, given, "config.demo_mllm")
    world = world_of(config)
    if world.name != "scenes":
        teach_only(s, world.supervision.TASKS)
    return s


def teach_only(s: ml_collections.ConfigDict, tasks: Sequence[str]) -> None:
    """Weight 0 for every task not in ``tasks`` and every batch shape (group) holding none of them (the same rule
    as ``configs/common.py::teach_demo_mllm``)."""
    t = s.train
    t.task_weights = {k: (v if k in tasks else 0.0) for k, v in t.task_weights.items()}
    t.group_weights = {g: (v if set(str(t.groups[g]).split(",")) & set(tasks) else 0.0)
                       for g, v in t.group_weights.items()}


_OPEN = ("groups", "group_weights", "task_weights")  # maps whose keys a user may add to


def _update(cfg: ml_collections.ConfigDict, values: dict, where: str, open_keys: bool = False) -> None:
    for k, v in values.items():
        if k not in cfg and open_keys:
            cfg[k] = v
        elif k not in cfg:
            raise UserError(f"{where}.{k} is not a demo MLLM setting; known: {', '.join(sorted(cfg.keys()))}")
        if isinstance(cfg[k], ml_collections.ConfigDict) and isinstance(v, dict):
            _update(cfg[k], v, f"{where}.{k}", open_keys=k in _OPEN)
        else:
            cfg[k] = v


def fingerprint(s: ml_collections.ConfigDict, scene_params: dict, world: str = "scenes") -> dict:
    """What an export was built from (``settings.json``); evaluation-only knobs left out. ``scene_params``: the
    benchmark's parameters; another world than the scenes is named, so no world reuses another's export."""
    d = s.to_dict()
    for k in ("eval", "prepare"):
        d.pop(k, None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("log_every", "checkpoint_every", "prefetch")}
    d["mesh_shape"] = None  # the result does not depend on the mesh
    built = {"settings": d, "scenes": scene_params} if world == "scenes" else {
        "settings": d, "world": world, world: scene_params}
    return json.loads(json.dumps(built, sort_keys=True, default=list))


# ---------------------------------------------------------------------------------------------------------- tokenizer

def build_tokenizer(texts: Sequence[str], out_dir: str) -> str:
    """Trains the demo's tokenizer on ``texts`` into ``out_dir`` (see the module docstring); returns ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    wrappers = ["USER: ASSISTANT: \n", f"USER: {IMAGE}\n", "ASSISTANT: "]
    # vocab_size is only a ceiling: merges stop when every word of the corpus is one token.
    trainer = trainers.BpeTrainer(vocab_size=8192, min_frequency=1, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + wrappers, trainer)
    for name, i in zip(SPECIALS, range(4)):
        if tok.token_to_id(name) != i:
            raise AssertionError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, BOS_ID)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   extra_special_tokens={"image_token": IMAGE}, model_max_length=1024,
                                   padding_side="left", clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}, f, indent=1)
    return out_dir


def preprocessor_config(image_size: int) -> dict:
    """``preprocessor_config.json`` of the demo MLLM: CLIP's preprocessing at the scenes' render size."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(image_io.CLIP_MEAN), "image_std": list(image_io.CLIP_STD), "do_convert_rgb": True}


# ---------------------------------------------------------------------------------------------------------- model

def model_config(s, vision, vocab_size: int):
    from zscir_jax.models import llm, mllm

    text = llm.LLMConfig(vocab_size=vocab_size, **dict(s.llm), bos_token_id=BOS_ID, eos_token_ids=(EOS_ID,),
                         pad_token_id=PAD_ID)
    return mllm.MLLMConfig(vision=vision, text=text, image_token_id=IMAGE_ID,
                           vision_feature_layer=int(s.vision_feature_layer),
                           vision_feature_select_strategy=str(s.vision_feature_select_strategy))


def new_model(cfg, seed: int, clip_export: str | None = None):
    """A fresh MLLM; its vision tower copied from the CLIP exported at ``clip_export`` when given."""
    from zscir_jax.methods import base
    from zscir_jax.models import mllm

    model = mllm.MLLM(cfg, rngs=nnx.Rngs(seed))
    if clip_export:
        towers = base.load_exported(clip_export)
        if towers.config.vision != cfg.vision:
            raise ValueError(f"the CLIP at {clip_export} has vision config {towers.config.vision}, expected "
                             f"{cfg.vision}")
        nnx.update(model.vision_tower.vision_model, jax.tree.map(jnp.copy, nnx.state(towers.vision_model)))
    return model


def _optim_config(s) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict(dict(s.optim))
    o.groups = ((r"vision_tower/.*", "vision"), (r"multi_modal_projector/.*", "projector"), (r".*", "llm"))
    o.finetune = "both"
    o.accumulate = 1
    return o


# ---------------------------------------------------------------------------------------------------------- batches

def group_tasks(s) -> tuple[dict[str, list[str]], set[str]]:
    """({group: [task, ...]}, the groups of image prompts) from ``s.train.groups``; a mistake is a UserError."""
    out, seen = {}, set()
    for g, spec in dict(s.train.groups).items():
        ts = [t.strip() for t in str(spec).split(",") if t.strip()]
        bad = [t for t in ts if t not in mllm_data.TASKS or t in seen]
        if bad:
            raise UserError(f"demo MLLM: train.groups.{g} names unknown or repeated tasks {bad}; tasks: "
                            f"{', '.join(mllm_data.TASKS)}")
        if len({t in mllm_data.IMAGE_TASKS for t in ts}) > 1:
            raise UserError(f"demo MLLM: train.groups.{g} mixes image and text prompts: {ts}")
        seen.update(ts)
        out[g] = ts
    return out, {g for g, ts in out.items() if ts and ts[0] in mllm_data.IMAGE_TASKS}


class Batches:
    """Batch ``s`` of the training stream, a pure function of (seed, s): its shape group, then its rows.

    Each row is ``prompt_ids(chat messages) + answer ids + eos``, right-padded to its group's length; ``weights``
    mark the positions whose next token is an answer token. ``get_state`` / ``set_state`` (the next step) let the
    checkpointer save the stream's position.
    """

    def __init__(self, s, processor, pool: Sequence[scenes.Scene], pixels: np.ndarray, data_parallel: int = 1,
                 supervisor=None):
        """``supervisor``: draws the examples (``example(task, rng)``); default the scenes' over ``pool``."""
        self.s, self.processor, self.pixels = s, processor, pixels
        self.sup = supervisor or mllm_data.Supervisor(pool, collm_far=s.train.collm_far)
        self.seed = int(s.seed)
        self.step = 0
        gw = dict(s.train.group_weights)
        tw = dict(s.train.task_weights)
        self.tasks, self.image_groups = group_tasks(s)
        self.tasks = {g: [t for t in ts if tw.get(t, 0) > 0] for g, ts in self.tasks.items()}
        self.groups = [g for g in self.tasks if gw.get(g, 0) > 0 and self.tasks[g]]
        if not self.groups:
            raise UserError("demo MLLM: train.group_weights and train.task_weights leave no task to train")
        p = np.asarray([gw[g] for g in self.groups], np.float64)
        self.group_p = p / p.sum()
        self.task_p = {g: np.asarray([tw[t] for t in self.tasks[g]]) / sum(tw[t] for t in self.tasks[g])
                       for g in self.groups}
        self._prompt_cache: dict[tuple[str, bool], list[int]] = {}
        # Lengths: the longest of a probe sample, rounded up to 16 (longer draws are redrawn: rare).
        self.length, self.rows = {}, {}
        probe = np.random.default_rng([self.seed, 99])
        for g in self.groups:
            longest = max(len(self.encode(self.sup.example(t, probe))[0])
                          for t in self.tasks[g] for _ in range(150))
            self.length[g] = int(-(-(longest + 4) // 16) * 16)
            rows = max(1, int(s.train.tokens_per_batch) // self.length[g])
            self.rows[g] = int(-(-rows // data_parallel) * data_parallel)
        self.redrawn = 0

    def encode(self, ex: mllm_data.Example) -> tuple[list[int], int]:
        """(ids, prompt length) of one example."""
        key = (ex.prompt, ex.image is not None)
        ids = self._prompt_cache.get(key)
        if ids is None:
            ids = self.processor.prompt_ids(mllm_data.messages(ex.prompt, ex.image is not None))
            if len(self._prompt_cache) < 50_000:
                self._prompt_cache[key] = ids
        answer = self.processor.tokenizer.encode(ex.answer, add_special_tokens=False)
        return list(ids) + answer + [EOS_ID], len(ids)

    def group_of(self, step: int) -> str:
        return self.groups[int(np.random.default_rng([self.seed, step, 0]).choice(len(self.groups), p=self.group_p))]

    def spec(self, g: str) -> dict[str, tuple[tuple[int, ...], Any]]:
        """{key: (shape, dtype)} of a batch of group ``g``."""
        B, L = self.rows[g], self.length[g]
        out = {"input_ids": ((B, L), np.int32), "attention_mask": ((B, L), np.int32), "labels": ((B, L), np.int32),
               "weights": ((B, L), np.float32)}
        if g in self.image_groups:
            out["pixels"] = ((B,) + self.pixels.shape[1:], np.float32)
        return out

    def batch(self, step: int) -> tuple[str, dict[str, np.ndarray]]:
        g = self.group_of(step)
        rng = np.random.default_rng([self.seed, step, 1])
        L, B = self.length[g], self.rows[g]
        ids = np.full((B, L), PAD_ID, np.int32)
        mask = np.zeros((B, L), np.int32)
        labels = np.zeros((B, L), np.int32)
        weights = np.zeros((B, L), np.float32)
        images = np.zeros((B,), np.int64)
        for b in range(B):
            while True:
                task = self.tasks[g][int(rng.choice(len(self.tasks[g]), p=self.task_p[g]))]
                ex = self.sup.example(task, rng)
                row, n_prompt = self.encode(ex)
                if len(row) <= L:
                    break
                self.redrawn += 1
            n = len(row)
            ids[b, :n] = row
            mask[b, :n] = 1
            labels[b, : n - 1] = row[1:]
            weights[b, n_prompt - 1: n - 1] = 1.0  # predicting answer tokens and the eos
            images[b] = ex.image if ex.image is not None else 0
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}
        if g in self.image_groups:
            out["pixels"] = self.pixels[images]
        return g, out

    # checkpointed position
    def get_state(self) -> dict:
        return {"step": int(self.step)}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


class _Prefetch:
    """Batches ``start..stop-1`` made on a background thread (the jitted step releases the GIL meanwhile)."""

    def __init__(self, batches: Batches, start: int, stop: int, depth: int):
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop_flag = False

        def work():
            for s in range(start, stop):
                if self.stop_flag:
                    return
                try:
                    self.q.put((s, batches.batch(s)))
                except BaseException as e:  # surfaced on the main thread
                    self.q.put((s, e))
                    return

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def get(self):
        s, item = self.q.get()
        if isinstance(item, BaseException):
            raise item
        return s, item

    def close(self):
        self.stop_flag = True
        while self.thread.is_alive():
            try:
                self.q.get_nowait()
            except queue.Empty:
                time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------- training

def loss_fn(model, batch):
    """Mean next-token cross entropy over the answer tokens (``batch["weights"]``)."""
    embeds = model.embed(batch["input_ids"], batch.get("pixels"))
    hidden = model.llm.hidden_states(attention_mask=batch["attention_mask"], inputs_embeds=embeds)
    logits = model.llm.logits(hidden).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    w = batch["weights"]
    n = jnp.maximum(jnp.sum(w), 1.0)
    loss = jnp.sum(ce * w) / n
    acc = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * w) / n
    return loss, {"token_accuracy": acc}


def _make_step(graphdef, shardings, mesh, batch_spec):
    def step(state, batch):
        model, opt = nnx.merge(graphdef, state)
        (loss, metrics), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param),
                                                    has_aux=True)(model, batch)
        opt.update(model, grads)
        return nnx.state((model, opt)), {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}

    bs = {k: sharding.batch_sharding(mesh, len(shape)) for k, shape in batch_spec.items()}
    return jax.jit(step, in_shardings=(shardings, bs), out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))


def _compile_step(graphdef, shardings, mesh, state_target, spec: dict):
    fn = _make_step(graphdef, shardings, mesh, {k: shape for k, (shape, _) in spec.items()})
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
             for k, (shape, dtype) in spec.items()}
    with jax.set_mesh(mesh):
        return fn.lower(state_target, batch).compile()


def train(s, scenes_root: str, clip_export: str | None, out_dir: str, mesh=None, *, progress: bool = True,
          world: "World | None" = None):
    """Trains the demo MLLM in ``out_dir`` (resuming from its checkpoints) and returns (model, processor, stats).

    ``out_dir/tokenizer`` is built first when absent. ``mesh``: default ``sharding.make_mesh(s.mesh_shape)``.
    ``world``: what ``scenes_root`` holds and the examples taught on it (default the scenes).
    """
    from zscir_jax.methods import base
    from zscir_jax.models import clip as clip_lib
    from zscir_jax.models import mllm
    from zscir_jax.train import checkpoint as ckpt_lib
    from zscir_jax.models.llm.tokenizer import load_tokenizer
    from zscir_jax.train import optimizer as optim_lib
    from zscir_jax.train import step as step_lib
    from zscir_jax.train import writers

    t0 = time.perf_counter()
    mesh = mesh if mesh is not None else sharding.make_mesh(tuple(s.mesh_shape))
    world = world or WORLDS["scenes"]
    pool, image_files = world.load_split(scenes_root, "train")
    image_size = _image_size(image_files[0])

    tok_dir = os.path.join(out_dir, "tokenizer")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        corpus = world.supervision.corpus(pool, np.random.default_rng([int(s.seed), 7]), int(s.tokenizer.per_task))
        if jax.process_index() == 0:
            build_tokenizer(corpus, tok_dir + ".tmp")
            shutil.rmtree(tok_dir, ignore_errors=True)
            os.replace(tok_dir + ".tmp", tok_dir)
        sharding.sync(f"demo-mllm-tokenizer:{tok_dir}")
    if clip_export:
        vision = base.towers_config_from_path(clip_export).vision
    else:
        vision = clip_lib.CLIPConfig.tiny(width=64, image_size=image_size, patch_size=8).vision  # the demo CLIP's
    if vision.image_size != image_size:
        raise UserError(f"the CLIP vision tower takes {vision.image_size}px images but the scenes at {scenes_root} "
                        f"are {image_size}px")
    tokenizer = load_tokenizer(tok_dir)
    cfg = model_config(s, vision, len(tokenizer))
    processor = mllm.Processor(tokenizer, image_token_id=IMAGE_ID, image_seq_length=cfg.image_seq_length,
                               preprocessor_config=preprocessor_config(image_size), vision_image_size=image_size)
    pixels = processor.pixels(image_files)
    dp = int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
    batches = Batches(s, processor, pool, pixels, data_parallel=dp, supervisor=world.supervisor(s, pool))

    steps = int(s.train.steps)
    tx, schedules = optim_lib.make(_optim_config(s), steps)
    with sharding.activate(mesh):
        model = new_model(cfg, int(s.seed), clip_export)
        graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
        shardings = step_lib.state_shardings(state, mesh)
        state = jax.device_put(state, shardings)
    del model
    ckpt = ckpt_lib.Checkpointer(os.path.join(out_dir, "checkpoints"), every=int(s.train.checkpoint_every), keep=1)
    what = fingerprint(s, {"root": os.path.abspath(scenes_root), "num_train": len(pool)}, world.name)
    meta = {"fingerprint": hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()}
    latest = ckpt.latest_step()
    start = 0
    if latest is not None:
        saved = ckpt.read_meta(latest)
        if saved.get("fingerprint") != meta["fingerprint"]:
            raise UserError(f"{ckpt.directory} holds a demo MLLM run with other settings; delete it to start over")
        target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), state, shardings)
        state = ckpt.restore(latest, target, batches)
        start = latest
        writers.say(f"demo MLLM: resumed from step {latest} in {ckpt.directory}")
    setup_s = time.perf_counter() - t0

    # Every batch shape's step compiled ahead of time, two at a time, in the order training needs them.
    order = list(dict.fromkeys(batches.group_of(k) for k in range(start, steps)))
    target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), state, shardings)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    compiling = {g: pool.submit(_compile_step, graphdef, shardings, mesh, target, batches.spec(g)) for g in order}
    pool.shutdown(wait=False)
    log_path = os.path.join(out_dir, "metrics.jsonl")
    bar = writers.progress(steps, start, "demo MLLM", progress)
    feed = _Prefetch(batches, start, steps, int(s.train.prefetch))
    t_train = time.perf_counter()
    group_count: Counter = Counter()
    first_step: dict[str, float] = {}
    last_log, running = time.perf_counter(), []
    try:
        for n in range(start + 1, steps + 1):
            step_index, (g, batch) = feed.get()
            assert step_index == n - 1
            if group_count[g] == 0:
                t_first = time.perf_counter()
            with jax.set_mesh(mesh):
                state, metrics = compiling[g].result()(state, sharding.global_batch(mesh, _local(batch)))
            running.append(metrics)
            batches.step = n
            last = n == steps
            if n % int(s.train.log_every) == 0 or last:
                vals = {k: float(np.mean([float(m[k]) for m in running])) for k in running[0]}
                if not np.isfinite(vals["loss"]):
                    raise FloatingPointError(f"demo MLLM: the loss became {vals['loss']} by step {n}; lower "
                                             "optim.lr")
                now = time.perf_counter()
                vals.update(step=n, steps_per_second=len(running) / max(now - last_log, 1e-9),
                            lr=float(schedules["llm"](n)))
                last_log, running = now, []
                if jax.process_index() == 0:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(vals) + "\n")
                bar.set_postfix(loss=f"{vals['loss']:.3f}", acc=f"{vals['token_accuracy']:.3f}", refresh=False)
            if group_count[g] == 0:  # waiting for its compilation + one step
                jax.block_until_ready(metrics["loss"])
                first_step[g] = round(time.perf_counter() - t_first, 2)
            group_count[g] += 1
            bar.update(1)
            if ckpt.should_save(n) or last:
                ckpt.save(n, state, batches, meta, force=last)
    finally:
        feed.close()
        bar.close()
        ckpt.close()
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t_train
    model, _ = nnx.merge(graphdef, state)
    stats = {"setup_s": round(setup_s, 2), "train_s": round(train_s, 2), "steps": steps, "resumed_from": start,
             "rows": dict(batches.rows), "lengths": dict(batches.length), "redrawn": batches.redrawn,
             "vocab_size": len(tokenizer), "parameters": _count(model),
             "steps_per_group": dict(group_count), "first_step_s": first_step}
    return model, processor, stats


def _local(batch: dict) -> dict:
    """This process's rows of a global batch (every process makes the whole batch; rows divide evenly)."""
    pc, pi = jax.process_count(), jax.process_index()
    if pc == 1:
        return batch
    return {k: v[pi * (len(v) // pc):(pi + 1) * (len(v) // pc)] for k, v in batch.items()}


def _count(model) -> dict:
    out = {}
    for name in ("vision_tower", "multi_modal_projector", "llm"):
        out[name] = int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(getattr(model, name), nnx.Param))))
    return out


def _image_size(path: str) -> int:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    if w != h:
        raise UserError(f"the scenes' images are not square: {path} is {w}x{h}")
    return int(w)


# ---------------------------------------------------------------------------------------------------------- generation

def generate(model, processor, items: Sequence[tuple[str, Any]], max_new_tokens: int, batch_size: int = 32,
             pad_to_multiple: int = 16) -> list[str]:
    """Greedy answers to (prompt, image or None) items: one kind per call (all with an image or none)."""
    from zscir_jax.data import images as io
    from zscir_jax.models import mllm

    out: list[str] = []
    tok = processor.tokenizer
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)  # one shape per call site
        with_image = chunk[0][1] is not None
        convs = [mllm_data.messages(p, with_image) for p, _ in chunk]
        imgs = [io.load_image(i) if isinstance(i, str) else i for _, i in chunk] if with_image else None
        inputs = processor.inputs(convs, imgs, pad_to_multiple=pad_to_multiple)
        ids = mllm.generate(model, jnp.asarray(inputs["input_ids"]),
                            None if inputs["pixels"] is None else jnp.asarray(inputs["pixels"]),
                            jnp.asarray(inputs["attention_mask"]), max_new_tokens=max_new_tokens,
                            eos_token_ids=tok.eos_token_ids, pad_token_id=tok.pad_token_id)
        out += [tok.decode(r, skip_special_tokens=True) for r in np.asarray(ids)[:n]]
    return out


# ---------------------------------------------------------------------------------------------------------- quality

def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style token F1 over lower-cased word tokens."""
    p, g = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", gold.lower())
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return float(p == g)
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def _parses(parser, text: str) -> bool:
    try:
        parser(text)
        return True
    except prompts.ParseError:
        return False


def evaluate(model, processor, scenes_root: str, s) -> dict:
    """Greedy decoding on held-out VAL scenes (never trained on) -> the quality numbers:

    caption_exact / caption_token_f1     MVFTJI_CAPTION against the true captions
    modification_valid                   MVFTJI_MODIFICATION: a training phrasing of a feasible edit of the scene
    target_exact / target_token_f1       MVFTJI_TARGET with a true edit in a training phrasing -> the edited caption
    target_exact_benchmark_phrasing      the same with the benchmark's phrasings (``scenes.PHRASINGS``: never trained)
    attributes_parsable / _exact         FASHION_ATTRIBUTES: parses with ``prompts.attributes`` / is the true list
    distillcir_parsable / _consistent    DISTILLCIR: parses with ``prompts.distillcir`` / its modified caption is one
                                         edit of the input and its instruction a phrasing of that edit
    collm_correct                        COLLM on one-edit pairs: a phrasing of the edit
    relative_parsable / _correct         FASHION_RELATIVE on lists 1-2 values apart: one line / the edits' phrasings
    examples                             a few (gold, output) pairs per task
    """
    e = s.eval
    val = scenes.load_scenes(scenes_root, "val")
    paths = scenes.image_paths(scenes_root, "val")
    names = sorted(val)
    rng = np.random.default_rng([int(s.seed), 1234])
    pick = [names[int(i)] for i in rng.choice(len(names), size=min(int(e.num_images), len(names)), replace=False)]
    mx = dict(e.max_new_tokens)
    bs = int(e.batch_size)
    q: dict[str, Any] = {"val_images": len(pick)}
    examples: dict[str, list] = {}

    def run(task, items, golds, max_new):
        outs = [o.strip() for o in generate(model, processor, items, max_new, bs)]
        examples[task] = [{"gold": g if isinstance(g, str) else sorted(g)[0], "output": o}
                          for g, o in list(zip(golds, outs))[:3]]
        return outs

    def mean(xs):
        return float(np.mean(xs)) if len(xs) else 0.0

    if pick:
        gold = [val[n].caption for n in pick]
        caps = run("caption", [(prompts.MVFTJI_CAPTION, paths[n]) for n in pick], gold, mx["caption"])
        q["caption_exact"] = mean([c == g for c, g in zip(caps, gold)])
        q["caption_token_f1"] = mean([token_f1(c, g) for c, g in zip(caps, gold)])

        mods = run("modification", [(prompts.MVFTJI_MODIFICATION, paths[n]) for n in pick], [""] * len(pick),
                   mx["modification"])
        q["modification_valid"] = mean([any(m in mllm_data.edit_phrasings(val[n], ed)
                                            for ed in _plausible_edits(val[n], m)) for n, m in zip(pick, mods)])

        edits = [scenes.random_edit(val[n], rng) for n in pick]
        gold_t = [scenes.apply_edit(val[n], ed).caption for n, ed in zip(pick, edits)]
        texts = [mllm_data.edit_text(val[n], ed, rng) for n, ed in zip(pick, edits)]
        outs = run("target", [(prompts.MVFTJI_TARGET.format(modification=t), paths[n]) for n, t in zip(pick, texts)],
                   gold_t, mx["target"])
        q["target_exact"] = mean([o == g for o, g in zip(outs, gold_t)])
        q["target_token_f1"] = mean([token_f1(o, g) for o, g in zip(outs, gold_t)])
        bench = [scenes.edit_text(val[n], ed, rng) for n, ed in zip(pick, edits)]
        outs = run("target_benchmark_phrasing", [(prompts.MVFTJI_TARGET.format(modification=t), paths[n])
                                                 for n, t in zip(pick, bench)], gold_t, mx["target"])
        q["target_exact_benchmark_phrasing"] = mean([o == g for o, g in zip(outs, gold_t)])

        gold_a = [mllm_data.attributes_answer(val[n]) for n in pick]
        atts = run("attributes", [(prompts.FASHION_ATTRIBUTES, paths[n]) for n in pick], gold_a, mx["attributes"])
        q["attributes_parsable"] = mean([_parses(prompts.attributes, a) for a in atts])
        q["attributes_exact"] = mean([a == g for a, g in zip(atts, gold_a)])
    k = min(int(e.num_text), len(names))
    q["val_text_prompts"] = k
    if k:
        sub = [names[int(i)] for i in rng.choice(len(names), size=k, replace=False)]
        reqs, golds = [], []
        for n in sub:  # 0-2 few-shot blocks from other val scenes, as the training prompts hold
            others = [val[names[int(j)]] for j in rng.choice(len(names), size=int(rng.integers(3)), replace=False)]
            ex = mllm_data.distillcir_example(val[n], rng, others)
            reqs.append((ex.prompt, None))
            golds.append(ex.answer)
        outs = run("distillcir", reqs, golds, mx["distillcir"])
        q["distillcir_parsable"] = mean([_parses(prompts.distillcir, o) for o in outs])
        q["distillcir_consistent"] = mean([_distillcir_consistent(val[n], o) for n, o in zip(sub, outs)])

        reqs, golds = [], []
        for n in sub:
            ed = scenes.random_edit(val[n], rng)
            t = scenes.apply_edit(val[n], ed)
            reqs.append((prompts.COLLM.format(reference_caption=val[n].caption, target_caption=t.caption), None))
            golds.append(mllm_data.edit_phrasings(val[n], scenes.diff(val[n], t)))
        outs = run("collm", reqs, golds, mx["collm"])
        q["collm_correct"] = mean([o in g for o, g in zip(outs, golds)])

        reqs, golds = [], []
        for n in sub:  # 1-2 attribute changes, as the fashion recipe pairs lists
            changes = mllm_data.random_changes(val[n], rng, 1 + int(rng.integers(2)))
            ex = mllm_data.relative_example(val[n], changes, rng) if changes else None
            if ex is not None:
                reqs.append((ex.prompt, None))
                golds.append(mllm_data.relative_phrasings(val[n], changes))
        outs = run("relative", reqs, golds, mx["collm"])
        q["relative_parsable"] = mean([_parses(lambda t: prompts.one_line(t, "relative"), o) for o in outs])
        q["relative_correct"] = mean([o in g for o, g in zip(outs, golds)])
    q["examples"] = examples
    return q


def _distillcir_consistent(scene: scenes.Scene, text: str) -> bool:
    try:
        p = prompts.distillcir(text)
        target = scenes.parse_caption(p["modified_caption"])
    except (prompts.ParseError, ValueError):
        return False
    edit = scenes.diff(scene, target)
    return edit is not None and p["instruction"] in mllm_data.edit_phrasings(scene, edit)


def _plausible_edits(scene: scenes.Scene, text: str) -> list[scenes.Edit]:
    """The edits of ``scene`` whose key words all appear in ``text`` (prunes ``all_edits`` before phrasing them)."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    out = []
    for ed in scenes.all_edits(scene):
        if ed.op == "add" and not {ed.value.shape, ed.value.colour} <= words:
            continue
        if ed.op in ("colour", "shape") and str(ed.value) not in words:
            continue
        out.append(ed)
    return out


def evaluate_garments(model, processor, garments_root: str, s) -> dict:
    """Greedy decoding on held-out VAL garments (their images never trained on) -> the quality numbers:

    attributes_parsable / _exact    FASHION_ATTRIBUTES: one valid garment's list / exactly the true list
    attribute_accuracy              per key: the share of lists naming the true value (an unparsable one: wrong)
    relative_parsable               FASHION_RELATIVE (two lists 1..2 values apart, drawn as for training): one line
    relative_correct                one of the captions ``garments.relative_caption`` can give (any phrasing)
    relative_names_changes          names every changed attribute's new value (in a phrasing), whatever else it says
    examples                        a few (gold, output) pairs per task

    The relative prompts hold VAL garments' lists; with 2160 possible garments most lists also occur in training
    (the task is text-only: what it measures is the rule, not the lists).
    """
    e = s.eval
    val, val_images = WORLDS["garments"].load_split(garments_root, "val")
    rng = np.random.default_rng([int(s.seed), 1234])
    pick = [int(i) for i in rng.choice(len(val), size=min(int(e.num_images), len(val)), replace=False)]
    mx = dict(e.max_new_tokens)
    q: dict[str, Any] = {"world": "garments", "val_images": len(pick)}
    examples: dict[str, list] = {}

    def run(task, items, golds, max_new):
        outs = [o.strip() for o in generate(model, processor, items, max_new, int(e.batch_size))]
        examples[task] = [{"gold": g if isinstance(g, str) else sorted(g)[0], "output": o}
                          for g, o in list(zip(golds, outs))[:3]]
        return outs

    def mean(xs):
        return float(np.mean(xs)) if len(xs) else 0.0

    if pick:
        gold = [val[i] for i in pick]
        outs = run("attributes", [(prompts.FASHION_ATTRIBUTES, val_images[i]) for i in pick],
                   [mllm_garments.attributes_answer(g) for g in gold], mx["attributes"])
        items = [_first_item(o) for o in outs]
        q["attributes_parsable"] = mean([_parses(mllm_garments.parse_attributes, o) for o in outs])
        q["attributes_exact"] = mean([o == mllm_garments.attributes_answer(g) for o, g in zip(outs, gold)])
        q["attribute_accuracy"] = {k: mean([it.get(k) == getattr(g, k) for it, g in zip(items, gold)])
                                   for k in garments.KEYS}
    k = min(int(e.num_text), len(val))
    q["val_text_prompts"] = k
    if k:
        pairs = [mllm_garments.random_pair(val, rng, int(i)) for i in rng.choice(len(val), size=k, replace=False)]
        golds = [mllm_garments.relative_phrasings(r, t) for r, t in pairs]
        outs = run("relative", [(mllm_garments.relative_prompt(r, t), None) for r, t in pairs], golds,
                   mx.get("relative", mx["collm"]))
        q["relative_parsable"] = mean([_parses(lambda t: prompts.one_line(t, "relative"), o) for o in outs])
        q["relative_correct"] = mean([o in g for o, g in zip(outs, golds)])
        q["relative_names_changes"] = mean([mllm_garments.named_changes(r, t, o) for (r, t), o in zip(pairs, outs)])
    q["examples"] = examples
    return q


def _first_item(text: str) -> dict[str, str]:
    """The first item of an attribute list ({} when it does not parse)."""
    try:
        return prompts.attributes(text)["items"][0]
    except prompts.ParseError:
        return {}


# ---------------------------------------------------------------------------------------------------------- worlds

def _scene_split(root: str, split: str) -> tuple[list[scenes.Scene], list[str]]:
    """(scenes, their image paths) of one split, in name order (a fixed order whatever the JSON's)."""
    items, paths = scenes.load_scenes(root, split), scenes.image_paths(root, split)
    names = sorted(items)
    return [items[n] for n in names], [paths[n] for n in names]


def _garment_split(root: str, split: str) -> tuple[list[garments.Garment], list[str]]:
    """(garments, their image paths) of one split, in name order."""
    items = garments.load_garments(root, split)
    names = sorted(items)
    return [items[n] for n in names], [garments.image_path(root, n) for n in names]


@dataclasses.dataclass(frozen=True)
class World:
    """A benchmark the demo MLLM can be taught on: its train items and images, its supervision (a module with
    ``TASKS``, ``corpus``), its demo config (the preparation that builds it and warms up the CLIP) and its held-out
    evaluation. ``world_of(config)`` picks one."""

    name: str  # also the benchmark's directory in the workdir and its config key (config.data.<name>)
    supervision: Any
    supervisor: Callable  # (settings, train pool) -> a Supervisor
    load_split: Callable[[str, str], tuple[list, list[str]]]  # (root, split) -> (items, image paths), name order
    demo_config_key: str  # the settings' prepare.<key> naming its demo config ("" = default_demo_config)
    default_demo_config: str  # a file of the checkout's configs/
    evaluate: Callable  # (model, processor, root, settings) -> quality numbers
    summary_keys: tuple[str, ...]  # the quality numbers the build's last log line shows


WORLDS: dict[str, World] = {
    "scenes": World("scenes", mllm_data, lambda s, pool: mllm_data.Supervisor(pool, collm_far=s.train.collm_far),
                    _scene_split, "config", "demo.py", lambda *a: evaluate(*a),
                    ("caption_token_f1", "target_token_f1", "modification_valid")),
    "garments": World("garments", mllm_garments, lambda s, pool: mllm_garments.Supervisor(pool), _garment_split,
                      "garments_config", "fashion_demo.py", lambda *a: evaluate_garments(*a),
                      ("attributes_exact", "relative_correct", "relative_names_changes")),
}


def world_of(config) -> World:
    """The garments when the caller's config reads them (``data.kind`` of a synthesis config, ``prepare.world`` of a
    demo config), else the scenes."""
    get = config.get if config is not None and hasattr(config, "get") else (lambda *_: None)
    data, prep = get("data") or {}, get("prepare") or {}
    if data.get("kind") == "garments" or prep.get("world") == "garments":
        return WORLDS["garments"]
    return WORLDS["scenes"]


# ---------------------------------------------------------------------------------------------------------- build

def _default_demo_config(world: World | None = None) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "configs", (world or WORLDS["scenes"]).default_demo_config)


_BUILD_DEFAULTS = {"scenes": dict(num_train=3000, num_val_queries=300, num_test_queries=10, image_size=32, seed=0),
                   "garments": dict(num_train=3000, num_val_queries=300, num_test_queries=30, image_size=32, seed=0)}


def scene_params(config, s, world: World | None = None) -> dict:
    """The benchmark's parameters (the scenes', or ``world``'s): the caller's ``config.data.<world>`` (synthesis
    configs), its ``config.prepare`` (demo configs), else the world's demo config's."""
    world = world or WORLDS["scenes"]
    data = config.get("data") if config is not None and hasattr(config, "get") else None
    if data is not None and data.get(world.name):
        d, dflt = dict(data[world.name]), _BUILD_DEFAULTS[world.name]
        return {k: int(d.get(k, v)) for k, v in dflt.items()}
    demo = _load_demo_config(s, world) if config is None or not config.get("prepare") else config
    p = demo.prepare
    return {"num_train": int(p.num_train), "num_val_queries": int(p.num_val_queries),
            "num_test_queries": int(p.num_test_queries), "image_size": int(p.render_size),
            "seed": int(p.get("seed", demo.seed))}


def _load_demo_config(s, world: World | None = None):
    world = world or WORLDS["scenes"]
    key = world.demo_config_key
    path = os.path.expanduser(s.prepare.get(key) or _default_demo_config(world))
    if not os.path.isfile(path):
        raise UserError(f"the demo MLLM prepares the {world.name} and the warm CLIP with the demo config, not found at "
                        f"{path}; set config.demo_mllm.prepare.{key} to configs/{world.default_demo_config} of a "
                        "zscir_jax checkout")
    return runpy.run_path(path)["get_config"](s.prepare.arg or None)


def prepare(config, workdir: str, s, params: dict, world: World | None = None) -> tuple[str, str | None]:
    """The demo's preparation (``demo.prepare.run``: the benchmark in ``workdir/<world>``, CLIP warm-up) for a
    benchmark of ``params`` (the scenes, or ``world``'s); returns (benchmark root, CLIP export or None when the demo
    config has no warm-up). The garments' demo config runs without its synthesis, which may be what asked for this
    MLLM."""
    from zscir_jax.demo import prepare as demo_prepare
    from zscir_jax.methods import base

    world = world or WORLDS["scenes"]
    given = config is not None and config.get("prepare") and config.get("warmup") and world_of(config) is world
    demo = (config if given else _load_demo_config(s, world)).copy_and_resolve_references()
    with demo.unlocked():
        if world.name != "scenes":
            demo.prepare.synthesis = None
            demo.prepare.mllm_as_model = False
        demo.prepare.update(num_train=params["num_train"], num_val_queries=params["num_val_queries"],
                            num_test_queries=params["num_test_queries"], render_size=params["image_size"])
        demo.seed = demo.prepare.seed = params["seed"]
        for key, value in s.prepare.overrides:  # dotted keys, e.g. ("warmup.train.steps", 8)
            node = demo
            *head, last = key.split(".")
            for h in head:
                node = node[h]
            node[last] = value
    demo_prepare.run(demo, workdir, reuse_prepared=True)  # the asking run's benchmark and towers, as they are
    export = os.path.join(workdir, "clip_pretrain", "export")
    return os.path.join(workdir, world.name), export if os.path.isfile(os.path.join(export, base.EXPORT_MARKER)) else None


def build_or_reuse(config, workdir: str, *, mesh=None, progress: bool = True) -> str:
    """The demo MLLM's export directory ``<workdir>/demo_mllm/export``, built first unless it exists with the same
    settings (``config.demo_mllm`` over :func:`settings`; scenes from ``config.data.scenes`` / ``config.prepare``).

    Building runs the demo preparation it needs (scenes benchmark, CLIP warm-up: each skipped when done), trains
    (resuming from checkpoints), exports with ``mllm.export`` and writes ``quality.json``. An export built with
    other settings is rebuilt (checkpoints included), as ``scenes.build`` does with stale benchmarks.
    """
    from zscir_jax.models import mllm
    from zscir_jax.train import writers

    s = resolve_settings(config)
    world = world_of(config)
    params = scene_params(config, s, world)
    out_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), DIRNAME)
    export_dir = os.path.join(out_dir, "export")
    want = fingerprint(s, params, world.name)
    settings_path = os.path.join(out_dir, SETTINGS_FILE)
    have = _read_json(settings_path)
    if _is_export(export_dir) and have == want:
        return export_dir
    if have != want:  # nothing built yet, or built from other settings / scenes: start over
        if have is not None:
            writers.warn(f"{out_dir} was built with other settings: building the demo MLLM again")
        if jax.process_index() == 0:
            for sub in ("export", "checkpoints", "tokenizer", QUALITY_FILE, "metrics.jsonl"):
                p = os.path.join(out_dir, sub)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                elif os.path.exists(p):
                    os.remove(p)
            os.makedirs(out_dir, exist_ok=True)
            _write_json(settings_path, want)
    sharding.sync(f"demo-mllm-settings:{out_dir}")

    t0 = time.perf_counter()
    root, clip_export = prepare(config, workdir, s, params, world)
    data_root = config.get("data", {}).get("root") if config is not None and hasattr(config, "get") else ""
    if data_root:
        root = os.path.expanduser(data_root)
    t_prep = time.perf_counter() - t0
    writers.say(f"demo MLLM: training on the train split of {root} into {out_dir}")
    model, processor, stats = train(s, root, clip_export, out_dir, mesh, progress=progress, world=world)
    t1 = time.perf_counter()
    mllm.export(model, export_dir, tokenizer_dir=os.path.join(out_dir, "tokenizer"),
                preprocessor=processor.preprocessor_config)
    t_export = time.perf_counter() - t1
    quality = {"settings": "smoke" if s.smoke else "full", "prepare_s": round(t_prep, 2),
               "export_s": round(t_export, 2), **stats}
    if int(s.eval.num_images) or int(s.eval.num_text):
        t2 = time.perf_counter()
        reloaded, proc = mllm.load(export_dir), mllm.load_processor(export_dir)
        quality.update(world.evaluate(reloaded, proc, root, s))
        quality["eval_s"] = round(time.perf_counter() - t2, 2)
    if jax.process_index() == 0:
        _write_json(os.path.join(out_dir, QUALITY_FILE), quality)
    writers.say(f"demo MLLM: exported to {export_dir} ({_summary(quality, world.summary_keys)})")
    return export_dir


def _summary(q: dict, keys: Sequence[str] = ("caption_token_f1", "target_token_f1", "modification_valid")) -> str:
    parts = [f"train {q.get('train_s', 0):.0f} s"] + [f"{k} {q[k]:.2f}" for k in keys if k in q]  # rest: quality.json
    return ", ".join(parts)


def _is_export(path: str) -> bool:
    from zscir_jax.models.mllm.export import is_export

    return is_export(path)


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj) -> None:
    with files.atomic_text(path) as f:
        json.dump(obj, f, indent=1, default=list)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build (or reuse) the demo MLLM in WORKDIR/demo_mllm.")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a setting, e.g. --set train.steps=100 (value parsed as JSON)")
    a = ap.parse_args(argv)
    given: dict = {"smoke": a.smoke}
    for kv in a.set:
        key, _, value = kv.partition("=")
        node = given
        *head, last = key.split(".")
        for h in head:
            node = node.setdefault(h, {})
        try:
            node[last] = json.loads(value)
        except json.JSONDecodeError:
            node[last] = value
    c = ml_collections.ConfigDict({"demo_mllm": given})
    print(build_or_reuse(c, a.workdir))


if __name__ == "__main__":
    main()
