"""Input pipeline speed: our Grain triplet loader vs torch.utils.data.DataLoader over the same files and transforms.

A temporary directory gets ``--num`` photo-sized JPEGs (500x375, like CIRR / FashionIQ images: smooth seeded
colour fields, shapes and grain), a JSONL of as many triplets (reference image, modification text, target image)
and a word tokenizer built from the texts. Ours is ``zscir_jax.data.pipeline.triplet_loader`` (Grain: shuffle ->
map(decode + preprocess + tokenize) on ``read_threads`` threads -> batch -> ``mp_prefetch`` worker processes when
``worker_count > 0``). The peer is a ``torch.utils.data.Dataset`` whose ``__getitem__`` calls the very same
functions per record (``images.load_image`` + ``images.preprocess`` for both images, the same ``Tokenizer`` call
for the modification and target texts), fed to a ``DataLoader`` (shuffled, default collate, fork workers, persistent
workers, default prefetch factor). Torch gets 1 intra-op thread in the main process (``--torch-threads``), as
DataLoader gives its workers: with its default threads, ``default_collate``'s ``torch.stack`` took ~250 ms instead of
~2 ms per batch on a busy 2-core machine. The per-record work is identical (the script checks that one unshuffled
batch of each is equal), so the numbers compare the loader machinery: threads, processes, batching, inter-process
transfer.

For each worker count, one loader of each kind is built; the first batch from every worker is start-up (process
spawn / fork, imports, first decodes) and is reported apart; then ``--batches`` batches are timed, in
``--chunks`` chunks of which the fastest counts (as ``generate_speed.py`` keeps its best run). Images/s counts two
images per triplet. The two run in turn in one process, so a background load slows both alike; on a machine shared
with another job, worker counts scale only with the cores actually free.

    python benchmarks/input_pipeline.py [--num 512] [--batch 32] [--image-size 224] [--batches 32]
                                        [--chunks 4] [--workers 0,1,2] [--torch-threads 1] [--step-seconds S]
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from zscir_jax.data import images, pipeline, triplets  # noqa: E402
from zscir_jax.data import tokenizer as tok_lib  # noqa: E402

# torch is imported inside the functions that use it: Grain's workers are spawned and re-import this module, and
# should not pay for importing torch.

PHOTO_SIZE = (500, 375)
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange", "brown", "grey")
THINGS = ("dog", "cat", "car", "shirt", "dress", "chair", "bird", "cup", "lamp", "tree")
EDITS = ("make the {t} {c}", "replace the {t} with a {c} one", "add a {c} {t} on the left",
         "remove the {t} and make the background {c}", "show two {t}s, one of them {c}",
         "has longer sleeves and is more {c}", "is {c} with a floral print and a {t} logo")


def make_photo(rng: np.random.Generator) -> Image.Image:
    """A 500x375 RGB image with photo-like JPEG statistics: a smooth colour field, a few shapes, fine grain."""
    w, h = PHOTO_SIZE
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        box = (x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 150)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    pixels = np.asarray(field, np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_data(root: str, num: int, seed: int = 0) -> tuple[str, list[str]]:
    """``num`` JPEGs and ``num`` triplets over them (target = another image); returns the JSONL path and texts."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num):
        p = os.path.join(root, "images", f"{i:06d}.jpg")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        make_photo(rng).save(p, quality=90)
        paths.append(p)
    targets = rng.permutation(num)
    records, texts = [], []
    for i in range(num):
        t = targets[i] if targets[i] != i else (i + 1) % num
        text = EDITS[i % len(EDITS)].format(t=THINGS[int(rng.integers(len(THINGS)))],
                                            c=COLOURS[int(rng.integers(len(COLOURS)))])
        records.append(triplets.TripletRecord(paths[i], text, target_image=paths[t], source="benchmark"))
        texts.append(text)
    return triplets.write_jsonl(records, os.path.join(root, "triplets.jsonl")), texts


class TorchTriplets:
    """The peer's ``Dataset``: what ``pipeline._TripletTransform`` does per record, written out with the same
    functions (records with a target image and no caption, as written above), returning numpy arrays."""

    def __init__(self, records, tokenizer, image_size: int):
        self.records, self.tok, self.size = list(records), tokenizer, image_size

    def __len__(self):
        return len(self.records)

    def _pixels(self, path: str) -> np.ndarray:
        return images.preprocess(images.load_image(path), self.size, images.CLIP_MEAN, images.CLIP_STD)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        ids, mask = self.tok([r.modification_text])
        tids, tmask = self.tok([r.target_text])
        target = self._pixels(r.target_image)
        return {"reference_pixels": self._pixels(r.reference_image), "text_ids": ids[0], "text_mask": mask[0],
                "target_pixels": target, "has_target_image": np.bool_(True),
                "target_text_ids": tids[0], "target_text_mask": tmask[0],
                "has_target_text": np.bool_(bool(r.target_text)),
                "target_key": np.int32(pipeline.image_key(r.target_image))}


def ours_loader(path, tok, args, workers: int, shuffle: bool = True, num_epochs=None):
    return pipeline.triplet_loader(path, global_batch_size=args.batch, image_size=args.image_size, tokenizer=tok,
                                   seed=0, shuffle=shuffle, num_epochs=num_epochs, process_index=0, process_count=1,
                                   worker_count=workers)


def torch_loader(dataset, args, workers: int, total_batches: int, shuffle: bool = True):
    """Shuffled like ours, as one continuous stream (a fresh permutation every epoch, no epoch-boundary drain):
    ``RandomSampler(num_samples=...)`` is what ``shuffle=True`` uses, given enough samples for the whole run."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    class _Dataset(torch.utils.data.Dataset):  # a torch Dataset over the same object
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            return dataset[i]

    ds = _Dataset()
    sampler = (RandomSampler(ds, num_samples=total_batches * args.batch, generator=torch.Generator().manual_seed(0))
               if shuffle else None)
    return DataLoader(ds, batch_size=args.batch, sampler=sampler, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0, multiprocessing_context="fork" if workers else None)


def as_numpy(batch) -> dict:
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in batch.items()}


def timed(it, warmup: int, batches: int, chunks: int) -> tuple[float, float]:
    """(start-up s: the first ``warmup`` batches, i.e. one from every worker; seconds per batch over ``batches``
    more, timed in ``chunks`` consecutive chunks: the best chunk, as a background load comes and goes)."""
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    startup = time.perf_counter() - start
    sizes = [batches // chunks + (i < batches % chunks) for i in range(chunks)]
    per_batch = []
    for size in sizes:
        start = time.perf_counter()
        for _ in range(size):
            as_numpy(next(it))
        per_batch.append((time.perf_counter() - start) / size)
    return startup, min(per_batch)


def run_ours(path, tok, args, workers: int) -> tuple[float, float]:
    it = ours_loader(path, tok, args, workers)
    try:
        return timed(it, max(1, workers), args.batches, args.chunks)
    finally:
        if hasattr(it, "close"):
            it.close()
        del it
        gc.collect()


def run_torch(dataset, args, workers: int) -> tuple[float, float]:
    warmup = max(1, workers)
    loader = torch_loader(dataset, args, workers, warmup + args.batches)
    it = iter(loader)
    try:
        return timed(it, warmup, args.batches, args.chunks)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # what DataLoader's iterator runs on deletion
        if shutdown is not None:
            shutdown()
        del it, loader
        gc.collect()


def check_same(path, tok, dataset, args) -> bool:
    """One unshuffled batch of each, compared key by key (the transforms are the same work)."""
    it = ours_loader(path, tok, args, 0, shuffle=False, num_epochs=1)
    ours = next(it)
    it.close()
    theirs = as_numpy(next(iter(torch_loader(dataset, args, 0, 1, shuffle=False))))
    return set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=512, help="images = triplets written")
    parser.add_argument("--batch", type=int, default=32, help="triplets per batch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=32, help="timed batches per setting")
    parser.add_argument("--chunks", type=int, default=4, help="timed batches are split in chunks; best chunk wins")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--max-length", type=int, default=77, help="tokenizer length (CLIP's 77)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads in the main process (DataLoader gives its workers 1)")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="seconds of one train step at this batch: does input keep up with it?")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    args.chunks = max(1, min(args.chunks, args.batches))
    if args.num < args.batch:
        parser.error(f"--num {args.num} must be at least --batch {args.batch}")

    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path, texts = write_data(tmp, args.num)
        tok = tok_lib.Tokenizer.from_dir(tok_lib.build_word_tokenizer(texts, os.path.join(tmp, "tok"),
                                                                      max_length=args.max_length))
        setup_s = time.perf_counter() - start
        dataset = TorchTriplets(triplets.read_jsonl(path), tok, args.image_size)
        same = check_same(path, tok, dataset, args)
        mb = sum(os.path.getsize(os.path.join(tmp, "images", f)) for f in os.listdir(os.path.join(tmp, "images")))

        results = {}
        for w in workers:  # in turn, so a background load drifting over time hits both alike
            results[w] = (run_ours(path, tok, args, w), run_torch(dataset, args, w))

    leftover = multiprocessing.active_children()
    per_batch = 2 * args.batch  # two images per triplet
    rate = {w: (per_batch / o[1], per_batch / t[1]) for w, (o, t) in results.items()}

    print(f"data: {args.num} JPEGs {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} ({mb / args.num / 1024:.0f} KiB each), "
          f"{args.num} triplets, written in {setup_s:.1f} s; batch {args.batch} triplets = {per_batch} images -> "
          f"{args.image_size}x{args.image_size} f32, text length {args.max_length}; {args.batches} timed batches "
          f"per setting in {args.chunks} chunks (best chunk); {os.cpu_count()} CPUs; ours: read_threads 4, Grain "
          f"workers spawned; torch {torch.__version__}: {torch.get_num_threads()} intra-op thread(s), workers forked")
    print(f"one unshuffled batch identical in ours and torch: {'yes' if same else 'NO'}")
    print(f"{'workers':>7} | {'ours img/s':>10} | {'torch img/s':>11} | {'ratio':>6} | "
          f"{'ours start-up s':>15} | {'torch start-up s':>16}")
    for w, (o, t) in results.items():
        ours_r, torch_r = rate[w]
        print(f"{w:>7} | {ours_r:>10.1f} | {torch_r:>11.1f} | {ours_r / torch_r:>5.2f}x | {o[0]:>15.2f} | "
              f"{t[0]:>16.2f}")
    print("(start-up: until every worker has delivered its first batch; img/s: the best timed chunk after it)")

    print(f"does input keep up with the step? one step consumes {per_batch} images (batch {args.batch} triplets)")
    if args.step_seconds:
        needs = [(f"step {args.step_seconds:g} s", per_batch / args.step_seconds)]
    else:
        needs = [(f"{s} step/s", per_batch * s) for s in (1, 2, 5)]
    for w in results:
        ours_r, torch_r = rate[w]
        verdicts = "; ".join(f"{label} needs {need:.0f} img/s: ours {'yes' if ours_r >= need else 'no'}, "
                             f"torch {'yes' if torch_r >= need else 'no'}" for label, need in needs)
        print(f"  {w} workers (ours up to {ours_r / per_batch:.2f} step/s, torch {torch_r / per_batch:.2f}): "
              f"{verdicts}")
    if leftover:
        print(f"warning: {len(leftover)} worker processes still alive: {leftover}")
    best_ours = max(r[0] for r in rate.values())
    best_torch = max(r[1] for r in rate.values())
    print(f"ratio ours / pytorch: {best_ours / best_torch:.2f}x")


if __name__ == "__main__":
    main()
