"""The adapter from a method + model to the evaluator's ``Encoder`` protocol.

uint8 images -> normalised float (``data.images.normalize``, the training pipeline's own, with the checkpoint's
mean / std) -> one jitted encode per method function. Batches are padded to a fixed size (a multiple of the
data-parallel width), so every call reuses one compiled program and splits over the mesh.
"""
from __future__ import annotations

import numpy as np
import jax
from flax import nnx

from zscir_jax import sharding
from zscir_jax.data import images as images_lib


class MethodEncoder:
    def __init__(self, method, model, tokenizer, mesh, *, batch_size: int = 64, mean=images_lib.CLIP_MEAN,
                 std=images_lib.CLIP_STD):
        self.tokenizer, self.mesh = tokenizer, mesh
        self.mean, self.std = mean, std
        width = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch = -(-batch_size // width) * width
        graphdef, state = nnx.split(model)

        def images_fn(state, pixels):
            return method.encode_image(nnx.merge(graphdef, state), pixels)

        def queries_fn(state, pixels, ids, mask):
            return method.encode_query(nnx.merge(graphdef, state), pixels, ids, mask)

        self.state = state
        # Every process encodes the same rows; with several, the output is gathered to all of them so each can read
        # it (one process reads its shards directly).
        jit = (jax.jit if jax.process_count() == 1 else
               lambda fn: jax.jit(fn, out_shardings=sharding.replicated(mesh)))
        self._images = jit(images_fn)
        self._queries = jit(queries_fn)
        self._texts = None
        if method.encode_text is not None:
            def texts_fn(state, ids, mask):
                return method.encode_text(nnx.merge(graphdef, state), ids, mask)

            self._texts = jit(texts_fn)

    def _pad(self, x: np.ndarray, n: int):
        pad = np.zeros((self.batch - n,) + x.shape[1:], x.dtype)
        x = np.concatenate([x, pad]) if n < self.batch else x
        return jax.device_put(x, sharding.batch_sharding(self.mesh, x.ndim))

    def _batched(self, fn, *arrays: np.ndarray) -> np.ndarray:
        """``fn(state, *padded chunks)`` over fixed-size chunks of ``arrays`` (rows aligned), the padding cut off."""
        n, out = len(arrays[0]), []
        for a in range(0, n, self.batch):
            b = min(a + self.batch, n)
            with jax.set_mesh(self.mesh):
                y = fn(self.state, *(self._pad(x[a:b], b - a) for x in arrays))
            out.append(np.asarray(y)[: b - a])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer(list(texts))
        return np.asarray(ids, np.int32), np.asarray(mask, np.int32)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return self._batched(self._images, images_lib.normalize(np.asarray(images), self.mean, self.std))

    def encode_queries(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        pixels = images_lib.normalize(np.asarray(images), self.mean, self.std)
        return self._batched(self._queries, pixels, *self._tokens(texts))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts alone in the gallery's space (``Method.encode_text``; joint inference)."""
        if self._texts is None:
            raise ValueError("this method has no text embedding (Method.encode_text is None)")
        return self._batched(self._texts, *self._tokens(texts))
