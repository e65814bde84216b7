"""Text tokenization for the pipeline: a word-level tokenizer built from a corpus (the demo has no pretrained one)
and a small wrapper that pads / truncates any HF tokenizer directory to fixed-length int32 arrays.

The wrapper is also what ``models.clip.load_tokenizer`` returns (``tok(texts) -> (ids, mask)``): the pipeline and
the CLIP towers share one tokenizer type.
"""
from __future__ import annotations

import os
import shutil
from typing import Iterable, Sequence

import numpy as np

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"


def build_word_tokenizer(texts: Iterable[str], out_dir: str, max_length: int = 32, min_frequency: int = 1) -> str:
    """Trains a lower-cased word-level tokenizer (punctuation split off) on ``texts``; saves it in HF format so
    ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it. Returns ``out_dir``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = HFTokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+: words and punctuation runs
    specials = [PAD, UNK, BOS, EOS]  # ids 0..3, fixed whatever the corpus
    tok.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=specials, min_frequency=min_frequency,
                                                                   show_progress=False))
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
                                                       special_tokens=[(BOS, bos), (EOS, eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   model_max_length=max_length, padding_side="right", truncation_side="right")
    # Saved beside out_dir and renamed into place: a cut-off save never leaves a partial tokenizer behind.
    tmp = f"{os.path.abspath(out_dir).rstrip(os.sep)}.tmp.{os.getpid()}"
    fast.save_pretrained(tmp)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


class Tokenizer:
    """Any HF tokenizer, padded/truncated to ``max_length``; returns int32 numpy ``(input_ids, attention_mask)``.

    When a text is truncated the last kept token is replaced by EOS, so models pooling at the EOS position
    (CLIP's text tower) always find it.
    """

    def __init__(self, hf_tokenizer, max_length: int):
        self.hf = hf_tokenizer
        self.max_length = int(max_length)

    @classmethod
    def from_dir(cls, path: str, max_length: int | None = None) -> "Tokenizer":
        from transformers import AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
        hf = AutoTokenizer.from_pretrained(path)
        if max_length is None:
            max_length = hf.model_max_length if hf.model_max_length < 100_000 else 77
        return cls(hf, max_length)

    @property
    def eos_token_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.hf(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                      return_tensors="np")
        ids = enc["input_ids"].astype(np.int32)
        mask = enc["attention_mask"].astype(np.int32)
        eos = self.eos_token_id
        if eos is not None:
            full = mask[:, -1] == 1  # rows that filled the whole length: possibly truncated
            ids[full, -1] = np.where(np.any(ids[full] == eos, axis=1), ids[full, -1], eos)
        return ids, mask


class Templated:
    """A tokenizer that writes each text into ``template`` first (``"a photo of * that {text}"``).

    ``append_eos``: every row's last real token is EOS, added after the text (or over the last kept token when the
    text fills ``max_length``): the token whose hidden state an LLM's last-token embedding reads (DistillCIR's teacher,
    its eqs. 15-16). Everything else (``hf``, ``max_length``, ids of special tokens) is the wrapped tokenizer's.
    """

    def __init__(self, tokenizer: Tokenizer, template: str = "{text}", append_eos: bool = False):
        check_template(template, "template")
        self.base, self.template, self.append_eos = tokenizer, template, bool(append_eos)

    def __getattr__(self, name):  # hf, max_length, eos_token_id, pad_token_id, vocab_size
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.base([self.template.format(text=t) for t in texts])
        eos = self.base.eos_token_id
        if self.append_eos and eos is not None:
            n = mask.sum(axis=1)
            for row, length in enumerate(n):
                if length and ids[row, length - 1] == eos:
                    continue
                at = min(int(length), ids.shape[1] - 1)
                ids[row, at], mask[row, at] = eos, 1
        return ids, mask


def check_template(template: str, key: str) -> None:
    """A template must hold ``{text}`` and no other field; a ``UserError`` naming ``key`` otherwise."""
    import string

    from zscir_jax.errors import UserError

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        fields = None
    if fields != ["text"]:
        raise UserError(f"{key}={template!r}: a template holds '{{text}}' exactly once and no other field")
