"""Shared defaults for the configs: every knob with the PVLF paper's value (TransAgg's where PVLF follows it)."""
from __future__ import annotations

import ml_collections

# Parameter paths -> optimizer groups (first match wins). Fusion models hold the towers under `clip/` (any family:
# CLIP's and SigLIP's text tower is text_model (+ text_projection), BLIP's text_encoder + text_proj).
FUSION_GROUPS = (
    (r"clip/(text_model|text_projection|text_encoder|text_proj)(/.*)?", "text_tower"),
    (r"clip/.*", "image_tower"),  # vision tower, visual projection, logit scale
    (r".*", "fusion"),
)
CLIP_GROUPS = (
    (r"(text_model|text_projection|text_encoder|text_proj)(/.*)?", "text_tower"),
    (r".*", "image_tower"),
)


def base(method: str = "pvlf") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.mode = "train"  # "train" (train or resume, then evaluate) | "eval" (restore and evaluate, no training)
    c.init_from = ""  # mode=eval: a checkpoint directory or a CLIP instead of the workdir's newest checkpoint

    # Mesh over all devices: (data, fsdp, model); -1 absorbs the rest. rules=None uses sharding.DEFAULT_RULES.
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=None))

    c.model = ml_collections.ConfigDict()
    c.model.clip_path = ""  # a transformers CLIP / BLIP / SigLIP, an OpenCLIP or zscir_jax-exported towers
    c.model.backbone = "clip"  # the family of random towers from clip_tiny: clip | blip | siglip (models.towers)
    c.model.mllm_path = ""  # a pretrained LLaVA (transformers dir or zscir_jax export) for MLLM-based methods
    c.model.clip_tiny = ml_collections.ConfigDict(dict(vocab_size=1000, image_size=32, patch_size=8, width=32,
                                                       layers=2, max_length=16, eos_token_id=2))
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.train_dropout = True
    # "none" | "layer": recompute each transformer layer (CLIP towers, LLM) in the backward pass instead of keeping
    # its activations (nnx.remat): same numbers, less memory, more compute (benchmarks/memory.py measures it).
    c.model.remat = "none"
    c.model.fusion = ml_collections.ConfigDict(dict(
        depth=2,  # J
        heads=8,
        mlp_ratio=4,
        num_prompts=25,  # p
        prompt_mode="deep",  # "deep" | "shallow"
        weighting="softmax",  # PVLF: softmax over (w1, w2, w3); TransAgg: "linear"
        dropout=0.5,  # TransAgg's fusion dropout
        combiner_ratio=4,
    ))

    c.loss = ml_collections.ConfigDict(dict(name="focal", temperature=0.01, alpha=1.0, gamma=2.0))

    c.optim = ml_collections.ConfigDict(dict(
        groups=FUSION_GROUPS,
        lr=dict(fusion=1e-4, text_tower=1e-6, image_tower=1e-6),
        finetune="text",  # "none" | "text" | "both" (PVLF Table 3)
        frozen=(),
        weight_decay=0.05,
        b1=0.9, b2=0.999, eps=1e-8,
        warmup_steps=0,
        min_lr_ratio=0.0,
        clip_norm=5.0,  # TransAgg
        accumulate=1,
    ))

    c.train = ml_collections.ConfigDict(dict(
        steps=1000,
        epochs=0,  # > 0: passes over the training records instead of steps (steps computed when the data exist)
        batch_size=64,  # GLOBAL batch (split over processes and devices)
        log_every=50,
        checkpoint_every=500,
        keep_checkpoints=3,
        async_checkpoints=True,
        progress_bar=True,
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="triplets",  # "triplets" (JSONL records) | "pairs" | "random" (synthetic arrays, tests)
        # One source or several, comma-separated, each optionally "format:path" (see zscir_jax.data.sources):
        # "runs/t.jsonl", "template:laion_template_info.json,llm:laion_llm_info.json" (Laion-CIR-Combined).
        triplets="",
        laion_format="",  # default format of a source without a prefix: "" (by extension) | "template" | "llm"
        image_dir="",
        image_size=224,
        max_length=77,
        tokenizer="",  # directory of a word tokenizer; empty = the CLIP checkpoint's tokenizer
        llm_max_length=32,  # tokens of a text field written by the (M)LLM's own tokenizer (model.mllm_path)
        worker_count=0,
        on_error="raise",  # "raise" | "skip"
        max_skip_fraction=0.05,  # on_error=skip: a run that skips more of the records it reads stops
        pair_neighbours=0,  # source "pairs": each shuffled pair followed by its k nearest captions (data.neighbours)
    ))

    # Benchmarks, by name (zscir_jax.evaluation.suite): reader, root, split, options (reader keyword arguments),
    # every (steps between evaluations during training; 0 = at the end only).
    c.evals = ml_collections.ConfigDict()
    # Settings shared by every evaluation.
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=64,
        compare=(),  # other methods scored with the same towers, e.g. ("image_only", "text_only")
        untrained=False,  # also score the method at its initialisation
        table_metrics=(),  # columns of the final tables; empty = each benchmark's usual ones
    ))
    # Joint inference (zscir_jax.evaluation.joint): "query" scores by the composed query alone; "text" / "joint" add
    # an MLLM-written target text (config.joint.synthesis writes it), weighted by `weight` (lambda).
    c.joint = ml_collections.ConfigDict(dict(mode="query", weight=1.0, also=()))
    return c


def flags(arg, allowed) -> tuple:
    """The comma-separated flags of a config argument (``:smoke,no_fea``); an unknown one is refused by name."""
    given = tuple(f for f in (arg or "").split(",") if f)
    bad = [f for f in given if f not in allowed]
    if bad:
        raise ValueError(f"unknown config argument(s) {', '.join(bad)}; allowed (comma-separated): "
                         f"{', '.join(allowed)}")
    return given


def teach_demo_mllm(synth, tasks) -> None:
    """A synthesis config's demo MLLM is taught only ``tasks``: every other task, and every batch shape (group)
    holding none of them, gets weight 0 (a small model's capacity and training time go to what the run uses)."""
    t = synth.demo_mllm.train
    t.task_weights = {k: (v if k in tasks else 0.0) for k, v in t.task_weights.items()}
    t.group_weights = {g: (v if set(t.groups[g].split(",")) & set(tasks) else 0.0) for g, v in t.group_weights.items()}


def eval_entry(reader: str, root: str = "", split: str = "val", every: int = 0, **options) -> ml_collections.ConfigDict:
    """One ``config.evals`` entry; ``options`` are the reader's keyword arguments."""
    return ml_collections.ConfigDict(dict(reader=reader, root=root, split=split, every=every, options=options))


def all_benchmarks(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CIRR, FashionIQ (the three categories, CLIP4Cir's caption join) and CIRCO val; roots set by the user or, in
    the demo, by its preparation."""
    c.evals.cirr = eval_entry("cirr")
    c.evals.fashioniq = eval_entry("fashioniq", categories=("dress", "shirt", "toptee"), caption_join="and")
    c.evals.circo = eval_entry("circo")
    return c


def pvlf() -> ml_collections.ConfigDict:
    return base("pvlf")


def transagg() -> ml_collections.ConfigDict:
    c = base("transagg")
    c.model.fusion.num_prompts = 1  # the separator token
    c.model.fusion.prompt_mode = "shallow"
    c.model.fusion.weighting = "linear"
    c.loss = ml_collections.ConfigDict(dict(name="info_nce", temperature=0.01, alpha=1.0, gamma=0.0))  # scale 100
    return c


def mvftji() -> ml_collections.ConfigDict:
    """MVFT-JI (seed 000; zscir_jax.methods.mvftji): PVLF's fusion as the composer, both towers fine-tuned, two
    symmetric InfoNCE tasks (query -> target text, caption -> image) and joint inference. Where the seed gives no
    value the values are ours (see the method's docstring)."""
    c = base("mvftji")
    c.model.composer = "fusion"
    c.loss = ml_collections.ConfigDict(dict(name="info_nce", temperature=0.01, target_text_weight=1.0,
                                            caption_weight=1.0, target_image_weight=0.0))
    c.optim.finetune = "both"
    c.joint.update(mode="joint", weight=1.0, also=("query_only", "text_only"))
    return c


def pic2word_model() -> ml_collections.ConfigDict:
    """Pic2Word's f_phi (3 layers, 512 wide, dropout 0.1) and its prompts (zscir_jax.methods.pic2word)."""
    return ml_collections.ConfigDict(dict(hidden=512, layers=3, dropout=0.1, prompt="a photo of * , {text}",
                                          train_prompt="a photo of *", placeholder="*", init_from=""))


def pic2word() -> ml_collections.ConfigDict:
    """Pic2Word: f_phi trained on images only against frozen towers (its paper: lr 1e-4, batch 1024, tau = CLIP's)."""
    from zscir_jax.methods import pic2word as pic2word_lib

    c = base("pic2word")
    c.model.pic2word = pic2word_model()
    c.loss = ml_collections.ConfigDict(dict(name="info_nce", temperature=0.01))
    c.optim.update(groups=pic2word_lib.GROUPS, finetune="none")
    c.optim.lr = ml_collections.ConfigDict(dict(mapping=1e-4))
    c.data.source = "pairs"
    return c


def distillcir() -> ml_collections.ConfigDict:
    """DistillCIR (seed 004; zscir_jax.methods.distillcir): two stages, then the student.

    stages.pic2word            Pic2Word's f_phi on images only (a results row of its own)
    stages.distillcir_teacher  the LLaVA teacher's LoRA on L_com; exports h_m of every training record
    the student                CLIP + LoRA (Table 7: r=64, alpha=16, lr 2e-5, cosine) + f_phi from the first stage,
                               L_con + L_fea against the teacher's h_m
    Values the supplement does not give are ours (the method's docstring, README)."""
    from zscir_jax.methods import distillcir as distillcir_lib, pic2word as pic2word_lib
    from zscir_jax.models import lora

    c = base("distillcir")
    c.model.pic2word = pic2word_model()
    c.model.pic2word.prompt = "a photo of * that {text}"  # ours: the instruction reads as a relative clause
    c.model.distillcir = ml_collections.ConfigDict(dict(
        lora=dict(rank=64, alpha=16.0, targets=lora.CLIP_ATTENTION, dropout=0.0)))
    c.model.teacher = ml_collections.ConfigDict(dict(
        lora=dict(rank=64, alpha=16.0, targets=lora.ATTENTION, dropout=0.05),
        query_prompt="{text}\nDescribe the changed image in one word:",
        summary_prompt="{text}\nDescribe this sentence in one word:",
        feature_dtype="float32",
        llm=dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2),  # no mllm_path
    ))
    c.loss = ml_collections.ConfigDict(dict(name="info_nce", temperature=0.01, contrastive_weight=1.0,
                                            feature_weight=1.0, feature_loss="info_nce"))
    c.optim.update(groups=pic2word_lib.GROUPS, finetune="none")
    c.optim.lr = ml_collections.ConfigDict(dict(lora=2e-5, mapping=2e-5, projection=2e-5))
    c.data.features = ml_collections.ConfigDict(dict(teacher_target=""))
    c.stages = ml_collections.ConfigDict()
    p = pic2word()
    c.stages.pic2word = ml_collections.ConfigDict(dict(
        method="pic2word", output="model.pic2word.init_from", evaluate=True,
        model=dict(pic2word=dict(prompt=p.model.pic2word.prompt)), loss=p.loss.to_dict(), optim=p.optim.to_dict(),
        data=dict(source="pairs"), train=dict(steps=10_000)))
    c.stages.distillcir_teacher = ml_collections.ConfigDict(dict(
        method="distillcir_teacher", output="data.features.teacher_target", evaluate=False,
        loss=dict(temperature=0.05),
        optim=dict(groups=distillcir_lib.TEACHER_GROUPS, frozen=distillcir_lib.TEACHER_FROZEN, finetune="both",
                   lr=dict(lora=2e-5)),
        train=dict(steps=2000)))
    c.eval.compare = ("image_only", "text_only", "image_plus_text")
    c.eval.untrained = True
    return c


def fashion() -> ml_collections.ConfigDict:
    """The fashion method (seed 002; zscir_jax.methods.fashion): one job, two stages.

    stages.fashion_align   stage 1: CLIP, both towers at a small learning rate, aligned to the MLLM's attribute
                           phrases; its towers are stage 2's start (model.fashion.init_from)
    the main method        stage 2: the towers' zero-shot attribute prompt + the relative caption, with the
                           reference image; InfoNCE against the targets plus a static bank of negatives
    Values the seed does not give are ours (the method's docstring, README); the attribute vocabulary defaults to
    the garment benchmark's (zscir_jax.data.garments)."""
    from zscir_jax.data import garments
    from zscir_jax.methods import fashion as fashion_lib

    c = base("fashion")
    c.model.fashion = ml_collections.ConfigDict(dict(
        attributes=garments.ATTRIBUTES, prompt="clip", joiner="that", image_weight=1.0, text_weight=1.0,
        bank_size=32768, bank_dtype="float32", init_from=""))
    c.loss = ml_collections.ConfigDict(dict(name="info_nce", temperature=0.01))
    c.optim.update(groups=fashion_lib.GROUPS, finetune="both", weight_decay=0.05)
    c.optim.lr = ml_collections.ConfigDict(dict(text_tower=1e-5, image_tower=1e-5))
    c.stages = ml_collections.ConfigDict()
    c.stages.fashion_align = ml_collections.ConfigDict(dict(
        method="fashion_align", output="model.fashion.init_from", evaluate=False,
        optim=dict(groups=CLIP_GROUPS, finetune="both", lr=dict(text_tower=1e-5, image_tower=1e-5)),
        train=dict(steps=2000)))
    c.eval.compare = ("image_only", "text_only", "image_plus_text")
    c.eval.untrained = True
    return c


def tiny(method: str = "pvlf") -> ml_collections.ConfigDict:
    """A seconds-long config on synthetic arrays (tests, notebooks): tiny random CLIP, small fusion, no eval."""
    c = transagg() if method == "transagg" else mvftji() if method == "mvftji" else base(method)
    if method == "clip_pretrain":
        c.optim.groups = CLIP_GROUPS
        c.optim.finetune = "both"
        c.optim.lr = dict(text_tower=3e-3, image_tower=3e-3)
    else:
        c.optim.lr = dict(fusion=3e-3, text_tower=3e-4, image_tower=3e-4)
    c.model.clip_tiny = ml_collections.ConfigDict(dict(vocab_size=64, image_size=16, patch_size=8, width=32,
                                                       layers=1, max_length=8, eos_token_id=2))
    c.model.fusion.heads = 2
    c.model.fusion.mlp_ratio = 2
    c.model.fusion.combiner_ratio = 1
    c.model.fusion.num_prompts = min(c.model.fusion.num_prompts, 3)
    c.model.fusion.dropout = 0.1
    c.loss.temperature = 0.1
    c.joint.update(mode="query", also=())  # no MLLM here to write target texts
    c.data.source = "random"
    c.train.update(steps=8, batch_size=8, log_every=1, checkpoint_every=4, progress_bar=False)
    c.optim.warmup_steps = 0
    return c


def real_backbone(c: ml_collections.ConfigDict, arg=None) -> ml_collections.ConfigDict:
    """Settings shared by the configs that train on a local CLIP checkpoint (whose size comes from its config.json)
    and Laion-CIR triplets; ``arg="runlocal"`` makes a few-step smoke run."""
    if arg not in (None, "runlocal"):
        raise ValueError(f"unknown config argument {arg!r}; allowed: runlocal")
    c.model.clip_path = ""
    c.data.update(image_size=224, max_length=77, tokenizer="")
    c.train.update(steps=8000, batch_size=64, log_every=50, checkpoint_every=1000)  # PVLF: batch 64
    c.optim.warmup_steps = 500
    c.eval.compare = ("image_only", "text_only", "image_plus_text")
    all_benchmarks(c)  # --config.evals.cirr.root=... etc.; an empty root is skipped with a warning
    if arg == "runlocal":
        c.train.update(steps=10, batch_size=8, log_every=1, checkpoint_every=5)
        c.eval.batch_size = 16
    return c
