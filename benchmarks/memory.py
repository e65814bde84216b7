"""Peak memory of big models from XLA's compiled memory analysis: no weights are read and nothing is allocated.

Every program is built from abstract shapes (``jax.eval_shape`` of the model and its optimizer, then ``nnx.split``),
lowered and compiled ahead of time; ``compiled.memory_analysis()`` is XLA's buffer assignment of that program:

    argument  the inputs (train state or parameters, batch, KV cache)
    output    the outputs (the new train state, metrics; logits; the new cache)
    temp      everything else live at some point: activations kept for the backward pass, gradients, workspace
    alias     the part of the outputs written into donated inputs (the train state, the KV cache)
    peak      = argument + output + temp - alias (a donated input and the output that reuses it counted once)

Rows:

  pvlf-l14  the trainer's own PVLF step (``train.step.make_train_step``: state donated, dropout on) on CLIP ViT-L/14
            (vision 1024 wide, 24 layers, patch 14, 224 px; text 768 wide, 12 layers, 77 tokens; projection 768),
            fusion p=25, J=2 (``configs/common.py`` pvlf()), both towers trained (``optim.finetune=both``), AdamW
            through ``train.optimizer.make``; fp32, and bf16 mixed precision (``model.dtype=bfloat16``, fp32 params
            and optimizer state). The towers' architecture comes from a weight-free checkpoint directory (its
            config.json only), the path a restore skeleton takes.
  pvlf-b16  the same on CLIP ViT-B/16, for comparison.
  llava7b   LLaVA-1.5-7B shapes (CLIP ViT-L/14-336 -> 2-layer GELU projector -> Llama 4096 wide, 32 layers, 32 heads,
            MLP 11008, vocab 32064), bf16 parameters: the forward pass (576 image tokens + ``--llava-text`` text
            tokens -> logits of every position), and one greedy decode step over a KV cache with room for
            ``--llava-new`` more tokens (cache donated, as in ``llm.generate``).

For training rows ``residuals`` is what the loss's forward pass hands to its backward pass, summed from the jaxpr
(``jax.ad_checkpoint``'s saved residuals, parameters and inputs excluded): counted before XLA fuses (an upper bound
of the activations XLA keeps) and independent of any compiler's scheduling, so it shows what remat removes.
``--remat none,layer`` compares ``config.model.remat``.

THESE ARE XLA's CPU-COMPILED MEMORY ANALYSES. They estimate, but do not equal, a GPU's: the CPU compiler fuses,
lays out and schedules differently (a GPU keeps fewer fusion intermediates; cuDNN / cuBLAS workspaces are not
counted here). XLA's default CPU scheduler orders work for thread concurrency and holds far more at once than a
GPU's memory-aware scheduler, so this tool compiles with ``--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_
OPTIMIZED`` (``--cpu-scheduler default`` for XLA's default). Even so the CPU scheduler hoists part of the recomputation
that ``remat`` adds, so its peak understates what remat saves; the ``residuals`` column does not.

    python benchmarks/memory.py                                   # CPU: the default rows, about 4 minutes on 2 cores
    python benchmarks/memory.py --models pvlf-l14 --remat none,layer
    python benchmarks/memory.py --models llava7b --llava-batch 1,8 --llava-layers 4    # 4 and 8 layers, extrapolated
    python benchmarks/memory.py --platform cuda --run             # on a GPU: also runs each row (random weights)

On a GPU the command is the same with ``--platform cuda``; with ``--run`` each row is also run once with random
weights in its own process and ``jax.devices()[0].memory_stats()['peak_bytes_in_use']`` is reported beside the
compiled estimate (that path needs an accelerator and has not been run from this repository).
The last line is ``peak memory (compiled): L/14 PVLF step bf16 batch 64: X.X GiB; 7B LLaVA forward bf16 batch 1:
Y.Y GiB``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = ("pvlf-l14", "pvlf-b16", "llava7b")
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
GIB = 2.0 ** 30
ROW_TAG = "@@row "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--precision", default="fp32,bf16", help="PVLF rows: comma list of fp32, bf16")
    p.add_argument("--batch", type=int, default=64, help="PVLF rows: global batch")
    p.add_argument("--remat", default="none", help="PVLF rows: comma list of config.model.remat values")
    p.add_argument("--llava-batch", default="1,8", help="LLaVA rows: comma list of batch sizes")
    p.add_argument("--llava-text", type=int, default=64, help="text tokens after the 576 image tokens")
    p.add_argument("--llava-new", type=int, default=64, help="decode step: cache room for this many new tokens")
    p.add_argument("--llava-layers", type=int, default=0,
                   help="0: compile all 32 LLM layers; N: compile N and 2N and extrapolate linearly per layer")
    p.add_argument("--no-decode", action="store_true", help="LLaVA: skip the decode step")
    p.add_argument("--no-residuals", action="store_true", help="PVLF: skip the saved-residuals count")
    p.add_argument("--cpu-scheduler", choices=("memory", "default"), default="memory")
    p.add_argument("--platform", default="cpu", help="JAX_PLATFORMS (cpu, cuda, tpu)")
    p.add_argument("--run", action="store_true",
                   help="also run each row once with random weights (one process per row) and report the device's "
                        "peak_bytes_in_use; needs an accelerator")
    p.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)  # --run: the row this process runs
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("JAX_PLATFORMS", ARGS.platform)
    if ARGS.platform == "cpu" and ARGS.cpu_scheduler == "memory":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs"))
import common  # noqa: E402

from zscir_jax import sharding  # noqa: E402
from zscir_jax.methods import base, pvlf  # noqa: E402
from zscir_jax.models import clip, llm, mllm  # noqa: E402
from zscir_jax.train import optimizer as optim_lib  # noqa: E402
from zscir_jax.train import step as step_lib  # noqa: E402


# --------------------------------------------------------------------------------------------------------------------
# Shared pieces


def nbytes(tree) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            try:
                total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
            except TypeError:  # PRNG key arrays: a few bytes
                pass
    return total


def compile_and_measure(jitted, *args) -> dict:
    t = time.perf_counter()
    lowered = jitted.lower(*args)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    m = compiled.memory_analysis()
    sizes = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes, temp=m.temp_size_in_bytes,
                 alias=m.alias_size_in_bytes)
    sizes["peak"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    return dict(bytes=sizes, lower_s=lower_s, compile_s=compile_s, flops=flops, compiled=compiled)


def device_peak():
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


# --------------------------------------------------------------------------------------------------------------------
# PVLF train step


TOWERS = {"pvlf-l14": ("CLIP ViT-L/14", clip.CLIPConfig.vit_l14), "pvlf-b16": ("CLIP ViT-B/16", clip.CLIPConfig.vit_b16)}


def pvlf_config(ckpt_dir: str, precision: str, remat: str):
    c = common.pvlf()  # p=25, J=2, deep prompts, softmax weighting, focal loss, dropout on
    c.model.clip_path = ckpt_dir
    c.model.dtype = PRECISIONS[precision]
    c.model.param_dtype = "float32"
    c.model.remat = remat
    c.optim.finetune = "both"
    c.data.max_length = 77
    return c


def pvlf_batch_spec(batch: int, image_size: int, length: int) -> dict:
    return dict(reference_pixels=((batch, image_size, image_size, 3), jnp.float32),
                text_ids=((batch, length), jnp.int32), text_mask=((batch, length), jnp.int32),
                target_pixels=((batch, image_size, image_size, 3), jnp.float32),
                has_target_image=((batch,), jnp.bool_))


def saved_residual_bytes(config, ts: step_lib.TrainState, abstract_batch, mesh) -> int:
    """Bytes the forward pass of the step's loss keeps for its backward pass (parameters and inputs excluded)."""
    from jax._src import ad_checkpoint

    parts = {}

    def split_model(state):
        model, _ = nnx.merge(ts.graphdef, state)
        graphdef, params, rest = nnx.split(model, ts.wrt, ...)
        parts["graphdef"] = graphdef
        return params, rest

    params, rest = jax.eval_shape(split_model, ts.state)

    def loss(params, rest, batch):
        model = nnx.merge(parts["graphdef"], params, rest)
        rngs = nnx.Rngs(dropout=jax.random.key(0)) if config.model.get("train_dropout", True) else None
        return pvlf.METHOD.loss(model, batch, config, rngs)[0]

    with jax.set_mesh(mesh):
        residuals = ad_checkpoint.saved_residuals(loss, params, rest, abstract_batch)
    return sum(int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize for aval, why in residuals
               if not why.startswith("from the argument") and hasattr(aval, "shape"))


def pvlf_row(model: str, precision: str, batch: int, remat: str, args) -> dict:
    name, preset = TOWERS[model]
    cfg = preset()
    with tempfile.TemporaryDirectory() as ckpt_dir:
        with open(os.path.join(ckpt_dir, "config.json"), "w") as f:  # the architecture, no weights
            json.dump(cfg.to_hf_dict(), f)
        config = pvlf_config(ckpt_dir, precision, remat)
        mesh = sharding.make_mesh(tuple(config.mesh.shape))
        tx, _ = optim_lib.make(config.optim, total_steps=1000)
        t = time.perf_counter()
        ts = step_lib.build(pvlf.METHOD, config, mesh, tx, abstract=True)  # shapes, dtypes, shardings only
        build_s = time.perf_counter() - t
        spec = pvlf_batch_spec(batch, cfg.vision.image_size, cfg.text.max_position_embeddings)
        shardings = step_lib.batch_shardings(mesh, spec)
        abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=shardings[k]) for k, (s, d) in spec.items()}
        train_step = step_lib.make_train_step(pvlf.METHOD, config, ts, mesh, spec)
        with jax.set_mesh(mesh):  # as the trainer calls it
            out = compile_and_measure(train_step, ts.state, abstract_batch)
        row = dict(model=f"PVLF step, {name}", precision=f"{precision}" + ("" if remat == "none" else f" remat={remat}"),
                   batch=batch, params=nbytes(ts.state[0]), optimizer=nbytes(ts.state[1]), build_s=build_s,
                   **{k: v for k, v in out.items() if k != "compiled"})
        if not args.no_residuals:
            row["residuals"] = saved_residual_bytes(config, ts, abstract_batch, mesh)
        if args.run:
            row["measured_peak"] = run_pvlf(config, ts, mesh, out["compiled"], spec, shardings)
    return row


def run_pvlf(config, ts, mesh, compiled, spec, shardings):
    """Random weights (the skeleton's own initialisers), a random batch, two steps; the device's peak."""
    tx, _ = optim_lib.make(config.optim, total_steps=1000)
    skeleton = base.skeleton(config)

    def init():
        model = pvlf.METHOD.build(skeleton, nnx.Rngs(config.seed))
        return nnx.split((model, nnx.Optimizer(model, tx, wrt=ts.wrt)))[1]

    with sharding.activate(mesh, step_lib._rules(config)):
        state = jax.jit(init, out_shardings=ts.shardings)()
    rng = np.random.default_rng(0)
    host = {}
    for k, (shape, dtype) in spec.items():
        if k.endswith("pixels"):
            host[k] = rng.standard_normal(shape).astype(np.float32)
        elif k == "text_ids":
            host[k] = rng.integers(3, 1000, shape).astype(np.int32)
        else:
            host[k] = np.ones(shape, dtype)
    batch = {k: jax.device_put(v, shardings[k]) for k, v in host.items()}
    with jax.set_mesh(mesh):
        for _ in range(2):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    return device_peak()


# --------------------------------------------------------------------------------------------------------------------
# LLaVA-1.5-7B


def llava_config(layers: int = 32) -> mllm.MLLMConfig:
    vision = clip.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                   num_attention_heads=16, image_size=336, patch_size=14)
    text = llm.LLMConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=layers, num_heads=32,
                         num_kv_heads=32, rms_norm_eps=1e-5, max_position_embeddings=4096, pad_token_id=32001)
    return mllm.MLLMConfig(vision=vision, text=text, image_token_id=32000)  # vision layer -2, "default" strategy


def abstract_llava(cfg: mllm.MLLMConfig, mesh):
    make = lambda: mllm.MLLM(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    with sharding.activate(mesh):
        abstract = nnx.eval_shape(make)
        graphdef, state = nnx.split(abstract)
        shardings = step_lib.state_shardings(state, mesh)
        state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    return graphdef, state, shardings, make


def llava_programs(cfg, batch: int, text: int, new: int, mesh):
    """(forward, its abstract args), (decode step, its abstract args), params bytes, the model factory."""
    graphdef, state, shardings, make = abstract_llava(cfg, mesh)
    T = cfg.image_seq_length
    L = T + text
    rep = sharding.replicated(mesh)
    bs = lambda ndim: sharding.batch_sharding(mesh, ndim)
    size = cfg.vision.image_size

    def forward(state, ids, pixels, mask):
        return nnx.merge(graphdef, state)(ids, pixels, mask)  # logits [B, L, V]

    # keep_unused: every weight is resident on the device, also those a program does not read (the vision
    # tower in the decode step, its last layer in the forward: LLaVA reads layer -2)
    fwd = jax.jit(forward, in_shardings=(shardings, bs(2), bs(4), bs(2)), out_shardings=bs(3), keep_unused=True)
    fwd_args = (state, jax.ShapeDtypeStruct((batch, L), jnp.int32, sharding=bs(2)),
                jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=bs(4)),
                jax.ShapeDtypeStruct((batch, L), jnp.int32, sharding=bs(2)))

    S = L + new
    kv = (batch, S, cfg.text.num_kv_heads, cfg.text.head_dim)
    cache = [(jax.ShapeDtypeStruct(kv, jnp.bfloat16, sharding=bs(4)),) * 2 for _ in range(cfg.text.num_layers)]
    cache_sh = [(bs(4), bs(4)) for _ in range(cfg.text.num_layers)]

    def decode(state, cache, tok, kv_mask, pos, slot):
        lm = nnx.merge(graphdef, state).llm
        hidden, cache = lm.forward(lm.embed(tok[:, None]), pos, kv_mask, cache, slot)
        return jnp.argmax(lm.logits(hidden[:, 0]), axis=-1).astype(jnp.int32), cache

    dec = jax.jit(decode, in_shardings=(shardings, cache_sh, bs(1), bs(2), bs(2), rep),
                  out_shardings=(bs(1), cache_sh), donate_argnums=(1,), keep_unused=True)
    dec_args = (state, cache, jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bs(1)),
                jax.ShapeDtypeStruct((batch, S), jnp.bool_, sharding=bs(2)),
                jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=bs(2)),
                jax.ShapeDtypeStruct((), jnp.int32, sharding=rep))
    return (fwd, fwd_args), (dec, dec_args), nbytes(state), (make, shardings)


def llava_rows(batch: int, args) -> list[dict]:
    mesh = sharding.make_mesh((-1, 1, 1))
    full = llava_config()
    n = args.llava_layers
    sizes = [full.text.num_layers] if n <= 0 or n >= full.text.num_layers else [n, 2 * n]
    measured = {}
    for layers in sizes:
        cfg = dataclasses.replace(full, text=dataclasses.replace(full.text, num_layers=layers))
        (fwd, fwd_args), (dec, dec_args), params, factory = llava_programs(cfg, batch, args.llava_text,
                                                                          args.llava_new, mesh)
        with jax.set_mesh(mesh):
            measured[layers] = dict(params=params, forward=compile_and_measure(fwd, *fwd_args))
            if not args.no_decode:
                measured[layers]["decode"] = compile_and_measure(dec, *dec_args)
        if args.run and layers == full.text.num_layers:
            measured[layers]["measured"] = run_llava(cfg, factory, fwd, fwd_args, dec, dec_args, mesh)
    rows = []
    L = full.image_seq_length + args.llava_text
    for kind in ("forward",) + (() if args.no_decode else ("decode",)):
        label = (f"7B LLaVA forward ({full.image_seq_length}+{args.llava_text} tokens)" if kind == "forward" else
                 f"7B LLaVA decode step (cache {L}+{args.llava_new})")
        if len(sizes) == 1:
            m = measured[sizes[0]]
            row = dict(model=label, precision="bf16", batch=batch, params=m["params"],
                       **{k: v for k, v in m[kind].items() if k != "compiled"})
            if "measured" in m:
                row["measured_peak"] = m["measured"][kind]
        else:  # linear per LLM layer: value(32) = value(N) + (32 - N) * (value(2N) - value(N)) / N
            a, b = measured[sizes[0]], measured[sizes[1]]
            scale = (full.text.num_layers - n) / n
            extra = lambda x, y: x + (y - x) * scale
            params = nbytes(abstract_llava(full, mesh)[1])  # exact: shapes only, nothing compiled
            row = dict(model=label, precision="bf16", batch=batch, params=params,
                       bytes={k: int(extra(a[kind]["bytes"][k], b[kind]["bytes"][k])) for k in a[kind]["bytes"]},
                       flops=extra(a[kind]["flops"], b[kind]["flops"]), lower_s=a[kind]["lower_s"] + b[kind]["lower_s"],
                       compile_s=a[kind]["compile_s"] + b[kind]["compile_s"],
                       note=f"extrapolated from {n} and {2 * n} LLM layers (compile s: both compilations)")
        rows.append(row)
    return rows


def run_llava(cfg, factory, fwd, fwd_args, dec, dec_args, mesh) -> dict:
    make, shardings = factory
    with sharding.activate(mesh):
        state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
    rng = np.random.default_rng(0)
    _, ids, pixels, mask = fwd_args
    B, L = ids.shape
    host_ids = rng.integers(3, 32000, (B, L)).astype(np.int32)
    host_ids[:, 1:1 + cfg.image_seq_length] = cfg.image_token_id
    out = {}
    with jax.set_mesh(mesh):
        logits = fwd(state, jnp.asarray(host_ids), jnp.asarray(rng.standard_normal(pixels.shape), jnp.float32),
                     jnp.ones((B, L), jnp.int32))
        jax.block_until_ready(logits)
        out["forward"] = device_peak()
        del logits
        _, cache, tok, kv_mask, pos, _ = dec_args
        cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), cache)
        S = kv_mask.shape[1]
        new, cache = dec(state, cache, jnp.zeros(tok.shape, jnp.int32), jnp.arange(S)[None].repeat(B, 0) <= L,
                         jnp.full(pos.shape, L, jnp.int32), jnp.int32(L))
        jax.block_until_ready(new)
        out["decode"] = device_peak()  # the process's peak so far: max(forward, decode)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Rows, table


def plan(args) -> list[tuple]:
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"--models: unknown {', '.join(bad)}; allowed: {', '.join(MODELS)}")
    rows = []
    for m in models:
        if m == "llava7b":
            rows += [("llava7b", int(b)) for b in args.llava_batch.split(",") if b]
        else:
            for r in [r for r in args.remat.split(",") if r]:
                if r not in base.REMAT_MODES:
                    raise SystemExit(f"--remat: unknown {r!r}; allowed: {', '.join(base.REMAT_MODES)}")
                rows += [(m, p, args.batch, r) for p in args.precision.split(",") if p]
    return rows


def run_one(item, args) -> list[dict]:
    if item[0] == "llava7b":
        return llava_rows(item[1], args)
    return [pvlf_row(*item, args)]


def run_in_subprocess(i: int) -> list[dict]:
    """--run: each row in a fresh process, so each peak_bytes_in_use is that row's own."""
    argv = [sys.executable, os.path.abspath(__file__)] + [a for a in sys.argv[1:]] + ["--only", str(i)]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True).stdout
    return [json.loads(line[len(ROW_TAG):]) for line in out.splitlines() if line.startswith(ROW_TAG)]


def gib(x) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def print_table(rows):
    head = ["model", "precision", "batch", "params GiB", "peak GiB (compiled)", "compile s"]
    extra = any("residuals" in r for r in rows)
    measured = any("measured_peak" in r for r in rows)
    if extra:
        head.insert(5, "residuals GiB")
    if measured:
        head.insert(5, "peak GiB (measured)")
    body = []
    for r in rows:
        line = [r["model"] + (" *" if r.get("note") else ""), r["precision"], str(r["batch"]), gib(r["params"]),
                gib(r["bytes"]["peak"]), f"{r['compile_s']:.1f}"]
        if extra:
            line.insert(5, gib(r.get("residuals")))
        if measured:
            line.insert(5, gib(r.get("measured_peak")))
        body.append(line)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt(head))
    print("-|-".join("-" * w for w in widths))
    for b in body:
        print(fmt(b))
    for r in rows:
        if r.get("note"):
            print(f"* {r['model']}, batch {r['batch']}: {r['note']}")


def main():
    args = ARGS
    rows_plan = plan(args)
    if args.only is not None:
        for row in run_one(rows_plan[args.only], args):
            print(ROW_TAG + json.dumps(row), flush=True)
        return
    start = time.perf_counter()
    dev = jax.devices()[0]
    sched = (f", CPU scheduler: {'memory-optimized' if args.cpu_scheduler == 'memory' else 'XLA default'}"
             if dev.platform == "cpu" else "")
    print(f"jax {jax.__version__}, compiled for {dev.platform} ({dev.device_kind}){sched}")
    if dev.platform == "cpu":
        print("XLA's CPU-compiled memory analysis: an estimate of a GPU's peak, not a GPU measurement (other fusion, "
              "layout and scheduling; no cuDNN/cuBLAS workspaces)")
    print("peak = argument + output + temp - alias (alias: outputs written into donated inputs: the train state, "
          "the KV cache)")
    rows = []
    for i, item in enumerate(rows_plan):
        new = run_in_subprocess(i) if args.run else run_one(item, args)
        for r in new:
            b = r["bytes"]
            detail = (f"  {r['model']} {r['precision']} batch {r['batch']}: argument {gib(b['argument'])}, output "
                      f"{gib(b['output'])}, temp {gib(b['temp'])}, alias {gib(b['alias'])} -> peak {gib(b['peak'])} "
                      f"GiB; params {gib(r['params'])}")
            if "optimizer" in r:
                detail += f", optimizer state {gib(r['optimizer'])}"
            if "residuals" in r:
                detail += f", saved residuals {gib(r['residuals'])}"
            if "measured_peak" in r:
                detail += f", measured peak_bytes_in_use {gib(r['measured_peak'])}"
            detail += f" GiB; {r['flops'] / 1e12:.2f} TFLOP (XLA cost analysis)" if r.get("flops") else " GiB"
            detail += f"; lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s"
            print(detail, flush=True)
        rows += new
    print()
    print_table(rows)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    summary = []
    l14 = [r for r in rows if r["model"].endswith("ViT-L/14") and r["precision"] == "bf16" and r["batch"] == args.batch]
    if l14:
        summary.append(f"L/14 PVLF step bf16 batch {args.batch}: {l14[0]['bytes']['peak'] / GIB:.1f} GiB")
    fwd1 = [r for r in rows if r["model"].startswith("7B LLaVA forward") and r["batch"] == 1]
    if fwd1:
        summary.append(f"7B LLaVA forward bf16 batch 1: {fwd1[0]['bytes']['peak'] / GIB:.1f} GiB"
                       + (" (extrapolated)" if fwd1[0].get("note") else ""))
    if summary:
        print("peak memory (compiled): " + "; ".join(summary))


if __name__ == "__main__":
    main()
