"""Exact top-k retrieval speed: zscir_jax's ranking.rank vs plain numpy, torch.topk and faiss, on the same data.

A gallery of random L2-normalised embeddings [G, D] and Q queries; every method returns the top-k gallery indices of
each query, processing the queries in blocks of ``--block`` rows so that no method holds more than a [block, G] score
tile (faiss blocks on its own). Methods, all in this one process and timed as the best of ``--repeats`` runs after a
warm-up on one block (which compiles ours):

- ours (jax):   ``ranking.rank(q, g, k=k, backend="jax")`` (jitted matmul; exact selection, ties by gallery index)
- ours (numpy): ``ranking.rank(q, g, k=k, backend="numpy")``
- numpy:        ``np.argpartition(-(q_block @ g.T), k - 1)[:, :k]``, then those k sorted (as numpy CIR code does)
- pytorch:      ``torch.topk(q_block @ g.T, k)`` on ``--torch-device`` (cpu; CLIP4Cir ranks with torch.topk)
- faiss:        ``faiss.IndexFlatIP`` exact search (``index.add`` is not timed), when ``import faiss`` works

Agreement: each method's top-k sets are compared with ours (jax) row by row; a row may differ only in items whose
score is within 1e-5 of the k-th score (other BLAS libraries round the same dot products differently), else it is
counted as a disagreement. Memory: the peak of the process RSS (sampled every 5 ms from /proc/self/statm) above the
RSS before the method ran, and for jax ``memory_stats()["peak_bytes_in_use"]`` of the device when it has them (GPU).
Roofline: the machine's read bandwidth is measured here (best of ``np.add.reduce`` and multi-threaded ``torch.sum``
over a 1 GiB float32 array); reading the gallery once per query block takes at least
``gallery_bytes * ceil(Q / block) / bandwidth``, and ``fraction = that bound / measured time``. GFLOP/s counts the
matrix product only (2 Q G D), next to the rate of a square numpy sgemm measured here.

    python benchmarks/ranking.py [--gallery 100000] [--queries 2000] [--dim 512] [--k 50] [--block 256]
    python benchmarks/ranking.py --platform cuda --torch-device cuda --gallery 1000000 --queries 10000  # GPU
    python benchmarks/ranking.py --platform tpu --gallery 1000000 --queries 10000

The last line is ``ratio ours / pytorch: X.XXx`` (queries/s of ours (jax) over torch's; > 1: ours is faster).
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import threading
import time

import numpy as np


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for jax (cpu, cuda, tpu); set before import")
    parser.add_argument("--torch-device", default="cpu", help="where the pytorch peer runs (cpu, cuda)")
    parser.add_argument("--no-faiss", action="store_true", help="skip faiss even when it is installed")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["JAX_PLATFORMS"] = ARGS.platform

import jax  # noqa: E402
import torch  # noqa: E402

from zscir_jax.evaluation import ranking  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """glibc: serve every allocation >= nbytes by mmap and give it back on free (no dynamic threshold), so that the
    RSS after one method's temporaries are freed does not hide the next method's."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(-3, nbytes) == 1 and libc.mallopt(-1, nbytes) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except OSError:
        return False


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Peak RSS above the RSS at entry, sampled by a thread (numpy, torch and XLA release the GIL while they work)."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss())
        self.delta = self.peak - self.base


def best_of(fn, repeats):
    times, mems, out = [], [], None
    for _ in range(repeats):
        with PeakRSS() as mem:
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        mems.append(mem.delta)
    return min(times), max(mems), out


def read_bandwidth() -> tuple[float, str]:
    """Bytes/s reading a 1 GiB float32 array: best of numpy (one thread) and torch.sum (all its threads)."""
    a = np.ones(1 << 28, np.float32)
    t = torch.from_numpy(a)
    np.add.reduce(a)
    t.sum()
    t_np = min(_timed(lambda: np.add.reduce(a)) for _ in range(3))
    t_torch = min(_timed(lambda: t.sum()) for _ in range(3))
    bw_np, bw_torch = a.nbytes / t_np, a.nbytes / t_torch
    if bw_torch >= bw_np:
        return bw_torch, f"torch.sum, {torch.get_num_threads()} threads (numpy 1 thread: {bw_np / 1e9:.1f} GB/s)"
    return bw_np, f"np.add.reduce, 1 thread (torch.sum: {bw_torch / 1e9:.1f} GB/s)"


def sgemm_rate() -> float:
    a = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    return 2 * 2048**3 / min(_timed(lambda: a @ a) for _ in range(3)) / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def numpy_topk(q, g, k, block):
    out = np.empty((q.shape[0], k), np.int64)
    for s in range(0, q.shape[0], block):
        scores = q[s:s + block] @ g.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def torch_topk(q, g, k, block, device="cpu"):
    tq, tg = torch.from_numpy(q).to(device), torch.from_numpy(g).to(device)
    out = np.empty((q.shape[0], k), np.int64)
    with torch.inference_mode():
        for s in range(0, q.shape[0], block):
            out[s:s + block] = torch.topk(tq[s:s + block] @ tg.T, k, dim=1).indices.cpu().numpy()
    return out


def agreement(ref, other, q, g, k, tol=1e-5) -> tuple[int, int, int]:
    """(rows with the same top-k set, rows differing only at the boundary, rows that disagree)."""
    same = boundary = bad = 0
    for r in range(ref.shape[0]):
        a, b = set(ref[r].tolist()), set(other[r].tolist())
        if a == b:
            same += 1
            continue
        scores = g[list(a ^ b)].astype(np.float64) @ q[r].astype(np.float64)
        kth = np.sort(g[ref[r]].astype(np.float64) @ q[r].astype(np.float64))[0]
        if np.all(np.abs(scores - kth) <= tol):
            boundary += 1
        else:
            bad += 1
    return same, boundary, bad


def main():
    args = ARGS
    mmap_note = "; allocations >= 1 MiB mmapped (glibc mallopt)" if fixed_mmap_threshold() else ""
    nq, ng, d, k, block = args.queries, args.gallery, args.dim, args.k, args.block
    rng = np.random.default_rng(args.seed)
    g = rng.standard_normal((ng, d), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    bandwidth, bw_how = read_bandwidth()
    gemm = sgemm_rate()
    blocks = math.ceil(nq / block)
    bound_s = g.nbytes * blocks / bandwidth
    flops = 2.0 * nq * ng * d

    dev = jax.devices()[0]
    methods = {
        "ours (jax)": lambda qq: ranking.rank(qq, g, k=k, block=block, backend="jax").topk_idx,
        "ours (numpy)": lambda qq: ranking.rank(qq, g, k=k, block=block, backend="numpy").topk_idx,
        "numpy argpartition": lambda qq: numpy_topk(qq, g, k, block),
        "pytorch topk": lambda qq: torch_topk(qq, g, k, block, args.torch_device),
    }
    faiss_note = ""
    if args.no_faiss:
        faiss_note = "faiss: skipped (--no-faiss)"
    else:
        try:
            import faiss
        except ImportError:
            faiss_note = "faiss: not installed"
        else:
            index = faiss.IndexFlatIP(d)
            index.add(g)
            methods["faiss IndexFlatIP"] = lambda qq: index.search(qq, k)[1].astype(np.int64)
            faiss_note = f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads)"

    results = {}
    for name, fn in methods.items():
        fn(q[:block])  # warm-up: compiles ours for a full block
        if name == "ours (jax)" and nq % block:
            fn(q[: nq % block])  # and for the last, shorter block
        seconds, mem, idx = best_of(lambda: fn(q), args.repeats)
        dev_peak = None
        if name == "ours (jax)":
            stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
            if stats and "peak_bytes_in_use" in stats:
                dev_peak = stats["peak_bytes_in_use"]
        results[name] = (seconds, mem, dev_peak, idx)

    ref = results["ours (jax)"][3]
    print(f"gallery {ng} x {d} float32 ({g.nbytes / 2**20:.0f} MiB), {nq} queries, top-{k}, blocks of {block} "
          f"({blocks} blocks); jax {jax.__version__} on {dev.platform} ({dev.device_kind}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}; {faiss_note}; {os.cpu_count()} CPUs")
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s ({bw_how}); square numpy sgemm {gemm:.0f} GFLOP/s; "
          f"bandwidth bound for reading the gallery once per block: {bound_s:.3f} s")
    print(f"timing: best of {args.repeats} after a warm-up; memory: peak process RSS above the RSS before the call "
          f"(sampled every 5 ms{mmap_note})"
          f"{'; dev: jax device peak_bytes_in_use' if any(r[2] for r in results.values()) else ''}")
    header = (f"{'method':<20} {'queries/s':>10} {'seconds':>8} {'GFLOP/s':>8} {'of BW bound':>11} {'+RSS MiB':>9} "
              f"{'agreement with ours (jax)':>34}")
    print(header)
    print("-" * len(header))
    for name, (seconds, mem, dev_peak, idx) in results.items():
        if name == "ours (jax)":
            agree = "reference"
        else:
            same, boundary, bad = agreement(ref, idx, q, g, k)
            agree = f"{same}/{nq} same set, {boundary} boundary, {bad} bad"
        mem_s = f"{mem / 2**20:9.0f}" + (f" (dev {dev_peak / 2**20:.0f})" if dev_peak else "")
        print(f"{name:<20} {nq / seconds:10.1f} {seconds:8.3f} {flops / seconds / 1e9:8.1f} "
              f"{bound_s / seconds:11.3f} {mem_s} {agree:>34}")
    print(f"max RSS of the process (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    ours, theirs = results["ours (jax)"][0], results["pytorch topk"][0]
    sys.stdout.flush()
    print(f"ratio ours / pytorch: {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
