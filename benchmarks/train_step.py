"""The PVLF train step: zscir_jax's jitted step vs the same model in PyTorch, same weights, same batch, one run.

Ours is the step the trainer runs (``train.step.make_train_step``: CLIP towers + fusion + focal loss + AdamW through
optax, both towers trained as with ``optim.finetune=both``, global-norm clipping, the state donated). The peer is
transformers' ``CLIPModel`` loaded from the same checkpoint plus a PyTorch twin of the fusion module (written here,
weights copied from ours) and ``torch.optim.AdamW`` with the same groups, learning rates and clipping. Dropout is
off on both sides so the first step's losses must agree (to 1e-4 in float32; checked and printed).

Reported per precision: steps/s (best of ``--repeats`` timings of ``--steps`` steps, after a warm-up that
compiles; ours and the peer timed in turn within each repeat, so a change in the machine's load falls on both), the
ratio, and MFU: the step's FLOPs (XLA's cost analysis of our compiled step; the same model for both) per second as a
fraction of the matmul peak measured in the same run (the better of a jitted JAX and a torch 2048^3 matmul in that
precision). bf16 is mixed precision on both sides: float32 weights and optimizer, bfloat16 compute (ours
``model.dtype=bfloat16``; torch ``autocast``). On a CPU, XLA's bf16 matmuls run no faster than float32 (the jax
column of the bf16 peak), while torch's oneDNN uses the CPU's bf16 instructions: bf16 is for accelerators.
``--torch-compile`` adds torch.compile's figure (its first call compiles for minutes on a CPU, so it is off by
default).

    python benchmarks/train_step.py                               # CPU: width 384, 6 layers, 224 px, batch 16
    python benchmarks/train_step.py --size b16 --batch 64 --platform cuda --torch-device cuda   # on a GPU
    python benchmarks/train_step.py --size l14 --batch 64 --platform cuda --torch-device cuda --precision bf16

The last line is the float32 ratio (``ratio ours / pytorch: X.XXx``, above 1 = ours faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

SIZES = {  # vision width/layers/heads/patch, text width/layers/heads, projection
    "cpu": dict(vw=384, vl=6, vh=6, patch=16, tw=384, tl=6, th=6, proj=384),
    "b16": dict(vw=768, vl=12, vh=12, patch=16, tw=512, tl=12, th=8, proj=512),
    "l14": dict(vw=1024, vl=24, vh=16, patch=14, tw=768, tl=12, th=12, proj=768),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--prompts", type=int, default=25, help="PVLF's p")
    p.add_argument("--depth", type=int, default=2, help="PVLF's J")
    p.add_argument("--steps", type=int, default=2, help="steps per timing")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for ours (cpu, cuda, tpu)")
    p.add_argument("--torch-device", default="cpu")
    return p.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("JAX_PLATFORMS", ARGS.platform)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs"))
import common  # noqa: E402

from zscir_jax import sharding  # noqa: E402
from zscir_jax.methods import pvlf  # noqa: E402
from zscir_jax.train import optimizer as optim_lib  # noqa: E402
from zscir_jax.train import step as step_lib  # noqa: E402

PAD, BOS_OFFSET, EOS_OFFSET = 0, 2, 1  # BOS = vocab - 2, EOS = vocab - 1


# --------------------------------------------------------------------------------------------------------------------
# The shared checkpoint and batch


def write_checkpoint(path, size, args):
    s = SIZES[size]
    text = dict(vocab_size=args.vocab, hidden_size=s["tw"], intermediate_size=4 * s["tw"], num_hidden_layers=s["tl"],
                num_attention_heads=s["th"], max_position_embeddings=args.text_len, pad_token_id=PAD,
                bos_token_id=args.vocab - BOS_OFFSET, eos_token_id=args.vocab - EOS_OFFSET, hidden_act="quick_gelu")
    vision = dict(hidden_size=s["vw"], intermediate_size=4 * s["vw"], num_hidden_layers=s["vl"],
                  num_attention_heads=s["vh"], image_size=args.image_size, patch_size=s["patch"],
                  hidden_act="quick_gelu")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=s["proj"])
    transformers.CLIPModel(cfg).save_pretrained(path)


def make_batch(args, seed=0):
    rng = np.random.default_rng(seed)
    b, l = args.batch, args.text_len
    ids = np.zeros((b, l), np.int32)
    mask = np.zeros((b, l), np.int32)
    for i in range(b):
        n = int(rng.integers(6, l + 1))  # real tokens incl. BOS and EOS
        ids[i, 0], ids[i, n - 1] = args.vocab - BOS_OFFSET, args.vocab - EOS_OFFSET
        ids[i, 1:n - 1] = rng.integers(3, args.vocab - BOS_OFFSET, n - 2)
        mask[i, :n] = 1
    pix = lambda: rng.standard_normal((b, args.image_size, args.image_size, 3)).astype(np.float32)
    return dict(reference_pixels=pix(), text_ids=ids, text_mask=mask, target_pixels=pix(),
                has_target_image=np.ones(b, bool))


# --------------------------------------------------------------------------------------------------------------------
# Ours


def our_config(path, args, precision):
    c = common.pvlf()
    c.model.clip_path = path
    c.model.dtype = "bfloat16" if precision == "bf16" else "float32"
    c.model.train_dropout = False
    c.model.fusion.update(num_prompts=args.prompts, depth=args.depth)
    c.optim.finetune = "both"
    c.data.max_length = args.text_len
    return c


def build_ours(path, args, precision, batch):
    config = our_config(path, args, precision)
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    tx, _ = optim_lib.make(config.optim, total_steps=1000)
    ts = step_lib.build(pvlf.METHOD, config, mesh, tx)
    train_step = step_lib.make_train_step(pvlf.METHOD, config, ts, mesh, step_lib.batch_spec_of(batch))
    dev_batch = jax.device_put(batch, step_lib.batch_shardings(mesh, step_lib.batch_spec_of(batch)))
    flops = train_step.lower(ts.state, dev_batch).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, (list, tuple)) else flops).get("flops", float("nan"))
    fusion_params = jax.device_get(nnx_fusion_params(ts))
    return ts, train_step, dev_batch, flops, fusion_params


def nnx_fusion_params(ts):
    """The fusion module's weights as numpy, read before the state is donated to the first step."""
    model = ts.model()
    f = model.fusion
    get = lambda lin: (np.asarray(lin.kernel[...]), np.asarray(lin.bias[...]))
    out = dict(prompts=np.asarray(f.prompts[...]), combiner=get(f.combiner), combiner_out=get(f.combiner_out),
               weights=get(f.weights), layers=[])
    for layer in f.layers:
        ln = lambda n: (np.asarray(n.scale[...]), np.asarray(n.bias[...]))
        out["layers"].append(dict(norm1=ln(layer.norm1), norm2=ln(layer.norm2), q=get(layer.attn.q),
                                  k=get(layer.attn.k), v=get(layer.attn.v), out=get(layer.attn.out),
                                  fc1=get(layer.fc1), fc2=get(layer.fc2)))
    return out


class OursRunner:
    """Runs our jitted step n times on one batch (the state is donated and replaced); the first two losses kept."""

    def __init__(self, ts, train_step, batch):
        self.state, self.train_step, self.batch = ts.state, train_step, batch
        self.first_losses = [float(self(1)) for _ in range(2)]  # the first call compiles

    def __call__(self, n):
        for _ in range(n):
            self.state, metrics = self.train_step(self.state, self.batch)
        return jax.block_until_ready(metrics["loss"])


# --------------------------------------------------------------------------------------------------------------------
# The PyTorch twin


class TorchFusionLayer(torch.nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-5), torch.nn.LayerNorm(dim, eps=1e-5)
        self.q, self.k, self.v, self.out = (torch.nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = torch.nn.Linear(dim, mlp_ratio * dim), torch.nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x, key_mask):
        b, t, d = x.shape
        h = self.norm1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        attn = torch.nn.functional.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(h)), split(self.v(h)), attn_mask=key_mask[:, None, None, :])
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TorchPVLF(torch.nn.Module):
    """transformers' CLIPModel + the fusion (PVLF deep prompts, softmax weighting), as ``models.fusion``."""

    def __init__(self, path, fusion_params, fusion_cfg):
        super().__init__()
        self.clip = transformers.CLIPModel.from_pretrained(path)
        self.cfg = fusion_cfg
        dim = self.clip.config.projection_dim
        self.layers = torch.nn.ModuleList(TorchFusionLayer(dim, fusion_cfg.heads, fusion_cfg.mlp_ratio)
                                          for _ in range(fusion_cfg.depth))
        hidden = fusion_cfg.combiner_ratio * 2 * dim
        self.combiner, self.combiner_out = torch.nn.Linear(2 * dim, hidden), torch.nn.Linear(hidden, dim)
        self.weights = torch.nn.Linear(dim, 3)
        self.prompts = torch.nn.Parameter(torch.zeros(fusion_params["prompts"].shape))
        self._copy(fusion_params)

    @torch.no_grad()
    def _copy(self, p):
        def lin(module, kb):
            module.weight.copy_(torch.from_numpy(kb[0].T.copy()))
            module.bias.copy_(torch.from_numpy(np.array(kb[1])))

        def ln(module, sb):
            module.weight.copy_(torch.from_numpy(np.array(sb[0])))
            module.bias.copy_(torch.from_numpy(np.array(sb[1])))

        self.prompts.copy_(torch.from_numpy(np.array(p["prompts"])))
        lin(self.combiner, p["combiner"]), lin(self.combiner_out, p["combiner_out"]), lin(self.weights, p["weights"])
        for layer, lp in zip(self.layers, p["layers"]):
            ln(layer.norm1, lp["norm1"]), ln(layer.norm2, lp["norm2"])
            for name in ("q", "k", "v", "out", "fc1", "fc2"):
                lin(getattr(layer, name), lp[name])

    def image(self, pixels):
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(self.clip.visual_projection(pooled), dim=-1)

    def query(self, pixels, ids, mask):
        vision = self.clip.vision_model(pixel_values=pixels).last_hidden_state
        image_tokens = self.clip.visual_projection(self.clip.vision_model.post_layernorm(vision))
        text_tokens = self.clip.text_projection(self.clip.text_model(input_ids=ids, attention_mask=mask)
                                                .last_hidden_state)
        eos = (ids == self.clip.config.text_config.eos_token_id).int().argmax(-1)
        b, l, _ = text_tokens.shape
        p = self.cfg.num_prompts
        prompts = self.prompts.to(text_tokens.dtype)
        x = torch.cat([text_tokens, prompts[0].expand(b, p, -1), image_tokens], dim=1)
        key_mask = torch.cat([mask > 0, torch.ones(b, p + image_tokens.shape[1], dtype=torch.bool,
                                                   device=mask.device)], dim=1)
        for i, layer in enumerate(self.layers):
            if i > 0:  # deep prompts: fresh prompts in the prompt slots at every layer
                x = torch.cat([x[:, :l], prompts[i].expand(b, p, -1), x[:, l + p:]], dim=1)
            x = layer(x, key_mask)
        img, txt = x[:, l + p], x[torch.arange(b, device=x.device), eos]
        f_u = self.combiner_out(torch.relu(self.combiner(torch.cat([img, txt], dim=-1))))
        w = torch.softmax(self.weights(f_u).float(), dim=-1)
        return torch.nn.functional.normalize(w[:, 0:1] * img + w[:, 1:2] * f_u + w[:, 2:3] * txt, dim=-1)


def torch_focal(query, target, temperature, alpha, gamma):
    logits = (torch.nn.functional.normalize(query.float(), dim=-1)
              @ torch.nn.functional.normalize(target.float(), dim=-1).T) / temperature
    log_pt = torch.diagonal(torch.log_softmax(logits, dim=-1))
    return (-alpha * (1 - log_pt.exp()) ** gamma * log_pt).mean()


def build_torch(path, fusion_params, config, args):
    from zscir_jax.methods import base

    model = TorchPVLF(path, fusion_params, base.fusion_config(config, SIZES[args.size]["proj"]))
    model.to(args.torch_device).train()
    lr = config.optim.lr
    groups = {"text_tower": [], "image_tower": [], "fusion": []}
    for name, prm in model.named_parameters():
        if name.startswith("clip.text_model") or name.startswith("clip.text_projection"):
            groups["text_tower"].append(prm)
        elif name.startswith("clip."):
            groups["image_tower"].append(prm)
        else:
            groups["fusion"].append(prm)
    opt = torch.optim.AdamW([dict(params=v, lr=lr[k]) for k, v in groups.items()], betas=(config.optim.b1,
                            config.optim.b2), eps=config.optim.eps, weight_decay=config.optim.weight_decay)
    return model, opt


def torch_step_fn(model, opt, config, precision, device):
    loss_cfg = config.loss
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(b):
        with autocast:
            q = model.query(b["reference_pixels"], b["text_ids"], b["text_mask"])
            t = model.image(b["target_pixels"])
        loss = torch_focal(q, t, loss_cfg.temperature, loss_cfg.alpha, loss_cfg.gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
        opt.step()
        return loss.detach()

    return step


class TorchRunner:
    """Runs a PyTorch step function n times on one batch (NCHW pixels); the first two losses kept."""

    def __init__(self, step, batch, device):
        to = lambda x: torch.from_numpy(x).to(device)
        self.batch = dict(reference_pixels=to(batch["reference_pixels"]).permute(0, 3, 1, 2).contiguous(),
                          target_pixels=to(batch["target_pixels"]).permute(0, 3, 1, 2).contiguous(),
                          text_ids=to(batch["text_ids"]).long(), text_mask=to(batch["text_mask"]).long())
        self.step = step
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.first_losses = [float(self(1)) for _ in range(2)]

    def __call__(self, n):
        for _ in range(n):
            loss = self.step(self.batch)
        self.sync()
        return loss


def steps_per_second(runners: dict, steps: int, repeats: int) -> dict:
    """Best-of-``repeats`` steps/s of each runner, the runners timed in turn within every repeat, so that a change
    in the machine's load during the run falls on all of them alike."""
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            float(run(steps))
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: steps / t for name, t in best.items()}


# --------------------------------------------------------------------------------------------------------------------
# The device's matmul peak, measured in this run


def matmul_peak(precision, torch_device, n=2048, repeats=5):
    """FLOP/s of the best n^3 matmul by JAX (jitted) and by torch in this precision; the device's measured peak."""
    jdt = jnp.bfloat16 if precision == "bf16" else jnp.float32
    a = jnp.ones((n, n), jdt)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    ours = 2 * n ** 3 / best
    tdt = torch.bfloat16 if precision == "bf16" else torch.float32
    t = torch.ones((n, n), dtype=tdt, device=torch_device)
    t @ t
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float((t @ t)[0, 0])
        best = min(best, time.perf_counter() - start)
    return max(ours, 2 * n ** 3 / best), ours, 2 * n ** 3 / best


# --------------------------------------------------------------------------------------------------------------------


def run_precision(path, args, precision, batch):
    ts, train_step, dev_batch, flops, fusion_params = build_ours(path, args, precision, batch)
    config = our_config(path, args, precision)
    model, opt = build_torch(path, fusion_params, config, args)
    runners = {"ours (jax.jit)": OursRunner(ts, train_step, dev_batch),
               "pytorch eager": TorchRunner(torch_step_fn(model, opt, config, precision, args.torch_device), batch,
                                            args.torch_device)}
    (ours_first, ours_second), (peer_first, peer_second) = (r.first_losses for r in runners.values())
    if args.torch_compile:
        compiled = torch.compile(torch_step_fn(model, opt, config, precision, args.torch_device))
        runners["pytorch torch.compile"] = TorchRunner(compiled, batch, args.torch_device)
    rows = steps_per_second(runners, args.steps, args.repeats)
    ours_sps, peer_sps = rows["ours (jax.jit)"], rows["pytorch eager"]
    peak, peak_jax, peak_torch = matmul_peak(precision, args.torch_device)
    print(f"\n[{precision}] first-step loss ours {ours_first:.6f}  pytorch {peer_first:.6f}  "
          f"(|diff| {abs(ours_first - peer_first):.1e}); second step {ours_second:.6f} / {peer_second:.6f}")
    print(f"[{precision}] step FLOPs {flops / 1e9:.1f} G (XLA cost analysis); matmul peak measured now: "
          f"{peak / 1e9:.0f} GFLOP/s (jax {peak_jax / 1e9:.0f}, torch {peak_torch / 1e9:.0f})")
    print(f"{'':2}{'':24}{'steps/s':>9}{'MFU':>8}")
    for name, sps in rows.items():
        print(f"  {name:24}{sps:9.3f}{sps * flops / peak:8.1%}")
    if precision == "fp32" and abs(ours_first - peer_first) > 1e-4:
        print(f"WARNING: float32 first-step losses differ by {abs(ours_first - peer_first):.2e} (> 1e-4)")
    return ours_sps / peer_sps


def main(args):
    torch.manual_seed(0)
    s = SIZES[args.size]
    print(f"PVLF train step: towers vision {s['vw']}x{s['vl']} (patch {s['patch']}), text {s['tw']}x{s['tl']}, "
          f"proj {s['proj']}; fusion p={args.prompts} J={args.depth}; {args.image_size} px, {args.text_len} tokens, "
          f"batch {args.batch}; jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), "
          f"torch {torch.__version__} on {args.torch_device} ({torch.get_num_threads()} threads)")
    batch = make_batch(args)
    ratios = {}
    with tempfile.TemporaryDirectory() as path:
        write_checkpoint(path, args.size, args)
        for precision in args.precision.split(","):
            ratios[precision] = run_precision(path, args, precision.strip(), batch)
    for precision, r in ratios.items():
        if precision != "fp32":
            print(f"ratio ours / pytorch ({precision}): {r:.2f}x")
    if "fp32" in ratios:
        print(f"ratio ours / pytorch: {ratios['fp32']:.2f}x")


if __name__ == "__main__":
    main(ARGS)
