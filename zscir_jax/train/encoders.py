"""Adapters from a method + model to the evaluator's Encoder protocol.

uint8 images -> CLIP-normalised float -> one jitted encode per method function. Batches are padded to a fixed size
(a multiple of the data-parallel width), so every call reuses one compiled program and splits over the mesh.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

from zscir_jax import sharding

# OpenAI CLIP's pixel statistics (the pipeline's `zscir_jax.data.images` uses the same, when present).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize_uint8(images: np.ndarray) -> np.ndarray:
    return ((np.asarray(images, np.float32) / 255.0) - CLIP_MEAN) / CLIP_STD


class MethodEncoder:
    def __init__(self, method, model, tokenizer, mesh, *, batch_size: int = 64):
        self.tokenizer, self.mesh = tokenizer, mesh
        width = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch = -(-batch_size // width) * width
        graphdef, state = nnx.split(model)

        def images_fn(state, pixels):
            return method.encode_image(nnx.merge(graphdef, state), pixels)

        def queries_fn(state, pixels, ids, mask):
            return method.encode_query(nnx.merge(graphdef, state), pixels, ids, mask)

        self.state = state
        self._images = jax.jit(images_fn)
        self._queries = jax.jit(queries_fn)

    def _pad(self, x: np.ndarray, n: int):
        pad = np.zeros((self.batch - n,) + x.shape[1:], x.dtype)
        x = np.concatenate([x, pad]) if n < self.batch else x
        return jax.device_put(x, sharding.batch_sharding(self.mesh, x.ndim))

    def _chunks(self, n):
        return [(a, min(a + self.batch, n)) for a in range(0, n, self.batch)]

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        pixels = normalize_uint8(images)
        out = []
        for a, b in self._chunks(len(pixels)):
            with jax.set_mesh(self.mesh):
                out.append(np.asarray(self._images(self.state, self._pad(pixels[a:b], b - a)))[: b - a])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def encode_queries(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        pixels = normalize_uint8(images)
        ids, mask = self.tokenizer(list(texts))
        out = []
        for a, b in self._chunks(len(pixels)):
            n = b - a
            with jax.set_mesh(self.mesh):
                q = self._queries(self.state, self._pad(pixels[a:b], n), self._pad(np.asarray(ids[a:b], np.int32), n),
                                  self._pad(np.asarray(mask[a:b], np.int32), n))
            out.append(np.asarray(q)[:n])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
