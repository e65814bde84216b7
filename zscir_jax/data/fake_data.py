"""A synthetic, checkpointable batch source with the pipeline's batch layout, for tests and quick benchmarks.

Learnable on purpose: the target image is the reference image plus a pattern chosen by the first text token, so a
fusion model can lower the loss. Deterministic in (seed, position), so its state is one integer.
"""
from __future__ import annotations

import numpy as np


class RandomTriplets:
    def __init__(self, *, batch_size: int, image_size: int, max_length: int, vocab_size: int, seed: int = 0,
                 kind: str = "triplets", num_words: int = 8, nan_at: int = -1):
        self.b, self.s, self.l, self.v = batch_size, image_size, max_length, vocab_size
        self.seed, self.kind, self.position = seed, kind, 0
        self.nan_at = nan_at  # the batch at this position carries NaN pixels (tests the divergence stop)
        rng = np.random.default_rng(1234)
        self.patterns = rng.standard_normal((num_words, image_size, image_size, 3)).astype(np.float32)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        ref = rng.standard_normal((self.b, self.s, self.s, 3)).astype(np.float32)
        if self.position - 1 == self.nan_at:
            ref[:] = np.nan
        words = rng.integers(0, len(self.patterns), self.b)
        n = rng.integers(2, self.l, self.b)  # tokens incl. BOS ... EOT
        ids = np.zeros((self.b, self.l), np.int32)
        mask = np.zeros((self.b, self.l), np.int32)
        for i in range(self.b):
            ids[i, : n[i]] = rng.integers(3, self.v - 1, n[i])
            ids[i, 1] = 3 + words[i]
            ids[i, n[i] - 1] = self.v - 1  # EOT: the largest id, as legacy CLIP checkpoints
            mask[i, : n[i]] = 1
        if self.kind == "pairs":
            return {"pixels": ref + self.patterns[words], "text_ids": ids, "text_mask": mask}
        # The "target text" names the pattern too (BOS, one word, EOT), so a query -> target-text objective can be
        # learned; the caption is the same short text (a layout for caption objectives, not a learnable one).
        word_ids = np.zeros((self.b, self.l), np.int32)
        word_ids[:, 0], word_ids[:, 1], word_ids[:, 2] = 1, 3 + words, self.v - 1
        word_mask = (word_ids > 0).astype(np.int32)
        yes = np.ones(self.b, np.bool_)
        return {"reference_pixels": ref, "text_ids": ids, "text_mask": mask,
                "target_pixels": ref + self.patterns[words], "has_target_image": yes,
                "target_text_ids": word_ids, "target_text_mask": word_mask, "has_target_text": yes,
                "caption_ids": word_ids, "caption_mask": word_mask, "has_caption": yes}
