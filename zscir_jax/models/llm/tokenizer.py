"""A checkpoint's own tokenizer for chat prompts, decoding and left-padded batches (offline, through transformers).

``load_tokenizer(path)`` reads the tokenizer files of a local checkpoint directory (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja`` ...) with ``transformers.AutoTokenizer`` and never touches the
network. The returned :class:`ChatTokenizer` turns chat messages into the ids the model was trained on, decodes
generated ids, and pads prompts on the LEFT into a few bucketed lengths for :func:`zscir_jax.models.llm.generate`.
"""
from __future__ import annotations

from collections.abc import Sequence
import json
import os
from typing import Any

import numpy as np

# LLaVA-1.5's conversation format, used when a checkpoint ships no chat template (see ChatTokenizer.chat_text).
FALLBACK_USER = "USER: "
FALLBACK_ASSISTANT = "ASSISTANT:"
FALLBACK_IMAGE = "<image>"


def _as_int_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _read_json_if_present(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        content = m["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise ValueError(f"message {i}: content must be a string or a list of parts, got {type(content).__name__}")
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                raise ValueError(f"message {i}: each content part must be {{'type': 'text', 'text': ...}} or "
                                 f"{{'type': 'image'}}, got {part!r}")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"message {i}: a text part needs a string 'text', got {part!r}")


class ChatTokenizer:
    """A transformers tokenizer plus the ids generation needs.

    Attributes:
      hf: the ``transformers`` tokenizer.
      eos_token_ids: the stop tokens: ``generation_config.json``'s ``eos_token_id`` (an int or a list) when the
        checkpoint has one, else the tokenizer's eos token.
      pad_token_id: the tokenizer's pad token, else ``generation_config.json``'s ``pad_token_id``, else the first eos
        id (as transformers' ``generate`` does), else 0. Padded slots are masked out, so its value never matters to
        the model.
      bos_token_id: the tokenizer's bos token id, or None.
      chat_template: the Jinja chat template in use (the tokenizer's own, else one passed in, e.g. a processor's), or
        None when the checkpoint has none and the fallback format applies.
      image_token: the text of an image placeholder in the fallback format (``"<image>"``, LLaVA's).
    """

    def __init__(self, hf, *, eos_token_ids: Sequence[int] | None = None, pad_token_id: int | None = None,
                 chat_template: str | None = None, image_token: str = FALLBACK_IMAGE):
        self.hf = hf
        eos = tuple(eos_token_ids) if eos_token_ids is not None else _as_int_tuple(hf.eos_token_id)
        self.eos_token_ids: tuple[int, ...] = tuple(int(e) for e in eos)
        if hf.pad_token_id is not None:
            pad = hf.pad_token_id
        elif pad_token_id is not None:
            pad = pad_token_id
        elif self.eos_token_ids:
            pad = self.eos_token_ids[0]
        else:
            pad = 0
        self.pad_token_id: int = int(pad)
        self.bos_token_id: int | None = None if hf.bos_token_id is None else int(hf.bos_token_id)
        own = getattr(hf, "chat_template", None)
        self.chat_template: str | dict | None = own or chat_template
        # Handed to apply_chat_template only when it is not the tokenizer's own (None = the tokenizer's default).
        self._template_arg = None if own else chat_template
        self.image_token = image_token
        self.adds_bos = self._detect_adds_bos()

    def _detect_adds_bos(self) -> bool:
        """Whether plain ``hf(text)`` puts the bos token first (Llama / Vicuna do, Qwen2 does not)."""
        if self.bos_token_id is None:
            return False
        with_special = self.hf("a", add_special_tokens=True)["input_ids"]
        without = self.hf("a", add_special_tokens=False)["input_ids"]
        return bool(with_special) and with_special[0] == self.bos_token_id and without[:1] != [self.bos_token_id]

    def __len__(self) -> int:
        return len(self.hf)

    # -- prompts ----------------------------------------------------------------------------------------------------
    def chat_text(self, messages, *, add_generation_prompt: bool = True) -> str:
        """The conversation rendered as text (no tokenization).

        With a chat template this is ``hf.apply_chat_template(messages, tokenize=False)``. Without one (a base model,
        old LLaVA/Vicuna checkpoints) a fixed plain format is used, LLaVA-1.5's::

            USER: {text}\\nASSISTANT: {reply}</s>\\nUSER: {text}\\nASSISTANT:

        i.e. a ``system`` message becomes ``"{text}\\n"``, a ``user`` message ``"USER: {text}\\n"``, an ``assistant``
        message ``"ASSISTANT: {text}{eos}\\n"`` and the generation prompt ``"ASSISTANT:"``. A message's text is its
        string content, or its parts joined in order with every ``{"type": "image"}`` part written as
        ``"<image>\\n"`` (``image_token``). The bos token is added at token level when the tokenizer adds one
        (see :meth:`chat_ids`), never written into this text.
        """
        _check_messages(messages)
        if self.chat_template is not None:
            return self.hf.apply_chat_template(list(messages), chat_template=self._template_arg,
                                               add_generation_prompt=add_generation_prompt, tokenize=False)
        eos = self.hf.eos_token or ""
        out = []
        for m in messages:
            text = self._plain_content(m["content"])
            role = m["role"]
            if role == "system":
                out.append(f"{text}\n")
            elif role == "user":
                out.append(f"{FALLBACK_USER}{text}\n")
            elif role == "assistant":
                out.append(f"{FALLBACK_ASSISTANT} {text}{eos}\n")
            else:
                raise ValueError(f"role {role!r} has no place in the fallback chat format (system, user, assistant)")
        if add_generation_prompt:
            out.append(FALLBACK_ASSISTANT)
        return "".join(out)

    def _plain_content(self, content) -> str:
        if isinstance(content, str):
            return content
        return "".join(self.image_token + "\n" if p["type"] == "image" else p["text"] for p in content)

    def chat_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation in transformers' message format.

        ``messages`` is ``[{"role": "user", "content": "text"}, ...]``, where ``content`` may also be a list of parts
        ``{"type": "text", "text": ...}`` / ``{"type": "image"}``. With a chat template the ids equal
        ``hf.apply_chat_template(messages, add_generation_prompt=..., tokenize=True)`` (the template alone decides
        about special tokens, bos included). Without one, the fallback text of :meth:`chat_text` is tokenized without
        special tokens, with the bos id put first when the tokenizer adds one to plain text.
        """
        _check_messages(messages)
        if self.chat_template is not None:
            ids = self.hf.apply_chat_template(list(messages), chat_template=self._template_arg,
                                              add_generation_prompt=add_generation_prompt, tokenize=True,
                                              return_dict=False)
            return [int(i) for i in ids]
        text = self.chat_text(messages, add_generation_prompt=add_generation_prompt)
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        return ([self.bos_token_id] if self.adds_bos else []) + [int(i) for i in ids]

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [int(i) for i in self.hf(text, add_special_tokens=add_special_tokens)["input_ids"]]

    # -- outputs ----------------------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of generated ``ids`` (a list or 1-D array): leading pads dropped, cut before the first eos id, other
        pad ids dropped."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        start = 0
        while start < len(ids) and ids[start] == self.pad_token_id:
            start += 1
        ids = ids[start:]
        for n, i in enumerate(ids):
            if i in self.eos_token_ids:
                ids = ids[:n]
                break
        ids = [i for i in ids if i != self.pad_token_id]
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in np.asarray(rows)]

    def batch(self, id_lists: Sequence[Sequence[int]], *, pad_to_multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ``(ids, mask)``, both int32 ``[B, L]``.

        ``L`` is the longest row rounded up to a multiple of ``pad_to_multiple``, so prompts of nearby lengths share
        one compiled generate. Pads hold ``pad_token_id`` and mask 0.
        """
        rows = [list(r) for r in id_lists]
        if not rows:
            raise ValueError("batch() needs at least one row of ids")
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
        longest = max(len(r) for r in rows)
        L = max(pad_to_multiple, -(-longest // pad_to_multiple) * pad_to_multiple)
        ids = np.full((len(rows), L), self.pad_token_id, np.int32)
        mask = np.zeros((len(rows), L), np.int32)
        for b, r in enumerate(rows):
            if r:
                ids[b, L - len(r):] = r
                mask[b, L - len(r):] = 1
        return ids, mask

    def __repr__(self) -> str:
        return (f"ChatTokenizer({type(self.hf).__name__}, vocab={len(self)}, eos={self.eos_token_ids}, "
                f"pad={self.pad_token_id}, bos={self.bos_token_id}, chat_template={self.chat_template is not None})")


def _template_file(path: str) -> str | None:
    """A chat template stored beside the tokenizer (``chat_template.jinja``, or ``chat_template.json`` as processors
    of transformers 4.4x wrote it)."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as f:
            return f.read()
    template = _read_json_if_present(os.path.join(path, "chat_template.json")).get("chat_template")
    if isinstance(template, str):
        return template
    return None


def load_tokenizer(path: str, *, image_token: str = FALLBACK_IMAGE) -> ChatTokenizer:
    """The tokenizer of a local checkpoint directory, offline (``AutoTokenizer.from_pretrained(path)``).

    Works on transformers checkpoints (LLM or LLaVA directories) and on MLLMs exported by
    :func:`zscir_jax.models.mllm.export` (which copy the tokenizer files). Stop tokens come from
    ``generation_config.json`` when present.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"tokenizer directory {path!r} not found: pass the checkpoint directory that holds tokenizer.json / "
            "tokenizer_config.json (e.g. from `huggingface-cli download <model> --local-dir DIR`)")
    import transformers

    try:
        hf = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"no usable tokenizer files in {path!r} (tokenizer.json, tokenizer_config.json, "
                                f"tokenizer.model ...): {e}") from e
    gen = _read_json_if_present(os.path.join(path, "generation_config.json"))
    eos = _as_int_tuple(gen["eos_token_id"]) if gen.get("eos_token_id") is not None else None
    return ChatTokenizer(hf, eos_token_ids=eos, pad_token_id=gen.get("pad_token_id"),
                         chat_template=_template_file(path), image_token=image_token)
