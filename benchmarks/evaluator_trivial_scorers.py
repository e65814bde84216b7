"""The evaluator end to end on the embedded scenes benchmark with model-free scorers, and how long it takes.

    python benchmarks/evaluator_trivial_scorers.py [--workdir /tmp/zscir_trivial] [--queries 1000] [--train 5000]

Scorers (no training, no weights): ``random`` (a hash of the image bytes: chance level), ``raw_pixels`` (the
reference image's downsampled pixels against the gallery's: the image-only floor) and ``pixels_plus_text`` (the same
plus a hashed bag of words of the modification text, which cannot match images: it only adds noise). The table shows
the floor any learned method must beat, and the per-1k-query times show the evaluator's own cost on this machine.
"""
from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

from zscir_jax.data import cirr, scenes
from zscir_jax.evaluation import evaluator, report


class RandomScorer:
    """Embeddings derived from the image bytes, so a query and its target share nothing: chance-level retrieval."""

    def _embed(self, images):
        seeds = [int.from_bytes(hashlib.sha1(im.tobytes()).digest()[:4], "little") for im in images]
        return np.stack([np.random.default_rng(s).standard_normal(64) for s in seeds]).astype(np.float32)

    def encode_images(self, images):
        return self._embed(images)

    def encode_queries(self, images, texts):
        return np.random.default_rng(len(texts)).standard_normal((len(texts), 64)).astype(np.float32)


class RawPixels:
    """Mean-centred 16x16 thumbnails: retrieval by visual similarity to the reference, ignoring the text."""

    def encode_images(self, images):
        small = images.reshape(len(images), 16, images.shape[1] // 16, 16, images.shape[2] // 16, 3).mean((2, 4))
        flat = small.reshape(len(images), -1).astype(np.float32)
        return flat - flat.mean(axis=1, keepdims=True)

    def encode_queries(self, images, texts):
        return self.encode_images(images)


class PixelsPlusText(RawPixels):
    def encode_queries(self, images, texts):
        pixels = self.encode_images(images)
        pixels /= np.linalg.norm(pixels, axis=1, keepdims=True) + 1e-6
        words = np.zeros_like(pixels)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                words[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % pixels.shape[1]] += 1.0
        words /= np.linalg.norm(words, axis=1, keepdims=True) + 1e-6
        return pixels + words


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/zscir_trivial")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    root = scenes.build(f"{args.workdir}/scenes", num_train=args.train, num_val_queries=args.queries,
                        num_test_queries=10)
    print(f"scenes benchmark ready in {time.perf_counter() - t0:.1f} s")
    bench = cirr.load(root, "val")
    rows, timing = {}, {}
    for name, scorer in (("random", RandomScorer()), ("raw_pixels", RawPixels()),
                         ("pixels_plus_text", PixelsPlusText())):
        result = evaluator.evaluate(bench, scorer, image_size=64, batch_size=256, workdir=f"{args.workdir}/{name}",
                                    num_pictures=4, log=None)
        rows[name] = {k: v for k, v in result.items() if "@" in k or k == "recall_avg"}
        timing[name] = result
    print(f"\n{len(bench.queries)} queries, gallery of {len(bench.gallery)} images\n")
    print(report.format_table(rows))
    print("\nseconds: gallery embedding / query embedding / ranking / per 1k queries (all three)")
    for name, r in timing.items():
        print(f"  {name:18s} {r['seconds_gallery']:.2f} / {r['seconds_queries']:.2f} / {r['seconds_ranking']:.3f}"
              f" / {r['seconds_per_1k_queries']:.2f}")


if __name__ == "__main__":
    main()
